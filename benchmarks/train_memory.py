"""Peak memory of one training step at the real datasets' resolutions, per method and backbone.

Source 720x1280 (GTA5 as the configs resize it; SYNTHIA's 760x1280 is 6 % larger), target
512x1024 (Cityscapes), batch 1, 19 classes. Each method runs two steps in a fresh process
(step_time.py's memory child). On CPU the figure is peak RSS: the same activations are kept
for backward as on a GPU, so it stands in for GPU memory until one is measured there (CUDA
adds its context, about 0.5 GB, and allocator slack). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch

from step_time import (
    DEFAULTS,
    RESULTS,
    Setting,
    machine,
    measure_memory_subprocess,
    print_markdown,
    write_results,
)

SOURCE, TARGET = (720, 1280), (512, 1024)


def main(argv: list[str] | None = None) -> int:
    """Measure every (backbone, method) pair and write `results/train_memory.json`."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=["r101", "vgg16"], choices=["r101", "vgg16"])
    p.add_argument("--methods", nargs="+", default=["source_only", "asn", "apoda"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default=str(RESULTS / "train_memory.json"), help="JSON output")
    args = p.parse_args(argv)
    rows = []
    for key in args.backbones:
        setting = Setting(key, DEFAULTS[key].arch, SOURCE, TARGET, 1)
        for name in args.methods:
            mem = measure_memory_subprocess(name, setting, args)
            row = {
                "backbone": key,
                "method": name,
                "size": setting.size_label,
                "peak_rss_mb": round(mem["peak_rss_mb"], 1),
                "rss_built_mb": round(mem["rss_built_mb"], 1),
                "step_increase_mb": round(mem["peak_rss_mb"] - mem["rss_built_mb"], 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "rows": rows,
        "machine": machine(torch.device("cpu")),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "note": "peak RSS of a fresh process over two train_steps (CPU); not GPU memory",
    }
    out = write_results(result, args.out)
    print()
    keys = ["backbone", "method", "size", "peak_rss_mb", "step_increase_mb"]
    print_markdown(keys, [[str(r[k]) for k in keys] for r in rows])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
