"""Choosing a checkpoint without target labels (`apoda select`, issue 26).

In unsupervised domain adaptation nobody has the target's labels, yet the checkpoint a paper
reports is usually picked with them, or is simply the last. This module scores every checkpoint
a run kept (`train.keep_checkpoints`) with label-free scores, each oriented so that HIGHER IS
BETTER, and says which checkpoint each score chooses. With `labels=True` (a study of the
scores, never a way to choose) it also reads the target's validation labels: each checkpoint's
target mIoU, each score's Spearman rank correlation with it, and each rule's regret (the target
mIoU of the best checkpoint minus that of the one the rule chooses).

Everything is deterministic: networks run in eval mode without gradients, pixel samples and
the photometric change are fixed, the target images' DataLoader has its own generator, and
`select` restores the global RNG that building networks and evaluation's loaders draw from.
docs/selection.md describes the scores and the command."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from apoda.checkpoints import load_checkpoint, load_module_state
from apoda.config import Config, MiniCityConfig, config_from_dict
from apoda.data import ClassScheme, SegmentationDataset
from apoda.data.datasets import minicity_folder
from apoda.data.transforms import Normalisation
from apoda.distributed import resolve_device
from apoda.engine.data import RunData, build_probe_data, build_run_data
from apoda.errors import ApodaError
from apoda.evaluation import evaluate_segmenter
from apoda.inference import checkpoint_scheme, dataset_folder, load_segmenter
from apoda.models import Segmenter
from apoda.models.build import architecture_from_config
from apoda.models.segmenter import upgrade_state_keys
from apoda.registry import get_dataset
from apoda.runs import CHECKPOINT_DIR, LAST_CHECKPOINT, saved_config

DEFAULT_SCORE = "heldout_source_miou"
# issue 26's study chooses the default score (docs/results.md); this one stands until then

SCORE_NAMES = (
    "heldout_source_miou",
    "neg_entropy",
    "info_max",
    "augmentation_agreement",
    "snd",
    "teacher_student_agreement",
)
"""The label-free scores, as the table's columns and the JSON's keys (higher is better)."""
BASELINE_RULES = ("last", "random")
"""Rules that read no score: the last checkpoint, and one drawn at random (its expectation)."""

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
    return _scored(network, dataset, scheme, [], device, batch_size)["miou"]


def _scored(
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


# -- a run's checkpoints and data ---------------------------------------------------------------
_KEPT = re.compile(r"iter_(\d+)\.pt")


def run_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """A run's checkpoints by iteration: the kept `iter_NNNNNN.pt` files and `last.pt` (left out
    when a kept file has its iteration)."""
    folder = run_dir / CHECKPOINT_DIR
    found = {
        int(match[1]): path
        for path in (folder.glob("iter_*.pt") if folder.is_dir() else [])
        if (match := _KEPT.fullmatch(path.name))
    }
    last = run_dir / LAST_CHECKPOINT
    if last.is_file():
        found.setdefault(int(load_checkpoint(last)["iteration"]), last)
    if not found:
        raise ApodaError(
            f"{run_dir} is not a run folder with checkpoints: expected {LAST_CHECKPOINT} or "
            f"{CHECKPOINT_DIR}/iter_NNNNNN.pt (train with train.keep_checkpoints=true to keep "
            "one per evaluation point)"
        )
    return sorted(found.items())


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
    folder = dataset_folder(entry, data.source, root, data)
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
    def build(cls, run_dir: Path, images: int, heldout_root: str | None) -> RunInputs:
        """The run's config (config.yaml), its first `images` target training images without
        augmentation, its target val split and held-out source images."""
        config = saved_config(run_dir)
        if config is None:
            raise ApodaError(f"{run_dir} is not a run folder: it has no config.yaml")
        run = build_run_data(config, need_train=False)
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


def partner_network(state: dict[str, Any], path: Path) -> Segmenter | None:
    """The other half of a self-training checkpoint's teacher-student pair: the student
    (`segmenter`) when the teacher is evaluated, else the teacher; None without a teacher."""
    if "teacher" not in state["modules"]:
        return None
    name = "segmenter" if state.get("evaluated", "segmenter") == "teacher" else "teacher"
    config = config_from_dict(state["config"], saved=True)
    network = architecture_from_config(config, checkpoint_scheme(state, config, path).num_classes)
    load_module_state(network, state["modules"][name], name, path, upgrade_state_keys)
    return network.eval()


# -- scoring ------------------------------------------------------------------------------------
def check_score(name: str) -> str:
    """`name` if it is a score's, else a one-line error listing them."""
    if name not in SCORE_NAMES:
        raise ApodaError(
            f"--score: unknown score {name!r}; expected one of {', '.join(SCORE_NAMES)}"
        )
    return name


