"""Suites: rows share step 1, tables carry mean ± std over seeds, re-runs train nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from apoda.cli import main
from apoda.config import load_config
from apoda.configs import builtin_configs, resolve_config
from apoda.engine import trainer
from apoda.errors import ApodaError
from apoda.methods import RunContext, build_method
from apoda.models.build import architecture_from_config
from apoda.runs import config_differences
from apoda.suites import (
    FAMILIES,
    MATCHED,
    SELF_TRAINING_ITERATIONS,
    STEP1,
    SUITES,
    Row,
    SuiteResult,
    row_config,
    rows_for_family,
    run_suite,
    shared_runs,
    suite_rows,
    write_tables,
)
from conftest import TINY

TWO_ROWS = (STEP1, MATCHED, Row("asn", "ASN", "asn"))


@pytest.mark.slow
def test_two_seed_suite_writes_mean_std_and_resumes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "suite"
    extra = [*TINY, "train.iterations=2", "train.eval_every=0"]
    run_suite("tiny", out, seeds=2, overrides=extra, argv=["apoda", "suite", "tiny"], rows=TWO_ROWS)
    table = (out / "table.md").read_text()
    assert "apoda suite tiny" in table and "±" in table
    for label in ("source only (step 1)", "source only (matched)", "| ASN |"):
        assert label in table
    suite = json.loads((out / "suite.json").read_text())
    assert suite["summary"]["rows"]["asn"]["seeds"] == 2
    assert len(suite["runs"]["asn"]) == 2
    csv_lines = (out / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,ours,road") and len(csv_lines) == 4
    # the ASN row started from its seed's step-1 checkpoint
    cfg = (out / "seed1" / "asn" / "config.yaml").read_text()
    assert str(out / "seed1" / "step1" / "checkpoints" / "last.pt") in cfg

    calls = []
    monkeypatch.setattr(trainer.Trainer, "fit", lambda self: calls.append(self) or {})
    run_suite("tiny", out, seeds=2, overrides=extra, rows=TWO_ROWS)
    assert calls == []  # every row was finished: nothing trained again
    # a finished row trained with another config is never passed off as this suite's row
    with pytest.raises(ApodaError, match=r"step1 finished with a different config .*optim.lr"):
        run_suite("tiny", out, seeds=2, overrides=[*extra, "optim.lr=0.5"], rows=TWO_ROWS)


def test_suite_definitions_carry_matched_controls() -> None:
    for name, rows in SUITES.items():
        keys = {r.key for r in rows}
        assert {"step1", "source_only"} <= keys, name
        assert all(r.init is None or r.init in keys for r in rows), name
    assert {"apoda_none", "apoda"} <= {r.key for r in SUITES["table3"]}
    assert any(r.ours for r in SUITES["table3"])
    # table1 separates what batch-norm statistics alone do from adaptation (all marked ours)
    bn_rows = {
        r.key: r for r in SUITES["table1"] if r.key in {"asn_bn_train", "adabn", "apoda_adabn"}
    }
    assert len(bn_rows) == 3 and all(r.ours for r in bn_rows.values())
    assert bn_rows["apoda_adabn"].init == "adabn"
    # every cut's control is its own row with the attack off: below layer4 (F trains backbone
    # stages with D) a new row of ours; at layer4, APODA's attack-off row of tables 1 and 3
    t4 = {r.key: r for r in SUITES["table4"]}
    twins = {f"cut_{cut}": f"cut_{cut}_none" for cut in ("pixel", "layer1", "layer2", "layer3")}
    for key, off_key in {**twins, "apoda": "apoda_none"}.items():
        row, off = t4[key], t4[off_key]
        assert set(off.overrides) - set(row.overrides) == {"method.attack.name=none"}, key
        assert set(row.overrides) <= set(off.overrides) and off.config == row.config, key
        assert off.ours == (key in twins) and not row.ours, key


def test_every_control_is_a_row_of_its_suite() -> None:
    for name, rows in SUITES.items():
        keys = {r.key for r in rows}
        for row in rows:
            assert row.control is None or (row.control in keys and row.control != row.key), (
                name,
                row.key,
            )
    controls = {r.key: r.control for r in SUITES["selftraining"]}
    assert controls["dacs"] == "source_only_long" and controls["dacs_perturb"] == "dacs"
    assert controls["dacs_rcs_fd"] == "dacs_rcs" and controls["apoda"] == "apoda_none"
    assert controls["step1"] is None and controls["oracle"] is None


@pytest.mark.parametrize(
    ("family", "step1"),
    [("minicity", 1000), ("minicity_128x256", 1500), ("minicity_imagenet", 1500)],
)
def test_the_oracle_trains_as_long_as_the_longest_row(
    family: str, step1: int, tmp_path: Path
) -> None:
    """Step 1 and then a self-training row: the family's step-1 length + the budget; the
    suite's own overrides (--fast, a user's train.iterations) still win."""
    rows = {r.key: r for r in SUITES["selftraining"]}
    config = row_config(rows["oracle"], family, tmp_path, 0)
    assert row_config(rows["step1"], family, tmp_path, 0).train.iterations == step1
    longest = max(
        step1 + row_config(r, family, tmp_path, 0).train.iterations
        for r in rows.values()
        if r.init is not None
    )
    assert config.train.iterations == longest == step1 + SELF_TRAINING_ITERATIONS
    assert config.data.source == "minicity_target"
    short = row_config(rows["oracle"], family, tmp_path, 0, ["train.iterations=7"])
    assert short.train.iterations == 7


def _metrics(miou: float, tail: float | None) -> dict[str, Any]:
    """A run's metrics.json with two classes, the second the tail."""
    return {
        "class_names": ["road", "bike"],
        "tail_classes": ["bike"],
        "miou": miou,
        "head_miou": miou + 1,
        "tail_miou": tail,
        "per_class": {"road": miou + 1, "bike": tail},
    }


