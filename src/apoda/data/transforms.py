"""Image/label transforms: joint resize and augmentation, and the two normalisation conventions.

Every random draw comes from a ``np.random.Generator`` passed in, so a dataset can seed one per
item (seed, index, epoch) and reproduce any sample without touching global RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from apoda.data.classes import IGNORE_INDEX
from apoda.errors import ApodaError

CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISATION_MODES = ("caffe", "imagenet")


class Normalisation:
    """Image normalisation: "caffe" (BGR, 0-255, Caffe mean subtracted, no std; the DeepLab-v2
    weights of the field expect it) or "imagenet" (RGB in [0, 1], ImageNet mean and std)."""

    def __init__(self, mode: str = "caffe") -> None:
        if mode not in NORMALISATION_MODES:
            raise ApodaError(
                f"unknown normalisation {mode!r}; expected one of {', '.join(NORMALISATION_MODES)}"
            )
        self.mode = mode

    def normalise(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB [H, W, 3] -> float32 [3, H, W] tensor."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ApodaError(
                f"normalise expects a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}"
            )
        x = image.astype(np.float32)
        if self.mode == "caffe":
            x = x[:, :, ::-1] - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
        else:
            x = (x / 255.0 - np.asarray(IMAGENET_MEAN, dtype=np.float32)) / np.asarray(
                IMAGENET_STD, dtype=np.float32
            )
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def to_unit_rgb(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised `[B, 3, H, W]` images -> RGB in [0, 1] (for photometric transforms)."""
        if self.mode == "caffe":
            mean = batch.new_tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
            return ((batch + mean) / 255.0).flip(1)
        mean = batch.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        return batch * batch.new_tensor(IMAGENET_STD).view(1, 3, 1, 1) + mean

    def from_unit_rgb(self, batch: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] `[B, 3, H, W]` -> normalised images (the inverse of `to_unit_rgb`)."""
        if self.mode == "caffe":
            return batch.flip(1) * 255.0 - batch.new_tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
        mean = batch.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        return (batch - mean) / batch.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def denormalise(self, tensor: torch.Tensor) -> np.ndarray:
        """float [3, H, W] tensor -> uint8 RGB [H, W, 3] (for pictures)."""
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise ApodaError(f"denormalise expects a [3, H, W] tensor, got {tuple(tensor.shape)}")
        x = tensor.detach().to("cpu", torch.float32).numpy().transpose(1, 2, 0)
        if self.mode == "caffe":
            x = (x + np.asarray(CAFFE_MEAN_BGR, dtype=np.float32))[:, :, ::-1]
        else:
            x = (x * np.asarray(IMAGENET_STD, dtype=np.float32) + IMAGENET_MEAN) * 255.0
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation. ``random_scale`` (lo, hi) rescales image and label by a factor drawn
    uniformly; ``crop`` (width, height) takes a random crop, padding with ignore if too small;
    ``flip`` mirrors half the items; ``photometric`` applies colour jitter, gaussian blur and
    gaussian noise to the image only.

    Two re-draws of the crop, each of at most `CROP_TRIES`: ``cat_max_ratio`` < 1 re-draws it
    while one class covers that share or more of its labelled pixels (mmseg's RandomCrop, which
    DAFormer's source pipeline uses with 0.75); ``min_class_pixels`` > 0 re-draws a crop made
    for a class (rare-class sampling's draw) until it holds more pixels of it (DAFormer's
    `min_crop_ratio`)."""

    random_scale: tuple[float, float] | None = None
    crop: tuple[int, int] | None = None
    flip: bool = False
    photometric: bool = False
    cat_max_ratio: float = 1.0
    min_class_pixels: float = 0.0

    def __post_init__(self) -> None:
        if self.random_scale is not None:
            lo, hi = self.random_scale
            if not 0 < lo <= hi:
                raise ApodaError(f"random_scale must be (lo, hi) with 0 < lo <= hi, got {lo, hi}")
        if self.crop is not None:
            check_size(self.crop, "crop")
        if not 0 < self.cat_max_ratio <= 1:
            raise ApodaError(f"cat_max_ratio must be in (0, 1], got {self.cat_max_ratio}")
        if self.min_class_pixels < 0:
            raise ApodaError(f"min_class_pixels must be >= 0, got {self.min_class_pixels}")


