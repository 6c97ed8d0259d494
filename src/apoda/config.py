"""Typed run configuration: dataclass defaults, YAML files, and `key.sub=value` overrides.

Every key and value is checked when a config is loaded: unknown keys, values of the wrong type,
values outside a `Literal`'s choices, non-finite numbers and out-of-range settings are
ApodaErrors of one line that name the key, the value and what is valid. The `method` section is
the settings dataclass the method named by `method.name` registered with it (apoda.registry; a
key another method owns is an error, not silently ignored). A YAML file may inherit from another
with `_base_: other.yaml` (or from several, `_base_: [a.yaml, b.yaml]`), or from a built-in
config, `_base_: minicity/apoda`; `imports:` names a user's own Python files or modules."""

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

from apoda.configs import BUILTIN_PREFIX, builtin_config_file
from apoda.errors import ApodaError
from apoda.registry import BACKBONES, METHODS, get_dataset, import_user_modules

__all__ = [
    "BNMode",
    "Config",
    "Cut",
    "DataConfig",
    "MiniCityConfig",
    "ModelConfig",
    "NonfiniteMode",
    "NormalisationMode",
    "OptimConfig",
    "SchemeName",
    "TrainConfig",
    "apply_overrides",
    "at_least_one",
    "check_fields",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_config_data",
    "non_negative",
    "require",
    "save_config",
]

SchemeName = Literal["cityscapes19", "synthia16"]  # apoda.data.classes
NormalisationMode = Literal["caffe", "imagenet"]  # apoda.data.transforms.NORMALISATION_MODES
NonfiniteMode = Literal["stop", "skip"]
BNMode = Literal["frozen", "legacy", "train"]
"""How batch norms behave: `frozen` = affine parameters fixed and running statistics never
updated (the layers stay in eval mode even in `model.train()`); `legacy` = affine parameters fixed
but running statistics updated in train mode (what the reference code does); `train` = ordinary
trainable batch norm."""
Cut = Literal["pixel", "layer1", "layer2", "layer3", "layer4"]
"""Where the segmenter is cut into G and F: after that backbone stage (`pixel`: G is the
identity, the perturbation acts on the input image)."""


# -- checks shared by the dataclasses' __post_init__ ---------------------------------------------
def require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ApodaError(f"{key} must be {expected}, got {value!r}")


def check_fields(obj: Any, section: str) -> None:
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


def at_least_one(obj: Any, section: str, keys: typing.Iterable[str]) -> None:
    for key in keys:
        require(getattr(obj, key) >= 1, f"{section}.{key}", getattr(obj, key), "at least 1")


def non_negative(obj: Any, section: str, keys: typing.Iterable[str]) -> None:
    for key in keys:
        require(getattr(obj, key) >= 0, f"{section}.{key}", getattr(obj, key), ">= 0")