def test_tables_pair_each_row_with_its_control_and_report_the_gap_it_closes(
    tmp_path: Path,
) -> None:
    """Two seeds: step 1 at 20 and 22, the oracle at 60 and 62 (the gap: 21 to 61), DACS at 30
    and 35 against its control at 24 and 23: +6 and +12, 9 on average; DACS closes
    (32.5 - 21) / 40 = 28.75 % of the gap."""
    rows = (
        STEP1,
        Row("source_only_long", "control", "source_only_continue", control="step1"),
        Row("dacs", "DACS", "dacs", control="source_only_long"),
        Row("oracle", "oracle", "source_only", init=None),
    )
    result = SuiteResult("selftraining", rows)
    result.metrics = {
        "step1": [_metrics(20, 2), _metrics(22, 3)],
        "source_only_long": [_metrics(24, 4), _metrics(23, None)],
        "dacs": [_metrics(30, 9), _metrics(35, 8)],
        "oracle": [_metrics(60, 50), _metrics(62, 52)],
    }
    write_tables(result, tmp_path, ["apoda", "suite", "selftraining"])
    summary = json.loads((tmp_path / "suite.json").read_text())["summary"]
    dacs = summary["rows"]["dacs"]
    assert dacs["paired"] == {
        "control": "source_only_long",
        "miou": [6, 12],
        "miou_mean": 9,
        "tail_miou": [5, None],  # a seed without a tail mean pairs to none
        "tail_miou_mean": 5,
    }
    assert dacs["gap_closed"] == (32.5 - 21) / 40
    assert (
        summary["rows"]["oracle"]["gap_closed"] == 1 and "paired" not in summary["rows"]["oracle"]
    )
    assert summary["gap"] == {"from": "step1", "to": "oracle", "from_miou": 21, "to_miou": 61}
    table = (tmp_path / "table.md").read_text()
    assert "| DACS | " in table and "| 29 % |" in table and "| 100 % |" in table
    assert "| DACS | control | +6.00, +12.00 | +9.00 | +5.0, - | +5.00 |" in table
    # without an oracle: no gap column
    result.rows, _ = rows[:3], result.metrics.pop("oracle")
    write_tables(result, tmp_path, ["apoda", "suite", "selftraining"])
    assert "gap closed" not in (tmp_path / "table.md").read_text()


def test_a_self_training_rows_probe_goes_into_the_suites_files(tmp_path: Path) -> None:
    """The teacher's pseudo-label probe at each evaluation of a DACS row is in suite.json, and
    its last evaluation in table.md (accuracy, the settling iteration, tail recall)."""
    out = tmp_path / "suite"
    extra = [*TINY, "train.iterations=2", "train.eval_every=1", "train.probe_images=4"]
    assert main(["suite", "selftraining", *extra, "--out", str(out), "--rows", "dacs"]) == 0
    suite = json.loads((out / "suite.json").read_text())
    assert list(suite["probe"]) == ["dacs"]
    (records,) = suite["probe"]["dacs"]  # one seed
    assert [r["iteration"] for r in records] == [1, 2]
    assert all(0 <= r["accuracy"] <= 1 and "per_class" in r for r in records)
    last = suite["runs"]["dacs"][0]["pseudo_labels"]  # the run's metrics: its last probe
    assert records[-1] == {"iteration": 2, "miou": records[-1]["miou"], **last}
    table = (out / "table.md").read_text()
    assert "| row | accuracy | above threshold | settled at |" in table
    assert f"| DACS | {records[-1]['accuracy']:.2f} |" in table