def score_checkpoint(path: Path, inputs: RunInputs, labels: bool) -> dict[str, Any]:
    """Every score of one checkpoint, what they are made of, and with `labels` its target
    val mIoU and tail mIoU (`evaluate_segmenter` on the run's target val split)."""
    network, _, state = load_segmenter(path)
    network.to(inputs.device)
    partner = partner_network(state, path)
    if partner is not None:
        partner.to(inputs.device)
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
    record: dict[str, Any] = {
        "iteration": int(state["iteration"]),
        "checkpoint": str(path),
        "evaluated": state.get("evaluated", "segmenter"),
        "scores": scores,
        "details": {
            "entropy": target_entropy(tally),
            "flip_agreement": agreement["flip"],
            "photometric_agreement": agreement["photometric"],
            "target_pixels": tally.pixels,
            "snd_pixels": len(sample),
        },
    }
    if labels:
        tail = list(state.get("tail_classes") or [])
        metrics = _scored(network, inputs.run.val, scheme, tail, device, batch_size)
        record["target_miou"], record["target_tail_miou"] = metrics["miou"], metrics["tail_miou"]
    return record


def score_run(
    run_dir: Path,
    checkpoints: Sequence[tuple[int, Path]],
    images: int = DEFAULT_IMAGES,
    heldout_root: str | None = None,
    labels: bool = False,
) -> dict[str, Any]:
    """Every checkpoint of a run scored (`run_checkpoints` gives `checkpoints`)."""
    inputs = RunInputs.build(run_dir, images, heldout_root)
    return {
        "run": str(run_dir),
        "heldout_source": inputs.heldout_name,
        "target_images": len(inputs.target),
        "checkpoints": [score_checkpoint(path, inputs, labels) for _, path in checkpoints],
    }


