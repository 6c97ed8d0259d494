"""The training loop on a tiny MiniCity: run folder, resume, refusal to clobber, NaN guard."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from apoda.checkpoints import load_checkpoint, save_checkpoint
from apoda.cli import main
from apoda.config import load_config
from apoda.configs import resolve_config
from apoda.engine.trainer import Trainer
from apoda.errors import ApodaError
from apoda.methods import Method
from apoda.methods.parts import SupervisedLoss
from apoda.models.build import segmenter_from_config
from apoda.runs import checkpoint_file
from conftest import TINY

SOURCE_ONLY = resolve_config("minicity/source_only")


def _config(*extra: str):  # type: ignore[no-untyped-def]
    base = [*TINY, "train.iterations=6", "train.eval_every=3", "train.checkpoint_every=3"]
    return load_config(SOURCE_ONLY, [*base, *extra])


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint_file(path))["modules"]["segmenter"]  # file or run folder


def test_run_folder_has_every_file_and_the_metrics_contract(tmp_path: Path) -> None:
    run = tmp_path / "so"
    metrics = Trainer(_config(), run).fit()
    for name in (
        "config.yaml",
        "checkpoints/last.pt",
        "log.jsonl",
        "metrics.json",
        "report.md",
        "samples.npz",
        "stats/source.json",
        "stats/target.json",
    ):
        assert (run / name).exists(), name
    target = json.loads((run / "stats" / "target.json").read_text())
    assert target["split"] == "val" and target["tail_classes"] == metrics["tail_classes"]
    assert any((run / "tb").iterdir())
    saved = json.loads((run / "metrics.json").read_text())
    for key in (
        "dataset",
        "split",
        "num_classes",
        "class_names",
        "miou",
        "per_class",
        "tail_classes",
        "head_miou",
        "tail_miou",
        "iteration",
        "checkpoint",
    ):
        assert key in saved, key
    assert saved["num_classes"] == 19 and len(saved["class_names"]) == 19
    assert saved["iteration"] == 6 and saved["selection"] == "final"
    assert saved["miou"] == pytest.approx(metrics["miou"])
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["kind"] == "eval"] == [3, 6]
    train = [r for r in records if r["kind"] == "train"]
    assert "loss/seg_source" in train[-1]["values"] and "lr/segmenter" in train[-1]["values"]
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["iterations"] == 6 and resolved["method"]["name"] == "source_only"


def test_killed_run_resumes_to_the_same_parameters(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    Trainer(_config(), tmp_path / "whole").fit()

    original = Method.backward_step
    calls = {"n": 0}

    def dying(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed during iteration 5, after the checkpoint at 3
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Method, "backward_step", dying)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(), tmp_path / "killed").fit()
    assert load_checkpoint(checkpoint_file(tmp_path / "killed"))["iteration"] == 3
    monkeypatch.setattr(Method, "backward_step", original)
    Trainer(_config(), tmp_path / "killed", resume=True).fit()

    whole, resumed = _params(tmp_path / "whole"), _params(tmp_path / "killed")
    for key, value in whole.items():
        assert torch.equal(value, resumed[key]), key
    log = [json.loads(x) for x in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in log if r["kind"] == "train"]
    assert iterations == sorted(iterations) and len(iterations) == len(set(iterations))


def test_keep_checkpoints_keeps_every_evaluation_point_and_survives_a_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "kept"
    original = Method.backward_step
    calls = {"n": 0}

    def dying(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # during iteration 5: iter_000002 and iter_000004 are kept
        return original(self, *args, **kwargs)

    keep = ("train.keep_checkpoints=true", "train.eval_every=2", "train.iterations=5")
    monkeypatch.setattr(Method, "backward_step", dying)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(*keep), run).fit()
    monkeypatch.setattr(Method, "backward_step", original)
    Trainer(_config(*keep), run, resume=True).fit()
    kept = sorted(p.name for p in (run / "checkpoints").glob("iter_*.pt"))
    assert kept == ["iter_000002.pt", "iter_000004.pt", "iter_000005.pt"]  # and the final one
    for name in kept:
        state = load_checkpoint(run / "checkpoints" / name)
        assert state["iteration"] == int(name[5:11])
    final = _params(run / "checkpoints" / "iter_000005.pt")
    for key, value in _params(run).items():
        assert torch.equal(value, final[key]), key
    Trainer(_config("train.eval_every=2", "train.iterations=2"), tmp_path / "plain").fit()
    assert [p.name for p in (tmp_path / "plain" / "checkpoints").iterdir()] == ["last.pt"]


def test_existing_run_folder_is_refused(tmp_path: Path) -> None:
    """A finished run, or a folder of other files, is never trained over without being asked
    (a folder holding only what a run left before its first checkpoint is: see
    test_bad_inputs)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    (run / "metrics.json").write_text("{}")
    with pytest.raises(ApodaError, match="already exists; pass --resume"):
        Trainer(_config(), run)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"")
    with pytest.raises(ApodaError, match="already exists; pass --resume"):
        Trainer(_config(), other)


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    original = SupervisedLoss.loss
    calls = {"n": 0}

    def poisoned(self, logits, labels, name=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss = original(self, logits, labels, name)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(SupervisedLoss, "loss", poisoned)
    run = tmp_path / "nan"
    with pytest.raises(ApodaError, match=r"iteration 5: non-finite value in loss/seg_source"):
        Trainer(_config(), run).fit()
    state = load_checkpoint(checkpoint_file(run))
    assert state["iteration"] == 3
    assert all(
        torch.isfinite(v).all()
        for v in state["modules"]["segmenter"].values()
        if v.is_floating_point()
    )


def test_nonfinite_skip_counts_the_skipped_step(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    original = SupervisedLoss.loss
    calls = {"n": 0}

    def poisoned(self, logits, labels, name=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss = original(self, logits, labels, name)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(SupervisedLoss, "loss", poisoned)
    metrics = Trainer(_config("train.nonfinite=skip"), tmp_path / "skip").fit()
    assert metrics["skipped_steps"] == 1


def test_malicious_checkpoint_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    bad = tmp_path / "bad.pt"
    with open(bad, "wb") as fh:
        pickle.dump({"modules": Payload()}, fh)
    with pytest.raises(ApodaError, match="weights_only"):
        load_checkpoint(bad)
    assert not marker.exists()


def test_checkpoint_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "c" / "last.pt"
    save_checkpoint({"modules": {}, "iteration": 1}, path)
    save_checkpoint({"modules": {}, "iteration": 2}, path)
    assert load_checkpoint(path)["iteration"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind


def test_apoda_from_step1_keeps_g_bit_identical(tmp_path: Path) -> None:
    Trainer(_config(), tmp_path / "so").fit()
    init = tmp_path / "so" / "checkpoints" / "last.pt"
    cfg = load_config(
        resolve_config("minicity/apoda"),
        [*TINY, "train.iterations=3", "train.eval_every=0", f"model.init_from={init}"],
    )
    Trainer(cfg, tmp_path / "apoda").fit()
    before, after = _params(init), _params(tmp_path / "apoda")
    g_keys = [k for k in before if k.startswith("backbone.")]  # cut layer4: G = the backbone
    assert g_keys
    for key in g_keys:
        assert torch.equal(before[key], after[key]), key
    f_keys = [k for k in before if k.startswith("head.") and before[k].is_floating_point()]
    assert any(not torch.equal(before[k], after[k]) for k in f_keys)
    values = [json.loads(x) for x in (tmp_path / "apoda" / "log.jsonl").read_text().splitlines()]
    last = [r for r in values if r["kind"] == "train"][-1]["values"]
    assert {
        "loss/seg_source_adv",
        "loss/cst",
        "loss/d",
        "attack/source/grad_seg/k2",
        "attack/target/grad_adv/k0",
        "attack/source/l2/k2",
    } <= set(last)


@pytest.mark.parametrize("cut", ["pixel", "layer2"])
def test_step1_at_layer4_initialises_apoda_cut_elsewhere(tmp_path: Path, cut: str) -> None:
    """Checkpoint keys do not depend on the cut: Table 4's rows load the layer4 step 1 as is."""
    Trainer(_config("train.iterations=1", "train.eval_every=0"), tmp_path / "so").fit()
    init = tmp_path / "so" / "checkpoints" / "last.pt"
    cfg = load_config(
        resolve_config("minicity/apoda"),
        [*TINY, f"model.init_from={init}", f"model.cut={cut}", "model.bn_mode=frozen"],
    )
    segmenter = segmenter_from_config(cfg, 19, log=lambda _msg: None)
    assert segmenter.cut == cut
    before, after = _params(init), segmenter.state_dict()
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_of_another_class_count_is_refused(tmp_path: Path) -> None:
    Trainer(_config("train.iterations=1", "train.eval_every=0"), tmp_path / "so").fit()
    init = tmp_path / "so" / "checkpoints" / "last.pt"
    cfg = _config(f"model.init_from={init}", "data.scheme=synthia16")
    with pytest.raises(ApodaError, match=r"last\.pt: its segmenter does not fit this model"):
        Trainer(cfg, tmp_path / "other").fit()


def test_unwritable_output_folder_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(ApodaError, match=r"file\.txt/run cannot be written"):
        Trainer(_config(), blocker / "run")


KILL_RUN = 120  # iterations of the run that is killed and resumed


def _train_subprocess(run: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    # Enough iterations that the kill below lands mid-run even on a fast, idle machine (with 8,
    # the whole run once fitted between two polls and the test saw only its last checkpoint).
    args = [*TINY, f"train.iterations={KILL_RUN}", "train.eval_every=0", "train.checkpoint_every=2"]
    cmd = [sys.executable, "-m", "apoda.cli", "train", "minicity/source_only", *args, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.Popen(
        [*cmd, "--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_parameters(tmp_path: Path) -> None:
    assert _train_subprocess(tmp_path / "whole", []).wait(timeout=300) == 0
    proc = _train_subprocess(tmp_path / "killed", [])
    last = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill -9 as soon as a checkpoint before the end exists
        if last.is_file() and 2 <= load_checkpoint(last)["iteration"] < KILL_RUN:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = load_checkpoint(last)["iteration"]
    assert killed_at < KILL_RUN and not (tmp_path / "killed" / "metrics.json").exists()
    resumed = _train_subprocess(tmp_path / "killed", ["--resume"])
    assert resumed.wait(timeout=300) == 0
    whole, after = _params(tmp_path / "whole"), _params(tmp_path / "killed")
    for key, value in whole.items():
        assert torch.equal(value, after[key]), key


def test_oracle_selection_is_opt_in_and_labelled(tmp_path: Path) -> None:
    metrics = Trainer(_config("train.select_best=true"), tmp_path / "best").fit()
    assert metrics["selection"].startswith("oracle-best")
    assert "final_miou" in metrics
    assert (tmp_path / "best" / "checkpoints" / "best.pt").is_file()
    saved = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert saved["selection"].startswith("oracle-best")
    assert "oracle" in (tmp_path / "best" / "report.md").read_text()


def test_resume_refuses_an_override_that_changes_the_run(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "so"
    args = ["train", str(SOURCE_ONLY), *TINY, "train.iterations=2", "train.eval_every=0"]
    assert main([*args, "--out", str(run)]) == 0
    capsys.readouterr()
    before = _params(run / "checkpoints" / "last.pt")
    assert main([*args, "optim.lr=0.5", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume of") and "optim.lr: 0.01 -> 0.5" in err
    after = _params(run / "checkpoints" / "last.pt")
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was trained


def test_resume_with_more_iterations_extends_a_finished_run(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "so"
    args = ["train", str(SOURCE_ONLY), *TINY, "train.eval_every=0"]
    assert main([*args, "train.iterations=2", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main([*args, "train.iterations=4", "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "train.iterations: 2 -> 4" in out and "resumed" in out
    assert json.loads((run / "metrics.json").read_text())["iteration"] == 4
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["iterations"] == 4
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 4
    # fewer iterations than the checkpoint holds cannot be a resume
    assert main([*args, "train.iterations=3", "--out", str(run), "--resume"]) == 2
    assert "checkpoint is at iteration 4" in capsys.readouterr().err


def test_a_truncated_last_log_line_is_dropped_by_resume_and_report(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A run killed mid-write leaves half a JSON line: resume and `apoda report` both read
    log.jsonl with the one tolerant reader, and the resumed log is whole again."""
    run = tmp_path / "so"
    args = ["train", str(SOURCE_ONLY), *TINY, "train.eval_every=0", "train.log_every=1"]
    assert main([*args, "train.iterations=2", "--out", str(run)]) == 0
    log = run / "log.jsonl"
    with log.open("a") as fh:
        fh.write('{"kind": "train", "iteration": 3, "val')  # killed mid-write
    assert main(["report", str(run)]) == 0
    assert main([*args, "train.iterations=3", "--out", str(run), "--resume"]) == 0
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses again
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert main(["report", str(run)]) == 0
    assert "curves.png" in (run / "report.md").read_text()


def test_warmup_rises_linearly_into_the_poly_schedule(tmp_path: Path) -> None:
    """optim.warmup_iterations: mmcv's linear warmup (DAFormer) times poly decay; without it
    the factor is the plain poly one."""
    from apoda.config import OptimConfig
    from apoda.engine.trainer import lr_factor

    plain = OptimConfig(poly_power=0.9)
    warm = OptimConfig(poly_power=1.0, warmup_iterations=10, warmup_ratio=1e-6)
    for it in (0, 3, 9, 10, 50):
        poly = (1 - it / 100) ** 1.0
        expected = poly * (1 - (1 - it / 10) * (1 - 1e-6)) if it < 10 else poly
        assert lr_factor(it, 100, warm) == pytest.approx(expected, rel=1e-12)
        assert lr_factor(it, 100, plain) == (1 - it / 100) ** 0.9
    assert lr_factor(0, 100, warm) == pytest.approx(1e-6)
    run = tmp_path / "warm"
    cfg = _config("optim.warmup_iterations=4", "train.log_every=1", "train.eval_every=0")
    Trainer(cfg, run).fit()
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    lrs = [r["values"]["lr/segmenter"] for r in logged if r["kind"] == "train"]
    assert lrs[:3] == sorted(lrs[:3]) and lrs[0] < 0.5 * lrs[3]  # rising during warmup
