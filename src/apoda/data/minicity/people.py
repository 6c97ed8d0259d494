"""People of a MiniCity scene: pedestrians, and bicycles and motorcycles with or without a rider.

Each drawer takes a ground position (x lateral, z depth) and works in metres: u to the right,
v up, relative to the ground point below the figure's centre.
"""

from __future__ import annotations

from apoda.data.minicity.labels import BICYCLE, MOTORCYCLE, PERSON, RIDER
from apoda.data.minicity.scene import Scene, ToPixel

Point = tuple[float, float]


def person(scene: Scene, x: float, z: float) -> None:
    """A pedestrian seen from the front or back: legs mid-stride, torso, arms and head."""
    rng = scene.rng
    p, hgt = scene.to_px(x, z), rng.uniform(1.55, 1.9)
    skin, top, legs = (
        scene.paint("skin"),
        scene.paint("person_top", 2.0),
        scene.paint("person_legs", 2.0),
    )
    k = hgt / 1.75
    stride = rng.uniform(0.0, 0.12)
    scene.box(p, -0.17 - stride, 0.0, -0.02, 0.85 * k, PERSON, legs)
    scene.box(p, 0.02, 0.0, 0.17 + stride, 0.85 * k, PERSON, legs)
    scene.box(p, -0.21, 0.82 * k, 0.21, 1.45 * k, PERSON, top)
    scene.box(p, -0.28, 0.9 * k, -0.21, 1.42 * k, PERSON, top)
    scene.box(p, 0.21, 0.9 * k, 0.28, 1.42 * k, PERSON, top)
    cx, cy = p(0.0, 1.6 * k)
    s = scene.camera.f / z
    scene.canvas.ellipse(cx, cy, 0.11 * s, 0.14 * s, PERSON, skin)


def two_wheeler(scene: Scene, x: float, z: float, motor: bool, ridden: bool, d: float) -> None:
    """Bicycle or motorcycle seen from the side (facing `d`), with an optional rider."""
    p, s = scene.to_px(x, z), scene.camera.f / z
    if motor:
        seat, bar = _motorcycle(scene, p, s, d)
    else:
        seat, bar = _bicycle(scene, p, s, d)
    if ridden:
        _rider(scene, p, s, d, motor, seat, bar)


def _motorcycle(scene: Scene, p: ToPixel, s: float, d: float) -> tuple[Point, Point]:
    """Wheels, body and tank of a motorcycle; returns where the seat and the handlebar are."""
    c = scene.canvas
    lab, frame, tyre = MOTORCYCLE, scene.paint("motorcycle"), scene.paint("motorcycle_tyre")
    r, hub = 0.32, 0.7
    for u in (-hub, hub):
        wx, wy = p(u * d, r)
        c.ellipse(wx, wy, r * s, r * s, lab, tyre)
    bx, by = p(0.0, 0.62)
    c.ellipse(bx, by, 0.62 * s, 0.2 * s, lab, frame)
    tx, ty = p(0.25 * d, 0.82)
    c.ellipse(tx, ty, 0.3 * s, 0.13 * s, lab, frame)
    return (-0.2, 0.85), (0.55, 1.05)


def _bicycle(scene: Scene, p: ToPixel, s: float, d: float) -> tuple[Point, Point]:
    """Ring wheels and the tube frame of a bicycle; returns where the seat and handlebar are."""
    c = scene.canvas
    lab, frame, tyre = BICYCLE, scene.paint("bicycle"), scene.paint("bicycle_tyre")
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
    return seat, bar


def _rider(
    scene: Scene, p: ToPixel, s: float, d: float, motor: bool, seat: Point, bar: Point
) -> None:
    """A rider on the seat: leg to the pedal or footrest, torso, arm to the bar, helmet."""
    c = scene.canvas
    top, legs, helmet = scene.paint("rider_top"), scene.paint("rider_legs"), scene.paint("helmet")
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
