"""Street frontage of a MiniCity scene: rows of buildings, walls, fences and hedges.

A row is a sequence of segments along one coordinate; it is drawn per pixel column as an upright
plane whose depth is known per column, with windows, wall copings and fence slats as patterns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from apoda.data.minicity.labels import BUILDING, FENCE, VEGETATION, WALL
from apoda.data.minicity.scene import Scene

# Kinds of segment in a row of street frontage.
_GAP, _BUILDING, _WALL, _FENCE, _VEG = range(5)
_KIND_LABEL = np.array([0, BUILDING, WALL, FENCE, VEGETATION], dtype=np.uint8)
_KIND_PART = {
    _GAP: "building",
    _BUILDING: "building",
    _WALL: "wall",
    _FENCE: "fence",
    _VEG: "vegetation",
}


@dataclass
class Frontage:
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


def sample_frontage(
    scene: Scene,
    start: float,
    stop: float,
    probs: list[float],
    heights: Mapping[int, tuple[float, float]],
) -> Frontage:
    """Random segments covering [start, stop) with kinds drawn from `probs`."""
    rng = scene.rng
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
    for i, k in enumerate(kinds):
        lo, hi = heights.get(k, (0.0, 0.0))
        height[i] = rng.uniform(lo, hi)
        colour[i], tex[i] = scene.paint(_KIND_PART[k], 1.5)
        window[i], _ = scene.paint("window", 1.0)
    return Frontage(
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
    scene: Scene,
    depth: np.ndarray,
    along: np.ndarray,
    valid: np.ndarray,
    row: Frontage,
    shade: float,
) -> None:
    """Draw a frontage whose column `x` is at `depth[x]` and position `along[x]`."""
    cam = scene.camera
    along = np.where(valid, along, 0.0)
    seg = np.clip(np.searchsorted(row.start, along, side="right") - 1, 0, len(row.start) - 1)
    kind = row.kind[seg]
    valid = valid & (kind != _GAP)
    if not valid.any():
        return
    depth = np.where(valid, depth, 1.0)
    h = row.height[seg]
    h = np.where(kind == _VEG, h * (0.8 + 0.2 * np.sin(along * 0.9 + row.phase[seg])), h)
    y = cam.ys[:, None]
    top = cam.yh + cam.f * (cam.eye_height - h) / depth
    bottom = cam.yh + cam.f * cam.eye_height / depth
    mask = valid[None, :] & (y >= top[None, :]) & (y < bottom[None, :])
    if not mask.any():
        return
    world_h = cam.eye_height - (y - cam.yh) * depth[None, :] / cam.f
    local = along - row.start[seg]
    rgb = np.broadcast_to(row.colour[seg][None], (cam.h, cam.w, 3)).copy()
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
    c = scene.canvas
    c.label[mask] = np.broadcast_to(_KIND_LABEL[kind][None, :], mask.shape)[mask]
    c.rgb[mask] = np.minimum(rgb[mask] * shade, 255.0)
    c.tex[mask] = np.broadcast_to(row.tex[seg][None], (cam.h, cam.w, 2))[mask]


def draw_street_frontages(scene: Scene) -> None:
    """The row closing the street at `z_end`, then two rows (back, front) on each side."""
    rng, cam, st = scene.rng, scene.camera, scene.street
    end_half = 0.7 * st.z_end * cam.w / cam.f + 60.0
    end = sample_frontage(
        scene,
        -end_half,
        end_half,
        [0.15, 0.6, 0.0, 0.0, 0.25],
        {_BUILDING: (3.0, 22.0), _VEG: (4.0, 10.0)},
    )
    along = (cam.xs - cam.cx) * st.z_end / cam.f
    draw_plane(scene, np.full(cam.w, st.z_end, np.float32), along, np.ones(cam.w, bool), end, 0.9)
    light = 1.0 if scene.style.colours == "synthetic" else rng.uniform(0.6, 0.8)
    for side in (-1.0, 1.0):
        front = st.front_right if side > 0 else st.front_left
        shade = 1.0 if side == st.sun else light
        dx = (cam.xs - cam.cx) * side
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
            row = sample_frontage(scene, 0.0, st.z_end, probs, heights)
            valid = dx > 1e-3
            depth = np.where(valid, cam.f * (front + offset) / np.maximum(dx, 1e-3), np.inf)
            depth = depth.astype(np.float32)
            valid &= depth < st.z_end
            draw_plane(scene, depth, depth, valid, row, shade)
