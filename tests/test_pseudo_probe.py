"""The pseudo-label probe of self-training runs: the label-free budget rule, agreement and the
per-class diagnostics against a direct computation, and a run that logs, resumes and is left
unchanged by it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from apoda.checkpoints import load_checkpoint
from apoda.config import load_config
from apoda.configs import resolve_config
from apoda.engine.pseudo_probe import PseudoLabelProbe, settled_iteration
from apoda.engine.trainer import Trainer
from apoda.methods.dacs import DACS
from conftest import TINY

CLASSES = ["a", "b", "c"]


def test_the_budget_rule_stops_where_the_agreement_stops_changing() -> None:
    history = [(500, 0.80), (750, 0.86), (1000, 0.88), (1250, 0.884), (1500, 0.95)]
    assert settled_iteration(history, 0.005) == 1250  # |0.884 - 0.88| < 0.005: the first
    assert settled_iteration(history, 0.001) is None
    assert settled_iteration(history[:1], 1.0) is None  # one agreement has nothing to compare


class _Fixed(nn.Module):
    """Returns the logits it is told to, one image after the other (the images are indices)."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, image: Tensor) -> Tensor:
        return self.logits[image[:, 0, 0, 0].long()]


def test_the_probe_measures_agreement_confidence_and_per_class_accuracy() -> None:
    gen = torch.Generator().manual_seed(0)
    n, h, w = 5, 3, 4
    truth = torch.randint(0, 3, (n, h, w), generator=gen)
    truth[0, 0] = 255  # unlabelled pixels count for agreement, not for accuracy
    images = [torch.full((3, h, w), float(i)) for i in range(n)]
    data = [{"image": im, "label": lab} for im, lab in zip(images, truth, strict=True)]
    probe = PseudoLabelProbe(data, CLASSES, threshold=0.6, tolerance=0.01, batch_size=2)
    first_logits = torch.randn(n, 3, h, w, generator=gen) * 3
    second_logits = torch.randn(n, 3, h, w, generator=gen) * 3
    first = probe.measure(_Fixed(first_logits), torch.device("cpu"), 250)
    second = probe.measure(_Fixed(second_logits), torch.device("cpu"), 500)

    labels_1, labels_2 = first_logits.argmax(1), second_logits.argmax(1)
    assert first["agreement"] is None
    assert second["agreement"] == pytest.approx(float((labels_1 == labels_2).double().mean()))
    top = second_logits.double().softmax(1).max(1).values
    # float32 softmax vs float64: a pixel within 1e-6 of the threshold could flip; none here
    assert (top - 0.6).abs().min() > 1e-6
    assert second["confident_share"] == pytest.approx(float((top >= 0.6).double().mean()))
    known = truth != 255
    assert second["accuracy"] == pytest.approx(
        float((labels_2[known] == truth[known]).double().mean())
    )
    for c, name in enumerate(CLASSES):
        got = second["per_class"][name]
        labelled, present = (labels_2 == c) & known, truth == c
        hits = float((labelled & present).sum())
        assert got["precision"] == pytest.approx(hits / float(labelled.sum()))
        assert got["recall"] == pytest.approx(hits / float(present.sum()))
        assert got["labelled_share"] == pytest.approx(float(labelled.sum() / known.sum()))
        assert got["true_share"] == pytest.approx(float(present.sum() / known.sum()))
    restored = PseudoLabelProbe(data, CLASSES, threshold=0.6, tolerance=0.01, batch_size=2)
    restored.load_state_dict(probe.state_dict())
    third = restored.measure(_Fixed(first_logits), torch.device("cpu"), 750)
    assert third["agreement"] == pytest.approx(second["agreement"])  # 1 - flips, symmetric


def _run(out: Path, *extra: str) -> Trainer:
    cfg = load_config(
        resolve_config("minicity/dacs"),
        [*TINY, "train.iterations=6", "train.eval_every=2", "train.checkpoint_every=2",
         "train.samples=0", "train.probe_images=4", *extra],
    )  # fmt: skip
    return Trainer(cfg, out, resume=(out / "checkpoints").is_dir(), log=lambda _m: None)


def _evals(run_dir: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval"]


def _probes(run_dir: Path) -> list[dict[str, Any]]:
    return [r["pseudo_labels"] for r in _evals(run_dir)]


@pytest.mark.slow
def test_a_dacs_run_logs_the_probe_resumes_it_and_trains_the_same_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(tmp_path / "whole").fit()
    probes = _probes(tmp_path / "whole")
    assert [p["agreement"] is None for p in probes] == [True, False, False]
    assert all(0 <= p["agreement"] <= 1 for p in probes[1:])
    assert probes[0]["images"] == 4 and set(probes[0]["per_class"]) >= {"road", "person"}

    original = DACS.train_step

    def dying(self: DACS, source: Any, target: Any, iteration: int) -> Any:
        if iteration == 5:
            raise KeyboardInterrupt  # after the evaluation and checkpoint at 4
        return original(self, source, target, iteration)

    monkeypatch.setattr(DACS, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "killed").fit()
    monkeypatch.setattr(DACS, "train_step", original)
    _run(tmp_path / "killed").fit()
    assert _probes(tmp_path / "killed") == probes

    _run(tmp_path / "off", "train.probe_images=0").fit()
    off_evals = _evals(tmp_path / "off")
    assert len(off_evals) == 3 and all("pseudo_labels" not in r for r in off_evals)
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["modules"]
    off = load_checkpoint(tmp_path / "off" / "checkpoints" / "last.pt")["modules"]
    for module in ("segmenter", "teacher"):
        for key, value in whole[module].items():
            assert torch.equal(value, off[module][key]), (module, key)