def test_bad_suite_arguments(tmp_path: Path) -> None:
    with pytest.raises(ApodaError, match="unknown suite 'table9'"):
        run_suite("table9", tmp_path)
    with pytest.raises(ApodaError, match="--data 'kitti'"):
        run_suite("table1", tmp_path, data="kitti")


# The loss term each positive weight adds to a step's log: a weight set by a suite row must
# show up in what the method trains, not only in its config.
WEIGHT_TERMS = {
    "lambda_ent": "loss/ent_target",
    "lambda_adv": "loss/adv_main",
    "alpha_cst": "loss/cst",
    "alpha_ent": "loss/ent_target",
    "alpha_ent_adv": "loss/ent_target_adv",
}


def _value_at(config: object, dotted: str) -> object:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_row_of_every_suite_builds_and_its_overrides_reach_the_method(
    family: str, tmp_path: Path
) -> None:
    """Each row's overrides arrive in the built config and its method; on MiniCity each row
    also takes one step and logs the term of every positive weight it was given (the
    "ASN + Lovász + entropy" row once trained no entropy)."""
    gen = torch.Generator().manual_seed(0)
    source = {
        "image": torch.randn(2, 3, 32, 64, generator=gen),
        "label": torch.randint(0, 19, (2, 32, 64), generator=gen),
    }
    target = {"image": torch.randn(2, 3, 32, 64, generator=gen)}
    for name, rows in SUITES.items():
        for row in rows_for_family(rows, FAMILIES[family], ()):
            config = row_config(row, FAMILIES[family], tmp_path, seed=1)
            where = f"{name}/{row.key} ({family})"
            assert config.train.seed == 1, where
            for override in row.overrides:
                key, _, raw = override.partition("=")
                assert _value_at(config, key) == yaml.safe_load(raw), (where, override)
            assert (config.model.init_from is None) == (row.init is None), where
            if family != "minicity":
                continue
            torch.manual_seed(0)
            segmenter = architecture_from_config(config, 19)
            method = build_method(segmenter, config, torch.device("cpu"))
            assert method.name == config.method.name, where
            if config.method.name == "adabn":
                continue
            method.prepare(RunContext(tuple(f"c{i}" for i in range(19)), {}))
            log = method.train_step(source, target, 0)
            for weight, term in WEIGHT_TERMS.items():
                if getattr(config.method, weight, 0.0) > 0:
                    assert term in log, (where, weight)


def test_rows_option_runs_the_rows_asked_for_and_the_rows_they_start_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "suite"
    extra = [*TINY, "train.iterations=1", "train.eval_every=0"]
    assert main(["suite", "table1", *extra, "--out", str(out), "--rows", "apoda_adabn"]) == 0
    # apoda_adabn starts from adabn, which starts from step 1: those three and no other
    assert sorted(p.name for p in (out / "seed0").iterdir()) == ["adabn", "apoda_adabn", "step1"]
    table = (out / "table.md").read_text()
    assert "APODA from AdaBN" in table and "| ASN |" not in table
    assert main(["suite", "table1", "--out", str(out), "--rows", "apoda,nope"]) == 2
    err = capsys.readouterr().err
    assert "--rows nope: not rows of this suite" in err and "apoda_none" in err


