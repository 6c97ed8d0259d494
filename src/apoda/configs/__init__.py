"""Built-in configs (YAML, shipped with the package): `minicity/apoda`, `gta5_to_cityscapes/...`.

Each family (folder) has a base file whose name starts with `_` (`_base.yaml`, and for MiniCity
`_steps23.yaml`) holding its shared settings; every config inherits from a base (`_base_:`) and
holds only its differences. Base files are not configs of their own and are not listed."""

from __future__ import annotations

from pathlib import Path

from apoda.errors import ApodaError

CONFIG_DIR = Path(__file__).parent

SUITE_FAMILIES = {
    "minicity": "minicity",
    "minicity_imagenet": "minicity_imagenet",
    "minicity_128x256": "minicity_128x256",
    "gta5": "gta5_to_cityscapes",
    "synthia": "synthia_to_cityscapes",
    "folder": "folder",
}
"""`apoda suite --data NAME`: the config family each name's tables are built from."""


def builtin_configs() -> list[str]:
    """Names of the shipped configs, e.g. `minicity/source_only` (base files `_*.yaml` left out)."""
    return sorted(
        str(p.relative_to(CONFIG_DIR).with_suffix(""))
        for p in CONFIG_DIR.rglob("*.yaml")
        if not p.name.startswith("_")
    )


BUILTIN_PREFIX = "builtin:"
"""`_base_: builtin:minicity/apoda` names the built-in config even where a local file has
that name."""


def builtin_config_file(name: str) -> Path | None:
    """The file of built-in config `name` (with or without `.yaml`, with or without the
    `builtin:` prefix; base files such as `minicity/_steps23` included), None if there is none."""
    name = name.removeprefix(BUILTIN_PREFIX)
    candidate = CONFIG_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    return candidate if candidate.is_file() else None


def resolve_config(name_or_path: str) -> Path:
    """A YAML path as given, else a built-in config by name (with or without `.yaml`)."""
    path = Path(name_or_path)
    if path.is_file() and not name_or_path.startswith(BUILTIN_PREFIX):
        return path
    builtin = builtin_config_file(name_or_path)
    if builtin is not None:
        return builtin
    raise ApodaError(
        f"config {name_or_path!r} is neither a file nor a built-in config; built-in: "
        f"{', '.join(builtin_configs())}"
    )
