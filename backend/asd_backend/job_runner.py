"""One job runner for every host: `asd generate` / `asd image` and the server's workers run a job here.

`run_job` takes a resolved spec, a loaded teacher and the job's folder, runs the loop its kind names
(train/text_to_3d.py, train/image_2d.py, texture/edit.py) and writes every result under the names
job_layout.py gives: previews and the final mesh as they come, turntable frames, the image or the
texture. It returns the outputs (name → file in the folder) and a summary. The host hears the job through
its events (job_events.py) and does only what is its own: the CLI draws a progress bar and copies results
to `-o`; the worker sends protocol messages and reports the outputs with `done`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from asd_protocol.job_spec import JobSpec

from . import job_layout
from .artifacts import teacher_notice, write_png
from .job_events import JobEvents, Relay


@dataclasses.dataclass
class JobResult:
    stopped: bool
    """events.should_stop() ended the job early: a 3D job's checkpoint is on disk, nothing more was written."""
    outputs: dict[str, str]
    """Output name → file relative to the job's folder (mesh, preview, turntable_NN, image, texture)."""
    summary: dict[str, Any]
    """steps, seconds, and per kind: faces and resumed_from (3D)."""
    mesh: Any = None
    """A 3D job's final mesh (mesh/extract.Mesh, the field's frame), for a host that writes other formats."""
    final_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    """The last step's metrics (image and edit jobs), for a run record; not in `summary`, whose values are
    plain (the protocol's `done.summary` carries no nested objects)."""


def png_metadata(spec: JobSpec, teacher: Any) -> dict[str, str]:
    """Text chunks every PNG of a job carries, so a picture says how it was made (and that an untrained
    teacher made it)."""
    meta = {"prompt": spec.prompt, "method": spec.guidance.method, "cfg": f"{spec.guidance.cfg:g}",
            "seed": str(spec.seed), "teacher": teacher.name, "teacher_trained": str(bool(teacher.trained)),
            "software": "asd-studio"}
    notice = teacher_notice(teacher)
    return meta | ({"notice": notice} if notice else {})


