"""`apoda pretrain minicity`: a stand-in for the ImageNet/COCO init checkpoint of the real
pipelines. The small backbone learns segmentation on MiniCity's domain-randomised split
(colours, textures, light, blur and noise drawn per image and per object), its head is thrown
away, and the backbone weights are cached as a file that `model.pretrained` loads like any
downloaded init checkpoint, so every method starts from the same weights."""

from __future__ import annotations

from pathlib import Path

import torch

from apoda.checkpoints import load_checkpoint
from apoda.config import Config, load_config
from apoda.configs import resolve_config
from apoda.engine.trainer import Trainer
from apoda.errors import ApodaError
from apoda.models.build import BUILTIN_PRETRAINED, builtin_pretrained_path
from apoda.models.efficientnet import BUILTIN_IMAGENET, package_weights_path
from apoda.models.segmenter import upgrade_state_keys
from apoda.runs import checkpoint_file


def _randomised_count(config: Config, base: Config) -> int:
    """The randomised split's size: the run's own, else the pretraining config's."""
    return config.data.minicity.n_randomised or base.data.minicity.n_randomised


def resolve_pretrained(config: Config) -> Path | None:
    """The weights file of a built-in `model.pretrained` (pretrained now when not cached, or
    the installed package's file for EfficientNet-Lite0's ImageNet weights), or None when the
    config names no built-in weights. Called before a run's Trainer exists."""
    name = config.model.pretrained
    if not name or not name.startswith("builtin:"):
        return None
    if name == BUILTIN_IMAGENET:
        if config.model.arch != "efficientnet_lite0":
            raise ApodaError(
                f"model.pretrained {name!r} holds EfficientNet-Lite0 weights: it needs "
                f"model.arch=efficientnet_lite0, not {config.model.arch!r}"
            )
        return package_weights_path()
    if name != BUILTIN_PRETRAINED:
        raise ApodaError(
            f"model.pretrained {name!r}: the built-in weights are {BUILTIN_PRETRAINED} "
            f"and {BUILTIN_IMAGENET}"
        )
    return pretrain_minicity(config)


def pretrain_minicity(config: Config, iterations: int | None = None) -> Path:
    """Train (once) and cache the backbone for `config`'s MiniCity; return the weights file."""
    base = load_config(resolve_config("minicity/pretrain"))
    iterations = iterations or base.train.iterations
    n_randomised = _randomised_count(config, base)
    target = builtin_pretrained_path(config, iterations, n_randomised)
    if target.is_file():
        return target
    settings = config.data.minicity
    overrides = [
        f"train.iterations={iterations}",
        f"data.minicity.seed={settings.seed}",
        f"data.minicity.height={settings.height}",
        f"data.minicity.width={settings.width}",
        f"data.minicity.n_source={settings.n_source}",
        f"data.minicity.n_target_train={settings.n_target_train}",
        f"data.minicity.n_target_val={settings.n_target_val}",
        f"data.minicity.n_randomised={n_randomised}",
        f"model.arch={config.model.arch}",
    ]
    run_dir = target.with_suffix("")
    print(
        f"pretraining the {config.model.arch} backbone on MiniCity's randomised split -> {target}"
    )
    Trainer(
        load_config(resolve_config("minicity/pretrain"), overrides),
        run_dir,
        resume=run_dir.is_dir(),
    ).fit()
    state = load_checkpoint(checkpoint_file(run_dir))["modules"]["segmenter"]
    backbone = {
        k.removeprefix("backbone."): v
        for k, v in upgrade_state_keys(state).items()
        if k.startswith("backbone.")
    }
    tmp = target.with_suffix(".tmp")
    torch.save(backbone, tmp)
    tmp.replace(target)
    return target
