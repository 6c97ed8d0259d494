"""The benchmark scripts run and write the JSON their README reads (tiny settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_step_time_times_every_method_and_writes_ratios(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    printed = _run(
        "step_time.py", "--backbones", "small", "--iters", "1", "--warmup", "0",
        "--size", "32x64", "--batch", "2", "--no-memory", "--threads", "1", "--out", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    methods = ["source_only", "asn", "advent", "apoda", "dacs", "dacs_perturb", "dacs_fd"]
    assert [r["method"] for r in result["rows"]] == methods
    assert all(r["sec_per_iter_median"] > 0 and r["gflop_per_iter"] > 0 for r in result["rows"])
    flops = {r["method"]: r["gflop_per_iter"] for r in result["rows"]}
    assert result["flop_ratios"]["apoda_over_asn"]["small"] == round(
        flops["apoda"] / flops["asn"], 3
    )
    assert result["flop_ratios"]["dacs_over_source_only"]["small"] == round(
        flops["dacs"] / flops["source_only"], 3
    )
    assert result["flop_ratios"]["dacs_perturb_over_asn"]["small"] == round(
        flops["dacs_perturb"] / flops["asn"], 3
    )
    assert flops["dacs_perturb"] > flops["dacs"]  # the attack's F passes come on top
    # the feature distance adds a forward of the frozen ImageNet G on the source batch: a row
    # whose distance was silently off would count DACS's FLOPs exactly
    assert flops["dacs_fd"] > flops["dacs"]
    assert "| apoda | small | 2 x 32x64 |" in printed and "| dacs | small |" in printed


def test_eval_speed_writes_images_per_second(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    _run(
        "eval_speed.py", "--arch", "small", "--images", "2", "--batches", "1",
        "--size", "64x32", "--label-size", "128x64", "--threads", "1", "--out", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["rows"][0]["images"] == 2 and result["machine"]["cpu_count"] >= 1


@pytest.mark.slow
def test_gpu_check_runs_every_section_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    printed = _run(
        "gpu_check.py", "--device", "cpu", "--tiny", "--threads", "2",
        "--out", str(out), "--workdir", str(tmp_path / "work"),
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["complete"] and result["failed_sections"] == []
    assert {"train_step", "eval_throughput", "apoda_eval", "bf16", "end_to_end"} <= set(result)
    assert result["device"]["cuda"] is False and result["device"]["torch"]
    assert {"name", "cuda_version"} <= set(result["device"])
    rows = result["train_step"]["rows"]
    assert {(r["backbone"], r["method"]) for r in rows} == {
        (b, m)
        for b in ("r101", "vgg16", "small")
        for m in ("source_only", "asn", "advent", "apoda")
    } | {("small", m) for m in ("dacs", "dacs_perturb", "dacs_fd")}  # mixing: only at one size
    for r in rows:  # CPU: no invented GPU memory, bf16 rows skipped, float32 rows timed
        assert r["from_cuda"] is False and r["peak_gpu_mb"] is None
        assert ("skipped" in r) == (r["precision"] == "bf16")
        assert r["precision"] == "bf16" or r["sec_per_iter_median"] > 0
    assert result["train_step"]["ratios"]["r101/float32"]["apoda_over_asn_time"] > 0
    assert result["train_step"]["ratios"]["r101/float32"]["apoda_over_asn_peak_memory"] is None
    assert result["train_step"]["targets"]["r101/float32"]["time_met"] is None
    assert all(r["images_per_sec"] > 0 for r in result["eval_throughput"]["rows"])
    assert result["apoda_eval"]["rc"] == 0 and result["apoda_eval"]["images"] == 3
    assert result["bf16"]["skipped"] is True and "CUDA" in result["bf16"]["reason"]
    e2e = result["end_to_end"]
    assert e2e["ok"] and [s["step"] for s in e2e["steps"]] == ["source_only", "apoda", "eval"]
    assert e2e["steps"][2]["miou"] is not None
    assert result["process_peak_rss_mb"] > 0
    assert "| r101 | apoda | float32 |" in printed and "### End to end" in printed
    assert "skipped: bf16 autocast is CUDA-only" in printed


def test_step_time_counts_grouped_conv_backward_flops_right() -> None:
    """A depthwise conv's backward costs twice its forward (input and weight gradients), not
    `groups` times more, and a plain conv's too: against the multiply-adds counted by hand."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(BENCH))
    try:
        from step_time import conv_backward_flops
    finally:
        sys.path.remove(str(BENCH))

    for groups in (1, 8):
        conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=False)
        x = torch.randn(2, 8, 5, 7, requires_grad=True)
        counter = FlopCounterMode(
            display=False,
            custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops},
        )
        with counter:
            conv(x).sum().backward()
        macs = 2 * 8 * 5 * 7 * (8 // groups) * 3 * 3  # per output element: Cin/groups * k * k
        assert counter.get_total_flops() == 3 * 2 * macs  # forward + 2 gradients, 2 FLOPs/MAC
