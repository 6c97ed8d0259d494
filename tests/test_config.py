"""Typed configs: YAML + overrides, errors that list what is valid, built-in configs load."""

from __future__ import annotations

from pathlib import Path

import pytest

from apoda.config import Config, config_to_dict, load_config, save_config
from apoda.configs import builtin_configs, resolve_config
from apoda.errors import ApodaError


def test_every_builtin_config_loads_and_real_ones_use_the_fields_conventions() -> None:
    names = builtin_configs()
    assert {
        "minicity/source_only",
        "minicity/apoda",
        "gta5_to_cityscapes/apoda",
        "synthia_to_cityscapes/apoda",
        "gta5_to_cityscapes/apoda_vgg16",
    } <= set(names)
    for name in names:
        load_config(resolve_config(name))
    gta = load_config(resolve_config("gta5_to_cityscapes/apoda"))
    assert gta.data.source_size == [1280, 720] and gta.data.target_size == [1024, 512]
    assert gta.data.normalisation == "caffe" and gta.model.arch == "resnet101"
    assert (gta.method.attack.eps_adv, gta.method.attack.eps_l2, gta.method.attack.eps_seg) == (
        0.01,
        0.002,
        0.011,
    )
    assert (gta.method.alpha_cst, gta.method.alpha_ent, gta.method.alpha_ent_adv) == (
        0.2,
        0.002,
        0.0005,
    )
    syn = load_config(resolve_config("synthia_to_cityscapes/apoda"))
    assert syn.data.scheme == "synthia16" and syn.data.source_size == [1280, 760]


def test_overrides_are_typed(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "train.iterations=7",
            "optim.lr=1e-3",
            "data.crop=[32, 16]",
            "method.attack.name=fgspm",
            "model.pretrained=null",
        ],
    )
    assert cfg.train.iterations == 7 and cfg.optim.lr == 1e-3 and cfg.data.crop == [32, 16]
    assert cfg.method.attack.name == "fgspm" and cfg.model.pretrained is None
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    assert config_to_dict(load_config(path)) == config_to_dict(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.iterationz=3", "unknown config key train.iterationz; valid keys here: amp,"),
        ("bogus=1", "unknown config key bogus; valid keys here: data, method, model, name"),
        ("train.iterations=1.5", "train.iterations: expected int, got 1.5"),
        ("train.amp=maybe", "train.amp: expected bool, got 'maybe'"),
        ("data.crop=12", "data.crop: expected a list of int, got 12"),
        ("method.attack=3", "method.attack: expected a mapping of"),
        ("noequals", "expected key.sub=value"),
    ],
)
def test_bad_overrides_name_the_key_and_what_is_valid(override: str, message: str) -> None:
    with pytest.raises(ApodaError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_bad_yaml_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ApodaError, match=r"bad\.yaml is not valid YAML"):
        load_config(bad)
    bad.write_text("train:\n  seeed: 1\n")
    with pytest.raises(ApodaError, match=r"bad.yaml: unknown config key train\.seeed"):
        load_config(bad)
    with pytest.raises(ApodaError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    assert isinstance(load_config(None), Config)


def test_schedule_lengths_are_checked() -> None:
    with pytest.raises(ApodaError, match=r"train\.iterations must be at least 1, got 0"):
        load_config(None, ["train.iterations=0"])
    with pytest.raises(ApodaError, match=r"train.eval_every must be 0 \(off\) or more, got -5"):
        load_config(None, ["train.eval_every=-5"])
