"""The world of known objects: exact signed distances, paints and captions.

Shapes are defined in the product's output frame (metres, Z up, the object's front towards −Y),
placed exactly as the issue gives them. The NeRF trains in the field frame, whose front is +X
(mesh/export.to_blender_frame turns one into the other), so `sdf_field` rotates points into the
output frame before asking the shape.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import UsageError
from ..nerf.cameras import FIELD_TO_BLENDER
from ..nerf.shading import Light
from .light import AMBIENT, light_angles

SHAPES = ("cube", "sphere", "cylinder", "cone", "torus", "mug", "chair")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (204, 26, 26), "orange": (242, 128, 26), "yellow": (230, 204, 38), "green": (38, 153, 51),
    "blue": (38, 77, 217), "purple": (140, 51, 179), "white": (235, 235, 235), "black": (20, 20, 20),
}
BOUNDING_RADIUS = 0.6  # every object lies inside this sphere


def world_light() -> Light:
    """The world's light in the field frame, as the renders (render.py) and the toy preset's NeRF use it."""
    return Light.from_angles(*light_angles(), AMBIENT)


@dataclasses.dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    turn_deg: float = 0.0
    """Turned about the vertical axis by this many degrees (anticlockwise seen from above); the world's
    objects are not: turned and scaled ones are what-ifs for asking the teacher (toy/preference.py)."""
    scale: float = 1.0
    height: float = 1.0
    """Stretched vertically about the centre by this factor (after `scale`): a what-if, as `scale` is."""

    @property
    def caption(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape}"

    @property
    def albedo(self) -> tuple[float, float, float]:
        """sRGB albedo in [0, 1]."""
        return tuple(c / 255 for c in COLOURS[self.colour])

    @property
    def geometry(self) -> tuple[str, float, float, float]:
        """What fixes the surface (the paint does not)."""
        return self.shape, self.turn_deg, self.scale, self.height

    def sdf(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        """Signed distance (a bound for unions and cuts) in the output frame; negative inside."""
        if self.turn_deg:
            c, s = math.cos(math.radians(self.turn_deg)), math.sin(math.radians(self.turn_deg))
            x, y = points[..., 0], points[..., 1]
            points = torch.stack([c * x + s * y, -s * x + c * y, points[..., 2]], dim=-1)  # the inverse turn
        if self.scale != 1.0 or self.height != 1.0:
            stretch = points.new_tensor([self.scale, self.scale, self.scale * self.height])
            # Dividing by the smallest factor keeps it a bound on the distance (what sphere tracing needs).
            return SDF[self.shape](points / stretch) * float(stretch.min())
        return SDF[self.shape](points)

    def sdf_field(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        """The same, for points in the field frame (front +X)."""
        return self.sdf(field_to_output(points))


def all_objects() -> list[WorldObject]:
    """The 56 objects, shape-major."""
    return [WorldObject(s, c) for s in SHAPES for c in COLOURS]


def parse_prompt(prompt: str) -> WorldObject | None:
    """The world object a prompt names ("a red cube", "a red cube, front view"), or None."""
    words = prompt.lower().replace(",", " ").split()
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in SHAPES]
    if len(colours) != 1 or len(shapes) != 1:
        return None
    return WorldObject(shapes[0], colours[0])


def world_object(prompt: str, flag: str = "") -> WorldObject:
    """The world object a prompt names; a UsageError that says what the world holds when it names none
    (`flag`: the option it came from, to name in the message)."""
    obj = parse_prompt(prompt)
    if obj is None:
        raise UsageError(f"{flag + ' ' if flag else ''}{prompt!r} names no world object; use a colour "
                         f"({', '.join(COLOURS)}) and a shape ({', '.join(SHAPES)}), e.g. 'a red mug'")
    return obj


def vocabulary_warning(prompt: str) -> str | None:
    """None for a world prompt ("a red mug"); otherwise one line naming what the toy teacher knows."""
    if parse_prompt(prompt) is not None:
        return None
    return (f"the toy teacher knows only {len(SHAPES)} shapes ({', '.join(SHAPES)}) in {len(COLOURS)} colours "
            f"({', '.join(COLOURS)}), e.g. \"a red mug\"; {prompt[:60]!r} is outside that world, so expect "
            "a blob: going ahead")


def field_to_output(points: Tensor) -> Tensor:
    """Field frame (front +X) → output frame (front −Y): nerf/cameras.FIELD_TO_BLENDER."""
    return points @ points.new_tensor(FIELD_TO_BLENDER).T


def output_to_field(points: Tensor) -> Tensor:
    return points @ points.new_tensor(FIELD_TO_BLENDER)


# -- signed distances (Inigo Quilez's exact primitives) ------------------------------------------

def box(p: Tensor, centre: tuple[float, float, float], half: tuple[float, float, float]) -> Tensor:
    q = (p - p.new_tensor(centre)).abs() - p.new_tensor(half)
    return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)


def capped_cylinder(p: Tensor, radius: float, z0: float, z1: float) -> Tensor:
    zc, h = (z0 + z1) / 2, (z1 - z0) / 2
    d = torch.stack([p[..., :2].norm(dim=-1) - radius, (p[..., 2] - zc).abs() - h], dim=-1)
    return d.clamp(min=0).norm(dim=-1) + d.max(dim=-1).values.clamp(max=0)


def capped_cone(p: Tensor, half_height: float, r_bottom: float, r_top: float) -> Tensor:
    q = torch.stack([p[..., :2].norm(dim=-1), p[..., 2]], dim=-1)
    k1 = p.new_tensor([r_top, half_height])
    k2 = p.new_tensor([r_top - r_bottom, 2 * half_height])
    r = torch.where(q[..., 1] < 0, r_bottom, r_top)
    ca = torch.stack([q[..., 0] - torch.minimum(q[..., 0], r), q[..., 1].abs() - half_height], dim=-1)
    s = ((k1 - q) * k2).sum(-1) / (k2 * k2).sum()
    cb = q - k1 + k2 * s.clamp(0, 1)[..., None]
    sign = torch.where((cb[..., 0] < 0) & (ca[..., 1] < 0), -1.0, 1.0)
    return sign * torch.minimum((ca * ca).sum(-1), (cb * cb).sum(-1)).sqrt()


def torus_z(p: Tensor, major: float, tube: float) -> Tensor:
    q = torch.stack([p[..., :2].norm(dim=-1) - major, p[..., 2]], dim=-1)
    return q.norm(dim=-1) - tube


def cube(p: Tensor) -> Tensor:
    return box(p, (0, 0, 0), (0.25, 0.25, 0.25))


def sphere(p: Tensor) -> Tensor:
    return p.norm(dim=-1) - 0.35


def cylinder(p: Tensor) -> Tensor:
    return capped_cylinder(p, 0.25, -0.3, 0.3)


def cone(p: Tensor) -> Tensor:
    return capped_cone(p, 0.3, 0.3, 0.0)


def torus(p: Tensor) -> Tensor:
    return torus_z(p, 0.26, 0.1)


def mug(p: Tensor) -> Tensor:
    cup = torch.maximum(capped_cylinder(p, 0.2, -0.22, 0.22), -capped_cylinder(p, 0.17, -0.18, 0.4))
    # The handle: the +X half of a torus in the XZ plane (axis Y) centred at (0.2, 0, 0).
    local = p - p.new_tensor([0.2, 0.0, 0.0])
    ring = torch.stack([local[..., [0, 2]].norm(dim=-1) - 0.1, local[..., 1]], dim=-1).norm(dim=-1) - 0.025
    handle = torch.maximum(ring, -local[..., 0])
    return torch.minimum(cup, handle)


_CHAIR_BOXES = [((0, 0, 0), (0.22, 0.22, 0.025)), ((0, 0.195, 0.1975), (0.22, 0.025, 0.1725))] + [
    ((sx * 0.195, sy * 0.195, -0.1875), (0.025, 0.025, 0.1625)) for sx in (-1, 1) for sy in (-1, 1)]


def chair(p: Tensor) -> Tensor:
    return torch.stack([box(p, c, h) for c, h in _CHAIR_BOXES]).min(dim=0).values


def filled_mug(p: Tensor) -> Tensor:
    """The mug without its hollow: not a world shape, a what-if for asking the teacher (toy/preference.py)."""
    return torch.minimum(capped_cylinder(p, 0.2, -0.22, 0.22), mug(p))


def round_cube(p: Tensor) -> Tensor:
    """The cube swept round its vertical axis (a cylinder through its vertical edges): what a distillation that
    averages the cube over its turns makes. A what-if, as the filled mug is."""
    return capped_cylinder(p, 0.25 * math.sqrt(2), -0.25, 0.25)


SDF: dict[str, Callable[[Tensor], Tensor]] = {
    "cube": cube, "sphere": sphere, "cylinder": cylinder, "cone": cone, "torus": torus, "mug": mug, "chair": chair,
    "filled mug": filled_mug, "round cube": round_cube}
