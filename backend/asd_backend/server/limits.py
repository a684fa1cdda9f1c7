"""What one server runs: maximums that fit its machine, checked at submit and sent in `welcome.limits`.

The job spec's own ranges say what is meaningful (a 1024³ mesh, a 2048² image); these say what this
box can afford. The defaults fit a 24 GB GPU: the paper preset (25k steps, 384³ mesh) runs, a 1024³
grid (4 GB of densities before marching cubes) or a 2048² image (6+ GB, minutes a step) does not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from asd_protocol import ProtocolError
from asd_protocol import errors as codes
from asd_protocol.job_spec import JobSpec

from ..errors import UsageError


def _limit(default: int, doc: str) -> Any:
    """A limit with its doc (welcome's description) and the help of its `asd serve` flag."""
    return dataclasses.field(default=default, metadata={"doc": doc, "help": f"the most a job may ask for: {doc}"})


@dataclasses.dataclass
class ServerLimits:
    max_mc_resolution: int = _limit(512, "marching-cubes cells across the scene (final and preview meshes)")
    max_image_resolution: int = _limit(1024, "side of a 2D image job's result")
    max_render_side: int = _limit(1024, "side of preview and turntable renders, training renders and edit views")
    max_steps: int = _limit(50_000, "optimisation steps of one job")
    max_texture_size: int = _limit(4096, "side of a baked texture")
    max_edit_texture_side: int = _limit(2048, "side of a texture sent for editing")
    max_edit_pixels: int = _limit(64 * 512 * 512, "views × side² of an edit's ray-cast views (its memory grows "
                                  "with it; an unset side counts as 512)")

    def __post_init__(self) -> None:
        for name, value in self.to_json().items():
            if value < 1:
                raise UsageError(f"server limit {name} must be at least 1; got {value}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, spec: JobSpec, path: str = "content.spec") -> None:
        """Raise a too_large error naming the first setting past this server's maximum."""
        steps_path = {"generate": "schedule.steps", "image": "image.steps", "edit_texture": "edit.steps"}[spec.kind]
        checks = [(steps_path, spec.steps, self.max_steps, "max_steps")]
        if spec.kind == "generate":
            out = spec.output
            checks += [("output.mc_resolution", out.mc_resolution, self.max_mc_resolution, "max_mc_resolution"),
                       ("output.preview_mc_resolution", out.preview_mc_resolution, self.max_mc_resolution,
                        "max_mc_resolution"),
                       ("output.texture_size", out.texture_size, self.max_texture_size, "max_texture_size"),
                       ("output.preview_render", out.preview_render, self.max_render_side, "max_render_side"),
                       ("output.turntable_size", out.turntable_size, self.max_render_side, "max_render_side")]
            checks += [("schedule.resolution_schedule", max(side for _, side in spec.schedule.resolution_schedule),
                        self.max_render_side, "max_render_side")]
        elif spec.kind == "image" and spec.image.resolution is not None:
            checks.append(("image.resolution", spec.image.resolution, self.max_image_resolution,
                           "max_image_resolution"))
        elif spec.kind == "edit_texture":
            side = spec.edit.resolution or 512  # unset: the teacher's native side, 512 for SD 2.1-base
            if spec.edit.resolution is not None:
                checks.append(("edit.resolution", side, self.max_render_side, "max_render_side"))
            checks.append(("edit.views", spec.edit.views * side * side, self.max_edit_pixels, "max_edit_pixels"))
        for field, value, limit, name in checks:
            if value > limit:
                raise ProtocolError(codes.TOO_LARGE, f"{value} is more than this server runs ({name} = {limit})",
                                    field=f"{path}.{field}", hint=f"use at most {limit}; the server's limits are "
                                    "in its welcome message (asd serve --help shows how to raise them)")
