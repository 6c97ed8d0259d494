"""`apoda select`: each label-free score against a direct computation, then the command on tiny
kept-checkpoint runs (a source-only run and a DACS run from it): the table, the JSON, the
target mIoU `apoda eval` gives, correlations, regrets, and its one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from apoda.cli import main
from apoda.data.minicity import ensure_minicity
from apoda.data.transforms import Normalisation
from apoda.engine.label_free import (
    TargetTally,
    augmentation_agreement,
    heldout_draw,
    info_max,
    snd,
    tally_target,
    target_entropy,
    teacher_student_agreement,
)
from apoda.runs import saved_config
from apoda.selection import (
    DEFAULT_SCORE,
    SCORE_NAMES,
    choose,
    regret,
    spearman,
    study,
    summarise,
    summarise_run,
)
from conftest import TINY

IMAGENET = Normalisation("imagenet")
KEEP = ["train.keep_checkpoints=true", "train.eval_every=2"]


# -- the scores on small tensors ----------------------------------------------------------------
def test_entropy_and_info_max_are_the_direct_float64_values() -> None:
    probs = torch.rand(3, 4, 2, 5, generator=torch.Generator().manual_seed(1)).softmax(1)
    tally = TargetTally.empty(4)
    tally.add_probabilities(probs[:2])  # two batches give the sums of one
    tally.add_probabilities(probs[2:])
    pixels = probs.double().movedim(1, -1).reshape(-1, 4)
    per_pixel = -(pixels * pixels.log()).sum(1)
    mean = pixels.mean(0)
    # float32 probabilities: each pixel's entropy to float32 precision, summed in float64
    assert target_entropy(tally) == pytest.approx(float(per_pixel.mean()), rel=1e-6)
    assert info_max(tally) == pytest.approx(
        float(-(mean * mean.log()).sum() - per_pixel.mean()), rel=1e-5, abs=1e-7
    )
    one_class = TargetTally.empty(3)
    one_class.add_probabilities(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2))
    assert target_entropy(one_class) == 0 and info_max(one_class) == 0  # 0 log 0 = 0


def test_snd_of_four_points() -> None:
    # four equal points: every other point equally near, each row uniform over 3
    assert snd(torch.tensor([[0.7, 0.3]] * 4)) == pytest.approx(math.log(3), rel=1e-12)
    # two pairs of orthogonal points: each row e^{1/tau} on its twin, e^0 on the other two
    pairs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    near, far = math.exp(1 / 0.05), 1.0
    row = [p / (near + 2 * far) for p in (near, far, far)]
    assert snd(pairs) == pytest.approx(-sum(p * math.log(p) for p in row), rel=1e-9)
    assert snd(pairs, tau=1.0) > snd(pairs)  # a softer neighbourhood is more even


class _Bands(nn.Module):
    """Class 0 where an ImageNet-normalised pixel's mean RGB is above 0.5, else class 1."""

    def forward(self, x: Tensor) -> Tensor:
        m = IMAGENET.to_unit_rgb(x).mean(1)
        return torch.stack([m - 0.5, 0.5 - m], 1)