# -- sections ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MiniCityConfig:
    """`data.minicity`: the size of each MiniCity split and of its images; `n_randomised` > 0
    adds a domain-randomised split (apoda.data.minicity generates and caches it)."""

    seed: int = 0
    n_source: int = 2000
    n_target_train: int = 2000
    n_target_val: int = 500
    height: int = 64
    width: int = 128
    n_randomised: int = 0

    def __post_init__(self) -> None:
        for name in (
            "seed",
            "n_source",
            "n_target_train",
            "n_target_val",
            "height",
            "width",
            "n_randomised",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ApodaError(f"MiniCityConfig.{name} must be an int, got {value!r}")
        for name in ("n_source", "n_target_train", "n_target_val"):
            if getattr(self, name) < 1:
                raise ApodaError(
                    f"MiniCityConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        if self.n_randomised < 0 or self.seed < 0:
            raise ApodaError(
                f"MiniCityConfig seed and n_randomised must be >= 0, got "
                f"seed={self.seed}, n_randomised={self.n_randomised}"
            )
        if self.height < 16 or self.width < 16:
            raise ApodaError(
                f"MiniCityConfig image size must be at least 16x16, got {self.height}x{self.width}"
            )


@dataclass
class DataConfig:
    """Which datasets, where, at which size (width, height), and how images are normalised.
    `rare_class_sampling` draws source images by class (apoda.data.sampling; T =
    `rcs_temperature`, `rcs_min_pixels` counted at GTA5's label size); with `rcs_min_crop_ratio`
    > 0 the crop of an image drawn for a class is re-drawn (up to 10 times) until it holds more
    than `rcs_min_pixels` x that ratio of its pixels, counted in a 512x512 crop as DAFormer does
    and scaled to `crop`'s size. `crop_cat_max_ratio` < 1 re-draws a source crop while one class
    covers that share of its labelled pixels (mmseg's RandomCrop `cat_max_ratio`).

    `scheme` names the classes of the built-in datasets; a `folder` source takes its classes
    from its own `classes.yaml` instead (and a `folder` target's must agree with them)."""

    source: str = "minicity"  # a dataset registered as a source (apoda.registry.DATASETS)
    target: str = "minicity"  # a dataset registered as a target
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
    rare_class_sampling: bool = False
    rcs_temperature: float = 0.01
    rcs_min_pixels: int = 3000
    rcs_min_crop_ratio: float = 0.0
    crop_cat_max_ratio: float = 1.0
    minicity: MiniCityConfig = field(default_factory=MiniCityConfig)

    def __post_init__(self) -> None:
        check_fields(self, "data")
        for role in ("source", "target"):
            get_dataset(getattr(self, role), role, f"data.{role}")
        at_least_one(self, "data", ["batch_size", "eval_batch_size"])
        non_negative(self, "data", ["num_workers", "rcs_min_pixels"])
        require(self.rcs_temperature > 0, "data.rcs_temperature", self.rcs_temperature, "> 0")
        require(
            0 < self.crop_cat_max_ratio <= 1,
            "data.crop_cat_max_ratio",
            self.crop_cat_max_ratio,
            "in (0, 1] (1: off)",
        )
        require(
            self.rcs_min_crop_ratio == 0
            or (self.rcs_min_crop_ratio > 0 and self.rare_class_sampling and self.crop),
            "data.rcs_min_crop_ratio",
            self.rcs_min_crop_ratio,
            "0, or > 0 with data.rare_class_sampling and a data.crop",
        )
        require(
            self.crop_cat_max_ratio == 1 or bool(self.crop),
            "data.crop_cat_max_ratio",
            self.crop_cat_max_ratio,
            "1 without a data.crop",
        )
        for key in ("max_source", "max_target", "max_val"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"data.{key}", value, "at least 1 (or null)")


@dataclass
class ModelConfig:
    """The segmenter G∘F and where it starts from."""

    arch: str = "small"
    cut: Cut = "layer4"
    multi_level: bool = False
    aspp_legacy: bool = False
    bn_mode: BNMode = "frozen"
    pretrained: str | None = None
    init_from: str | None = None

    def __post_init__(self) -> None:
        check_fields(self, "model")
        BACKBONES.get(self.arch, what="model.arch")


@dataclass
class OptimConfig:
    """SGD for G and F (or AdamW with `betas`, DAFormer's), Adam for D, poly schedule (the
    paper's and the field's values); an optional linear warmup over `warmup_iterations` from
    `warmup_ratio` (DAFormer: 1500, 1e-6)."""

    segmenter_optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 2.5e-4
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    classifier_lr_mult: float = 1.0
    d_lr: float = 1e-4
    d_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    poly_power: float = 0.9
    warmup_iterations: int = 0
    warmup_ratio: float = 1e-6

    def __post_init__(self) -> None:
        check_fields(self, "optim")
        for key in ("lr", "d_lr"):
            require(getattr(self, key) > 0, f"optim.{key}", getattr(self, key), "> 0")
        require(0 <= self.momentum < 1, "optim.momentum", self.momentum, "in [0, 1)")
        for key in ("betas", "d_betas"):
            value = getattr(self, key)
            require(
                len(value) == 2 and all(0 <= b < 1 for b in value),
                f"optim.{key}",
                value,
                "two numbers in [0, 1)",
            )
        non_negative(self, "optim", ["weight_decay", "poly_power", "warmup_iterations"])
        require(0 < self.warmup_ratio <= 1, "optim.warmup_ratio", self.warmup_ratio, "in (0, 1]")


@dataclass
class TrainConfig:
    """The loop: length, evaluation, checkpoints, logs, seed, device.

    `eval_every: 0` evaluates only once, at the end (then `select_best` has nothing to select
    among and is an error); `samples: 0` writes no sample images. A method with a mean teacher
    has its pseudo-labels on `probe_images` target training images compared at every
    evaluation (`apoda.engine.pseudo_probe`; 0: off); `settle_tolerance` is the label-free
    budget rule's threshold on the change of their agreement between evaluations.
    `keep_checkpoints` keeps the checkpoint of every evaluation point besides last.pt
    (`checkpoints/iter_NNNNNN.pt`, hard links: no extra writing; each costs one checkpoint's
    disk space once last.pt moves on), for choosing among them afterwards (`apoda select`).
    `select_best`: false reports the last snapshot; true the one with the best target-val mIoU
    (oracle selection, labelled so); the name of a label-free score (`LABEL_FREE_SCORES`,
    `apoda.selection`) the evaluation point where that score is highest, no target label read."""

    iterations: int = 1000
    eval_every: int = 250
    log_every: int = 10
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "auto"
    select_best: bool | str = False
    amp: bool = True
    channels_last: bool = False
    nonfinite: NonfiniteMode = "stop"
    samples: int = 6
    progress: bool = True
    probe_images: int = 32
    settle_tolerance: float = 0.005
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "train")
        at_least_one(self, "train", ["iterations", "log_every", "checkpoint_every"])
        non_negative(self, "train", ["settle_tolerance"])
        for key in ("eval_every", "samples", "probe_images"):
            require(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), "0 (off) or more")
        if isinstance(self.select_best, str) and self.select_best not in LABEL_FREE_SCORES:
            raise ApodaError(
                f"train.select_best: {self.select_best!r} is not a label-free score; expected "
                f"true (target-val mIoU, oracle), false or one of {', '.join(LABEL_FREE_SCORES)}"
            )
        if self.select_best is not False and self.eval_every == 0:
            value = str(self.select_best).lower()
            raise ApodaError(
                f"train.select_best={value} needs train.eval_every >= 1: with eval_every=0 the "
                "run evaluates only at the end, so there is nothing to select among"
            )