# -- choosing, and judging the choices with labels ----------------------------------------------
def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, tied values sharing the mean of their ranks."""
    return [sum(u < v for u in values) + (sum(u == v for u in values) + 1) / 2 for v in values]


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Spearman's rank correlation (Pearson's of the tie-averaged ranks); None for fewer than 3
    pairs, a missing value, or a constant side."""
    if len(x) < 3 or any(v is None for v in (*x, *y)):
        return None
    rx, ry = _ranks(cast(Sequence[float], x)), _ranks(cast(Sequence[float], y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if vx == 0 or vy == 0 else cov / math.sqrt(vx * vy)


def choose(values: Sequence[float | None]) -> int | None:
    """The index of the highest value (the earliest of ties); None when a value is missing."""
    if not values or any(v is None for v in values):
        return None
    known = cast(Sequence[float], values)
    return max(range(len(known)), key=lambda i: (known[i], -i))


def regret(targets: Sequence[float], pick: int) -> float:
    """Target mIoU of the best checkpoint minus that of the picked one (0 for the best)."""
    return max(targets) - targets[pick]


def _column(rows: Sequence[dict[str, Any]], name: str) -> list[Any]:
    return [row["scores"][name] for row in rows]


def summarise_run(record: dict[str, Any], score: str, labels: bool) -> None:
    """Add to a scored run the iteration each score and `last` choose and the one `score`
    chooses; with `labels`, each score's Spearman correlation with the target mIoU and each
    rule's regret (`random`: the best minus the mean over checkpoints)."""
    rows = record["checkpoints"]
    picks: dict[str, int | None] = {name: choose(_column(rows, name)) for name in SCORE_NAMES}
    picks["last"] = len(rows) - 1
    record["choices"] = {k: None if i is None else rows[i]["iteration"] for k, i in picks.items()}
    record["chosen"] = record["choices"][score]
    if not labels:
        return
    targets = [row["target_miou"] for row in rows]
    record["spearman"] = {name: spearman(_column(rows, name), targets) for name in SCORE_NAMES}
    known = None not in targets
    record["regret"] = {
        rule: regret(targets, pick) if known and pick is not None else None
        for rule, pick in picks.items()
    }
    record["regret"]["random"] = max(targets) - sum(targets) / len(targets) if known else None


def across_runs(records: Sequence[dict[str, Any]], score: str) -> dict[str, Any] | None:
    """The checkpoint of all runs with the highest `score` (runs without it left out)."""
    candidates = [
        (row["scores"][score], record["run"], row)
        for record in records
        for row in record["checkpoints"]
        if row["scores"][score] is not None
    ]
    if not candidates:
        return None
    value, run, row = max(candidates, key=lambda c: c[0])
    return {
        "run": run,
        "iteration": row["iteration"],
        "checkpoint": row["checkpoint"],
        "score": score,
        "value": value,
    }


def select(
    runs: Sequence[str | Path],
    images: int = DEFAULT_IMAGES,
    heldout_root: str | None = None,
    labels: bool = False,
    score: str = DEFAULT_SCORE,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`apoda select`: every checkpoint of every run scored, each run's choices, the choice
    across runs and, with `labels`, the rank correlations and regrets. Every folder is checked
    before any scoring."""
    check_score(score)
    folders = [Path(run) for run in runs]
    checkpoints = [run_checkpoints(folder) for folder in folders]
    with torch.random.fork_rng(devices=[]):  # building networks and loaders draws from it
        records = [
            score_run(folder, found, images, heldout_root, labels)
            for folder, found in zip(folders, checkpoints, strict=True)
        ]
    skipped = [r["run"] for r in records if r["heldout_source"] is None]
    if skipped:
        log(
            f"heldout_source_miou: skipped for {', '.join(skipped)} (a source other than "
            "MiniCity: --heldout-root DIR gives labelled source images in its format)"
        )
    for record in records:
        summarise_run(record, score, labels)
    result: dict[str, Any] = {
        "score": score,
        "default_score": DEFAULT_SCORE,
        "scores": list(SCORE_NAMES),
        "images": images,
        "labels": labels,
        "settings": {
            "snd_pixels": SND_PIXELS,
            "snd_tau": SND_TAU,
            "photometric": PHOTOMETRIC,
            "heldout_seed_offset": HELDOUT_SEED_OFFSET,
            "heldout_images": HELDOUT_IMAGES,
        },
        "runs": records,
    }
    if len(records) > 1:
        result["across_runs"] = across_runs(records, score)
    if labels:
        rows = [row for record in records for row in record["checkpoints"]]
        targets = [row["target_miou"] for row in rows]
        result["spearman_all"] = {n: spearman(_column(rows, n), targets) for n in SCORE_NAMES}
    return result


# -- the printed tables -------------------------------------------------------------------------
def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> Iterator[str]:
    yield "| " + " | ".join(header) + " |"
    yield "|---" + "|---:" * (len(header) - 1) + "|"
    for row in rows:
        yield "| " + " | ".join(row) + " |"


def format_run(record: dict[str, Any], score: str, labels: bool) -> str:
    """A run's table (a row per checkpoint, the one `score` chooses marked *) and what each
    rule chooses (with `labels`: its target mIoU, regret and Spearman correlation)."""
    rows = record["checkpoints"]
    header = ["iteration", *SCORE_NAMES, *(["target mIoU", "target tail mIoU"] if labels else [])]
    cells = [
        [
            f"{row['iteration']}{' *' if row['iteration'] == record['chosen'] else ''}",
            *(_number(row["scores"][name]) for name in SCORE_NAMES),
            *([_number(row["target_miou"]), _number(row["target_tail_miou"])] if labels else []),
        ]
        for row in rows
    ]
    title = (
        f"{record['run']}: {len(rows)} checkpoints, target scores on {record['target_images']} "
        f"images (higher is better); * chosen by {score}"
    )
    return "\n".join([title, "", *_table(header, cells), "", *_rules_table(record, score, labels)])


def _rules_table(record: dict[str, Any], score: str, labels: bool) -> Iterator[str]:
    """What each rule chooses; with `labels`, how that choice fares on the target (`random`:
    the mean over checkpoints)."""
    rows = record["checkpoints"]
    targets = {row["iteration"]: row.get("target_miou") for row in rows}
    known = [value for value in targets.values() if value is not None]
    mean = sum(known) / len(known) if len(known) == len(rows) else None  # what `random` expects
    header = ["rule", "chooses", *(["target mIoU", "regret", "Spearman"] if labels else [])]
    cells = []
    for rule in [*SCORE_NAMES, *BASELINE_RULES] if labels else [*SCORE_NAMES, "last"]:
        pick = record["choices"].get(rule)
        cell = [f"{rule} (--score)" if rule == score else rule, "-" if pick is None else str(pick)]
        if labels:
            target = mean if rule == "random" else targets.get(pick)
            lost, rho = record["regret"][rule], record["spearman"].get(rule)
            cell += [_number(target), _number(lost), _number(rho)]
        cells.append(cell)
    return _table(header, cells)


def _across_line(result: dict[str, Any]) -> str:
    """Which checkpoint of all runs the score chooses."""
    best, score = result["across_runs"], result["score"]
    if best is None:
        return f"across the runs, {score} chooses none (no run has it)"
    return (
        f"across the runs, {score} chooses {best['run']} iteration {best['iteration']} "
        f"({score} {_number(best['value'])})"
    )


def format_selection(result: dict[str, Any]) -> str:
    """Every run's tables, the choice across runs, and the correlations over all runs."""
    score, labels = result["score"], result["labels"]
    parts = [format_run(record, score, labels) for record in result["runs"]]
    if len(result["runs"]) > 1:
        parts.append(_across_line(result))
    if labels:
        total = sum(len(r["checkpoints"]) for r in result["runs"])
        spearman_all = result["spearman_all"]
        rows = [[name, _number(spearman_all[name])] for name in SCORE_NAMES]
        parts.append("\n".join(_table(["score", f"Spearman over all {total} checkpoints"], rows)))
    return "\n\n".join(parts)


def write_selection(result: dict[str, Any], path: Path) -> None:
    """The selection's every number as JSON."""
    path.write_text(json.dumps(result, indent=1))
