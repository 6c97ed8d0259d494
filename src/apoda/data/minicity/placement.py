"""Where the objects of a MiniCity scene stand, and their drawing far to near.

Counts per kind are Poisson draws with the style's priors; every object is kept as (depth, a
drawer bound to its position), and drawn once all are placed so that nearer ones cover farther.
The random draws happen in a fixed order (vehicles, trams, pedestrians, two-wheelers, roadside).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from apoda.data.minicity.people import person, two_wheeler
from apoda.data.minicity.roadside import pole, tree
from apoda.data.minicity.scene import Scene
from apoda.data.minicity.vehicles import bus, car, train, truck

Placed = list[tuple[float, Callable[[], None]]]
"""Objects as (depth in metres, draw it)."""


def place_objects(scene: Scene) -> Placed:
    """Every object of the scene, in the order drawn from its generator."""
    objects: Placed = []
    _place_traffic(scene, objects)
    _place_people(scene, objects)
    for side in (-1.0, 1.0):
        _place_roadside(scene, objects, side)
    return objects


def draw_objects(objects: Placed) -> None:
    """Draw far to near (equal depths in placement order)."""
    for _, draw in sorted(objects, key=lambda item: -item[0]):
        draw()


def _depth(scene: Scene, lo: float, hi: float) -> float:
    """A depth in [lo, hi] (metres), more often near than far, and never nearer than where
    the ground leaves the picture."""
    lo = max(lo, 1.15 * scene.camera.z_near)
    return float(lo + (max(hi, lo + 1.0) - lo) * scene.rng.uniform() ** 1.6)


def _road_x(scene: Scene, width: float) -> tuple[float, bool]:
    """A lateral position in a lane or a parking strip, and whether that lane is oncoming."""
    rng, st = scene.rng, scene.street
    lanes = [0.0] + [-(k + 1) * st.lane for k in range(st.n_left_lanes)]
    parked = []
    if st.park_right:
        parked.append(st.road_right - 1.1)
    if st.park_left:
        parked.append(-st.road_left + 1.1)
    slots = lanes + parked
    i = int(rng.integers(len(slots)))
    x = slots[i] + rng.uniform(-0.3, 0.3)
    oncoming = i < len(lanes) and slots[i] < -st.lane / 2 - 1e-6
    return float(np.clip(x, -st.road_left + width / 2, st.road_right - width / 2)), oncoming


def _walk_x(scene: Scene) -> float:
    """A lateral position on one of the two sidewalks."""
    rng, st = scene.rng, scene.street
    if rng.uniform() < 0.5:
        return float(st.road_right + rng.uniform(0.4, st.walk_right - 0.3))
    return float(-st.road_left - rng.uniform(0.4, st.walk_left - 0.3))


def _place_traffic(scene: Scene, objects: Placed) -> None:
    """Cars, trucks and buses in lanes or parked; trams on the oncoming side."""
    rng, pri, st = scene.rng, scene.style.priors, scene.street
    for kind, fn in (("car", car), ("truck", truck), ("bus", bus)):
        for _ in range(rng.poisson(pri[kind])):
            x, oncoming = _road_x(scene, 2.5)
            z = _depth(scene, 7.0, 90.0)
            objects.append((z, partial(fn, scene, x, z, oncoming)))
    for _ in range(rng.poisson(pri["train"])):
        x = -st.lane * rng.uniform(0.8, max(st.n_left_lanes, 1.0))
        z = _depth(scene, 12.0, 70.0)
        objects.append((z, partial(train, scene, x, z)))


def _place_people(scene: Scene, objects: Placed) -> None:
    """Pedestrians (mostly on sidewalks); ridden two-wheelers on the road, others on sidewalks."""
    rng, pri, st = scene.rng, scene.style.priors, scene.street
    for _ in range(rng.poisson(pri["person"])):
        if rng.uniform() < 0.15:
            x = float(rng.uniform(-st.road_left, st.road_right))
        else:
            x = _walk_x(scene)
        z = _depth(scene, 4.0, 55.0)
        objects.append((z, partial(person, scene, x, z)))
    for kind in ("bicycle_rider", "motorcycle_rider", "bicycle", "motorcycle"):
        for _ in range(rng.poisson(pri[kind])):
            ridden = kind.endswith("_rider")
            if ridden:
                x = float(rng.uniform(-st.road_left + 0.8, st.road_right - 0.6))
            else:
                x = _walk_x(scene)
            z = _depth(scene, 5.0, 45.0)
            moto = kind.startswith("motorcycle")
            d = 1.0 if rng.uniform() < 0.5 else -1.0
            objects.append((z, partial(two_wheeler, scene, x, z, moto, ridden, d)))


def _place_roadside(scene: Scene, objects: Placed, side: float) -> None:
    """Poles along the kerb of one side, then (often) a row of trees behind them."""
    rng, st = scene.rng, scene.street
    edge = st.road_right if side > 0 else st.road_left
    walk = st.walk_right if side > 0 else st.walk_left
    grass = st.grass_right if side > 0 else st.grass_left
    z = rng.uniform(0.0, 25.0)
    while z < st.z_end:
        x = side * (edge + rng.uniform(0.3, 0.7))
        kind = str(rng.choice(["light", "sign", "lamp", "plain"], p=[0.22, 0.28, 0.3, 0.2]))
        if z > 2.0:
            objects.append((z, partial(pole, scene, x, z, kind, side)))
        z += rng.uniform(12.0, 35.0)
    if rng.uniform() < 0.55:
        z = rng.uniform(2.0, 12.0)
        spacing = rng.uniform(7.0, 16.0)
        while z < st.z_end:
            if grass > 0:
                x = side * (edge + walk + grass * rng.uniform(0.3, 0.7))
            else:
                x = side * (edge + walk * rng.uniform(0.6, 0.9))
            objects.append((z, partial(tree, scene, x, z)))
            z += spacing * rng.uniform(0.8, 1.2)
