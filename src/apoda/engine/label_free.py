"""Label-free scores of a segmentation network on a run's data (issue 26): what `apoda select`
compares checkpoints by, and what `train.select_best: SCORE` chooses the reported evaluation
point by during training. Every score is oriented so that HIGHER IS BETTER; none reads a target
label. Deterministic: networks run in eval mode without gradients, the pixel sample and the
photometric change are fixed, and the target images' DataLoader has its own generator (the
held-out source evaluation's loader draws from the global RNG: callers restore it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from apoda.config import Config, MiniCityConfig
from apoda.data import ClassScheme, SegmentationDataset
from apoda.data.datasets import minicity_folder
from apoda.data.transforms import Normalisation
from apoda.distributed import resolve_device
from apoda.engine.data import RunData, build_probe_data
from apoda.errors import ApodaError
from apoda.evaluation import evaluate_segmenter
from apoda.registry import get_dataset

DEFAULT_IMAGES = 64
"""Target training images the target scores read (`--images`)."""
HELDOUT_SEED_OFFSET = 1000
HELDOUT_IMAGES = 200
SND_PIXELS = 1024
SND_TAU = 0.05
"""SND's pixel sample and temperature (tau = 0.05: Saito et al., ICCV 2021)."""
SAMPLE_SEED = 0
PHOTOMETRIC = {"brightness": 1.2, "contrast": 0.8, "saturation": 1.2}
"""The fixed photometric change of the augmentation agreement: factors of torchvision's
adjust_brightness / adjust_contrast / adjust_saturation (about DACS's jitter strength, 0.2)."""


