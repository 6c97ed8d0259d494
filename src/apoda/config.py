"""Typed run configuration: dataclass defaults, YAML files, and `key.sub=value` overrides.

Every key and value is checked when a config is loaded: unknown keys, values of the wrong type,
values outside a `Literal`'s choices, non-finite numbers and out-of-range settings are
ApodaErrors of one line that name the key, the value and what is valid. The `method` section is
one dataclass per method, chosen by `method.name` (a key another method owns is an error, not
silently ignored). A YAML file may inherit from another with `_base_: other.yaml` (or from
several, `_base_: [a.yaml, b.yaml]`), or from a built-in config, `_base_: minicity/apoda`."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from apoda.attacks import AttackConfig, AttackName
from apoda.configs import BUILTIN_PREFIX, builtin_config_file
from apoda.data.minicity import MiniCityConfig
from apoda.errors import ApodaError
from apoda.losses import SegLossName
from apoda.models.backbones import Arch, BNMode
from apoda.models.segmenter import Cut

__all__ = [
    "METHOD_CONFIGS",
    "SOURCES",
    "TARGETS",
    "AdaBNConfig",
    "ApodaConfig",
    "Arch",
    "AttackName",
    "BNMode",
    "Config",
    "Cut",
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "NonfiniteMode",
    "NormalisationMode",
    "OptimConfig",
    "OutputAdversarialConfig",
    "SchemeName",
    "SegLossName",
    "SourceName",
    "SourceOnlyConfig",
    "TargetName",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_config_data",
    "save_config",
]

# "cityscapes" and "minicity_target" as a source train on target labels: the oracle;
# "minicity_randomised" is MiniCity's domain-randomised split (backbone pretraining);
# "folder" is a dataset of one's own classes (apoda.data.folder: images/, labels/, classes.yaml).
SourceName = Literal[
    "gta5", "synthia", "minicity", "cityscapes", "minicity_target", "minicity_randomised", "folder"
]
TargetName = Literal["cityscapes", "minicity", "folder"]
SOURCES: tuple[str, ...] = typing.get_args(SourceName)
TARGETS: tuple[str, ...] = typing.get_args(TargetName)
SchemeName = Literal["cityscapes19", "synthia16"]  # apoda.data.classes
NormalisationMode = Literal["caffe", "imagenet"]  # apoda.data.transforms.NORMALISATION_MODES
NonfiniteMode = Literal["stop", "skip"]


# -- checks shared by the dataclasses' __post_init__ ---------------------------------------------
def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ApodaError(f"{key} must be {expected}, got {value!r}")


def _check_fields(obj: Any, section: str) -> None:
    """Literal choices and finite floats of a dataclass built in code (loading checks them too)."""
    for name, tp in _fields(type(obj)).items():
        value = getattr(obj, name)
        if typing.get_origin(tp) is Literal and value not in typing.get_args(tp):
            raise ApodaError(_literal_error(f"{section}.{name}", value, tp))
        if tp is float and isinstance(value, float) and not math.isfinite(value):
            raise ApodaError(f"{section}.{name}: expected a finite number, got {value!r}")


def _literal_error(where: str, value: Any, tp: Any) -> str:
    allowed = ", ".join(str(a) for a in typing.get_args(tp))
    return f"{where}: expected one of {allowed}; got {value!r}"


def _at_least_one(obj: Any, section: str, keys: typing.Iterable[str]) -> None:
    for key in keys:
        _require(getattr(obj, key) >= 1, f"{section}.{key}", getattr(obj, key), "at least 1")


def _non_negative(obj: Any, section: str, keys: typing.Iterable[str]) -> None:
    for key in keys:
        _require(getattr(obj, key) >= 0, f"{section}.{key}", getattr(obj, key), ">= 0")


# -- sections ------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Which datasets, where, at which size (width, height), and how images are normalised.

    `scheme` names the classes of the built-in datasets; a `folder` source takes its classes
    from its own `classes.yaml` instead (and a `folder` target's must agree with them)."""

    source: SourceName = "minicity"
    target: TargetName = "minicity"
    source_root: str | None = None
    target_root: str | None = None
    scheme: SchemeName = "cityscapes19"
    source_size: list[int] | None = None
    target_size: list[int] | None = None
    normalisation: NormalisationMode = "imagenet"
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

    def __post_init__(self) -> None:
        _check_fields(self, "data")
        _at_least_one(self, "data", ["batch_size", "eval_batch_size"])
        _non_negative(self, "data", ["num_workers"])
        for key in ("max_source", "max_target", "max_val"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"data.{key}", value, "at least 1 (or null)")