LABEL_FREE_SCORES = (
    "heldout_source_miou",
    "neg_entropy",
    "info_max",
    "augmentation_agreement",
    "snd",
    "teacher_student_agreement",
)
"""The label-free checkpoint scores of `apoda.selection` (higher is better), by name."""


@dataclass
class Config:
    """A whole run. `method` holds the settings dataclass that the method named by
    `method.name` registered (apoda.registry.METHODS; source_only when none is named);
    `imports` are the user's Python files or modules that register their own methods,
    datasets or backbones (imported before the rest is checked)."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    imports: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method is None:
            self.method = METHODS.get(DEFAULT_METHOD).settings()


DEFAULT_METHOD = "source_only"
"""The method of a config whose `method` section names none."""


# -- checking nested dicts against the dataclasses -----------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the type hint `tp` (int, float, str, bool, Literal[...], list[...],
    a dataclass, X | None)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in typing.get_args(tp)):
            return value
        raise ApodaError(_literal_error(where, value, tp))
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(tp) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
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


def _method_settings(value: Any, where: str = "method") -> Any:
    """The settings dataclass of the method `value["name"]` names (missing: source_only),
    built from `value`; the registry knows each method's class (apoda.registry.METHODS)."""
    names = ", ".join(METHODS.names())
    if not isinstance(value, dict):
        raise ApodaError(f"{where}: expected a mapping with a name (one of {names}), got {value!r}")
    name = value.get("name", DEFAULT_METHOD)
    if not isinstance(name, str) or name not in METHODS:
        raise ApodaError(f"{where}.name: unknown {where} {name!r}; expected one of {names}")
    return _from_dict(METHODS.get(name).settings, value, where, tag=name)


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
        name: (
            _method_settings(value)
            if cls is Config and name == "method"
            else _coerce(value, known[name], f"{where}.{name}" if where else name)
        )
        for name, value in data.items()
    }
    return cls(**kwargs)


def _method_name(method: Any, default: str = "source_only") -> Any:
    return method.get("name", default) if isinstance(method, dict) else default


def _drop_foreign_method_keys(data: dict[str, Any]) -> dict[str, Any]:
    method = data.get("method")
    name = _method_name(method)
    cls = METHODS.get(name).settings if isinstance(name, str) and name in METHODS else None
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
    if data.get("imports"):
        imports = data["imports"]
        if not isinstance(imports, list):
            raise ApodaError(
                f"imports: expected a list of Python files or modules; got {imports!r}"
            )
        data = {**data, "imports": import_user_modules(imports)}
    if saved:
        data = _drop_foreign_method_keys(data)
    return _from_dict(Config, data, "")


def config_to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain nested dicts (what `config.yaml` in a run folder holds);
    `imports` only when the config has some."""
    data = dataclasses.asdict(config)
    if not data["imports"]:
        del data["imports"]
    return data


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


def _import_beside(name: Any, folder: Path) -> Any:
    """An `imports:` entry as an absolute path when it names a Python file relative to `folder`
    (modules and other values as they are; the check reports a wrong one)."""
    if isinstance(name, str) and name.endswith(".py") and not Path(name).is_absolute():
        return str((folder / name).resolve())
    return name


def _load_with_bases(path: Path, chain: tuple[Path, ...], shown: tuple[str, ...]) -> dict:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join((*shown[chain.index(resolved) :], str(path)))
        raise ApodaError(f"config files inherit from each other in a cycle: {cycle}")
    data = _read_yaml(path)
    if isinstance(data.get("imports"), list):  # a file named relative to this YAML
        data["imports"] = [_import_beside(name, path.parent) for name in data["imports"]]
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
