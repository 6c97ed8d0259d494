"""Evaluation speed at the Cityscapes protocol (issue 7): images per second of `evaluate()`.

DeepLab-v2 ResNet-101 (random weights: speed does not depend on them) reads 1024x512 images,
its logits are upsampled bilinearly to the 2048x1024 label size and arg-maxed, and the
confusion matrix is updated, exactly as `apoda eval` does. The data are random tensors held in
memory, so the number excludes image decoding and measures the model and the protocol only.

    python benchmarks/eval_speed.py --batches 1 2 --images 2
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from apoda.errors import ApodaError
from apoda.evaluation import evaluate
from apoda.models import build_segmenter
from step_time import (  # the sibling script: one description of the machine
    machine,
    print_markdown,
    write_results,
)

NUM_CLASSES = 19
RESULTS = Path(__file__).resolve().parent / "results"


def make_batches(
    count: int, batch: int, size: tuple[int, int], label_size: tuple[int, int], seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """`count` batches of `batch` random images at `size` with random labels at `label_size`."""
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(batch, 3, *size, generator=gen),
            "label": torch.randint(0, NUM_CLASSES, (batch, *label_size), generator=gen),
        }
        for _ in range(count)
    ]


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ApodaError("/proc/self/status has no VmHWM field")


def parse_hw(text: str, option: str) -> tuple[int, int]:
    """`HxW` -> (H, W)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ApodaError(f"{option} {text!r}: expected HxW, e.g. 512x1024") from None
    if min(height, width) < 1:
        raise ApodaError(f"{option} {text!r}: sizes must be positive")
    return height, width


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time `evaluate()` for each batch size; return the JSON-ready result."""
    device = torch.device(args.device)
    size = parse_hw(args.size, "--size")
    label_size = parse_hw(args.label_size, "--label-size")
    model = build_segmenter(args.arch, NUM_CLASSES).to(device)
    rows = []
    for batch in args.batches:
        count = math.ceil(args.images / batch)
        if args.warmup:
            evaluate(model, make_batches(1, batch, size, label_size), NUM_CLASSES, device)
        data = make_batches(count, batch, size, label_size, seed=1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        evaluate(model, data, NUM_CLASSES, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        images = count * batch
        rows.append(
            {
                "arch": args.arch,
                "batch": batch,
                "images": images,
                "input": f"{size[0]}x{size[1]}",
                "output": f"{label_size[0]}x{label_size[1]}",
                "seconds": round(elapsed, 3),
                "images_per_sec": round(images / elapsed, 4),
                "sec_per_image": round(elapsed / images, 3),
            }
        )
        print(f"  batch {batch}: {images} images in {elapsed:.1f} s", flush=True)
    return {
        "rows": rows,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "machine": machine(device),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "note": "random weights and images in memory; no decoding; warm-up batch untimed",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="resnet101", choices=["resnet101", "vgg16", "small"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="batch sizes to time")
    p.add_argument("--images", type=int, default=2, help="timed images per batch size (rounded up)")
    p.add_argument("--size", default="512x1024", help="input HxW (Cityscapes protocol: 512x1024)")
    p.add_argument("--label-size", default="1024x2048", help="label HxW the logits are scored at")
    p.add_argument("--warmup", type=int, choices=[0, 1], default=1, help="one untimed batch first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "eval_speed.json"))
    args = p.parse_args(argv)
    if args.images < 1 or min(args.batches) < 1:
        p.error("--images and --batches must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run, print a table, write the JSON."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    out = write_results(result, args.out)
    print_markdown(
        ["arch", "batch", "images", "in -> out", "s/image", "images/s"],
        [
            [
                str(r["arch"]),
                str(r["batch"]),
                str(r["images"]),
                f"{r['input']} -> {r['output']}",
                f"{r['sec_per_image']:.2f}",
                f"{r['images_per_sec']:.3f}",
            ]
            for r in result["rows"]
        ],
    )
    print(f"peak RSS {result['peak_rss_mb']:.0f} MiB; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
