"""The benchmark scripts run and write the JSON their README reads (tiny settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert [r["method"] for r in result["rows"]] == ["source_only", "asn", "advent", "apoda"]
    assert all(r["sec_per_iter_median"] > 0 and r["gflop_per_iter"] > 0 for r in result["rows"])
    flops = {r["method"]: r["gflop_per_iter"] for r in result["rows"]}
    assert result["flop_ratios"]["apoda_over_asn"]["small"] == round(
        flops["apoda"] / flops["asn"], 3
    )
    assert "| apoda | small | 2 x 32x64 |" in printed


def test_eval_speed_writes_images_per_second(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    _run(
        "eval_speed.py", "--arch", "small", "--images", "2", "--batches", "1",
        "--size", "64x32", "--label-size", "128x64", "--threads", "1", "--out", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["rows"][0]["images"] == 2 and result["machine"]["cpu_count"] >= 1
