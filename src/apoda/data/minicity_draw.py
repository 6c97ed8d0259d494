"""Procedural street scenes for MiniCity: layout sampling, drawing, and the three domain styles.

A scene is laid out in world metres (a pinhole camera looking down a street) and drawn with
vectorised numpy into a label map (Cityscapes label ids) and a float RGB image. The ground and the
building rows are drawn per pixel from their plane equations; objects (vehicles, people, poles,
trees) are upright billboards drawn far to near. A :class:`Style` decides colours, textures,
light and sensor effects, which is all that separates the "synthetic", "real" and
"domain-randomised" domains besides a few layout priors.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from math import ceil, floor

import numpy as np
from cityscapesscripts.helpers.labels import name2label

__all__ = ["RANDOMISED", "REAL", "SYNTHETIC", "Style", "render_scene"]


def _label_id(name: str) -> int:
    return int(name2label[name].id)


# Image colour (synthetic domain, 0-255), the Cityscapes class it belongs to, and the texture
# amplitudes (fine grain, smooth blotches) it gets in the real domain. Parts of one class share
# the class's hue shift in the real domain.
_PARTS: dict[str, tuple[tuple[int, int, int], str, float, float]] = {
    "road": ((88, 88, 96), "road", 0.10, 0.12),
    "lane": ((235, 235, 225), "road", 0.05, 0.05),
    "sidewalk": ((185, 170, 160), "sidewalk", 0.07, 0.08),
    "kerb": ((145, 145, 150), "sidewalk", 0.05, 0.05),
    "terrain": ((150, 190, 70), "terrain", 0.16, 0.16),
    "building": ((165, 115, 85), "building", 0.06, 0.12),
    "window": ((60, 75, 105), "building", 0.05, 0.05),
    "wall": ((200, 185, 130), "wall", 0.08, 0.08),
    "fence": ((150, 95, 45), "fence", 0.06, 0.05),
    "pole": ((125, 125, 140), "pole", 0.04, 0.04),
    "light_body": ((40, 45, 40), "traffic light", 0.04, 0.02),
    "lamp_red": ((255, 40, 30), "traffic light", 0.02, 0.02),
    "lamp_amber": ((255, 190, 0), "traffic light", 0.02, 0.02),
    "lamp_green": ((40, 255, 90), "traffic light", 0.02, 0.02),
    "sign": ((250, 215, 20), "traffic sign", 0.04, 0.02),
    "vegetation": ((55, 135, 40), "vegetation", 0.22, 0.18),
    "trunk": ((100, 70, 40), "vegetation", 0.10, 0.05),
    "sky": ((120, 175, 235), "sky", 0.01, 0.06),
    "sky_horizon": ((195, 218, 240), "sky", 0.01, 0.06),
    "skin": ((225, 180, 145), "person", 0.03, 0.02),
    "person_top": ((200, 45, 55), "person", 0.04, 0.03),
    "person_legs": ((45, 50, 80), "person", 0.04, 0.03),
    "rider_top": ((215, 60, 175), "rider", 0.04, 0.03),
    "helmet": ((240, 240, 240), "rider", 0.03, 0.02),
    "rider_legs": ((40, 40, 60), "rider", 0.04, 0.03),
    "car": ((45, 85, 185), "car", 0.04, 0.05),
    "car_glass": ((35, 40, 55), "car", 0.03, 0.03),
    "car_tyre": ((25, 25, 25), "car", 0.03, 0.02),
    "car_rear_light": ((230, 30, 30), "car", 0.02, 0.02),
    "car_head_light": ((240, 240, 215), "car", 0.02, 0.02),
    "truck": ((215, 210, 195), "truck", 0.04, 0.06),
    "truck_dark": ((50, 50, 55), "truck", 0.03, 0.02),
    "bus": ((235, 145, 25), "bus", 0.04, 0.05),
    "bus_glass": ((40, 45, 60), "bus", 0.03, 0.02),
    "train": ((175, 185, 200), "train", 0.04, 0.05),
    "train_stripe": ((200, 30, 40), "train", 0.03, 0.03),
    "train_glass": ((35, 45, 60), "train", 0.03, 0.02),
    "motorcycle": ((110, 45, 150), "motorcycle", 0.04, 0.03),
    "motorcycle_tyre": ((25, 25, 25), "motorcycle", 0.03, 0.02),
    "bicycle": ((30, 175, 205), "bicycle", 0.04, 0.03),
    "bicycle_tyre": ((30, 30, 30), "bicycle", 0.03, 0.02),
    "ego": ((45, 50, 60), "ego vehicle", 0.02, 0.03),
}

# Real-domain hue shift per class in degrees: colour stays a cue, but an unreliable one.
_REAL_HUE_SHIFT: dict[str, float] = {
    "road": 0.0,
    "sidewalk": 12.0,
    "building": 10.0,
    "wall": -15.0,
    "fence": 12.0,
    "pole": 0.0,
    "traffic light": -10.0,
    "traffic sign": -12.0,
    "vegetation": 15.0,
    "terrain": -18.0,
    "sky": -10.0,
    "person": 18.0,
    "rider": -18.0,
    "car": 20.0,
    "truck": 12.0,
    "bus": -12.0,
    "train": 15.0,
    "motorcycle": -20.0,
    "bicycle": 18.0,
    "ego vehicle": 0.0,
}

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE = (
    _label_id(n) for n in ("road", "sidewalk", "building", "wall", "fence", "pole")
)
LIGHT, SIGN, VEGETATION, TERRAIN, SKY = (
    _label_id(n) for n in ("traffic light", "traffic sign", "vegetation", "terrain", "sky")
)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN = (
    _label_id(n) for n in ("person", "rider", "car", "truck", "bus", "train")
)
MOTORCYCLE, BICYCLE, EGO = (_label_id(n) for n in ("motorcycle", "bicycle", "ego vehicle"))

# Kinds of segment in a row of street frontage.
_GAP, _BUILDING, _WALL, _FENCE, _VEG = range(5)
_KIND_LABEL = np.array([0, BUILDING, WALL, FENCE, VEGETATION], dtype=np.uint8)


@dataclass(frozen=True)
class Style:
    """What a domain looks like: colour rule, textures, light, sensor, horizon and object priors.

    `colours` is "synthetic" (flat class colours, small per-object jitter), "real" (per-class hue
    shift, desaturated, textured) or "randomised" (a random colour and texture per object).
    `priors` holds the expected number of objects of each kind per image (Poisson means).
    """

    name: str
    colours: str
    horizon: tuple[float, float]
    camera_height: tuple[float, float]
    priors: Mapping[str, float]
    blur_sigma: tuple[float, float] = (0.0, 0.0)
    noise_sigma: tuple[float, float] = (0.0, 0.0)
    saturation: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shadows: bool = False
    ego_vehicle: bool = False


SYNTHETIC = Style(
    name="synthetic",
    colours="synthetic",
    horizon=(0.37, 0.43),
    camera_height=(1.4, 1.6),
    priors={
        "car": 5.0,
        "truck": 0.6,
        "bus": 0.35,
        "train": 0.07,
        "person": 1.8,
        "bicycle_rider": 0.15,
        "motorcycle_rider": 0.15,
        "bicycle": 0.12,
        "motorcycle": 0.12,
    },
)

REAL = Style(
    name="real",
    colours="real",
    horizon=(0.47, 0.53),
    camera_height=(1.15, 1.3),
    priors={
        "car": 4.6,
        "truck": 0.25,
        "bus": 0.3,
        "train": 0.07,
        "person": 4.0,
        "bicycle_rider": 0.35,
        "motorcycle_rider": 0.1,
        "bicycle": 0.45,
        "motorcycle": 0.08,
    },
    blur_sigma=(0.4, 0.7),
    noise_sigma=(3.0, 6.0),
    saturation=0.85,
    cast=(1.05, 1.0, 0.93),
    shadows=True,
    ego_vehicle=True,
)

RANDOMISED = Style(
    name="randomised",
    colours="randomised",
    horizon=(0.3, 0.6),
    camera_height=(1.1, 1.7),
    priors={
        "car": 4.8,
        "truck": 0.55,
        "bus": 0.35,
        "train": 0.1,
        "person": 2.8,
        "bicycle_rider": 0.25,
        "motorcycle_rider": 0.12,
        "bicycle": 0.3,
        "motorcycle": 0.1,
    },
    blur_sigma=(0.0, 1.2),
    noise_sigma=(0.0, 10.0),
    shadows=True,
)


class _Palette:
    """Colours and texture amplitudes of parts, drawn per object according to a style."""

    def __init__(self, style: Style, rng: np.random.Generator) -> None:
        self.mode = style.colours
        self.rng = rng

    def __call__(self, part: str, jitter: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """RGB (0-255 floats) and (fine, smooth) texture amplitudes for one object's part."""
        rgb, cls, fine, smooth = _PARTS[part]
        rng = self.rng
        if self.mode == "randomised":
            h, s, v = rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0), rng.uniform(0.12, 1.0)
            tex = rng.uniform(0.0, 0.3, size=2) * (rng.uniform() < 0.7)
            return _hsv(h, s, v), tex.astype(np.float32)
        h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
        if self.mode == "synthetic":
            h += rng.uniform(-0.02, 0.02) * jitter
            s *= 1.0 + rng.uniform(-0.1, 0.1) * jitter
            v *= 1.0 + rng.uniform(-0.1, 0.1) * jitter
            return _hsv(h, s, v), np.zeros(2, np.float32)
        h += _REAL_HUE_SHIFT[cls] / 360.0 + rng.uniform(-0.035, 0.035) * jitter
        s *= 0.72 * (1.0 + rng.uniform(-0.15, 0.15) * jitter)
        v *= 0.95 * (1.0 + rng.uniform(-0.15, 0.15) * jitter)
        return _hsv(h, s, v), np.array([fine, smooth], np.float32)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.array([r * 255.0, g * 255.0, b * 255.0], np.float32)


