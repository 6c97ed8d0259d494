"""One MiniCity image being drawn: the camera, the street's cross-section and the shared state.

A scene is laid out in world metres, a pinhole camera looking down a street: x lateral (right
positive), z depth. :class:`Camera` and :class:`Street` are drawn from the image's generator in
that order, before anything is drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from apoda.data.minicity.canvas import Canvas, Paint
from apoda.data.minicity.palette import Palette
from apoda.data.minicity.styles import Style

ToPixel = Callable[[float, float], tuple[float, float]]
"""Object metres (u to the right, v up from its ground point) -> pixel (x, y)."""


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: focal length `f` and principal column `cx` in pixels, horizon row `yh`,
    `eye_height` above the ground in metres; `xs`/`ys` are the pixel centres."""

    h: int
    w: int
    f: float
    cx: float
    yh: float
    eye_height: float
    xs: np.ndarray
    ys: np.ndarray
    z_near: float
    """Nearest depth whose ground contact is still inside the picture."""

    @classmethod
    def sample(cls, rng: np.random.Generator, style: Style, height: int, width: int) -> Camera:
        f = width * rng.uniform(0.95, 1.1)
        cx = width * (0.5 + rng.uniform(-0.05, 0.05))
        yh = height * rng.uniform(*style.horizon)
        eye = rng.uniform(*style.camera_height)
        return cls(
            h=height,
            w=width,
            f=f,
            cx=cx,
            yh=yh,
            eye_height=eye,
            xs=np.arange(width, dtype=np.float32) + 0.5,
            ys=np.arange(height, dtype=np.float32) + 0.5,
            z_near=f * eye / (height - yh),
        )

    def project(self, x: float, z: float) -> tuple[float, float, float]:
        """Pixel x of lateral position `x`, pixel y of the ground, and pixels per metre at `z`."""
        s = self.f / z
        return self.cx + x * s, self.yh + self.eye_height * s, s


@dataclass(frozen=True)
class Street:
    """Cross-section of the street in metres from the camera's lane centre: the road (one lane
    ahead, `n_left_lanes` oncoming, optional parking), then sidewalk, grass and the frontage on
    each side; `z_end` is the depth of the buildings closing the view, `sun` the sunny side."""

    lane: float
    n_left_lanes: int
    park_right: float
    park_left: float
    road_right: float
    road_left: float
    walk_right: float
    walk_left: float
    grass_right: float
    grass_left: float
    front_right: float
    front_left: float
    z_end: float
    sun: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Street:
        lane = rng.uniform(3.0, 3.6)
        n_left_lanes = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        park_right = 2.2 if rng.uniform() < 0.5 else 0.0
        park_left = 2.2 if rng.uniform() < 0.3 else 0.0
        road_right = lane / 2 + park_right
        road_left = lane / 2 + n_left_lanes * lane + park_left
        walk_right = rng.uniform(1.8, 4.5)
        walk_left = rng.uniform(1.8, 4.5)
        grass_right = rng.uniform(1.0, 4.0) if rng.uniform() < 0.4 else 0.0
        grass_left = rng.uniform(1.0, 4.0) if rng.uniform() < 0.4 else 0.0
        z_end = rng.uniform(60.0, 160.0)
        sun = 1.0 if rng.uniform() < 0.5 else -1.0
        return cls(
            lane=lane,
            n_left_lanes=n_left_lanes,
            park_right=park_right,
            park_left=park_left,
            road_right=road_right,
            road_left=road_left,
            walk_right=walk_right,
            walk_left=walk_left,
            grass_right=grass_right,
            grass_left=grass_left,
            front_right=road_right + walk_right + grass_right,
            front_left=road_left + walk_left + grass_left,
            z_end=z_end,
            sun=sun,
        )


class Scene:
    """One image: its generator and style, the canvas, the part palette, camera and street."""

    def __init__(self, rng: np.random.Generator, style: Style, height: int, width: int) -> None:
        self.rng, self.style = rng, style
        self.canvas = Canvas(height, width)
        self.paint = Palette(style, rng)
        self.camera = Camera.sample(rng, style, height, width)
        self.street = Street.sample(rng)

    def to_px(self, x: float, z: float) -> ToPixel:
        """The pixel mapping of an object standing at ground position (x, z)."""
        px, py, s = self.camera.project(x, z)
        return lambda u, v: (px + u * s, py - v * s)

    def box(
        self, p: ToPixel, u0: float, v0: float, u1: float, v1: float, label: int, paint: Paint
    ) -> None:
        """An upright rectangle from (u0, v0) to (u1, v1) in the object's metres."""
        x0, y1 = p(u0, v0)
        x1, y0 = p(u1, v1)
        self.canvas.rect(x0, y0, x1, y1, label, paint)
