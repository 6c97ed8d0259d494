"""The three MiniCity domains as styles: what separates "synthetic", "real" and "randomised"."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RANDOMISED", "REAL", "SYNTHETIC", "Style"]


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
