"""Registries: the name a user types (`method.name: asn`, `model.arch: vgg16`, `data.source:
gta5`) and what it builds. A method, a dataset or a backbone registers itself in its own file;
the config asks a registry for a name's settings without importing any implementation.

The built-in entries live in the modules each registry names; they are imported the first time
the registry is read, so `apoda.config` stays a leaf of the import graph. A user's own entries
come from the files or modules a config lists under `imports:` (`import_user_modules`)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from apoda.errors import ApodaError

T = TypeVar("T")
B = TypeVar("B", bound=Callable[..., Any])
USER_MODULE_PREFIX = "apoda_user_"
"""The module names a config's `imports:` files are imported under."""


class Registry(Generic[T]):
    """Entries of one kind by name. `builtins` are the modules whose import registers the
    shipped entries; they are imported on first read."""

    def __init__(self, kind: str, builtins: Sequence[str]) -> None:
        self.kind = kind
        self._builtins = tuple(builtins)
        self._loaded = False
        self._entries: dict[str, T] = {}

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtins:
                importlib.import_module(module)

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; a name taken by another entry is an error. The
        built-ins are registered first, so they are listed first and keep their names."""
        self._load_builtins()
        old = self._entries.get(name)
        if old is not None and not _same_definition(old, entry):
            raise ApodaError(
                f"{self.kind} {name!r} is registered twice ({_origin(old)}, {_origin(entry)})"
            )
        self._entries[name] = entry
        return entry

    def get(self, name: str, what: str | None = None) -> T:
        """The entry of `name`, or a one-line error naming the valid ones."""
        self._load_builtins()
        if name not in self._entries:
            raise ApodaError(
                f"{what or self.kind}: expected one of {', '.join(self.names())}; got {name!r} "
                "(your own: a file listed under `imports:` in the config, docs/extending.md)"
            )
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        """Every registered name, built-in first, in registration order."""
        self._load_builtins()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _same_definition(old: object, new: object) -> bool:
    """Whether `new` re-registers `old`: the same object, or the same user-file definition
    imported again from another path (the later one wins). A built-in name is never taken."""
    if old is new or _origin(old) == _origin(new):
        return True
    old_module, new_module = (_origin(e).split(".", 1) for e in (old, new))
    return (
        old_module[0].startswith(USER_MODULE_PREFIX)
        and new_module[0].startswith(USER_MODULE_PREFIX)
        and old_module[1] == new_module[1]
    )


def _origin(entry: object) -> str:
    """Where an entry was defined (module and name), for the twice-registered error."""
    target = getattr(entry, "cls", None) or getattr(entry, "build", entry)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


@dataclass(frozen=True)
class MethodEntry:
    """A method: its class and the dataclass of its `method.*` settings."""

    cls: type
    settings: type


@dataclass(frozen=True)
class BackboneEntry:
    """A backbone: `build(bn_mode)` makes it; `default_bn_mode` when the config names none;
    `new_layers` are parameter-name prefixes that pretrained weights need not hold."""

    build: Callable[[Any], Any]
    default_bn_mode: str
    new_layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset: `build(root, split, labels, **options)` reads one split of it (`labels`: the
    run's ClassScheme, or the ClassList `classes` gave; the options: docs/extending.md).

    `roles`: what a run may use it as (`source`, `target`); `source_split`: the split a source
    reads; `locate(data, folder)`: where a generated dataset is (else `data.source_root` or
    `data.target_root`); `classes(root, fallback)`: the class list a dataset of its own classes
    reads labels with (else `data.scheme`); `check(root, classes, role, data)`: a fast check
    before training; `scored`: `apoda eval` and `apoda data stats` take it; `default_scheme`:
    the scheme those read it with when no config names one."""

    build: Callable[..., Any]
    roles: tuple[str, ...] = ("source",)
    source_split: str = "train"
    locate: Callable[[Any, str | None], Any] | None = None
    classes: Callable[[Any, Any], Any] | None = None
    check: Callable[[Any, Any, str, Any], None] | None = None
    scored: bool = True
    default_scheme: str = "cityscapes19"