@dataclass
class ModelConfig:
    """The segmenter G∘F and where it starts from."""

    arch: Arch = "small"
    cut: Cut = "layer4"
    multi_level: bool = False
    aspp_legacy: bool = False
    bn_mode: BNMode = "frozen"
    pretrained: str | None = None
    init_from: str | None = None

    def __post_init__(self) -> None:
        _check_fields(self, "model")


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

    def __post_init__(self) -> None:
        _check_fields(self, "optim")
        for key in ("lr", "d_lr"):
            _require(getattr(self, key) > 0, f"optim.{key}", getattr(self, key), "> 0")
        _require(0 <= self.momentum < 1, "optim.momentum", self.momentum, "in [0, 1)")
        _non_negative(self, "optim", ["weight_decay", "poly_power"])


# -- the method section: one dataclass per method, chosen by `name` ------------------------------
@dataclass
class SourceOnlyConfig:
    """Step 1 and the source-only baselines: L_seg on source (+ aux head at `lambda_seg_aux`
    with `model.multi_level`), plus target entropy at `lambda_ent` when it is > 0."""

    name: Literal["source_only"] = "source_only"
    seg_loss: SegLossName = "ce"
    lambda_seg_aux: float = 0.1
    lambda_ent: float = 0.0

    def __post_init__(self) -> None:
        _check_fields(self, "method")
        _non_negative(self, "method", ["lambda_seg_aux", "lambda_ent"])


@dataclass
class OutputAdversarialConfig:
    """Output-space methods: AdaptSegNet (asn), AdvEnt, MinEnt and AdvEnt+MinEnt. D (of width
    `discriminator_width`) at `lambda_adv` (`lambda_adv_aux` on the aux head), entropy at
    `lambda_ent` for the MinEnt variants."""

    name: Literal["asn", "advent", "minent", "advent_minent"] = "asn"
    seg_loss: SegLossName = "ce"
    lambda_seg_aux: float = 0.1
    lambda_ent: float = 0.0
    discriminator_width: int = 64
    lambda_adv: float = 0.001
    lambda_adv_aux: float = 0.0002

    def __post_init__(self) -> None:
        _check_fields(self, "method")
        _non_negative(self, "method", ["lambda_seg_aux", "lambda_ent", "lambda_adv"])
        _non_negative(self, "method", ["lambda_adv_aux"])
        _at_least_one(self, "method", ["discriminator_width"])


@dataclass
class ApodaConfig:
    """APODA steps 2-3 (Eq. 9): G frozen, F and D against feature perturbations (`attack`)."""

    name: Literal["apoda"] = "apoda"
    seg_loss: SegLossName = "ce"
    discriminator_width: int = 64
    alpha_cst: float = 0.2
    alpha_ent: float = 0.002
    alpha_ent_adv: float = 0.0005
    attack: AttackConfig = field(default_factory=AttackConfig)

    def __post_init__(self) -> None:
        _check_fields(self, "method")
        _non_negative(self, "method", ["alpha_cst", "alpha_ent", "alpha_ent_adv"])
        _at_least_one(self, "method", ["discriminator_width"])


@dataclass
class AdaBNConfig:
    """AdaBN: G's batch-norm statistics re-estimated on target (needs `model.bn_mode: train`);
    nothing is trained, so it has no setting besides its name."""

    name: Literal["adabn"] = "adabn"

    def __post_init__(self) -> None:
        _check_fields(self, "method")


MethodConfig = SourceOnlyConfig | OutputAdversarialConfig | ApodaConfig | AdaBNConfig
"""The `method` section: the dataclass whose `name` Literal holds `method.name` (a mapping
without `name` is source_only, the first)."""

METHOD_CONFIGS: dict[str, type] = {
    name: cls
    for cls in typing.get_args(MethodConfig)
    for name in typing.get_args(typing.get_type_hints(cls)["name"])
}
"""Each `method.name` and its dataclass."""


@dataclass
class TrainConfig:
    """The loop: length, evaluation, checkpoints, logs, seed, device.

    `eval_every: 0` evaluates only once, at the end (then `select_best` has nothing to select
    among and is an error); `samples: 0` writes no sample images."""

    iterations: int = 1000
    eval_every: int = 250
    log_every: int = 10
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "auto"
    select_best: bool = False
    amp: bool = True
    channels_last: bool = False
    nonfinite: NonfiniteMode = "stop"
    samples: int = 6
    progress: bool = True

    def __post_init__(self) -> None:
        _check_fields(self, "train")
        _at_least_one(self, "train", ["iterations", "log_every", "checkpoint_every"])
        for key in ("eval_every", "samples"):
            _require(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), "0 (off) or more")
        if self.select_best and self.eval_every == 0:
            raise ApodaError(
                "train.select_best=true needs train.eval_every >= 1: with eval_every=0 the run "
                "evaluates only at the end, so there is nothing to select among"
            )


