"""Vehicles of a MiniCity scene, seen from behind or ahead: car, truck, bus, train (a tram), and
the bonnet of the recording car (Cityscapes' "ego vehicle").

Each drawer takes a ground position (x lateral, z depth) and works in metres: u to the right,
v up, relative to the ground point below the vehicle's centre.
"""

from __future__ import annotations

import numpy as np

from apoda.data.minicity.labels import BUS, CAR, EGO, TRAIN, TRUCK
from apoda.data.minicity.scene import Scene


def car(scene: Scene, x: float, z: float, oncoming: bool) -> None:
    """A car: tyres, body, cabin and glass, head lights when oncoming, else rear lights."""
    p, w = scene.to_px(x, z), scene.rng.uniform(1.65, 1.95)
    hgt = scene.rng.uniform(1.35, 1.6)
    body, glass, tyre = scene.paint("car"), scene.paint("car_glass"), scene.paint("car_tyre")
    lamp = scene.paint("car_head_light" if oncoming else "car_rear_light")
    scene.box(p, -w / 2, 0.0, -w / 2 + 0.3, 0.4, CAR, tyre)
    scene.box(p, w / 2 - 0.3, 0.0, w / 2, 0.4, CAR, tyre)
    scene.box(p, -w / 2, 0.25, w / 2, 0.95, CAR, body)
    scene.canvas.polygon(
        [p(-0.46 * w, 0.95), p(0.46 * w, 0.95), p(0.36 * w, hgt), p(-0.36 * w, hgt)], CAR, body
    )
    scene.canvas.polygon(
        [p(-0.4 * w, 1.0), p(0.4 * w, 1.0), p(0.32 * w, hgt - 0.08), p(-0.32 * w, hgt - 0.08)],
        CAR,
        glass,
    )
    scene.box(p, -w / 2 + 0.05, 0.7, -w / 2 + 0.3, 0.85, CAR, lamp)
    scene.box(p, w / 2 - 0.3, 0.7, w / 2 - 0.05, 0.85, CAR, lamp)
    scene.box(p, -w / 2, 0.22, w / 2, 0.32, CAR, tyre)


def truck(scene: Scene, x: float, z: float, oncoming: bool) -> None:
    """A truck: its cab with windscreen when oncoming, else its cargo box with the door split."""
    p, w = scene.to_px(x, z), scene.rng.uniform(2.3, 2.55)
    hgt = scene.rng.uniform(3.0, 3.9)
    box, dark = scene.paint("truck"), scene.paint("truck_dark")
    scene.box(p, -w / 2 + 0.1, 0.0, -w / 2 + 0.5, 0.55, TRUCK, dark)
    scene.box(p, w / 2 - 0.5, 0.0, w / 2 - 0.1, 0.55, TRUCK, dark)
    scene.box(p, -w / 2, 0.45, w / 2, 0.75, TRUCK, dark)
    if oncoming:
        scene.box(p, -w / 2, 0.75, w / 2, 2.9, TRUCK, box)
        scene.box(p, -w / 2 + 0.15, 1.7, w / 2 - 0.15, 2.6, TRUCK, dark)
    else:
        scene.box(p, -w / 2, 0.75, w / 2, hgt, TRUCK, box)
        scene.box(p, -0.04, 0.8, 0.04, hgt - 0.1, TRUCK, dark)


def bus(scene: Scene, x: float, z: float, oncoming: bool) -> None:
    """A bus: body, a large windscreen when oncoming (a rear window otherwise), route display."""
    p, w = scene.to_px(x, z), 2.55
    hgt = scene.rng.uniform(3.0, 3.3)
    body, glass, tyre = scene.paint("bus"), scene.paint("bus_glass"), scene.paint("truck_dark")
    scene.box(p, -w / 2 + 0.15, 0.0, -w / 2 + 0.55, 0.4, BUS, tyre)
    scene.box(p, w / 2 - 0.55, 0.0, w / 2 - 0.15, 0.4, BUS, tyre)
    scene.box(p, -w / 2, 0.3, w / 2, hgt, BUS, body)
    lo = 1.2 if oncoming else 1.9
    scene.box(p, -w / 2 + 0.15, lo, w / 2 - 0.15, hgt - 0.45, BUS, glass)
    scene.box(p, -0.6, hgt - 0.38, 0.6, hgt - 0.12, BUS, glass)


def train(scene: Scene, x: float, z: float) -> None:
    """A tram (Cityscapes' "train") front with a stripe, a windscreen and its pantograph."""
    p, w, hgt = scene.to_px(x, z), 2.6, 3.5
    body, stripe = scene.paint("train"), scene.paint("train_stripe")
    glass = scene.paint("train_glass")
    scene.box(p, -w / 2, 0.2, w / 2, hgt, TRAIN, body)
    scene.box(p, -w / 2, 1.1, w / 2, 1.4, TRAIN, stripe)
    scene.box(p, -w / 2 + 0.2, 1.8, w / 2 - 0.2, 3.0, TRAIN, glass)
    x0, y0 = p(0.0, hgt)
    x1, y1 = p(-0.5, hgt + 0.9)
    x2, y2 = p(0.5, hgt + 0.9)
    width = 0.08 * scene.camera.f / z
    scene.canvas.line(x0, y0, x1, y1, width, TRAIN, body)
    scene.canvas.line(x1, y1, x2, y2, width, TRAIN, body)


def draw_ego_vehicle(scene: Scene) -> None:
    """The bonnet of the recording car along the bottom edge (Cityscapes' 'ego vehicle')."""
    c, cam = scene.canvas, scene.camera
    depth = scene.rng.uniform(0.06, 0.1) * cam.h
    u = (cam.xs - cam.w / 2) / (0.75 * cam.w)
    top = cam.h - depth * np.clip(1.0 - u * u, 0.0, 1.0)
    mask = cam.ys[:, None] >= top[None, :]
    rgb, tex = scene.paint("ego")
    shine = 1.0 + 0.5 * np.clip(1.0 - np.abs(u) * 3.0, 0.0, 1.0)
    c.label[mask] = EGO
    c.rgb[mask] = np.broadcast_to(rgb[None, None] * shine[None, :, None], c.rgb.shape)[mask]
    c.tex[mask] = tex
