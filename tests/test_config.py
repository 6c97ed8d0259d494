"""Typed configs: YAML + overrides, errors that list what is valid, built-in configs load."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import pytest

from apoda.config import (
    Config,
    ModelConfig,
    NormalisationMode,
    OptimConfig,
    SchemeName,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    load_config_data,
    save_config,
)
from apoda.configs import CONFIG_DIR, builtin_configs, resolve_config
from apoda.errors import ApodaError
from apoda.methods.adabn import AdaBNSettings
from apoda.methods.apoda import ApodaSettings
from apoda.methods.output_adversarial import OutputAdversarialSettings
from apoda.methods.source_only import SourceOnlySettings
from apoda.registry import METHODS


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
            "method.name=apoda",
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
        ("bogus=1", "unknown config key bogus; valid keys here: data, imports, method, model,"),
        ("train.iterations=1.5", "train.iterations: expected int, got 1.5"),
        ("train.amp=maybe", "train.amp: expected bool, got 'maybe'"),
        ("data.crop=12", "data.crop: expected a list of int, got 12"),
        ("method.name=apoda method.attack=3", "method.attack: expected a mapping of"),
        ("method.attack.name=none", "method.attack is not a setting of method 'source_only'"),
        ("noequals", "expected key.sub=value"),
    ],
)
def test_bad_overrides_name_the_key_and_what_is_valid(override: str, message: str) -> None:
    with pytest.raises(ApodaError) as info:
        load_config(None, override.split(" "))
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


def _error(overrides: list[str]) -> str:
    with pytest.raises(ApodaError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- the method section: one dataclass per method --------------------------------------------
def test_method_name_selects_its_dataclass_with_todays_defaults() -> None:
    assert isinstance(load_config(None).method, SourceOnlySettings)
    assert isinstance(load_config(None, ["method.seg_loss=wce"]).method, SourceOnlySettings)
    for name in ("asn", "advent", "minent", "advent_minent"):
        method = load_config(None, [f"method.name={name}"]).method
        assert isinstance(method, OutputAdversarialSettings) and method.name == name
    apoda = load_config(None, ["method.name=apoda"]).method
    assert isinstance(apoda, ApodaSettings) and apoda.attack.name == "i_fgspm"
    assert config_to_dict(load_config(None, ["method.name=adabn"]))["method"] == {"name": "adabn"}
    assert (SourceOnlySettings().seg_loss, SourceOnlySettings().lambda_seg_aux) == ("ce", 0.1)
    adv = OutputAdversarialSettings()
    assert (adv.name, adv.lambda_ent, adv.discriminator_width) == ("asn", 0.0, 64)
    assert (adv.lambda_adv, adv.lambda_adv_aux, adv.lambda_seg_aux) == (0.001, 0.0002, 0.1)
    ap = ApodaSettings()
    assert (ap.seg_loss, ap.discriminator_width, ap.alpha_cst) == ("ce", 64, 0.2)
    assert (ap.alpha_ent, ap.alpha_ent_adv) == (0.002, 0.0005)
    assert set(METHODS.names()) == {
        "source_only", "asn", "advent", "minent", "advent_minent", "apoda", "adabn", "dacs"
    }  # fmt: skip
    assert AdaBNSettings().name == "adabn"


@pytest.mark.parametrize(
    ("method", "key", "settings"),
    [
        ("source_only", "lambda_adv", "its settings: lambda_ent, lambda_seg_aux, seg_loss"),
        ("asn", "alpha_cst", "its settings: discriminator_width, lambda_adv, lambda_adv_aux,"),
        ("advent", "attack", "its settings: discriminator_width, lambda_adv,"),
        ("apoda", "lambda_ent", "its settings: alpha_cst, alpha_ent, alpha_ent_adv, attack,"),
        ("adabn", "seg_loss", "it has no setting but name"),
    ],
)
def test_a_key_the_method_does_not_own_is_an_error(method: str, key: str, settings: str) -> None:
    message = _error([f"method.name={method}", f"method.{key}=0.001"])
    assert f"method.{key} is not a setting of method {method!r}; {settings}" in message


def test_unknown_method_name_lists_the_valid_ones() -> None:
    message = _error(["method.name=dann"])
    assert (
        "method.name: unknown method 'dann'; expected one of source_only, asn, advent," in message
    )
    assert "apoda, adabn" in message


# -- Literals --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "bad", "allowed"),
    [
        ("model.arch", "resnet50", "resnet101, vgg16, small"),
        ("model.cut", "layer5", "pixel, layer1, layer2, layer3, layer4"),
        ("model.bn_mode", "sync", "frozen, legacy, train"),
        ("method.seg_loss", "focal", "ce, lovasz, ce+lovasz, wce"),
        ("train.nonfinite", "foo", "stop, skip"),
        ("data.normalisation", "zscore", "caffe, imagenet"),
        ("data.scheme", "cityscapes16", "cityscapes19, synthia16"),
        ("data.source", "gta6", "gta5, synthia, minicity, cityscapes, minicity_target,"),
        ("data.target", "mapillary", "minicity, cityscapes, folder"),
        ("method.attack.name", "pgd", "none, i_fgspm, i_fgsm, fgspm, mi_fgspm"),
        ("method.attack.eps_mode", "scaled", "absolute, relative"),
        ("method.attack.seg_objective", "wce", "lovasz, ce"),
        ("optim.segmenter_optimizer", "adam", "sgd, adamw"),
    ],
)
def test_every_enumeration_is_checked_and_lists_its_values(
    key: str, bad: str, allowed: str
) -> None:
    extra = ["method.name=apoda"] if key.startswith("method.attack") else []
    message = _error([*extra, f"{key}={bad}"])
    assert f"{key}: expected one of {allowed}" in message and repr(bad) in message


def test_the_literals_match_the_modules_that_use_them() -> None:
    from apoda.data.classes import get_scheme
    from apoda.data.transforms import NORMALISATION_MODES
    from apoda.registry import dataset_names

    assert typing.get_args(NormalisationMode) == NORMALISATION_MODES
    assert [get_scheme(s).name for s in typing.get_args(SchemeName)] == [
        "cityscapes19",
        "synthia16",
    ]
    assert dataset_names("source") == (
        "gta5", "synthia", "minicity", "cityscapes", "minicity_target", "minicity_randomised",
        "folder",
    )  # fmt: skip
    assert dataset_names("target") == ("minicity", "cityscapes", "folder")


# -- values ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=.nan", "optim.lr: expected a finite number, got nan"),
        ("optim.lr=.inf", "optim.lr: expected a finite number, got inf"),
        ("optim.lr=nan", "optim.lr: expected a finite number, got 'nan'"),
        ("optim.lr=-.inf", "optim.lr: expected a finite number, got -inf"),
        ("optim.lr=0", "optim.lr must be > 0, got 0.0"),
        ("optim.lr=-1e-3", "optim.lr must be > 0, got -0.001"),
        ("optim.d_lr=0", "optim.d_lr must be > 0, got 0.0"),
        ("optim.momentum=1", "optim.momentum must be in [0, 1), got 1.0"),
        ("optim.momentum=-0.1", "optim.momentum must be in [0, 1), got -0.1"),
        ("optim.weight_decay=-1", "optim.weight_decay must be >= 0, got -1.0"),
        ("optim.poly_power=-1", "optim.poly_power must be >= 0, got -1.0"),
        ("optim.d_betas=[0.9, .nan]", "optim.d_betas[1]: expected a finite number, got nan"),
        ("optim.betas=[0.9, 1.0]", "optim.betas must be two numbers in [0, 1), got [0.9, 1.0]"),
        ("optim.betas=[0.9]", "optim.betas must be two numbers in [0, 1), got [0.9]"),
        ("data.batch_size=0", "data.batch_size must be at least 1, got 0"),
        ("data.batch_size=-3", "data.batch_size must be at least 1, got -3"),
        ("data.eval_batch_size=0", "data.eval_batch_size must be at least 1, got 0"),
        ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
        ("data.max_val=0", "data.max_val must be at least 1 (or null), got 0"),
        ("data.max_source=-2", "data.max_source must be at least 1 (or null), got -2"),
        ("data.crop_cat_max_ratio=0", "data.crop_cat_max_ratio must be in (0, 1] (1: off), got 0"),
        (
            "data.crop_cat_max_ratio=0.75",
            "data.crop_cat_max_ratio must be 1 without a data.crop, got 0.75",
        ),
        (
            "data.rcs_min_crop_ratio=0.5",
            "data.rcs_min_crop_ratio must be 0, or > 0 with data.rare_class_sampling and a "
            "data.crop, got 0.5",
        ),
        ("train.log_every=0", "train.log_every must be at least 1, got 0"),
        ("train.checkpoint_every=0", "train.checkpoint_every must be at least 1, got 0"),
        ("train.samples=-1", "train.samples must be 0 (off) or more, got -1"),
    ],
)
def test_values_out_of_range_name_the_key_the_value_and_what_is_expected(
    override: str, message: str
) -> None:
    assert message in _error([override])


@pytest.mark.parametrize(
    ("method", "override", "message"),
    [
        ("source_only", "lambda_ent=-0.1", "method.lambda_ent must be >= 0, got -0.1"),
        ("asn", "lambda_adv=-1", "method.lambda_adv must be >= 0, got -1.0"),
        ("asn", "lambda_adv_aux=.inf", "method.lambda_adv_aux: expected a finite number, got inf"),
        ("advent", "discriminator_width=0", "method.discriminator_width must be at least 1, got 0"),
        ("apoda", "alpha_cst=-0.2", "method.alpha_cst must be >= 0, got -0.2"),
        ("apoda", "alpha_ent_adv=-1", "method.alpha_ent_adv must be >= 0, got -1.0"),
        ("apoda", "attack.iterations=0", "attack.iterations must be >= 1, got 0"),
        ("apoda", "attack.eps_l2=-0.002", "attack.eps_l2 must be >= 0, got -0.002"),
        (
            "apoda",
            "attack.eps_seg=.nan",
            "method.attack.eps_seg: expected a finite number, got nan",
        ),
    ],
)
def test_method_weights_are_checked(method: str, override: str, message: str) -> None:
    assert message in _error([f"method.name={method}", f"method.{override}"])


def test_select_best_needs_evaluations_to_select_among() -> None:
    message = _error(["train.select_best=true", "train.eval_every=0"])
    assert "train.select_best=true needs train.eval_every >= 1" in message
    assert load_config(None, ["train.eval_every=0"]).train.eval_every == 0  # end only: fine
    assert "`eval_every: 0` evaluates only once, at the end" in (TrainConfig.__doc__ or "")


def test_the_checks_hold_for_configs_built_in_code() -> None:
    with pytest.raises(ApodaError, match=r"optim\.lr must be > 0, got 0"):
        OptimConfig(lr=0)
    with pytest.raises(ApodaError, match=r"optim\.lr: expected a finite number, got nan"):
        OptimConfig(lr=math.nan)
    with pytest.raises(ApodaError, match=r"model\.arch: expected one of resnet101, vgg16, small"):
        ModelConfig(arch="resnet50")  # type: ignore[arg-type]
    with pytest.raises(ApodaError, match="select_best"):
        TrainConfig(select_best=True, eval_every=0)
    with pytest.raises(ApodaError, match=r"method\.discriminator_width must be at least 1"):
        ApodaSettings(discriminator_width=0)
    with pytest.raises(ApodaError, match=r"method\.seg_loss: expected one of"):
        SourceOnlySettings(seg_loss="dice")  # type: ignore[arg-type]


# -- YAML files ------------------------------------------------------------------------------
def test_an_empty_yaml_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    for text in ("", "# only a comment\n\n"):
        empty.write_text(text)
        with pytest.raises(ApodaError, match=r"config file .*empty\.yaml is empty; expected a map"):
            load_config(empty)


def test_a_key_given_twice_is_an_error_naming_it_and_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("optim:\n  lr: 0.01\n  momentum: 0.9\n  lr: 0.02\n")
    with pytest.raises(ApodaError) as info:
        load_config(path)
    message = str(info.value)
    assert "twice.yaml" in message and "key 'lr' is given twice" in message
    assert "(line 2 and line 4)" in message and "\n" not in message
    path.write_text("train:\n  iterations: 5\ntrain:\n  seed: 1\n")
    with pytest.raises(ApodaError, match=r"key 'train' is given twice .*\(line 1 and line 3\)"):
        load_config(path)


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: café\n".encode("latin-1"))
    with pytest.raises(ApodaError) as info:
        load_config(path)
    assert "latin1.yaml is not UTF-8 text" in str(info.value) and "\n" not in str(info.value)


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  iterations: [1, 2\n")
    with pytest.raises(ApodaError) as info:
        load_config(path)
    assert "bad.yaml is not valid YAML" in str(info.value) and "\n" not in str(info.value)


# -- inheritance -----------------------------------------------------------------------------
def test_base_is_merged_under_the_child(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "_base.yaml").write_text(
        "name: base\noptim:\n  lr: 0.01\n  momentum: 0.8\n"
        "method:\n  name: asn\n  lambda_adv: 0.002\n  discriminator_width: 32\n"
    )
    child = tmp_path / "sub" / "child.yaml"
    child.write_text(
        "_base_: ../_base.yaml\nname: child\noptim:\n  lr: 0.02\nmethod:\n  lambda_ent: 0.1\n"
    )
    cfg = load_config(child)
    assert cfg.name == "child" and (cfg.optim.lr, cfg.optim.momentum) == (0.02, 0.8)
    assert isinstance(cfg.method, OutputAdversarialSettings)
    assert (cfg.method.lambda_adv, cfg.method.lambda_ent, cfg.method.discriminator_width) == (
        0.002,
        0.1,
        32,
    )
    # the same method named again: still merged
    child.write_text("_base_: ../_base.yaml\nmethod:\n  name: asn\n  seg_loss: lovasz\n")
    cfg = load_config(child)
    assert (cfg.method.seg_loss, cfg.method.discriminator_width) == ("lovasz", 32)
    assert "_base_" not in load_config_data(child)


def test_a_child_naming_another_method_replaces_the_base_method(tmp_path: Path) -> None:
    (tmp_path / "_base.yaml").write_text(
        "method:\n  name: asn\n  lambda_adv: 0.002\n  discriminator_width: 32\n"
    )
    child = tmp_path / "apoda.yaml"
    child.write_text("_base_: _base.yaml\nmethod:\n  name: apoda\n  alpha_cst: 0.5\n")
    cfg = load_config(child)  # asn's lambda_adv does not leak into apoda
    assert isinstance(cfg.method, ApodaSettings)
    assert (cfg.method.alpha_cst, cfg.method.discriminator_width) == (0.5, 64)
    # the same rule for overrides: the file's method section gives way to the named method's
    cfg = load_config(child, ["method.lambda_ent=0.01", "method.name=minent"])
    assert isinstance(cfg.method, OutputAdversarialSettings) and cfg.method.name == "minent"
    assert (cfg.method.lambda_ent, cfg.method.discriminator_width) == (0.01, 64)


def test_a_base_cycle_names_the_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\nname: b\n")
    with pytest.raises(ApodaError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("_base_: self.yaml\n")
    with pytest.raises(ApodaError, match=r"cycle: .*self\.yaml -> .*self\.yaml"):
        load_config(tmp_path / "self.yaml")
    (tmp_path / "orphan.yaml").write_text("_base_: nowhere.yaml\n")
    with pytest.raises(ApodaError, match=r"orphan\.yaml: its _base_ .*nowhere\.yaml does not"):
        load_config(tmp_path / "orphan.yaml")


# -- configs saved by earlier versions -------------------------------------------------------
LEGACY_METHOD = {
    "name": "source_only",
    "seg_loss": "ce",
    "discriminator_width": 64,
    "lambda_adv": 0.001,
    "lambda_adv_aux": 0.0002,
    "lambda_seg_aux": 0.1,
    "lambda_ent": 0.0,
    "alpha_cst": 0.2,
    "alpha_ent": 0.002,
    "alpha_ent_adv": 0.0005,
    "attack": {"name": "i_fgspm", "iterations": 3},
}


def test_saved_configs_of_earlier_versions_drop_the_keys_their_method_ignored(
    tmp_path: Path,
) -> None:
    legacy = {**config_to_dict(Config()), "method": dict(LEGACY_METHOD)}
    with pytest.raises(ApodaError, match=r"method\.alpha_cst is not a setting of method"):
        config_from_dict(legacy)
    cfg = config_from_dict(legacy, saved=True)
    assert config_to_dict(cfg)["method"] == {
        "name": "source_only",
        "seg_loss": "ce",
        "lambda_seg_aux": 0.1,
        "lambda_ent": 0.0,
    }
    apoda = config_from_dict(
        {"method": {**LEGACY_METHOD, "name": "apoda", "alpha_cst": 0.3}}, saved=True
    )
    assert isinstance(apoda.method, ApodaSettings) and apoda.method.alpha_cst == 0.3
    # only foreign method keys go: everything else is still checked
    with pytest.raises(ApodaError, match=r"optim\.lr must be > 0"):
        config_from_dict({"optim": {"lr": 0}, "method": dict(LEGACY_METHOD)}, saved=True)
    with pytest.raises(ApodaError, match=r"unknown method 'gone'"):
        config_from_dict({"method": {**LEGACY_METHOD, "name": "gone"}}, saved=True)
    path = tmp_path / "config.yaml"
    path.write_text(
        "method:\n  name: adabn\n  seg_loss: ce\n  lambda_adv: 0.001\nmodel:\n  bn_mode: train\n"
    )
    assert config_to_dict(load_config(path, saved=True))["method"] == {"name": "adabn"}


# -- built-in configs ------------------------------------------------------------------------
def test_every_builtin_config_loads_and_saves_back_the_same(tmp_path: Path) -> None:
    names = builtin_configs()
    assert not any(n.split("/")[-1].startswith("_") for n in names)
    assert len(list(CONFIG_DIR.rglob("_*.yaml"))) >= 3
    for name in names:
        cfg = load_config(resolve_config(name))
        path = tmp_path / "saved.yaml"
        save_config(cfg, path)
        assert config_to_dict(load_config(path)) == config_to_dict(cfg), name
        assert "_base_" in resolve_config(name).read_text(), name  # holds only its differences


@pytest.mark.parametrize(
    "family",
    [
        "minicity",
        "minicity_imagenet",
        "minicity_128x256",
        "gta5_to_cityscapes",
        "synthia_to_cityscapes",
    ],
)
def test_adabn_configs_equal_the_suites_overrides(family: str) -> None:
    new = config_to_dict(load_config(resolve_config(f"{family}/adabn")))
    old = config_to_dict(
        load_config(
            resolve_config(f"{family}/source_only_continue"),
            ["method.name=adabn", "model.bn_mode=train"],
        )
    )
    assert new["method"] == {"name": "adabn"} and new["model"]["bn_mode"] == "train"
    assert {**new, "name": None} == {**old, "name": None}


def test_builtin_steps_2_3_share_the_families_settings() -> None:
    mini = {n: load_config(resolve_config(f"minicity/{n}")) for n in ("asn", "apoda")}
    assert mini["asn"].model.bn_mode == "frozen" and mini["apoda"].model.bn_mode == "train"
    assert isinstance(mini["asn"].method, OutputAdversarialSettings)
    assert mini["asn"].method.discriminator_width == 32 and mini["asn"].data.batch_size == 8
    pre = load_config(resolve_config("minicity/pretrain"))
    assert pre.data.source == "minicity_randomised" and pre.train.eval_every == 0
    vgg = load_config(resolve_config("gta5_to_cityscapes/apoda_vgg16"))
    assert vgg.model.arch == "vgg16" and vgg.name == "gta5_to_cityscapes-apoda_vgg16"
    assert isinstance(vgg.method, ApodaSettings) and vgg.method.seg_loss == "lovasz"


# -- the command line ------------------------------------------------------------------------
def test_apoda_train_prints_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from apoda.cli import main

    path = tmp_path / "run.yaml"
    path.write_text("method:\n  name: apoda\n  lambda_ent: 0.001\n")
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "run.yaml" in err and "method.lambda_ent is not a setting of method 'apoda'" in err
    assert main(["train", str(path), "method.name=asn", "optim.lr=.nan"]) == 2
    assert "optim.lr: expected a finite number, got nan" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_users_yaml_builds_on_a_builtin_config(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("_base_: minicity/apoda\ntrain:\n  iterations: 7\n")
    builtin = load_config(resolve_config("minicity/apoda"))
    assert config_to_dict(load_config(mine)) == config_to_dict(
        dataclasses.replace(builtin, train=dataclasses.replace(builtin.train, iterations=7))
    )
    # a local file of that name comes first; builtin: always means the shipped config
    (tmp_path / "minicity").mkdir()
    (tmp_path / "minicity" / "apoda.yaml").write_text("name: local\n")
    assert load_config(mine).name == "local"
    mine.write_text("_base_: builtin:minicity/apoda\n")
    assert load_config(mine).name == builtin.name
    mine.write_text("_base_: minicity/nope\n")
    with pytest.raises(ApodaError, match=r"mine\.yaml: its _base_ .*minicity/nope does not exist"):
        load_config(mine)