@dataclass
class Config:
    """A whole run."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=SourceOnlyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# -- checking nested dicts against the dataclasses -----------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the type hint `tp` (int, float, str, bool, Literal[...], list[...],
    a dataclass, X | None, or a union of dataclasses told apart by their `name` Literal)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in typing.get_args(tp)):
            return value
        raise ApodaError(_literal_error(where, value, tp))
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(tp) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) > 1 and all(
            dataclasses.is_dataclass(o) and "name" in _fields(o) for o in options
        ):
            return _from_tagged(options, value, where)
        errors = []
        for option in options:
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
        number = _to_float(value)
        if number is not None:
            if not math.isfinite(number):
                raise ApodaError(f"{where}: expected a finite number, got {value!r}")
            return number
    elif tp is str and isinstance(value, str):
        return value
    raise ApodaError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _to_float(value: Any) -> float | None:
    """A YAML number as a float (YAML 1.1 reads "1e-3" as a string); None if it is none."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None
    except OverflowError:  # an int beyond float's range
        return math.inf


def _from_tagged(options: list[Any], value: Any, where: str) -> Any:
    """The option whose `name` Literal holds `value["name"]` (missing: the first option)."""
    by_name = {n: cls for cls in options for n in typing.get_args(_fields(cls)["name"])}
    if not isinstance(value, dict):
        raise ApodaError(
            f"{where}: expected a mapping with a name (one of {', '.join(by_name)}), got {value!r}"
        )
    name = value.get("name", next(iter(by_name)))
    if not isinstance(name, str) or name not in by_name:
        raise ApodaError(
            f"{where}.name: unknown {where} {name!r}; expected one of {', '.join(by_name)}"
        )
    return _from_dict(by_name[name], value, where, tag=name)


