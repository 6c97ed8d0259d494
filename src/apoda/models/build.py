"""A segmenter from a run's config: the architecture, then its starting weights (a pretrained
backbone file, or a step-1 checkpoint through `model.init_from`).

Built-in pretrained weights (`builtin:...`) must already be on disk: they are produced by
`apoda.pretrain` before any training run starts, never from inside one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from apoda.checkpoints import load_checkpoint, load_module_state
from apoda.config import Config
from apoda.data.minicity import cache_dir
from apoda.errors import ApodaError
from apoda.models.pretrained import load_pretrained
from apoda.models.segmenter import Segmenter, build_segmenter, upgrade_state_keys
from apoda.runs import checkpoint_file

BUILTIN_PRETRAINED = "builtin:minicity-randomised"
"""The `model.pretrained` value naming the backbone that `apoda pretrain minicity` caches."""


def builtin_pretrained_path(config: Config, iterations: int, n_randomised: int) -> Path:
    """Where the built-in pretrained backbone for this config's MiniCity settings is cached."""
    s = config.data.minicity
    name = (
        f"{config.model.arch}-minicity-randomised-{s.height}x{s.width}-n{n_randomised}"
        f"-s{s.seed}-i{iterations}"
    )
    return cache_dir() / "pretrained" / f"{name}.pth"


def architecture_from_config(config: Config, num_classes: int) -> Segmenter:
    """The network `config.model` describes, with its fresh initial weights."""
    model = config.model
    return build_segmenter(
        model.arch,
        num_classes,
        cut=model.cut,
        multi_level=model.multi_level,
        aspp_legacy=model.aspp_legacy,
        bn_mode=model.bn_mode,
    )


def segmenter_from_config(
    config: Config,
    num_classes: int,
    log: Callable[[str], None] = print,
    pretrained_file: Path | None = None,
    class_names: Sequence[str] | None = None,
) -> Segmenter:
    """The segmenter of `config` with its starting weights loaded.

    `pretrained_file` is what `model.pretrained` resolved to when it names built-in weights
    (see `apoda.pretrain.resolve_pretrained`); a plain path is used as it is. `class_names`:
    the run's classes, which a `model.init_from` checkpoint that names its own must match."""
    model = config.model
    segmenter = architecture_from_config(config, num_classes)
    if model.pretrained:
        path = pretrained_file
        if path is None:
            if model.pretrained.startswith("builtin:"):
                raise ApodaError(
                    f"model.pretrained {model.pretrained!r} names built-in weights: resolve them "
                    "first (apoda.pretrain.resolve_pretrained, or `apoda pretrain minicity`)"
                )
            path = Path(model.pretrained)
        load_pretrained(segmenter, path, log=log)
    if model.init_from:
        # Checkpoint keys do not depend on the cut: a step-1 checkpoint cut at layer4 starts
        # Table 4's rows at pixel ... layer3 as it is.
        state = load_checkpoint(checkpoint_file(model.init_from))
        load_module_state(
            segmenter,
            state["modules"]["segmenter"],
            "segmenter",
            Path(model.init_from),
            upgrade_state_keys,
        )
        saved = state.get("class_names")  # as many as the run's: the tensors fit
        if class_names is not None and saved is not None and list(saved) != list(class_names):
            raise ApodaError(
                f"model.init_from {model.init_from} was trained on the classes {list(saved)}, "
                f"this run has {list(class_names)}; start from a run of the same class list"
            )
        log(
            f"initialised the segmenter from {model.init_from} (iteration {state.get('iteration')})"
        )
    return segmenter