def check_size(size: tuple[int, int], what: str) -> tuple[int, int]:
    """Validate a (width, height) pair of positive ints; returns it as a tuple."""
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ApodaError(f"{what} must be (width, height) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a uint8 [H, W, 3] image to (width, height)."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 [H, W] label map to (width, height)."""
    if (label.shape[1], label.shape[0]) == size:
        return label
    return np.asarray(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))


def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter (brightness, contrast, saturation), then blur and noise, each half the time."""
    x = image.astype(np.float32)
    x *= rng.uniform(0.75, 1.25)
    gray = x @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    x = (x - gray.mean()) * rng.uniform(0.75, 1.25) + gray.mean()
    gray = (x @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
    x = gray + (x - gray) * rng.uniform(0.75, 1.25)
    if rng.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), sigmaX=float(rng.uniform(0.1, 1.5)))
    if rng.random() < 0.5:
        x = x + rng.normal(0.0, rng.uniform(1.0, 8.0), size=x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


CROP_TRIES = 10
"""Re-draws of a crop that fails its test (mmseg's RandomCrop and DAFormer's rare-class crop
both stop after 10 and keep the last)."""


def _crop_corner(
    label: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[int, int]:
    """A random crop's top-left (y0, x0), re-drawn while one class covers `cat_max_ratio` or
    more of the crop's labelled pixels or the crop holds fewer than two classes (an unlabelled
    label is never re-drawn for it)."""
    assert config.crop is not None
    cw, ch = config.crop
    h, w = label.shape

    def draw() -> tuple[int, int]:
        return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))

    y0, x0 = draw()
    if config.cat_max_ratio >= 1 or not (label != IGNORE_INDEX).any():
        return y0, x0
    for _ in range(CROP_TRIES):
        window = label[y0 : y0 + ch, x0 : x0 + cw]
        counts = np.bincount(window[window != IGNORE_INDEX].ravel())
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < config.cat_max_ratio:
            break
        y0, x0 = draw()
    return y0, x0


def _crop(
    image: np.ndarray,
    label: np.ndarray,
    config: AugmentConfig,
    rng: np.random.Generator,
    wanted: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """A random `config.crop` of the pair (padded with ignore where it is too small); with a
    `wanted` class and `min_class_pixels`, re-drawn until it holds more than that many pixels
    of the class."""
    assert config.crop is not None
    cw, ch = config.crop
    h, w = label.shape
    if h < ch or w < cw:
        pad_h, pad_w = max(0, ch - h), max(0, cw - w)
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    y0, x0 = _crop_corner(label, config, rng)
    if wanted is not None and config.min_class_pixels > 0:
        for _ in range(CROP_TRIES):
            held = np.count_nonzero(label[y0 : y0 + ch, x0 : x0 + cw] == wanted)
            if held > config.min_class_pixels:
                break
            y0, x0 = _crop_corner(label, config, rng)
    return image[y0 : y0 + ch, x0 : x0 + cw], label[y0 : y0 + ch, x0 : x0 + cw]


def augment_pair(
    image: np.ndarray,
    label: np.ndarray,
    config: AugmentConfig,
    rng: np.random.Generator,
    wanted: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``config`` to an aligned uint8 image [H, W, 3] and label [H, W]; `wanted` is the
    class the item was drawn for (rare-class sampling), None otherwise."""
    if config.random_scale is not None:
        s = rng.uniform(*config.random_scale)
        size = (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s)))
        image, label = resize_image(image, size), resize_label(label, size)
    if config.crop is not None:
        image, label = _crop(image, label, config, rng, wanted)
    if config.flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if config.photometric:
        image = _photometric(image, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def prepare_sample(
    image: np.ndarray,
    label: np.ndarray,
    *,
    size: tuple[int, int] | None,
    normalisation: Normalisation,
    augment: AugmentConfig | None,
    rng: np.random.Generator,
    label_full_res: bool = False,
    wanted: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize (and augment) an image/label pair, then normalise: float32 [3,H,W], int64 [H,W].

    With ``label_full_res`` only the image is resized and the label keeps its file resolution
    (the evaluation protocol); augmentation cannot be combined with it. `wanted`: see
    `augment_pair`.
    """
    if label_full_res and augment is not None:
        raise ApodaError("label_full_res (evaluation) cannot be combined with augmentation")
    if size is not None:
        image = resize_image(image, size)
        if not label_full_res:
            label = resize_label(label, size)
    if augment is not None:
        image, label = augment_pair(image, label, augment, rng, wanted)
    return normalisation.normalise(image), torch.from_numpy(label.astype(np.int64))