def _from_dict(cls: type, data: dict[str, Any], where: str, tag: str | None = None) -> Any:
    known = _fields(cls)
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        if tag is not None:  # a section of a tagged union, e.g. the settings of one method
            own = sorted(k for k in known if k != "name")
            valid = f"its settings: {', '.join(own)}" if own else "it has no setting but name"
            raise ApodaError(f"{key} is not a setting of {where} {tag!r}; {valid}")
        raise ApodaError(f"unknown config key {key}; valid keys here: {', '.join(sorted(known))}")
    kwargs = {
        name: _coerce(value, known[name], f"{where}.{name}" if where else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def _method_name(method: Any, default: str = "source_only") -> Any:
    return method.get("name", default) if isinstance(method, dict) else default


def _drop_foreign_method_keys(data: dict[str, Any]) -> dict[str, Any]:
    method = data.get("method")
    name = _method_name(method)
    cls = METHOD_CONFIGS.get(name) if isinstance(name, str) else None
    if cls is None or not isinstance(method, dict):
        return data  # an unknown name: the check reports it
    return {**data, "method": {k: v for k, v in method.items() if k in _fields(cls)}}


def config_from_dict(data: dict[str, Any] | None, *, saved: bool = False) -> Config:
    """Build a Config from nested dicts, checking keys, types and values.

    `saved=True` is for configs written by apoda itself before the `method` section became one
    dataclass per method (run folders' `config.yaml`, checkpoints): those hold every method's
    keys under `method` (e.g. `lambda_adv` under `source_only`), which the code that wrote them
    ignored, so the keys the named method does not own are dropped before checking. Everything
    else is checked as usual. Leave it False for configs a person wrote: there such a key is a
    mistake (a setting that would do nothing) and an error."""
    data = data or {}
    if not isinstance(data, dict):
        raise ApodaError(f"a config is a mapping of sections, got {data!r}")
    if saved:
        data = _drop_foreign_method_keys(data)
    return _from_dict(Config, data, "")


def config_to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain nested dicts (what `config.yaml` in a run folder holds)."""
    return dataclasses.asdict(config)


# -- YAML files, inheritance and overrides -------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if first is not None:
                raise ApodaError(
                    f"key {key!r} is given twice in one mapping (line {first} and line {line})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    """One file's top-level mapping (its `_base_` not yet resolved)."""
    if not path.is_file():
        raise ApodaError(f"config file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApodaError(
            f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ApodaError(f"config file {path} is not valid YAML: {problem}{at}") from None
    except ApodaError as exc:
        raise ApodaError(f"config file {path}: {exc}") from None
    if data is None:
        raise ApodaError(
            f"config file {path} is empty; expected a mapping of sections "
            f"({', '.join(_fields(Config))}) and optionally _base_"
        )
    if not isinstance(data, dict):
        raise ApodaError(
            f"config file {path}: expected a mapping at the top level, got {type(data).__name__}"
        )
    return data


def _merge(base: dict[str, Any], child: dict[str, Any], top: bool = True) -> dict[str, Any]:
    """Deep-merge `child` over `base`, in place (child wins). A child `method` section naming
    another method than the base's replaces the base's whole: no key of one method leaks into
    another's."""
    for key, value in child.items():
        old = base.get(key)
        replace_method = (
            top
            and key == "method"
            and _method_name(value, default=_method_name(old)) != _method_name(old)
        )
        if isinstance(value, dict) and isinstance(old, dict) and not replace_method:
            _merge(old, value, top=False)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _base_file(path: Path, name: str) -> Path:
    """The file a `_base_` entry of `path` names: a file beside `path` first (the name as
    written, or with `.yaml` added), else a built-in config (`minicity/apoda`);
    `builtin:minicity/apoda` always means the built-in one."""
    local = path.parent / name
    if not name.startswith(BUILTIN_PREFIX):
        for candidate in (local, local.with_name(f"{local.name}.yaml")):
            if candidate.is_file():
                return candidate
    builtin = builtin_config_file(name)
    if builtin is not None:
        return builtin
    missing = name if name.startswith(BUILTIN_PREFIX) else local
    raise ApodaError(
        f"config file {path}: its _base_ {missing} does not exist, and no built-in config is "
        f"named {name.removeprefix(BUILTIN_PREFIX)!r} (`apoda train --help` lists them)"
    )


def _load_with_bases(path: Path, chain: tuple[Path, ...], shown: tuple[str, ...]) -> dict:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join((*shown[chain.index(resolved) :], str(path)))
        raise ApodaError(f"config files inherit from each other in a cycle: {cycle}")
    data = _read_yaml(path)
    base = data.pop("_base_", None)
    if base is None:
        return data
    bases = base if isinstance(base, list) else [base]
    if not bases or not all(isinstance(b, str) and b for b in bases):
        raise ApodaError(
            f"config file {path}: _base_ must be a file name or a list of file names "
            f"(relative to {path.name}) or built-in config names, got {base!r}"
        )
    merged: dict[str, Any] = {}
    for name in bases:
        base_path = _base_file(path, name)
        merged = _merge(
            merged, _load_with_bases(base_path, (*chain, resolved), (*shown, str(path)))
        )
    return _merge(merged, data)


def load_config_data(path: str | Path) -> dict[str, Any]:
    """The nested dicts a YAML config file holds, with its `_base_` chain merged in.

    `_base_: other.yaml` (relative to the file, `.yaml` optional; where no such file is
    there, a built-in config such as `minicity/apoda`; `builtin:NAME` always the built-in)
    loads that file first (recursively) and merges this one over it, key by key; a `method`
    section naming another method than the base's replaces the base's whole.
    `_base_: [a.yaml, b.yaml]` merges b over a, then this file. Keys and values are checked
    later, by `config_from_dict`."""
    path = Path(path)
    return _load_with_bases(path, (), ())


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to nested dicts, in place.

    The overrides are merged over `data` as a child file would be: `method.name=X` naming
    another method starts that method from its defaults (plus the other `method.*` overrides)."""
    layer: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ApodaError(f"override {item!r}: expected key.sub=value")
        node, existing = layer, data
        parts = key.split(".")
        for part in parts[:-1]:
            existing = existing.get(part) if isinstance(existing, dict) else None
            child = node.setdefault(part, {})
            if not isinstance(child, dict) or not isinstance(existing, dict | None):
                raise ApodaError(f"override {item!r}: {part} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            raise ApodaError(f"override {item!r}: the value is not valid YAML") from None
    return _merge(data, layer)


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, *, saved: bool = False
) -> Config:
    """Read a YAML config (or the defaults when `path` is None), resolve its `_base_` chain,
    apply overrides and check everything. `saved=True`: see `config_from_dict`."""
    data: dict[str, Any] = {} if path is None else load_config_data(path)
    data = apply_overrides(data, overrides or [])
    try:
        return config_from_dict(data, saved=saved)
    except ApodaError as exc:
        source = f"{path}: " if path is not None else ""
        raise ApodaError(f"{source}{exc}") from None


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