# -- the scores ---------------------------------------------------------------------------------
def entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) of probability vectors along `dim` (0 log 0 = 0)."""
    return torch.special.entr(probs).sum(dim)


@dataclass
class TargetTally:
    """What the target scores read, summed over every pixel of the N target images in one pass
    (so no image's probabilities are kept): the sum of the softmax vectors and of their
    entropies, the agreements of the argmax with the flipped and the photometrically changed
    image's and with the partner network's (the teacher's or the student's), and SND's fixed
    sample of softmax vectors."""

    probability_sum: Tensor
    entropy_sum: float = 0.0
    pixels: int = 0
    flip_agreeing: int = 0
    photometric_agreeing: int = 0
    partner_agreeing: int | None = None
    samples: list[Tensor] = field(default_factory=list)

    @classmethod
    def empty(cls, num_classes: int, partner: bool = False) -> TargetTally:
        """A tally of no pixels yet; `partner`: teacher-student agreement is counted."""
        return cls(
            torch.zeros(num_classes, dtype=torch.float64), partner_agreeing=0 if partner else None
        )

    def add_probabilities(self, probs: Tensor) -> None:
        """Add softmax outputs `[B, C, H, W]`, summed in float64 where they are (a batch of
        large images is not copied)."""
        flat = probs.detach().movedim(1, -1).reshape(-1, probs.shape[1])
        self.probability_sum += flat.sum(0, dtype=torch.float64).cpu()
        self.entropy_sum += float(entropy(flat).sum(dtype=torch.float64))
        self.pixels += flat.shape[0]

    def sample(self) -> Tensor:
        """SND's sampled softmax vectors `[P, C]`."""
        return torch.cat(self.samples)[:SND_PIXELS]


def target_entropy(tally: TargetTally) -> float:
    """Mean per-pixel entropy of the softmax on the target images (nats). A model that is sure
    of its target predictions is often right on them (the MinEnt/AdvEnt premise); LOWER is
    better, so the table reports it negated as `neg_entropy`."""
    return tally.entropy_sum / tally.pixels


def info_max(tally: TargetTally) -> float:
    """Information maximisation: the entropy of the mean prediction over all target pixels
    minus the mean per-pixel entropy. Rewards predictions that are confident pixel by pixel
    yet spread over many classes (entropy alone also rewards collapsing onto a few classes);
    HIGHER is better."""
    mean_prediction = tally.probability_sum / tally.pixels
    return float(entropy(mean_prediction)) - target_entropy(tally)


def augmentation_agreement(tally: TargetTally) -> dict[str, float]:
    """Shares of target pixels whose argmax is unchanged (a) when the image is flipped
    horizontally (the prediction flipped back) and (b) under the fixed photometric change
    `PHOTOMETRIC`, and their mean (the score). A model that has learned the target's content,
    not its accidents, should be stable under changes that keep the labels; HIGHER is better."""
    flip = tally.flip_agreeing / tally.pixels
    photometric = tally.photometric_agreeing / tally.pixels
    return {"flip": flip, "photometric": photometric, "mean": (flip + photometric) / 2}


def snd(probs: Tensor, tau: float = SND_TAU) -> float:
    """Soft neighbourhood density (Saito et al., ICCV 2021) of softmax vectors `[P, C]`:
    L2-normalised, their cosine similarities (each point's own removed) turned into a
    distribution over the other points by a softmax at temperature `tau`, and the mean entropy
    of those distributions. High when predictions form dense clusters, i.e. target points have
    many close neighbours, which the paper finds in well-adapted models; HIGHER is better."""
    x = nn.functional.normalize(probs.double(), dim=1)
    similarity = x @ x.T
    similarity.fill_diagonal_(-math.inf)
    return float(entropy((similarity / tau).softmax(dim=1)).mean())


def teacher_student_agreement(tally: TargetTally) -> float | None:
    """Share of target pixels where a self-training run's mean teacher and its student
    (`segmenter`) predict the same class: the two drift apart while training is still
    changing its mind; HIGHER is better. None for a checkpoint without a teacher."""
    if tally.partner_agreeing is None:
        return None
    return tally.partner_agreeing / tally.pixels


def heldout_source_miou(
    network: nn.Module,
    dataset: SegmentationDataset | None,
    scheme: ClassScheme,
    device: torch.device,
    batch_size: int,
) -> float | None:
    """mIoU (%) on labelled source images the run never trained on: how well the network does
    the task on the domain whose labels we have (adaptation that breaks the source task
    usually breaks the target too); HIGHER is better. None without a held-out set."""
    if dataset is None:
        return None
    return labelled_metrics(network, dataset, scheme, [], device, batch_size)["miou"]


def labelled_metrics(
    network: nn.Module,
    dataset: SegmentationDataset,
    scheme: ClassScheme,
    tail: list[str],
    device: torch.device,
    batch_size: int,
) -> dict[str, Any]:
    """`evaluate_segmenter`'s metrics (`select` restores the global RNG its DataLoader draws
    a seed from)."""
    return evaluate_segmenter(
        network, dataset, scheme, tail, device, batch_size, str(dataset.root), "selection"
    )


# -- the target pass ----------------------------------------------------------------------------
def photometric_change(images: Tensor, normalisation: Normalisation) -> Tensor:
    """Normalised images with `PHOTOMETRIC`'s brightness, contrast and saturation change."""
    rgb = normalisation.to_unit_rgb(images)
    rgb = TF.adjust_brightness(rgb, PHOTOMETRIC["brightness"])
    rgb = TF.adjust_contrast(rgb, PHOTOMETRIC["contrast"])
    rgb = TF.adjust_saturation(rgb, PHOTOMETRIC["saturation"])
    return normalisation.from_unit_rgb(rgb)


def flipped_prediction(network: nn.Module, images: Tensor) -> Tensor:
    """Argmax `[B, H, W]` of the horizontally flipped images, flipped back."""
    return network(images.flip(-1)).argmax(1).flip(-1)


def _agreeing(a: Tensor, b: Tensor) -> int:
    return int((a == b).sum())


def _sample_pixels(probs: Tensor, per_image: int, generator: torch.Generator) -> Tensor:
    """`per_image` pixels of each image's softmax `[B, C, H, W]`, drawn without replacement
    from `generator`: `[B * per_image, C]`."""
    picked = [
        image[:, torch.randperm(image.shape[1], generator=generator)[:per_image].to(image.device)]
        for image in probs.detach().flatten(2)  # [C, H*W] each
    ]
    return torch.cat(picked, dim=1).T.cpu().double()


@torch.no_grad()
def tally_target(
    network: nn.Module,
    dataset: Dataset[Any],
    normalisation: Normalisation,
    device: torch.device,
    batch_size: int,
    partner: nn.Module | None = None,
) -> TargetTally:
    """One pass of `network` (in eval mode) over the target images: the `TargetTally` of its
    predictions; `partner` (the teacher or the student of a self-training checkpoint): also
    how often its argmax agrees with the network's."""
    network.eval()
    if partner is not None:
        partner.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    per_image = math.ceil(SND_PIXELS / len(dataset))  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    tally: TargetTally | None = None
    for batch in loader:
        images = batch["image"].to(device)
        logits = network(images).float()
        probs = logits.softmax(1)
        if tally is None:
            tally = TargetTally.empty(probs.shape[1], partner is not None)
        tally.add_probabilities(probs)
        tally.samples.append(_sample_pixels(probs, per_image, generator))
        label = logits.argmax(1)
        tally.flip_agreeing += _agreeing(label, flipped_prediction(network, images))
        changed = photometric_change(images, normalisation)
        tally.photometric_agreeing += _agreeing(label, network(changed).argmax(1))
        if partner is not None and tally.partner_agreeing is not None:
            tally.partner_agreeing += _agreeing(label, partner(images).argmax(1))
    if tally is None:
        raise ApodaError("no target images to score checkpoints on")
    return tally


def heldout_draw(minicity: MiniCityConfig, split: str) -> MiniCityConfig:
    """The MiniCity draw whose `split` is a run's held-out source: the run's image size, seed
    + `HELDOUT_SEED_OFFSET`, `HELDOUT_IMAGES` images in that split and as few as the generator
    allows elsewhere.

    Images of another seed are new scenes from the same synthetic distribution that the run
    never trained on, so they measure the source task without the optimism of training images.
    200 are enough for a stable mIoU (the score ranks checkpoints of one run, which see the same
    images) and take seconds to generate and to score per checkpoint."""
    counts = {"source": "n_source", "train": "n_target_train", "randomised": "n_randomised"}
    sizes = {"n_source": 1, "n_target_train": 1, "n_target_val": 1, "n_randomised": 0}
    sizes[counts[split]] = HELDOUT_IMAGES
    return replace(minicity, seed=minicity.seed + HELDOUT_SEED_OFFSET, **sizes)


def heldout_source_set(
    config: Config, run: RunData, root: str | None
) -> tuple[SegmentationDataset | None, str | None]:
    """The held-out labelled source images and a description of them: `root` (`--heldout-root`,
    a folder in the run's source format), else for a MiniCity source another draw
    (`heldout_draw`); (None, None) for another source without `root`."""
    data = config.data
    entry = get_dataset(data.source, "source", "data.source")
    if root is None and entry.locate is not minicity_folder:
        return None, None
    if root is None:
        data = replace(data, minicity=heldout_draw(data.minicity, entry.source_split))
    folder = Path(entry.locate(data, root)) if entry.locate else Path(str(root)).expanduser()
    labels = run.scheme if entry.classes is None else entry.classes(folder, run.classes)
    size = data.source_size
    dataset = entry.build(
        folder,
        entry.source_split,
        labels,
        size=None if size is None else (int(size[0]), int(size[1])),
        normalisation=data.normalisation,
        label_full_res=True,
    )
    return dataset, f"{data.source} {entry.source_split} of {folder} ({len(dataset)} images)"


@dataclass
class RunInputs:
    """What every checkpoint of a run is scored on: its data, device and batch size."""

    config: Config
    run: RunData
    target: SegmentationDataset
    heldout: SegmentationDataset | None
    heldout_name: str | None
    device: torch.device
    batch_size: int

    @classmethod
    def of(
        cls, config: Config, run: RunData, images: int, heldout_root: str | None = None
    ) -> RunInputs:
        """The inputs of a run whose data is built already (a run in training)."""
        heldout, name = heldout_source_set(config, run, heldout_root)
        return cls(
            config,
            run,
            build_probe_data(config, images, run),
            heldout,
            name,
            resolve_device(config.train.device),
            config.data.eval_batch_size,
        )


def score_networks(
    network: nn.Module, partner: nn.Module | None, inputs: RunInputs
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Every label-free score of `network` (the evaluated one; `partner`: the other half of a
    teacher-student pair, or None) and what they are made of."""
    normalisation = Normalisation(inputs.config.data.normalisation)
    device, batch_size, scheme = inputs.device, inputs.batch_size, inputs.run.scheme
    tally = tally_target(network, inputs.target, normalisation, device, batch_size, partner)
    agreement = augmentation_agreement(tally)
    sample = tally.sample()
    scores = {
        "heldout_source_miou": heldout_source_miou(
            network, inputs.heldout, scheme, device, batch_size
        ),
        "neg_entropy": -target_entropy(tally),
        "info_max": info_max(tally),
        "augmentation_agreement": agreement["mean"],
        "snd": snd(sample),
        "teacher_student_agreement": teacher_student_agreement(tally),
    }
    details = {
        "entropy": target_entropy(tally),
        "flip_agreement": agreement["flip"],
        "photometric_agreement": agreement["photometric"],
        "target_pixels": tally.pixels,
        "snd_pixels": len(sample),
    }
    return scores, details
