"""The toy world's light, torch-free: the presets read it (the server's front end resolves specs
without torch), the world's renderer and the toy preset's lit NeRF both use it."""

from __future__ import annotations

import math

# In the output frame: a directional light from the front, right and above, plus ambient, so shading
# shows the form and stays put as the camera moves.
LIGHT_DIRECTION = (0.45, -0.6, 0.66)  # towards the light
AMBIENT = 0.35  # the directional light gives the rest, 0.65


def light_angles() -> tuple[float, float]:
    """The world's light as (elevation, azimuth) in degrees, the cameras' convention (azimuth 0 from
    the front, 90 from the right): what the toy preset's lambertian NeRF is lit by."""
    x, y, z = LIGHT_DIRECTION  # output frame: front −Y, right +X
    forward, right = -y, x
    return math.degrees(math.atan2(z, math.hypot(forward, right))), math.degrees(math.atan2(right, forward))