def test_the_feature_distance_row_is_left_out_where_g_trains_from_scratch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DAFormer's feature distance pulls G towards its ImageNet features: only the ImageNet
    family's self-training table has the row; asked for by name elsewhere, it is an error."""
    scratch = [r.key for r in suite_rows("selftraining", (), "minicity_128x256")]
    assert "dacs_rcs" in scratch and "dacs_rcs_fd" not in scratch
    assert "[dacs_rcs_fd] left out: it needs an ImageNet-pretrained G" in capsys.readouterr().out
    imagenet = {r.key: r for r in suite_rows("selftraining", (), "minicity_imagenet")}
    config = row_config(imagenet["dacs_rcs_fd"], "minicity_imagenet", tmp_path, 0)
    assert config.method.imnet_feature_dist_lambda == 0.005 and config.data.rare_class_sampling
    things = config.method.imnet_feature_dist_classes
    assert (
        things is not None and len(things) == 10 and things[:2] == ["traffic light", "traffic sign"]
    )
    assert things[2:4] == ["person", "rider"] and things[-1] == "bicycle" and "road" not in things
    # the user's own weights make the row fit again
    with_weights = suite_rows("selftraining", (), "minicity", ["model.pretrained=my.pt"])
    assert "dacs_rcs_fd" in {r.key for r in with_weights}
    out = tmp_path / "suite"
    assert main(["suite", "selftraining", "--out", str(out), "--rows", "dacs_rcs_fd"]) == 2
    err = capsys.readouterr().err
    assert "--rows dacs_rcs_fd: it needs an ImageNet-pretrained G (model.pretrained)" in err
    assert not (out / "seed0").exists()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rows_with_the_same_config_share_one_run(family: str) -> None:
    """APODA's L_seg is CE on MiniCity and Lovász on GTA5 and SYNTHIA, so one of table 5's rows is
    APODA's own config there: it shares APODA's run. No other rows do, unless the suite's extra
    overrides make them equal."""
    same = {k: r.key for k, r in shared_runs([], FAMILIES[family]).items() if r.key != k}
    twin = "s_pert_lovasz_ent" if family in {"gta5", "synthia"} else "s_pert_ent"
    assert same == {twin: "apoda"}
    # an override for every row makes the rows it erases the difference of share runs, and an
    # override that does not fit another suite's row (AdaBN has no L_seg) leaves that row out
    lovasz = shared_runs(SUITES["table5"], FAMILIES[family], ["method.seg_loss=lovasz"])
    assert lovasz["s_pert_lovasz"].key == "s_pert" and lovasz["s_lovasz"].key == "source_only"
    assert lovasz["asn_pert"].key == "asn_pert" and "adabn" not in lovasz


def test_a_row_sharing_another_rows_run_trains_it_once_and_says_whose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "suite"
    extra = [*TINY, "train.iterations=1", "train.eval_every=0", "train.samples=0"]
    assert main(["suite", "table5", *extra, "--out", str(out), "--rows", "s_pert_ent"]) == 0
    assert "[s_pert_ent] the run of row apoda: the same config" in capsys.readouterr().out
    # trained in APODA's folder, so table 1's APODA row finds it finished
    assert sorted(p.name for p in (out / "seed0").iterdir()) == ["apoda", "step1"]
    table = (out / "table.md").read_text()
    assert "| S + perturbation + entropy (CE as L_seg in Eq. 9) (the run of row `apoda`" in table
    suite = json.loads((out / "suite.json").read_text())
    apoda = json.loads((out / "seed0" / "apoda" / "metrics.json").read_text())
    assert suite["runs"]["s_pert_ent"] == [apoda]
    assert main(["suite", "table1", *extra, "--out", str(out), "--rows", "apoda"]) == 0
    assert "[apoda seed 0] finished before; not trained again" in capsys.readouterr().out


SIZE_KEYS = {"name", "data.batch_size", "data.minicity.height", "data.minicity.width"}
IMAGENET_KEYS = {"model.arch", "model.pretrained", "model.bn_mode", "optim.lr"}


@pytest.mark.parametrize(
    ("family", "keys"),
    [
        ("minicity_imagenet", SIZE_KEYS | IMAGENET_KEYS | {"optim.classifier_lr_mult"}),
        ("minicity_128x256", SIZE_KEYS),
    ],
)
def test_128x256_families_are_their_minicity_twins_at_the_larger_size(
    family: str, keys: set[str]
) -> None:
    """Each config of a 128x256 family differs from its MiniCity twin only in the family's keys
    (size and batch; for the paper's regime also backbone, rates and BN) and in step 1's length,
    so a table in it compares the same rows."""
    names = [c.split("/")[1] for c in builtin_configs() if c.startswith(f"{family}/")]
    assert sorted(names) == sorted({r.config for rows in SUITES.values() for r in rows})
    step1 = {"train.iterations", "train.eval_every", "train.checkpoint_every"}
    for name in names:
        twin = load_config(resolve_config(f"minicity/{name}"))
        config = load_config(resolve_config(f"{family}/{name}"))
        diffs = set(config_differences(twin, config))
        assert diffs <= keys | {"train.samples"} | (step1 if name == "source_only" else set())
        assert (config.data.minicity.height, config.data.minicity.width) == (128, 256)
        assert config.data.batch_size == 4, name
        if name == "source_only":
            assert config.train.iterations == 1500
        if family == "minicity_imagenet":
            assert config.model.arch == "efficientnet_lite0"
            # AdaBN needs train-mode BN; every other row keeps the ImageNet statistics frozen
            assert config.model.bn_mode == ("train" if name == "adabn" else "frozen"), name
        else:
            assert config.model == twin.model, name