@dataclass
class _Frontage:
    """A row of segments (buildings, walls, fences, hedges, gaps) along one coordinate."""

    start: np.ndarray
    kind: np.ndarray
    height: np.ndarray
    colour: np.ndarray
    window: np.ndarray
    tex: np.ndarray
    window_pitch: np.ndarray
    floor_height: np.ndarray
    phase: np.ndarray


class _Canvas:
    """Label map, float RGB and per-pixel texture amplitudes, with clipped shape primitives."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.label = np.zeros((height, width), np.uint8)
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.tex = np.zeros((height, width, 2), np.float32)

    def _put(
        self,
        rows: slice,
        cols: slice,
        mask: np.ndarray | None,
        label: int,
        paint: tuple[np.ndarray, np.ndarray],
    ) -> None:
        rgb, tex = paint
        if mask is None:
            self.label[rows, cols] = label
            self.rgb[rows, cols] = rgb
            self.tex[rows, cols] = tex
        else:
            self.label[rows, cols][mask] = label
            self.rgb[rows, cols][mask] = rgb
            self.tex[rows, cols][mask] = tex

    @staticmethod
    def _span(a0: float, a1: float, n: int) -> tuple[int, int]:
        """Pixels whose centres fall in [a0, a1); one pixel for thin shapes over 0.3 px."""
        i0, i1 = ceil(a0 - 0.5), ceil(a1 - 0.5)
        if i1 <= i0 and a1 - a0 > 0.3:
            i0 = floor(0.5 * (a0 + a1))
            i1 = i0 + 1
        return max(i0, 0), min(i1, n)

    def rect(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        label: int,
        paint: tuple[np.ndarray, np.ndarray],
    ) -> None:
        c0, c1 = self._span(x0, x1, self.w)
        r0, r1 = self._span(y0, y1, self.h)
        if c1 > c0 and r1 > r0:
            self._put(slice(r0, r1), slice(c0, c1), None, label, paint)

    def _grid(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        c0, c1 = max(floor(x0), 0), min(ceil(x1) + 1, self.w)
        r0, r1 = max(floor(y0), 0), min(ceil(y1) + 1, self.h)
        if c1 <= c0 or r1 <= r0:
            return None
        px = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
        py = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
        return slice(r0, r1), slice(c0, c1), px, py

    def ellipse(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        label: int,
        paint: tuple[np.ndarray, np.ndarray],
        inner: float = 0.0,
    ) -> None:
        """Filled ellipse, or a ring when `inner` (a fraction of the radii) is positive."""
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        grid = self._grid(cx - rx, cy - ry, cx + rx, cy + ry)
        if grid is None:
            return
        rows, cols, px, py = grid
        d = ((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2
        mask = d <= 1.0
        if inner > 0.0:
            mask &= d >= inner**2
        if mask.any():
            self._put(rows, cols, mask, label, paint)

    def line(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        width: float,
        label: int,
        paint: tuple[np.ndarray, np.ndarray],
    ) -> None:
        """Thick segment, at least about one pixel wide."""
        r = max(0.5 * width, 0.5)
        grid = self._grid(min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)
        if grid is None:
            return
        rows, cols, px, py = grid
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
        mask = (px - x0 - t * dx) ** 2 + (py - y0 - t * dy) ** 2 <= r * r
        if mask.any():
            self._put(rows, cols, mask, label, paint)

    def polygon(
        self, points: list[tuple[float, float]], label: int, paint: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """Filled convex polygon (vertices in either winding order)."""
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        grid = self._grid(min(xs), min(ys), max(xs), max(ys))
        if grid is None:
            return
        rows, cols, px, py = grid
        inside_pos = np.ones((py.shape[0], px.shape[1]), bool)
        inside_neg = inside_pos.copy()
        for (ax, ay), (bx, by) in zip(points, points[1:] + points[:1], strict=True):
            cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
            inside_pos &= cross >= 0
            inside_neg &= cross <= 0
        mask = inside_pos | inside_neg
        if not mask.any():
            cx, cy = float(np.mean(xs)), float(np.mean(ys))
            if max(xs) - min(xs) > 0.6 and max(ys) - min(ys) > 0.6:
                self.rect(cx - 0.5, cy - 0.5, cx + 0.5, cy + 0.5, label, paint)
            return
        self._put(rows, cols, mask, label, paint)


class _Scene:
    """One image: camera, street layout and the drawing of every part of it."""

    def __init__(self, rng: np.random.Generator, style: Style, height: int, width: int) -> None:
        self.rng, self.style = rng, style
        self.canvas = _Canvas(height, width)
        self.paint = _Palette(style, rng)
        self.h, self.w = height, width
        self.f = width * rng.uniform(0.95, 1.1)
        self.cx = width * (0.5 + rng.uniform(-0.05, 0.05))
        self.yh = height * rng.uniform(*style.horizon)
        self.cam = rng.uniform(*style.camera_height)
        self.xs = np.arange(width, dtype=np.float32) + 0.5
        self.ys = np.arange(height, dtype=np.float32) + 0.5
        lane = rng.uniform(3.0, 3.6)
        self.lane = lane
        self.n_left_lanes = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        self.park_right = 2.2 if rng.uniform() < 0.5 else 0.0
        self.park_left = 2.2 if rng.uniform() < 0.3 else 0.0
        self.road_right = lane / 2 + self.park_right
        self.road_left = lane / 2 + self.n_left_lanes * lane + self.park_left
        self.walk_right = rng.uniform(1.8, 4.5)
        self.walk_left = rng.uniform(1.8, 4.5)
        self.grass_right = rng.uniform(1.0, 4.0) if rng.uniform() < 0.4 else 0.0
        self.grass_left = rng.uniform(1.0, 4.0) if rng.uniform() < 0.4 else 0.0
        self.front_right = self.road_right + self.walk_right + self.grass_right
        self.front_left = self.road_left + self.walk_left + self.grass_left
        self.z_end = rng.uniform(60.0, 160.0)
        # Nearest depth whose ground contact is still inside the picture.
        self.z_near = self.f * self.cam / (height - self.yh)
        self.sun = 1.0 if rng.uniform() < 0.5 else -1.0
        self.objects: list[tuple[float, Callable[[], None]]] = []

    # -- projection ---------------------------------------------------------------------------

    def project(self, x: float, z: float) -> tuple[float, float, float]:
        """Pixel x of lateral position `x`, pixel y of the ground, and pixels per metre at `z`."""
        s = self.f / z
        return self.cx + x * s, self.yh + self.cam * s, s

    # -- background -----------------------------------------------------------------------------

    def draw_sky(self) -> None:
        top, tex = self.paint("sky", 0.5)
        low, _ = self.paint("sky_horizon", 0.5)
        t = np.clip(self.ys / max(self.yh, 1.0), 0.0, 1.0)[:, None, None]
        c = self.canvas
        c.label[:] = SKY
        c.rgb[:] = top * (1.0 - t) + low * t
        c.tex[:] = tex

    def draw_ground(self) -> None:
        c, rng = self.canvas, self.rng
        below = self.ys > self.yh + 1e-3
        if not below.any():
            return
        y = self.ys[below][:, None]
        z = self.f * self.cam / (y - self.yh)
        x = (self.xs[None, :] - self.cx) * z / self.f
        road, tex_road = self.paint("road", 0.5)
        lane, tex_lane = self.paint("lane", 0.3)
        walk, tex_walk = self.paint("sidewalk", 0.5)
        kerb, tex_kerb = self.paint("kerb", 0.3)
        grass, tex_grass = self.paint("terrain", 0.5)
        label = np.full(x.shape, TERRAIN, np.uint8)
        rgb = np.broadcast_to(grass, (*x.shape, 3)).copy()
        tex = np.broadcast_to(tex_grass, (*x.shape, 2)).copy()

        def put(mask: np.ndarray, lab: int, col: np.ndarray, tx: np.ndarray) -> None:
            label[mask] = lab
            rgb[mask] = col
            tex[mask] = tx

        rr, rl = self.road_right, self.road_left
        put(
            ((x > rr) & (x <= rr + self.walk_right)) | ((x < -rl) & (x >= -rl - self.walk_left)),
            SIDEWALK,
            walk,
            tex_walk,
        )
        put(
            ((x > rr) & (x <= rr + 0.25)) | ((x < -rl) & (x >= -rl - 0.25)),
            SIDEWALK,
            kerb,
            tex_kerb,
        )
        on_road = (x >= -rl) & (x <= rr)
        put(on_road, ROAD, road, tex_road)
        marks = (np.abs(x - rr + 0.3) < 0.08) | (np.abs(x + rl - 0.3) < 0.08)
        dash = (z % 9.0) < 3.0
        for k in range(self.n_left_lanes):
            marks |= (np.abs(x + self.lane / 2 + k * self.lane) < 0.08) & dash
        if rng.uniform() < 0.3:
            zc = rng.uniform(8.0, 30.0)
            marks |= (z > zc) & (z < zc + 3.0) & ((x % 1.0) < 0.5)
        put(on_road & marks, ROAD, lane, tex_lane)
        if self.style.shadows:
            edge = self.sun * rng.uniform(-3.0, 3.0)
            shadow = (x * self.sun > edge) & ((z + rng.uniform(0, 20)) % 20.0 < 13.0)
            rgb[shadow] *= rng.uniform(0.65, 0.85)
        rows = np.nonzero(below)[0]
        c.label[rows] = label
        c.rgb[rows] = rgb
        c.tex[rows] = tex

    def frontage(
        self,
        start: float,
        stop: float,
        probs: list[float],
        heights: Mapping[int, tuple[float, float]],
    ) -> _Frontage:
        """Random segments covering [start, stop) with kinds drawn from `probs`."""
        rng = self.rng
        starts: list[float] = []
        kinds: list[int] = []
        a = start
        while a < stop:
            starts.append(a)
            kinds.append(int(rng.choice(5, p=probs)))
            a += rng.uniform(6.0, 24.0)
        n = len(starts)
        kind = np.array(kinds, np.int64)
        height = np.zeros(n, np.float32)
        colour = np.zeros((n, 3), np.float32)
        window = np.zeros((n, 3), np.float32)
        tex = np.zeros((n, 2), np.float32)
        part = {
            _GAP: "building",
            _BUILDING: "building",
            _WALL: "wall",
            _FENCE: "fence",
            _VEG: "vegetation",
        }
        for i, k in enumerate(kinds):
            lo, hi = heights.get(k, (0.0, 0.0))
            height[i] = rng.uniform(lo, hi)
            colour[i], tex[i] = self.paint(part[k], 1.5)
            window[i], _ = self.paint("window", 1.0)
        return _Frontage(
            start=np.array(starts, np.float32),
            kind=kind,
            height=height,
            colour=colour,
            window=window,
            tex=tex,
            window_pitch=rng.uniform(1.6, 3.2, n).astype(np.float32),
            floor_height=rng.uniform(2.8, 3.6, n).astype(np.float32),
            phase=rng.uniform(0.0, 6.3, n).astype(np.float32),
        )

    def draw_plane(
        self, depth: np.ndarray, along: np.ndarray, valid: np.ndarray, row: _Frontage, shade: float
    ) -> None:
        """Draw a frontage whose column `x` is at `depth[x]` and position `along[x]`."""
        along = np.where(valid, along, 0.0)
        seg = np.clip(np.searchsorted(row.start, along, side="right") - 1, 0, len(row.start) - 1)
        kind = row.kind[seg]
        valid = valid & (kind != _GAP)
        if not valid.any():
            return
        depth = np.where(valid, depth, 1.0)
        h = row.height[seg]
        h = np.where(kind == _VEG, h * (0.8 + 0.2 * np.sin(along * 0.9 + row.phase[seg])), h)
        y = self.ys[:, None]
        top = self.yh + self.f * (self.cam - h) / depth
        bottom = self.yh + self.f * self.cam / depth
        mask = valid[None, :] & (y >= top[None, :]) & (y < bottom[None, :])
        if not mask.any():
            return
        world_h = self.cam - (y - self.yh) * depth[None, :] / self.f
        local = along - row.start[seg]
        rgb = np.broadcast_to(row.colour[seg][None], (self.h, self.w, 3)).copy()
        windows = (
            (kind == _BUILDING)[None, :]
            & ((local / row.window_pitch[seg]) % 1.0 > 0.3)[None, :]
            & ((local / row.window_pitch[seg]) % 1.0 < 0.75)[None, :]
            & ((world_h / row.floor_height[seg][None, :]) % 1.0 > 0.35)
            & ((world_h / row.floor_height[seg][None, :]) % 1.0 < 0.8)
            & (world_h > 2.0)
            & (world_h < h[None, :] - 0.8)
        )
        rgb = np.where(windows[..., None], row.window[seg][None], rgb)
        coping = (kind == _WALL)[None, :] & (world_h > h[None, :] - 0.2)
        rgb = np.where(coping[..., None], rgb * 1.2, rgb)
        slats = (kind == _FENCE)[None, :] & ((local % 0.35) < 0.12)[None, :]
        rgb = np.where(slats[..., None], rgb * 0.7, rgb)
        c = self.canvas
        c.label[mask] = np.broadcast_to(_KIND_LABEL[kind][None, :], mask.shape)[mask]
        c.rgb[mask] = np.minimum(rgb[mask] * shade, 255.0)
        c.tex[mask] = np.broadcast_to(row.tex[seg][None], (self.h, self.w, 2))[mask]

    def draw_street_frontages(self) -> None:
        rng = self.rng
        end_half = 0.7 * self.z_end * self.w / self.f + 60.0
        end = self.frontage(
            -end_half,
            end_half,
            [0.15, 0.6, 0.0, 0.0, 0.25],
            {_BUILDING: (3.0, 22.0), _VEG: (4.0, 10.0)},
        )
        along = (self.xs - self.cx) * self.z_end / self.f
        self.draw_plane(
            np.full(self.w, self.z_end, np.float32), along, np.ones(self.w, bool), end, 0.9
        )
        light = 1.0 if self.style.colours == "synthetic" else rng.uniform(0.6, 0.8)
        for side in (-1.0, 1.0):
            front = self.front_right if side > 0 else self.front_left
            shade = 1.0 if side == self.sun else light
            dx = (self.xs - self.cx) * side
            for offset, probs, heights in (
                (
                    rng.uniform(6.0, 15.0),
                    [0.15, 0.65, 0.0, 0.0, 0.2],
                    {_BUILDING: (6.0, 24.0), _VEG: (5.0, 11.0)},
                ),
                (
                    0.0,
                    [0.05, 0.6, 0.12, 0.1, 0.13],
                    {
                        _BUILDING: (4.0, 20.0),
                        _WALL: (1.0, 2.6),
                        _FENCE: (1.0, 2.0),
                        _VEG: (1.5, 7.0),
                    },
                ),
            ):
                row = self.frontage(0.0, self.z_end, probs, heights)
                valid = dx > 1e-3
                depth = np.where(
                    valid, self.f * (front + offset) / np.maximum(dx, 1e-3), np.inf
                ).astype(np.float32)
                valid &= depth < self.z_end
                self.draw_plane(depth, depth, valid, row, shade)

    # -- objects ------------------------------------------------------------------------------

    def add(self, z: float, draw: Callable[[], None]) -> None:
        self.objects.append((z, draw))

    def depth(self, lo: float, hi: float) -> float:
        """A depth in [lo, hi] (metres), more often near than far, and never nearer than where
        the ground leaves the picture."""
        lo = max(lo, 1.15 * self.z_near)
        return float(lo + (max(hi, lo + 1.0) - lo) * self.rng.uniform() ** 1.6)

    def place_objects(self) -> None:
        rng, pri = self.rng, self.style.priors
        lanes = [0.0] + [-(k + 1) * self.lane for k in range(self.n_left_lanes)]
        parked = []
        if self.park_right:
            parked.append(self.road_right - 1.1)
        if self.park_left:
            parked.append(-self.road_left + 1.1)

        def road_x(width: float) -> tuple[float, bool]:
            slots = lanes + parked
            i = int(rng.integers(len(slots)))
            x = slots[i] + rng.uniform(-0.3, 0.3)
            oncoming = i < len(lanes) and slots[i] < -self.lane / 2 - 1e-6
            return float(
                np.clip(x, -self.road_left + width / 2, self.road_right - width / 2)
            ), oncoming

        def walk_x() -> float:
            if rng.uniform() < 0.5:
                return float(self.road_right + rng.uniform(0.4, self.walk_right - 0.3))
            return float(-self.road_left - rng.uniform(0.4, self.walk_left - 0.3))

        for kind, fn in (("car", self.car), ("truck", self.truck), ("bus", self.bus)):
            for _ in range(rng.poisson(pri[kind])):
                x, oncoming = road_x(2.5)
                z = self.depth(7.0, 90.0)
                self.add(z, lambda fn=fn, x=x, z=z, o=oncoming: fn(x, z, o))
        for _ in range(rng.poisson(pri["train"])):
            x = -self.lane * rng.uniform(0.8, max(self.n_left_lanes, 1.0))
            z = self.depth(12.0, 70.0)
            self.add(z, lambda x=x, z=z: self.train(x, z))
        for _ in range(rng.poisson(pri["person"])):
            if rng.uniform() < 0.15:
                x = float(rng.uniform(-self.road_left, self.road_right))
            else:
                x = walk_x()
            z = self.depth(4.0, 55.0)
            self.add(z, lambda x=x, z=z: self.person(x, z))
        for kind in ("bicycle_rider", "motorcycle_rider", "bicycle", "motorcycle"):
            for _ in range(rng.poisson(pri[kind])):
                ridden = kind.endswith("_rider")
                if ridden:
                    x = float(rng.uniform(-self.road_left + 0.8, self.road_right - 0.6))
                else:
                    x = walk_x()
                z = self.depth(5.0, 45.0)
                moto = kind.startswith("motorcycle")
                d = 1.0 if rng.uniform() < 0.5 else -1.0
                self.add(z, lambda x=x, z=z, m=moto, r=ridden, d=d: self.two_wheeler(x, z, m, r, d))
        for side in (-1.0, 1.0):
            edge = self.road_right if side > 0 else self.road_left
            walk = self.walk_right if side > 0 else self.walk_left
            grass = self.grass_right if side > 0 else self.grass_left
            z = rng.uniform(0.0, 25.0)
            while z < self.z_end:
                x = side * (edge + rng.uniform(0.3, 0.7))
                kind = str(rng.choice(["light", "sign", "lamp", "plain"], p=[0.22, 0.28, 0.3, 0.2]))
                if z > 2.0:
                    self.add(z, lambda x=x, z=z, k=kind, s=side: self.pole(x, z, k, s))
                z += rng.uniform(12.0, 35.0)
            if rng.uniform() < 0.55:
                z = rng.uniform(2.0, 12.0)
                spacing = rng.uniform(7.0, 16.0)
                while z < self.z_end:
                    if grass > 0:
                        x = side * (edge + walk + grass * rng.uniform(0.3, 0.7))
                    else:
                        x = side * (edge + walk * rng.uniform(0.6, 0.9))
                    self.add(z, lambda x=x, z=z: self.tree(x, z))
                    z += spacing * rng.uniform(0.8, 1.2)

    def draw_objects(self) -> None:
        for _, draw in sorted(self.objects, key=lambda item: -item[0]):
            draw()

    # Each drawer takes a ground position (x lateral, z depth) and works in metres: u to the
    # right, v up, relative to the ground point below the object's centre.

    def _to_px(self, x: float, z: float) -> Callable[[float, float], tuple[float, float]]:
        px, py, s = self.project(x, z)
        return lambda u, v: (px + u * s, py - v * s)

    def _box(
        self,
        p: Callable[[float, float], tuple[float, float]],
        u0: float,
        v0: float,
        u1: float,
        v1: float,
        label: int,
        paint: tuple[np.ndarray, np.ndarray],
    ) -> None:
        x0, y1 = p(u0, v0)
        x1, y0 = p(u1, v1)
        self.canvas.rect(x0, y0, x1, y1, label, paint)

    def car(self, x: float, z: float, oncoming: bool) -> None:
        p, w = self._to_px(x, z), self.rng.uniform(1.65, 1.95)
        hgt = self.rng.uniform(1.35, 1.6)
        body, glass, tyre = self.paint("car"), self.paint("car_glass"), self.paint("car_tyre")
        lamp = self.paint("car_head_light" if oncoming else "car_rear_light")
        self._box(p, -w / 2, 0.0, -w / 2 + 0.3, 0.4, CAR, tyre)
        self._box(p, w / 2 - 0.3, 0.0, w / 2, 0.4, CAR, tyre)
        self._box(p, -w / 2, 0.25, w / 2, 0.95, CAR, body)
        self.canvas.polygon(
            [p(-0.46 * w, 0.95), p(0.46 * w, 0.95), p(0.36 * w, hgt), p(-0.36 * w, hgt)], CAR, body
        )
        self.canvas.polygon(
            [p(-0.4 * w, 1.0), p(0.4 * w, 1.0), p(0.32 * w, hgt - 0.08), p(-0.32 * w, hgt - 0.08)],
            CAR,
            glass,
        )
        self._box(p, -w / 2 + 0.05, 0.7, -w / 2 + 0.3, 0.85, CAR, lamp)
        self._box(p, w / 2 - 0.3, 0.7, w / 2 - 0.05, 0.85, CAR, lamp)
        self._box(p, -w / 2, 0.22, w / 2, 0.32, CAR, tyre)

    def truck(self, x: float, z: float, oncoming: bool) -> None:
        p, w = self._to_px(x, z), self.rng.uniform(2.3, 2.55)
        hgt = self.rng.uniform(3.0, 3.9)
        box, dark = self.paint("truck"), self.paint("truck_dark")
        self._box(p, -w / 2 + 0.1, 0.0, -w / 2 + 0.5, 0.55, TRUCK, dark)
        self._box(p, w / 2 - 0.5, 0.0, w / 2 - 0.1, 0.55, TRUCK, dark)
        self._box(p, -w / 2, 0.45, w / 2, 0.75, TRUCK, dark)
        if oncoming:
            self._box(p, -w / 2, 0.75, w / 2, 2.9, TRUCK, box)
            self._box(p, -w / 2 + 0.15, 1.7, w / 2 - 0.15, 2.6, TRUCK, dark)
        else:
            self._box(p, -w / 2, 0.75, w / 2, hgt, TRUCK, box)
            self._box(p, -0.04, 0.8, 0.04, hgt - 0.1, TRUCK, dark)

    def bus(self, x: float, z: float, oncoming: bool) -> None:
        p, w = self._to_px(x, z), 2.55
        hgt = self.rng.uniform(3.0, 3.3)
        body, glass, tyre = self.paint("bus"), self.paint("bus_glass"), self.paint("truck_dark")
        self._box(p, -w / 2 + 0.15, 0.0, -w / 2 + 0.55, 0.4, BUS, tyre)
        self._box(p, w / 2 - 0.55, 0.0, w / 2 - 0.15, 0.4, BUS, tyre)
        self._box(p, -w / 2, 0.3, w / 2, hgt, BUS, body)
        lo = 1.2 if oncoming else 1.9
        self._box(p, -w / 2 + 0.15, lo, w / 2 - 0.15, hgt - 0.45, BUS, glass)
        self._box(p, -0.6, hgt - 0.38, 0.6, hgt - 0.12, BUS, glass)

    def train(self, x: float, z: float) -> None:
        p, w, hgt = self._to_px(x, z), 2.6, 3.5
        body, stripe = self.paint("train"), self.paint("train_stripe")
        glass = self.paint("train_glass")
        self._box(p, -w / 2, 0.2, w / 2, hgt, TRAIN, body)
        self._box(p, -w / 2, 1.1, w / 2, 1.4, TRAIN, stripe)
        self._box(p, -w / 2 + 0.2, 1.8, w / 2 - 0.2, 3.0, TRAIN, glass)
        x0, y0 = p(0.0, hgt)
        x1, y1 = p(-0.5, hgt + 0.9)
        x2, y2 = p(0.5, hgt + 0.9)
        width = 0.08 * self.f / z
        self.canvas.line(x0, y0, x1, y1, width, TRAIN, body)
        self.canvas.line(x1, y1, x2, y2, width, TRAIN, body)

    def person(self, x: float, z: float) -> None:
        rng = self.rng
        p, hgt = self._to_px(x, z), rng.uniform(1.55, 1.9)
        skin, top, legs = (
            self.paint("skin"),
            self.paint("person_top", 2.0),
            self.paint("person_legs", 2.0),
        )
        k = hgt / 1.75
        stride = rng.uniform(0.0, 0.12)
        self._box(p, -0.17 - stride, 0.0, -0.02, 0.85 * k, PERSON, legs)
        self._box(p, 0.02, 0.0, 0.17 + stride, 0.85 * k, PERSON, legs)
        self._box(p, -0.21, 0.82 * k, 0.21, 1.45 * k, PERSON, top)
        self._box(p, -0.28, 0.9 * k, -0.21, 1.42 * k, PERSON, top)
        self._box(p, 0.21, 0.9 * k, 0.28, 1.42 * k, PERSON, top)
        cx, cy = p(0.0, 1.6 * k)
        s = self.f / z
        self.canvas.ellipse(cx, cy, 0.11 * s, 0.14 * s, PERSON, skin)

    def two_wheeler(self, x: float, z: float, motor: bool, ridden: bool, d: float) -> None:
        """Bicycle or motorcycle seen from the side (facing `d`), with an optional rider."""
        p, s, c = self._to_px(x, z), self.f / z, self.canvas
        if motor:
            lab, frame, tyre = MOTORCYCLE, self.paint("motorcycle"), self.paint("motorcycle_tyre")
            r, hub = 0.32, 0.7
            for u in (-hub, hub):
                wx, wy = p(u * d, r)
                c.ellipse(wx, wy, r * s, r * s, lab, tyre)
            bx, by = p(0.0, 0.62)
            c.ellipse(bx, by, 0.62 * s, 0.2 * s, lab, frame)
            tx, ty = p(0.25 * d, 0.82)
            c.ellipse(tx, ty, 0.3 * s, 0.13 * s, lab, frame)
            seat, bar = (-0.2, 0.85), (0.55, 1.05)
        else:
            lab, frame, tyre = BICYCLE, self.paint("bicycle"), self.paint("bicycle_tyre")
            r, hub = 0.34, 0.52
            for u in (-hub, hub):
                wx, wy = p(u * d, r)
                c.ellipse(wx, wy, r * s, r * s, lab, tyre, inner=0.78)
            seat, bar, crank = (-0.15, 0.85), (0.42, 0.95), (0.0, 0.34)
            width = max(0.06 * s, 0.8)
            for a, b in (
                ((-hub, r), seat),
                (seat, crank),
                (crank, (-hub, r)),
                (seat, bar),
                (bar, (hub, r)),
            ):
                x0, y0 = p(a[0] * d, a[1])
                x1, y1 = p(b[0] * d, b[1])
                c.line(x0, y0, x1, y1, width, lab, frame)
        if not ridden:
            return
        top, legs, helmet = self.paint("rider_top"), self.paint("rider_legs"), self.paint("helmet")
        hip = (seat[0], seat[1] + 0.08)
        shoulder = (seat[0] + 0.2, seat[1] + 0.62)
        foot = (0.0, 0.3 if not motor else 0.45)
        for a, b, wdt, paint in (
            (hip, foot, 0.16, legs),
            (hip, shoulder, 0.36, top),
            (shoulder, bar, 0.09, top),
        ):
            x0, y0 = p(a[0] * d, a[1])
            x1, y1 = p(b[0] * d, b[1])
            c.line(x0, y0, x1, y1, wdt * s, RIDER, paint)
        hx, hy = p((shoulder[0] + 0.06) * d, shoulder[1] + 0.2)
        c.ellipse(hx, hy, 0.13 * s, 0.13 * s, RIDER, helmet)

    def pole(self, x: float, z: float, kind: str, side: float) -> None:
        """A pole, bare, with a street lamp, with a traffic light or with a traffic sign."""
        rng, c = self.rng, self.canvas
        p, s = self._to_px(x, z), self.f / z
        hgt = rng.uniform(4.0, 7.0) if kind != "sign" else rng.uniform(2.6, 3.4)
        metal = self.paint("pole")
        self._box(p, -0.09, 0.0, 0.09, hgt, POLE, metal)
        inward = -side
        if kind == "lamp":
            x0, y0 = p(0.0, hgt)
            x1, y1 = p(inward * 1.4, hgt + 0.3)
            c.line(x0, y0, x1, y1, 0.1 * s, POLE, metal)
            self._box(p, inward * 1.4 - 0.3, hgt + 0.1, inward * 1.4 + 0.3, hgt + 0.35, POLE, metal)
        elif kind == "light":
            arm = rng.uniform(0.0, 2.5)
            if arm > 0.3:
                x0, y0 = p(0.0, hgt - 0.05)
                x1, y1 = p(inward * arm, hgt - 0.05)
                c.line(x0, y0, x1, y1, 0.1 * s, POLE, metal)
            u = inward * arm
            body = self.paint("light_body")
            self._box(p, u - 0.18, hgt - 1.05, u + 0.18, hgt, LIGHT, body)
            lit = int(rng.integers(3))
            lamp = self.paint(("lamp_red", "lamp_amber", "lamp_green")[lit], 0.3)
            lx, ly = p(u, hgt - 0.2 - 0.32 * lit)
            c.ellipse(lx, ly, 0.11 * s, 0.11 * s, LIGHT, lamp)
        elif kind == "sign":
            plate = self.paint("sign")
            size = rng.uniform(0.6, 0.9)
            cx, cy = p(0.0, hgt - size / 2)
            r = 0.5 * size * s
            shape = int(rng.integers(3))
            if shape == 0:
                c.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], SIGN, plate)
            elif shape == 1:
                c.ellipse(cx, cy, r, r, SIGN, plate)
            else:
                c.polygon(
                    [(cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r), (cx, cy - r)], SIGN, plate
                )

    def tree(self, x: float, z: float) -> None:
        rng = self.rng
        p, s = self._to_px(x, z), self.f / z
        trunk_h, radius = rng.uniform(1.8, 3.0), rng.uniform(1.2, 2.6)
        self._box(p, -0.15, 0.0, 0.15, trunk_h + 0.5, VEGETATION, self.paint("trunk"))
        cx, cy = p(0.0, trunk_h + 0.85 * radius)
        self.canvas.ellipse(
            cx, cy, radius * s, 1.1 * radius * s, VEGETATION, self.paint("vegetation", 1.5)
        )

    def draw_ego_vehicle(self) -> None:
        """The bonnet of the recording car along the bottom edge (Cityscapes' 'ego vehicle')."""
        c = self.canvas
        depth = self.rng.uniform(0.06, 0.1) * self.h
        u = (self.xs - self.w / 2) / (0.75 * self.w)
        top = self.h - depth * np.clip(1.0 - u * u, 0.0, 1.0)
        mask = self.ys[:, None] >= top[None, :]
        rgb, tex = self.paint("ego")
        shine = 1.0 + 0.5 * np.clip(1.0 - np.abs(u) * 3.0, 0.0, 1.0)
        c.label[mask] = EGO
        c.rgb[mask] = np.broadcast_to(rgb[None, None] * shine[None, :, None], c.rgb.shape)[mask]
        c.tex[mask] = tex


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Unit-variance-ish noise that varies over about `cell` pixels (bilinear value noise)."""
    gh, gw = int(height / cell) + 2, int(width / cell) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    y = (np.arange(height, dtype=np.float32) + 0.5) / cell
    x = (np.arange(width, dtype=np.float32) + 0.5) / cell
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    ty, tx = (y - y0)[:, None], (x - x0)[None, :]
    a = grid[y0][:, x0] * (1 - tx) + grid[y0][:, x0 + 1] * tx
    b = grid[y0 + 1][:, x0] * (1 - tx) + grid[y0 + 1][:, x0 + 1] * tx
    return a * (1 - ty) + b * ty


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an HxWx3 float image (edges reflected)."""
    if sigma < 0.2:
        return img
    radius = max(1, ceil(2.5 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float32) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
    out = sum(k[i] * pad[i : i + img.shape[0]] for i in range(len(k)))
    pad = np.pad(out, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
    return sum(k[i] * pad[:, i : i + img.shape[1]] for i in range(len(k)))


def _finish(scene: _Scene) -> np.ndarray:
    """Textures, light, colour cast, blur and sensor noise; returns the uint8 RGB image."""
    style, rng, c = scene.style, scene.rng, scene.canvas
    img = c.rgb
    if style.colours != "synthetic":
        fine = rng.standard_normal((c.h, c.w)).astype(np.float32)
        smooth = _smooth_noise(rng, c.h, c.w, max(c.w / 24.0, 2.0))
        img = img * (1.0 + c.tex[..., 0:1] * fine[..., None] + c.tex[..., 1:2] * smooth[..., None])
    if style.colours == "randomised":
        gain = rng.uniform(0.5, 1.4) * rng.uniform(0.8, 1.2, size=3)
        img = 255.0 * (np.clip(img * gain, 0.0, 255.0) / 255.0) ** rng.uniform(0.6, 1.6)
    elif style.colours == "real":
        gain = rng.uniform(0.85, 1.05) * np.array(style.cast, np.float32)
        gain = gain * (1.0 + rng.uniform(-0.03, 0.03, size=3))
        img = img * gain.astype(np.float32)
    if style.saturation != 1.0:
        grey = img.mean(axis=2, keepdims=True)
        img = grey + style.saturation * (img - grey)
    img = _blur(img, rng.uniform(*style.blur_sigma) * c.w / 128.0)
    sigma = rng.uniform(*style.noise_sigma)
    if sigma > 0:
        img = img + sigma * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_scene(
    rng: np.random.Generator, style: Style, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene: (HxWx3 uint8 RGB image, HxW uint8 Cityscapes label ids)."""
    scene = _Scene(rng, style, height, width)
    scene.draw_sky()
    scene.draw_ground()
    scene.draw_street_frontages()
    scene.place_objects()
    scene.draw_objects()
    if style.ego_vehicle:
        scene.draw_ego_vehicle()
    return _finish(scene), scene.canvas.label
