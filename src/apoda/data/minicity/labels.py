"""The Cityscapes label ids that MiniCity's drawers write into a scene's label map."""

from __future__ import annotations

from cityscapesscripts.helpers.labels import name2label


def _label_id(name: str) -> int:
    return int(name2label[name].id)


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