@pytest.mark.slow
def test_jobs_trains_rows_in_child_processes_and_reports_a_failed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "suite"
    extra = [*TINY, "train.iterations=1", "train.eval_every=0", "train.samples=0"]
    args = ["suite", "table1", *extra, "--out", str(out), "--rows", "apoda_adabn", "--jobs", "2"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "seed0").iterdir()) == ["adabn", "apoda_adabn", "step1"]
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "seed0-adabn.log",
        "seed0-apoda_adabn.log",
        "seed0-step1.log",
    ]
    assert "APODA from AdaBN" in (out / "table.md").read_text()
    # the same command trains nothing again
    assert main(args) == 0
    log = (out / "logs" / "seed0-apoda_adabn.log").read_text()
    assert "finished before; not trained again" in log
    assert "[apoda_adabn seed 0] training apoda ->" in log  # the first run's output is kept
    # a run that fails is named with its log; the row that starts from it is skipped, no table
    (out / "table.md").unlink()
    config = yaml.safe_load((out / "seed0" / "adabn" / "config.yaml").read_text())
    config["optim"]["lr"] = 0.5
    (out / "seed0" / "adabn" / "config.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "[apoda_adabn seed 0] skipped: its start adabn failed" in captured.out
    assert "2 run(s) did not finish (adabn seed 0:" in captured.err
    assert "finished with a different config" in (out / "logs" / "seed0-adabn.log").read_text()
    assert not (out / "table.md").exists()


@pytest.mark.slow
def test_jobs_launch_a_shared_run_in_the_folder_of_the_row_it_belongs_to(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    extra = [*TINY, "train.iterations=1", "train.eval_every=0", "train.samples=0"]
    args = ["suite", "table5", *extra, "--out", str(out), "--rows", "s_pert_ent", "--jobs", "2"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "seed0").iterdir()) == ["apoda", "step1"]
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert logs == ["seed0-apoda.log", "seed0-step1.log"]
    assert "(the run of row `apoda`: same config)" in (out / "table.md").read_text()


@pytest.mark.slow
def test_jobs_stopped_by_sigterm_leaves_checkpoints_and_says_how_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    extra = [*TINY, "train.iterations=100000", "train.eval_every=0", "train.samples=0"]
    command = [sys.executable, "-m", "apoda", "suite", "table1", *extra, "--out", str(out)]
    parent = subprocess.Popen(
        [*command, "--rows", "step1", "--jobs", "2"], stderr=subprocess.PIPE, text=True
    )
    log = out / "seed0" / "step1" / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.2)  # step 1 is training (its first log line is written)
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=180)
    assert parent.returncode == 130, err
    assert "stopped: the 1 run(s) in training save a checkpoint and stop" in err
    assert "interrupted at iteration" in (out / "logs" / "seed0-step1.log").read_text()
    assert (out / "seed0" / "step1" / "checkpoints" / "last.pt").is_file()


USER_BACKBONE = """
from apoda.models.backbones import small
from apoda.registry import register_backbone


@register_backbone("user_small", default_bn_mode="train")
def user_small(bn_mode):
    return small(bn_mode=bn_mode)
"""


def test_a_suite_trains_every_row_on_a_users_backbone(tmp_path: Path) -> None:
    """`imports=[FILE]` among a suite's overrides reaches every row (and its saved config)."""
    (tmp_path / "user_backbone.py").write_text(USER_BACKBONE)
    user = [f"imports=[{tmp_path / 'user_backbone.py'}]", "model.arch=user_small"]
    extra = [*TINY, "train.iterations=1", "train.eval_every=0", *user]
    out = tmp_path / "suite"
    run_suite("tiny", out, overrides=extra, rows=(STEP1, MATCHED))
    for row in ("step1", "source_only"):
        saved = load_config(out / "seed0" / row / "config.yaml", saved=True)
        assert saved.model.arch == "user_small"
        assert saved.imports == [str(tmp_path / "user_backbone.py")]