def run_job(teacher: Any, spec: JobSpec, folder: str | Path, events: JobEvents | None = None, *,
            resume: bool = False, edit_inputs: dict[str, Any] | None = None) -> JobResult:
    """Run one job of any kind in `folder` (created if needed). `resume` continues a 3D job from its
    checkpoint; `edit_inputs` (vertices, faces, uvs, texture) are an edit's mesh, read from the folder's
    inputs.npz when not given. A 3D job that ends with no surface raises AsdError."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run = {"generate": _generate, "image": _image, "edit_texture": _edit}.get(spec.kind)
    if run is None:
        raise ValueError(f"no runner for jobs of kind {spec.kind!r}")
    started = time.perf_counter()
    result = run(teacher, spec, folder, events or JobEvents(), resume=resume, edit_inputs=edit_inputs)
    result.summary = {**result.summary, "seconds": round(time.perf_counter() - started, 2),
                      "teacher_trained": bool(teacher.trained)}
    return result


class _WritingSnapshots(Relay):
    """Writes each 3D snapshot (mesh and render) before the host hears of it."""

    def __init__(self, host: JobEvents, folder: Path, metadata: dict[str, str]) -> None:
        super().__init__(host)
        self.folder, self.metadata = folder, metadata

    def snapshot(self, snapshot: Any) -> None:
        from .mesh.export import write_mesh

        name = job_layout.snapshot(snapshot.index)
        if len(snapshot.mesh.faces):
            write_mesh(snapshot.mesh, self.folder / (job_layout.MESH if snapshot.final else f"{name}.glb"))
        write_png(self.folder / (job_layout.PREVIEW if snapshot.final else f"{name}.png"), snapshot.preview,
                  self.metadata)
        super().snapshot(snapshot)


def _generate(teacher: Any, spec: JobSpec, folder: Path, events: JobEvents, *, resume: bool,
              edit_inputs: None) -> JobResult:
    from .errors import AsdError
    from .train.text_to_3d import generate

    metadata = png_metadata(spec, teacher)
    result = generate(teacher, spec, workdir=folder, resume=resume,
                      events=_WritingSnapshots(events, folder, metadata))
    summary = {"steps": result.steps_done, "resumed_from": result.resumed_from,
               "optimisation_seconds": round(result.seconds, 2)}
    if result.stopped:
        return JobResult(True, {}, summary)
    if result.mesh is None or not len(result.mesh.faces):
        raise AsdError("the optimisation produced no surface (an empty density field); try more steps or another "
                       "seed")
    outputs = {"mesh": job_layout.MESH, "preview": job_layout.PREVIEW}
    count = spec.output.turntable
    if count:
        # Still the protocol's "extracting" phase (results being made after the optimisation): a new phase
        # name would be refused by clients of protocol 2.2.
        events.phase("extracting", f"rendering {count} turntable frames at {spec.output.turntable_size}²")
        from .interrupt import Interrupted

        try:
            for i in range(count):
                azimuth = i * 360.0 / count - 180.0
                image = result.model.turntable(spec.output.turntable_size, [azimuth], events.should_stop)[0]
                outputs[f"turntable_{i:02d}"] = job_layout.turntable_frame(i)
                write_png(folder / job_layout.turntable_frame(i), image, metadata)
        except Interrupted:  # the mesh is whole and on disk: keep it and the frames made so far
            pass
    summary |= {"faces": len(result.mesh.faces), "vertices": len(result.mesh.vertices)}
    return JobResult(False, outputs, summary, mesh=result.mesh)


class _WritingFrames(Relay):
    """Writes an image job's intermediate frames (image.every) before the host hears of them."""

    def __init__(self, host: JobEvents, folder: Path, metadata: dict[str, str]) -> None:
        super().__init__(host)
        self.folder, self.metadata = folder, metadata

    def frame(self, frame: Any) -> None:
        if not frame.final:
            write_png(self.folder / job_layout.image_frame(frame.step), frame.image, self.metadata)
        super().frame(frame)


def _image(teacher: Any, spec: JobSpec, folder: Path, events: JobEvents, *, resume: bool,
           edit_inputs: None) -> JobResult:
    from .train.image_2d import distill_image

    metadata = png_metadata(spec, teacher)
    final = distill_image(teacher, spec, _WritingFrames(events, folder, metadata))
    # Written even when stopped early: the image of the last step is a result the artist can keep.
    write_png(folder / job_layout.IMAGE, final.image, metadata)
    return JobResult(events.should_stop(), {"image": job_layout.IMAGE}, {"steps": final.step},
                     final_metrics=_numbers(final.metrics))


def _edit(teacher: Any, spec: JobSpec, folder: Path, events: JobEvents, *, resume: bool,
          edit_inputs: dict[str, Any] | None) -> JobResult:
    import numpy as np

    from .texture.edit import edit_texture

    inputs = edit_inputs
    if inputs is None:
        with np.load(folder / job_layout.EDIT_INPUTS, allow_pickle=False) as saved:  # the front end wrote it
            inputs = {k: saved[k] for k in ("vertices", "faces", "uvs", "texture")}
    events.phase("rasterizing", f"ray casting {spec.edit.views} views of the mesh")
    final = edit_texture(teacher, inputs["vertices"], inputs["faces"], inputs["uvs"], inputs["texture"], spec,
                         events=events)
    write_png(folder / job_layout.TEXTURE, final.texture, png_metadata(spec, teacher))
    return JobResult(events.should_stop(), {"texture": job_layout.TEXTURE}, {"steps": final.step},
                     final_metrics=_numbers(final.metrics))


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The last step's metrics as plain, finite floats (a summary is JSON on the wire and on disk)."""
    import math

    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
