"""Sky and ground of a MiniCity scene: the ground is drawn per pixel from its plane equation."""

from __future__ import annotations

import numpy as np

from apoda.data.minicity.labels import ROAD, SIDEWALK, SKY, TERRAIN
from apoda.data.minicity.scene import Scene


def draw_sky(scene: Scene) -> None:
    """Fill the whole canvas with sky, blending to a paler colour at the horizon."""
    top, tex = scene.paint("sky", 0.5)
    low, _ = scene.paint("sky_horizon", 0.5)
    cam = scene.camera
    t = np.clip(cam.ys / max(cam.yh, 1.0), 0.0, 1.0)[:, None, None]
    c = scene.canvas
    c.label[:] = SKY
    c.rgb[:] = top * (1.0 - t) + low * t
    c.tex[:] = tex


def draw_ground(scene: Scene) -> None:
    """Road with its markings, kerbs, sidewalks and grass below the horizon, and shadows."""
    c, rng, cam, st = scene.canvas, scene.rng, scene.camera, scene.street
    below = cam.ys > cam.yh + 1e-3
    if not below.any():
        return
    y = cam.ys[below][:, None]
    z = cam.f * cam.eye_height / (y - cam.yh)
    x = (cam.xs[None, :] - cam.cx) * z / cam.f
    road, tex_road = scene.paint("road", 0.5)
    lane, tex_lane = scene.paint("lane", 0.3)
    walk, tex_walk = scene.paint("sidewalk", 0.5)
    kerb, tex_kerb = scene.paint("kerb", 0.3)
    grass, tex_grass = scene.paint("terrain", 0.5)
    label = np.full(x.shape, TERRAIN, np.uint8)
    rgb = np.broadcast_to(grass, (*x.shape, 3)).copy()
    tex = np.broadcast_to(tex_grass, (*x.shape, 2)).copy()

    def put(mask: np.ndarray, lab: int, col: np.ndarray, tx: np.ndarray) -> None:
        label[mask] = lab
        rgb[mask] = col
        tex[mask] = tx

    rr, rl = st.road_right, st.road_left
    put(
        ((x > rr) & (x <= rr + st.walk_right)) | ((x < -rl) & (x >= -rl - st.walk_left)),
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
    for k in range(st.n_left_lanes):
        marks |= (np.abs(x + st.lane / 2 + k * st.lane) < 0.08) & dash
    if rng.uniform() < 0.3:
        zc = rng.uniform(8.0, 30.0)
        marks |= (z > zc) & (z < zc + 3.0) & ((x % 1.0) < 0.5)
    put(on_road & marks, ROAD, lane, tex_lane)
    if scene.style.shadows:
        edge = st.sun * rng.uniform(-3.0, 3.0)
        shadow = (x * st.sun > edge) & ((z + rng.uniform(0, 20)) % 20.0 < 13.0)
        rgb[shadow] *= rng.uniform(0.65, 0.85)
    rows = np.nonzero(below)[0]
    c.label[rows] = label
    c.rgb[rows] = rgb
    c.tex[rows] = tex
