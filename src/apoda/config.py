"""Typed run configuration: dataclass defaults, YAML files, and `key.sub=value` overrides.

Unknown keys and values of the wrong type are ApodaErrors that list what is valid."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apoda.attacks import AttackConfig
from apoda.data.minicity import MiniCityConfig
from apoda.errors import ApodaError


@dataclass
class DataConfig:
    """Which datasets, where, at which size (width, height), and how images are normalised."""

    source: str = "minicity"
    target: str = "minicity"
    source_root: str | None = None
    target_root: str | None = None
    scheme: str = "cityscapes19"
    source_size: list[int] | None = None
    target_size: list[int] | None = None
    normalisation: str = "imagenet"
    batch_size: int = 16
    eval_batch_size: int = 32
    num_workers: int = 0
    flip: bool = False
    random_scale: list[float] | None = None
    crop: list[int] | None = None
    photometric: bool = False
    max_source: int | None = None
    max_target: int | None = None
    max_val: int | None = None
    tail_classes: list[str] | None = None
    minicity: MiniCityConfig = field(default_factory=MiniCityConfig)


@dataclass
class ModelConfig:
    """The segmenter G∘F and where it starts from."""

    arch: str = "small"
    cut: str = "layer4"
    multi_level: bool = False
    aspp_legacy: bool = False
    bn_mode: str = "frozen"
    pretrained: str | None = None
    init_from: str | None = None


@dataclass
class OptimConfig:
    """SGD for G and F, Adam for D, poly schedule (the paper's and the field's values)."""

    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    classifier_lr_mult: float = 1.0
    d_lr: float = 1e-4
    d_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    poly_power: float = 0.9


@dataclass
class MethodConfig:
    """The method and its loss weights; unused weights are ignored by methods that lack them."""

    name: str = "source_only"
    seg_loss: str = "ce"
    discriminator_width: int = 64
    lambda_adv: float = 0.001
    lambda_adv_aux: float = 0.0002
    lambda_seg_aux: float = 0.1
    lambda_ent: float = 0.0
    alpha_cst: float = 0.2
    alpha_ent: float = 0.002
    alpha_ent_adv: float = 0.0005
    attack: AttackConfig = field(default_factory=AttackConfig)


@dataclass
class TrainConfig:
    """The loop: length, evaluation, checkpoints, logs, seed, device."""

    iterations: int = 1000
    eval_every: int = 250
    log_every: int = 10
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "auto"
    select_best: bool = False
    amp: bool = True
    channels_last: bool = False
    nonfinite: str = "stop"
    samples: int = 6
    progress: bool = True

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ApodaError(f"train.iterations must be at least 1, got {self.iterations}")
        for key in ("eval_every", "log_every", "checkpoint_every", "samples"):
            if getattr(self, key) < 0:
                raise ApodaError(f"train.{key} must be 0 (off) or more, got {getattr(self, key)}")


@dataclass
class Config:
    """A whole run."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the type hint `tp` (int, float, str, bool, list[...], X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ApodaError as exc:
                errors.append(str(exc))
        raise ApodaError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ApodaError(f"{where}: expected a list of {_type_name(item)}, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ApodaError(f"{where}: expected a mapping of {sorted(_fields(tp))}, got {value!r}")
        return _from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str and isinstance(value, str):
        return value
    raise ApodaError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    known = _fields(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ApodaError(
            f"unknown config key {prefix}{unknown[0]}; valid keys here: {', '.join(sorted(known))}"
        )
    kwargs = {
        name: _coerce(value, known[name], f"{where}.{name}" if where else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from nested dicts, checking keys and types."""
    return _from_dict(Config, data or {}, "")


def config_to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain nested dicts (what `config.yaml` in a run folder holds)."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to nested dicts, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ApodaError(f"override {item!r}: expected key.sub=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ApodaError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when `path` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ApodaError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ApodaError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ApodaError(f"config file {path}: expected a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    try:
        return config_from_dict(data)
    except ApodaError as exc:
        source = f"{path}: " if path is not None else ""
        raise ApodaError(f"{source}{exc}") from None


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