class _Halves(nn.Module):
    """Class 0 in the left half and 1 in the right, whatever the image."""

    def forward(self, x: Tensor) -> Tensor:
        left = (
            (torch.arange(x.shape[-1]) < x.shape[-1] // 2).float().expand(len(x), 1, *x.shape[2:])
        )
        return torch.cat([left, 1 - left], 1)


class _Zeros(nn.Module):
    """Class 0 everywhere."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([torch.ones_like(x[:, 0]), torch.zeros_like(x[:, 0])], 1)


def _grey_bands() -> list[dict[str, Any]]:
    """Two 6x4 images of three grey bands, 0.6 / 0.45 / 0.3 from the top (normalised)."""
    rows = torch.tensor([0.6, 0.6, 0.45, 0.45, 0.3, 0.3]).view(1, 6, 1).expand(3, 6, 4)
    image = IMAGENET.from_unit_rgb(rows[None])[0]
    return [{"image": image}, {"image": image.clone()}]


def test_augmentation_and_teacher_student_agreement_with_networks_whose_output_is_known() -> None:
    cpu = torch.device("cpu")
    bands = tally_target(_Bands(), _grey_bands(), IMAGENET, cpu, 1, partner=_Zeros())
    # grey bands: the flip changes nothing; brightness x1.2 then contrast x0.8 about the mean
    # (0.54) moves the middle band 0.45 -> 0.54 above 0.5: one band of three changes class
    assert augmentation_agreement(bands) == pytest.approx(
        {"flip": 1.0, "photometric": 2 / 3, "mean": 5 / 6}
    )
    assert teacher_student_agreement(bands) == pytest.approx(1 / 3)  # the top band is class 0
    halves = tally_target(_Halves(), _grey_bands(), IMAGENET, cpu, 2)
    assert augmentation_agreement(halves) == {"flip": 0.0, "photometric": 1.0, "mean": 0.5}
    assert teacher_student_agreement(halves) is None  # no partner: not a self-training run
    rng = torch.get_rng_state()
    again = tally_target(_Bands(), _grey_bands(), IMAGENET, cpu, 2, partner=_Zeros())
    assert torch.equal(torch.get_rng_state(), rng)  # its loader has its own generator
    assert torch.equal(again.sample(), bands.sample())  # the same pixels, whatever the batch


def test_spearman_averages_tied_ranks_and_needs_three_varying_values() -> None:
    # ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): covariance 4.5, variances 4.5 and 5
    assert spearman([1, 2, 2, 3], [10, 30, 20, 40]) == pytest.approx(math.sqrt(0.9))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, None, 3], [1, 2, 3]) is None


def test_choices_take_the_earliest_of_ties_and_the_oracle_has_no_regret() -> None:
    assert choose([0.1, 0.3, 0.3]) == 1
    assert choose([0.1, None]) is None
    targets = [20.0, 24.0, 22.0]
    assert regret(targets, choose(targets)) == 0  # type: ignore[arg-type]
    assert regret(targets, 2) == pytest.approx(2.0)


# -- the command --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A source-only run keeping iterations 2, 4, 6 and a DACS run from it keeping 2 and 4."""
    folder = tmp_path_factory.mktemp("selection")
    so, dacs = folder / "so", folder / "dacs"
    train = ["train", "minicity/source_only", *TINY, *KEEP, "train.iterations=6"]
    assert main([*train, "--out", str(so)]) == 0
    train = ["train", "minicity/dacs", *TINY, *KEEP, "train.iterations=4", "train.samples=0"]
    assert main([*train, f"model.init_from={so}", "--out", str(dacs)]) == 0
    return {"so": so, "dacs": dacs}


@pytest.fixture(scope="module")
def selected(runs: dict[str, Path]) -> tuple[str, dict[str, Any]]:
    """`apoda select SO DACS --labels`: what it printed and the JSON it wrote."""
    out = runs["so"].parent / "selection.json"
    rng = torch.get_rng_state()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        args = ["select", str(runs["so"]), str(runs["dacs"]), "--labels", "--out", str(out)]
        assert main(args) == 0
    assert torch.equal(torch.get_rng_state(), rng)  # scoring leaves the global RNG alone
    return printed.getvalue(), json.loads(out.read_text())


def _table_rows(text: str, title: str) -> list[list[str]]:
    """The checkpoint rows of the table printed under the line starting with `title`."""
    lines = text[text.index(title) :].split("\n\n")[1].splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.slow
def test_select_prints_a_row_per_kept_checkpoint_and_writes_every_score(
    runs: dict[str, Path], selected: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    printed, result = selected
    rows = _table_rows(printed, f"{runs['so']}: 3 checkpoints")
    assert [row[0].rstrip(" *") for row in rows] == ["2", "4", "6"]
    assert sum(row[0].endswith("*") for row in rows) == 1  # the checkpoint --score chooses
    so = result["runs"][0]
    assert [c["iteration"] for c in so["checkpoints"]] == [2, 4, 6]
    for checkpoint in so["checkpoints"]:
        assert set(checkpoint["scores"]) == set(SCORE_NAMES)
        assert 0 <= checkpoint["scores"]["augmentation_agreement"] <= 1
        assert checkpoint["scores"]["neg_entropy"] == -checkpoint["details"]["entropy"]
    assert so["chosen"] == so["choices"][DEFAULT_SCORE] and result["score"] == DEFAULT_SCORE
    # the target mIoU is `apoda eval`'s for that checkpoint
    kept = runs["so"] / "checkpoints" / "iter_000004.pt"
    assert main(["eval", str(kept), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert so["checkpoints"][1]["target_miou"] == metrics["miou"]
    assert so["checkpoints"][1]["target_tail_miou"] == metrics["tail_miou"]
    # and the held-out source mIoU is its mIoU on the source of MiniCity's draw seed + 1000
    minicity = saved_config(runs["so"]).data.minicity  # type: ignore[union-attr]
    draw = heldout_draw(minicity, "source")
    assert (draw.seed, draw.n_source, draw.height) == (minicity.seed + 1000, 200, minicity.height)
    heldout = ["--data", "minicity", "--root", str(ensure_minicity(draw)), "--split", "source"]
    assert main(["eval", str(kept), *heldout, "--out", str(tmp_path / "heldout")]) == 0
    metrics = json.loads((tmp_path / "heldout" / "metrics.json").read_text())
    assert so["checkpoints"][1]["scores"]["heldout_source_miou"] == metrics["miou"]


@pytest.mark.slow
def test_correlations_are_in_range_and_no_rule_beats_the_best_checkpoint(
    selected: tuple[str, dict[str, Any]],
) -> None:
    printed, result = selected
    for record in result["runs"]:
        for value in record["spearman"].values():
            assert value is None or -1 - 1e-9 <= value <= 1 + 1e-9
        assert set(record["regret"]) == {*SCORE_NAMES, "last", "random"}
        assert all(value is None or value >= 0 for value in record["regret"].values())
        targets = [c["target_miou"] for c in record["checkpoints"]]
        assert regret(targets, choose(targets)) == 0  # type: ignore[arg-type]
        assert record["regret"]["last"] == max(targets) - targets[-1]
    pooled = result["spearman_all"]
    assert all(v is None or -1 - 1e-9 <= v <= 1 + 1e-9 for v in pooled.values())
    assert "Spearman over all 5 checkpoints" in printed
    best = result["across_runs"]
    scores = [c["scores"][DEFAULT_SCORE] for r in result["runs"] for c in r["checkpoints"]]
    assert best["value"] == max(scores)
    assert f"across the runs, {DEFAULT_SCORE} chooses {best['run']}" in printed
    kept = result["across_last"]  # the run whose last checkpoint scores highest
    lasts = {r["run"]: r["checkpoints"][-1]["scores"][DEFAULT_SCORE] for r in result["runs"]}
    assert kept["value"] == max(lasts.values()) and lasts[kept["run"]] == kept["value"]
    assert "Over 2 runs (regret in mIoU points" in printed
    assert result["study"]["within_runs"]["last"]["runs"] == 2


@pytest.mark.slow
def test_teacher_student_agreement_only_for_the_self_training_run(
    runs: dict[str, Path], selected: tuple[str, dict[str, Any]]
) -> None:
    so, dacs = selected[1]["runs"]
    assert [c["iteration"] for c in dacs["checkpoints"]] == [2, 4]
    assert all(c["scores"]["teacher_student_agreement"] is None for c in so["checkpoints"])
    for checkpoint in dacs["checkpoints"]:
        assert 0 <= checkpoint["scores"]["teacher_student_agreement"] <= 1


def test_select_refuses_a_folder_that_is_not_a_run_and_an_unknown_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["select", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path} is not a run folder") and err.count("\n") == 1
    assert "checkpoints/last.pt" in err
    assert main(["select", str(tmp_path), "--score", "accuracy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --score: unknown score 'accuracy'") and err.count("\n") == 1
    assert all(name in err for name in SCORE_NAMES)


@pytest.mark.slow
def test_a_run_reports_the_evaluation_point_a_label_free_score_chooses(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    so, chosen = runs["so"], tmp_path / "chosen"
    train = ["train", "minicity/source_only", *TINY, *KEEP, "train.iterations=6"]
    assert main([*train, "train.select_best=neg_entropy", "--out", str(chosen)]) == 0
    records = [json.loads(line) for line in (chosen / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    scores = {r["iteration"]: r["selection_scores"]["neg_entropy"] for r in evals}
    best = max(scores, key=lambda it: (scores[it], -it))  # the first of equal scores
    metrics = json.loads((chosen / "metrics.json").read_text())
    assert metrics["selection"] == "label-free:neg_entropy" and metrics["iteration"] == best
    assert metrics["miou"] == next(r["miou"] for r in evals if r["iteration"] == best)
    assert "label-free:neg_entropy" in (chosen / "report.md").read_text()
    # scoring during training leaves training as it is without it
    plain = torch.load(so / "checkpoints" / "last.pt", weights_only=True)["modules"]
    scored = torch.load(chosen / "checkpoints" / "last.pt", weights_only=True)["modules"]
    for key, value in plain["segmenter"].items():
        assert torch.equal(value, scored["segmenter"][key]), key


def test_select_best_names_a_label_free_score_or_is_refused(tmp_path: Path) -> None:
    args = ["train", "minicity/source_only", *TINY, "train.select_best=accuracy"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main([*args, "--out", str(tmp_path / "x")]) == 2
    assert "train.select_best: 'accuracy' is not a label-free score" in err.getvalue()
    assert "neg_entropy" in err.getvalue() and not (tmp_path / "x").exists()


def _record(run: str, targets: list[float], entropy: list[float]) -> dict[str, Any]:
    """A labelled run record whose only score is neg_entropy, summarised for `score`."""
    rows = [
        {
            "iteration": 100 * (i + 1),
            "checkpoint": f"{run}/{i}",
            "target_miou": t,
            "target_tail_miou": t / 4,
            "scores": {n: (e if n == "neg_entropy" else None) for n in SCORE_NAMES},
        }
        for i, (t, e) in enumerate(zip(targets, entropy, strict=True))
    ]
    record = {"run": run, "target_images": 64, "checkpoints": rows}
    summarise_run(record, "neg_entropy", labels=True)
    return record


def test_the_study_judges_each_rule_within_and_across_runs() -> None:
    a = _record("a", [20.0, 22.0, 21.0], [-3.0, -1.0, -2.0])  # entropy picks the best: 0
    b = _record("b", [30.0, 29.0, 28.0], [-3.0, -2.0, -1.0])  # picks the worst: regret 2
    summary = study([a, b])
    entropy, last = summary["within_runs"]["neg_entropy"], summary["within_runs"]["last"]
    assert entropy["mean_regret"] == 1.0 and entropy["max_regret"] == 2.0
    assert entropy["share_within_0.5"] == 0.5
    assert entropy["mean_spearman"] == pytest.approx((1.0 + -1.0) / 2)
    assert last["mean_regret"] == pytest.approx((1.0 + 2.0) / 2)  # 22-21, 30-28
    random = summary["within_runs"]["random"]["mean_regret"]
    assert random == pytest.approx(((22 - 21) + (30 - 29)) / 2)
    # across: the highest neg_entropy of all six checkpoints is a's 2nd and b's 3rd (-1.0):
    # the earlier one, a's 22.0, against the best 30.0
    assert summary["across_runs_regret"]["neg_entropy"] == pytest.approx(8.0)
    assert summary["across_runs_regret"]["random"] == pytest.approx(30 - 150 / 6)
    assert summary["within_runs"]["snd"]["runs"] == 0  # a score no run has: no verdict


def test_across_tables_judges_each_folder_of_runs_on_its_own() -> None:
    # two tables (folders t0, t1) and a run alone in its folder, which is no table
    a = _record("t0/a", [20.0, 22.0], [-3.0, -1.0])  # t0: entropy's pick 22 = its best
    b = _record("t0/b", [21.0, 19.0], [-2.0, -4.0])
    c = _record("t1/c", [30.0, 29.0], [-3.0, -2.0])  # t1: picks 29 (-2) against 31
    d = _record("t1/d", [31.0, 25.0], [-5.0, -6.0])
    alone = _record("t2/e", [10.0, 12.0], [0.0, -1.0])
    summary = study([a, b, c, d, alone])
    assert summary["tables"] == ["t0", "t1"]
    entropy = summary["across_tables"]["neg_entropy"]
    assert entropy["tables"] == 2
    assert entropy["mean_regret"] == pytest.approx((0.0 + 2.0) / 2) and entropy["max_regret"] == 2.0
    random = summary["across_tables"]["random"]
    assert random["mean_regret"] == pytest.approx(((22 - 20.5) + (31 - 28.75)) / 2)
    # among the runs' last checkpoints: t0 picks a's 22 (-1) of 22, 19; t1 c's 29 (-2) of 29, 25
    last = summary["across_tables_last"]
    assert last["neg_entropy"]["mean_regret"] == pytest.approx((0.0 + 2.0) / 2)
    assert last["random"]["mean_regret"] == pytest.approx(((22 - 20.5) + (31 - 27)) / 2)
    # pooled over all runs, entropy picks e's first checkpoint (0.0): 10 against the best 31
    assert summary["across_runs_regret"]["neg_entropy"] == pytest.approx(21.0)


def _scored_file(path: Path, records: list[dict[str, Any]], **changes: Any) -> Path:
    """An `apoda select --labels` JSON of `records` (as if scored on 64 images), changed."""
    result = summarise(records, "neg_entropy", labels=True, images=64) | changes
    path.write_text(json.dumps(result))
    return path


def test_scored_files_pool_into_the_study_of_all_their_runs(tmp_path: Path) -> None:
    runs = [
        _record(f"t{i // 2}/{i}", [20.0 + i, 21.0, 19.0 + 2 * i], [-1.0, -2.0, -i])
        for i in range(4)
    ]
    whole = summarise(json.loads(json.dumps(runs)), "neg_entropy", labels=True, images=64)
    first = _scored_file(tmp_path / "first.json", runs[:3])
    second = _scored_file(tmp_path / "second.json", runs[3:])
    out = tmp_path / "pooled.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        args = ["select", "--scored", str(first), str(second), "--labels", "--score", "neg_entropy"]
        assert main([*args, "--out", str(out)]) == 0
    pooled = json.loads(out.read_text())
    assert pooled["study"] == whole["study"] and pooled["spearman_all"] == whole["spearman_all"]
    assert [r["run"] for r in pooled["runs"]] == [r["run"] for r in runs]
    assert "Over 4 runs" in printed.getvalue() and "mean regret per table (2)" in printed.getvalue()
    # which run to keep: the highest neg_entropy among the last checkpoints (-0, -1, -2, -3)
    assert pooled["across_last"]["run"] == "t0/0" and pooled["across_last"]["iteration"] == 300
    assert (
        "among the runs' last checkpoints, neg_entropy chooses t0/0 iteration 300"
        in printed.getvalue()
    )


def test_scored_files_that_cannot_be_pooled_are_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [_record(f"t/{i}", [20.0, 21.0, 22.0], [-1.0, -2.0, -3.0]) for i in range(2)]
    good = _scored_file(tmp_path / "good.json", runs[:1])
    cases = {
        "twice": (
            _scored_file(tmp_path / "twice.json", runs[:1]),
            "runs scored in more than one file: t/0",
        ),
        "unlabelled": (
            _scored_file(tmp_path / "u.json", runs[1:], labels=False),
            "scored without --labels",
        ),
        "settings": (
            _scored_file(tmp_path / "s.json", runs[1:], settings={}),
            "other scores or settings",
        ),
        "images": (
            _scored_file(tmp_path / "i.json", runs[1:], images=32),
            "different numbers of target images",
        ),
        "not json": (tmp_path / "bad.json", "expected the JSON that apoda select writes"),
    }
    (tmp_path / "bad.json").write_text("{")
    for case, (other, message) in cases.items():
        assert main(["select", "--scored", str(good), str(other), "--labels"]) == 2, case
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (case, err)
        if case in ("unlabelled", "settings", "not json"):
            assert str(other) in err, case
    assert main(["select", str(tmp_path), "--scored", str(good)]) == 2
    assert "one of the two" in capsys.readouterr().err
    assert main(["select"]) == 2
    assert "one of the two" in capsys.readouterr().err