METHODS: Registry[MethodEntry] = Registry("method", ["apoda.methods"])
BACKBONES: Registry[BackboneEntry] = Registry("model.arch", ["apoda.models.backbones"])
DATASETS: Registry[DatasetEntry] = Registry("dataset", ["apoda.data.datasets"])


def register_method(name: str, settings: type) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a `Method` subclass under `name` with its settings dataclass
    (whose `name` field holds the same string)."""

    def add(cls: type[T]) -> type[T]:
        METHODS.add(name, MethodEntry(cls, settings))
        return cls

    return add


def register_backbone(
    name: str, default_bn_mode: str, new_layers: tuple[str, ...] = ()
) -> Callable[[B], B]:
    """Function decorator: register `build(bn_mode) -> Backbone` under `model.arch: name`."""

    def add(build: B) -> B:
        BACKBONES.add(name, BackboneEntry(build, default_bn_mode, new_layers))
        return build

    return add


DATASET_ROLES = ("source", "target")
_CANNOT = {"source": "be a source", "target": "be a target", "scored": "be scored"}


def register_dataset(
    name: str, roles: tuple[str, ...] = ("source",), **options: Any
) -> Callable[[B], B]:
    """Function decorator: register `build(root, split, labels, **options)` under the name a
    config's `data.source`/`data.target` types; `options`: DatasetEntry's other fields."""
    unknown = [role for role in roles if role not in DATASET_ROLES]
    if not roles or unknown:
        raise ApodaError(f"dataset {name!r}: roles must be among {DATASET_ROLES}, got {roles!r}")

    def add(build: B) -> B:
        DATASETS.add(name, DatasetEntry(build, tuple(roles), **options))
        return build

    return add


def dataset_names(role: str) -> tuple[str, ...]:
    """The datasets that can be a run's `role` (`source`, `target`), or that `apoda eval` and
    `apoda data stats` take (`scored`): built-in first, in registration order."""
    entries = {name: DATASETS.get(name) for name in DATASETS.names()}
    if role == "scored":
        return tuple(name for name, entry in entries.items() if entry.scored)
    return tuple(name for name, entry in entries.items() if role in entry.roles)


def get_dataset(name: str, role: str, what: str) -> DatasetEntry:
    """The dataset `name` if it can play `role`, else a one-line error naming `what` (the key
    or option), the datasets that can, and `name`."""
    names = dataset_names(role)
    if name not in names:
        hint = (
            f"{name!r} cannot {_CANNOT[role]}"
            if name in DATASETS
            else "your own: a file listed under `imports:` in the config, docs/extending.md"
        )
        raise ApodaError(f"{what}: expected one of {', '.join(names)}; got {name!r} ({hint})")
    return DATASETS.get(name)


def import_user_modules(names: Sequence[str], base: Path | None = None) -> list[str]:
    """Import a config's `imports:` (Python files, relative to `base`, or module names), so that
    their registrations exist before the config is checked; returns them as absolute paths or
    module names (what a saved config keeps, so `eval` and `--resume` find them again)."""
    resolved: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ApodaError(f"imports: expected Python file paths or module names, got {name!r}")
        if name.endswith(".py"):
            path = Path(name) if base is None else base / name
            resolved.append(str(_import_file(path.resolve())))
        else:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise ApodaError(f"imports: cannot import module {name!r} ({exc})") from None
            resolved.append(name)
    return resolved


def _import_file(path: Path) -> Path:
    """Import one Python file once per process (under a name made from its path)."""
    if not path.is_file():
        raise ApodaError(f"imports: {path} does not exist; expected a Python file")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"{USER_MODULE_PREFIX}{path.stem}_{digest}"
    if module_name in sys.modules:
        return path
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except ApodaError:
        del sys.modules[module_name]
        raise
    except Exception as exc:
        del sys.modules[module_name]
        raise ApodaError(f"imports: {path} failed to import: {type(exc).__name__}: {exc}") from exc
    return path
