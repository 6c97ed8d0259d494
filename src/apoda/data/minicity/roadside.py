"""Road furniture and trees of a MiniCity scene: poles with street lamps, traffic lights or signs.

Each drawer takes a ground position (x lateral, z depth) and works in metres: u to the right,
v up, relative to the ground point below the object.
"""

from __future__ import annotations

from apoda.data.minicity.canvas import Paint
from apoda.data.minicity.labels import LIGHT, POLE, SIGN, VEGETATION
from apoda.data.minicity.scene import Scene, ToPixel


def pole(scene: Scene, x: float, z: float, kind: str, side: float) -> None:
    """A pole, bare, with a street lamp, with a traffic light or with a traffic sign."""
    rng = scene.rng
    p, s = scene.to_px(x, z), scene.camera.f / z
    hgt = rng.uniform(4.0, 7.0) if kind != "sign" else rng.uniform(2.6, 3.4)
    metal = scene.paint("pole")
    scene.box(p, -0.09, 0.0, 0.09, hgt, POLE, metal)
    inward = -side
    if kind == "lamp":
        _street_lamp(scene, p, s, hgt, inward, metal)
    elif kind == "light":
        _traffic_light(scene, p, s, hgt, inward, metal)
    elif kind == "sign":
        _sign(scene, p, s, hgt)


def _street_lamp(
    scene: Scene, p: ToPixel, s: float, hgt: float, inward: float, metal: Paint
) -> None:
    """An arm over the road from the top of the pole, ending in the lamp head."""
    x0, y0 = p(0.0, hgt)
    x1, y1 = p(inward * 1.4, hgt + 0.3)
    scene.canvas.line(x0, y0, x1, y1, 0.1 * s, POLE, metal)
    scene.box(p, inward * 1.4 - 0.3, hgt + 0.1, inward * 1.4 + 0.3, hgt + 0.35, POLE, metal)


def _traffic_light(
    scene: Scene, p: ToPixel, s: float, hgt: float, inward: float, metal: Paint
) -> None:
    """A signal head, on an arm over the road when the arm is long enough, with one lamp lit."""
    rng, c = scene.rng, scene.canvas
    arm = rng.uniform(0.0, 2.5)
    if arm > 0.3:
        x0, y0 = p(0.0, hgt - 0.05)
        x1, y1 = p(inward * arm, hgt - 0.05)
        c.line(x0, y0, x1, y1, 0.1 * s, POLE, metal)
    u = inward * arm
    body = scene.paint("light_body")
    scene.box(p, u - 0.18, hgt - 1.05, u + 0.18, hgt, LIGHT, body)
    lit = int(rng.integers(3))
    lamp = scene.paint(("lamp_red", "lamp_amber", "lamp_green")[lit], 0.3)
    lx, ly = p(u, hgt - 0.2 - 0.32 * lit)
    c.ellipse(lx, ly, 0.11 * s, 0.11 * s, LIGHT, lamp)


def _sign(scene: Scene, p: ToPixel, s: float, hgt: float) -> None:
    """A sign plate at the top of the pole: a diamond, a disc or a triangle."""
    rng, c = scene.rng, scene.canvas
    plate = scene.paint("sign")
    size = rng.uniform(0.6, 0.9)
    cx, cy = p(0.0, hgt - size / 2)
    r = 0.5 * size * s
    shape = int(rng.integers(3))
    if shape == 0:
        c.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], SIGN, plate)
    elif shape == 1:
        c.ellipse(cx, cy, r, r, SIGN, plate)
    else:
        c.polygon([(cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r), (cx, cy - r)], SIGN, plate)


def tree(scene: Scene, x: float, z: float) -> None:
    """A trunk and an elliptic crown (both Cityscapes 'vegetation')."""
    rng = scene.rng
    p, s = scene.to_px(x, z), scene.camera.f / z
    trunk_h, radius = rng.uniform(1.8, 3.0), rng.uniform(1.2, 2.6)
    scene.box(p, -0.15, 0.0, 0.15, trunk_h + 0.5, VEGETATION, scene.paint("trunk"))
    cx, cy = p(0.0, trunk_h + 0.85 * radius)
    scene.canvas.ellipse(
        cx, cy, radius * s, 1.1 * radius * s, VEGETATION, scene.paint("vegetation", 1.5)
    )
