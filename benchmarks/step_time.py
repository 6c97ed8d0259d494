"""Measured cost of one training step of every method (issue 7).

All methods run in one process, round-robin after a warm-up (source_only, asn, advent, apoda,
source_only, ...), so background load on a shared machine falls on all of them alike. For each
(method, backbone) it reports the median seconds per iteration, the FLOPs one `train_step`
executes (forward and backward, counted by `torch.utils.flop_counter.FlopCounterMode`) and the
peak memory: on the CPU the peak RSS of a fresh subprocess that builds the method alone and takes
two steps (peak RSS is monotone within a process, so it cannot be split per method here); on
CUDA the peak allocated GPU memory of the method's timed steps. Beside the wall time it records
the process CPU time per step (all threads), which a busy shared machine disturbs less.

    python benchmarks/step_time.py                          # both backbones, CPU
    python benchmarks/step_time.py --backbones r101 --device cuda --amp \
        --size 720x1280,512x1024 --out benchmarks/results/step_time_gpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from apoda.config import Config, load_config
from apoda.configs import resolve_config
from apoda.data.classes import CITYSCAPES_CLASS_NAMES, THING_CLASS_NAMES
from apoda.errors import ApodaError
from apoda.methods import Batch, Method, RunContext, build_method
from apoda.models import Segmenter, build_segmenter

METHODS = ("source_only", "asn", "advent", "apoda", "dacs", "dacs_perturb", "dacs_fd")
PIXEL_MIXING = ("dacs", "dacs_perturb", "dacs_fd")
"""Methods that paste source pixels onto target images: they need one size for both domains
(their configs crop both), so settings with two sizes leave them out."""
DACS_VARIANTS = {
    "dacs_perturb": ("method.perturbation_lambda=1.0",),  # minicity/dacs_perturb
    "dacs_fd": (  # the ImageNet-family suite's feature-distance row
        "method.imnet_feature_dist_lambda=0.005",
        f"method.imnet_feature_dist_classes=[{', '.join(THING_CLASS_NAMES)}]",
    ),
}
"""DACS with one of its options on: a row of its own, timed against DACS."""

NUM_CLASSES = 19
RESULTS = Path(__file__).resolve().parent / "results"

Size = tuple[int, int]


@dataclass(frozen=True)
class Setting:
    """One benchmark setting: backbone architecture, source and target (H, W), batch size."""

    key: str
    arch: str
    source: Size
    target: Size
    batch: int

    @property
    def size_label(self) -> str:
        """`B x HxW` (source and target at one size) or `B x HxW / HxW`."""
        src = f"{self.source[0]}x{self.source[1]}"
        if self.target == self.source:
            return f"{self.batch} x {src}"
        return f"{self.batch} x {src} / {self.target[0]}x{self.target[1]}"


DEFAULTS = {
    "small": Setting("small", "small", (64, 128), (64, 128), 8),  # MiniCity steps 2-3
    "r101": Setting("r101", "resnet101", (256, 512), (256, 512), 1),  # CPU-feasible DeepLab-v2
    "vgg16": Setting("vgg16", "vgg16", (256, 512), (256, 512), 1),
    "efficientnet_lite0": Setting(
        "efficientnet_lite0", "efficientnet_lite0", (256, 512), (256, 512), 1
    ),
}


def methods_for(setting: Setting, names: Sequence[str]) -> list[str]:
    """The methods a setting can run: pixel-mixing ones only where source and target share a
    size."""
    same = setting.source == setting.target
    return [n for n in names if same or n not in PIXEL_MIXING]


def parse_sizes(text: str) -> tuple[Size, Size]:
    """`HxW` (source = target) or `HxW,HxW` (source, target) -> ((H, W), (H, W))."""
    parts = text.split(",")
    try:
        sizes = [tuple(int(v) for v in p.lower().split("x")) for p in parts]
    except ValueError:
        sizes = []
    if len(parts) not in (1, 2) or any(len(s) != 2 or min(s) < 1 for s in sizes) or not sizes:
        raise ApodaError(f"--size {text!r}: expected HxW or HxW,HxW (source,target), e.g. 256x512")
    source = (sizes[0][0], sizes[0][1])
    target = (sizes[-1][0], sizes[-1][1])
    return source, target


def method_config(name: str, amp: bool, arch: str) -> Config:
    """The MiniCity APODA config switched to `name`, with the brief's loss settings; D has the
    MiniCity width (32) on the CPU backbones and the paper's (64) on ResNet-101 and VGG-16."""
    method = "dacs" if name in DACS_VARIANTS else name
    overrides = [f"method.name={method}", f"train.amp={str(amp).lower()}", "train.nonfinite=skip"]
    overrides += DACS_VARIANTS.get(name, ())
    if arch in ("resnet101", "vgg16") and name != "source_only":  # the paper's D width
        overrides.append("method.discriminator_width=64")
    if name in ("asn", "advent"):
        overrides.append("method.lambda_adv=0.001")
    if name == "apoda":
        overrides += ["method.seg_loss=lovasz", "method.attack.seg_objective=lovasz"]
    else:
        overrides.append("method.seg_loss=ce")
    return load_config(resolve_config("minicity/apoda"), overrides)


def build(name: str, setting: Setting, device: torch.device, amp: bool) -> Method:
    """A fresh segmenter (random init, the architecture's default batch norm) and method."""
    config = method_config(name, amp, setting.arch)
    segmenter = build_segmenter(setting.arch, NUM_CLASSES).to(device)  # type: ignore[arg-type]
    method = prepared_method(segmenter, config, device)
    method.set_train_mode()
    return method


def prepared_method(segmenter: Segmenter, config: Config, device: torch.device) -> Method:
    """The config's method around `segmenter`, prepared as a run prepares it. The feature
    distance's frozen "ImageNet" copy of G loads G's own weights (written only for a method
    with the distance on): its cost does not depend on their values."""
    with tempfile.TemporaryDirectory() as folder:
        weights = None
        if getattr(config.method, "imnet_feature_dist_lambda", 0.0) > 0:
            weights = Path(folder) / "backbone.pt"
            torch.save(segmenter.backbone_tensors(), weights)
        method = build_method(segmenter, config, device, weights)
        method.prepare(RunContext(CITYSCAPES_CLASS_NAMES, {}))
    return method


def batches(setting: Setting, device: torch.device, seed: int = 0) -> tuple[Batch, Batch]:
    """Random source images with random labels, random target images with no labels."""
    gen = torch.Generator().manual_seed(seed)
    b, (hs, ws), (ht, wt) = setting.batch, setting.source, setting.target
    source = {
        "image": torch.randn(b, 3, hs, ws, generator=gen),
        "label": torch.randint(0, NUM_CLASSES, (b, hs, ws), generator=gen),
    }
    target = {
        "image": torch.randn(b, 3, ht, wt, generator=gen),
        "label": torch.full((b, ht, wt), 255, dtype=torch.long),
    }
    return (
        {k: v.to(device) for k, v in source.items()},
        {k: v.to(device) for k, v in target.items()},
    )


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the whole step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmHWM = peak RSS, VmRSS = current) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ApodaError(f"/proc/self/status has no {field} field")


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: every FLOP is attributed to "Global".

    The tracker's backward hooks make `torch.autograd.grad` with respect to a leaf tensor fail
    ("A leaf node was passed to _will_engine_execute_node"), which is exactly how the attack
    takes its gradients, so the per-module split is given up for the total.
    """

    parents: ClassVar[set[str]] = {"Global"}

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def conv_backward_flops(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: object,
    _stride: object,
    _padding: object,
    _dilation: object,
    transposed: bool,
    _output_padding: object,
    _groups: object,
    output_mask: list[bool],
    out_shape: object = None,
    **kwargs: object,
) -> int:
    """FLOPs of a convolution's backward: the input gradient and the weight gradient each take
    the forward's multiply-adds, `groups` included. torch's own formula ignores `groups` for the
    weight gradient and counts a depthwise conv's backward about `groups` times too high
    (EfficientNet-Lite0's step came out ~50x too high). No apoda network has a transposed conv."""
    if transposed:
        raise NotImplementedError("FLOPs of a transposed convolution's backward")
    forward = flop_counter.conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=False)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(method: Method, source: Batch, target: Batch, iteration: int) -> int:
    """FLOPs of one `train_step` as executed (forward and backward; 2 FLOPs per MAC)."""
    counter = FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}
    )
    counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    with counter:
        method.train_step(source, target, iteration)
    return int(counter.get_total_flops())


def child_memory(name: str, setting: Setting, device: torch.device, amp: bool) -> dict[str, float]:
    """Run in a fresh process: RSS after building the method, and peak RSS after two steps."""
    method = build(name, setting, device, amp)
    source, target = batches(setting, device)
    built = proc_status_mb("VmHWM")
    for i in range(2):
        method.train_step(source, target, i)
    return {"rss_built_mb": built, "peak_rss_mb": proc_status_mb("VmHWM")}


def measure_memory_subprocess(name: str, setting: Setting, args: argparse.Namespace) -> dict:
    """Peak RSS of one method alone, from a fresh interpreter running this script's child mode."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        name,
        "--backbones",
        setting.key,
        "--size",
        f"{setting.source[0]}x{setting.source[1]},{setting.target[0]}x{setting.target[1]}",
        "--batch",
        str(setting.batch),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ApodaError(f"memory subprocess for {name}/{setting.key} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_setting(setting: Setting, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Round-robin timing of every method on one setting; FLOPs and memory per method."""
    torch.manual_seed(0)
    methods = {
        name: build(name, setting, device, args.amp) for name in methods_for(setting, args.methods)
    }
    source, target = batches(setting, device)
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu_times: dict[str, list[float]] = {name: [] for name in methods}
    peak_gpu: dict[str, float] = dict.fromkeys(methods, 0.0)
    for it in range(args.warmup + args.iters):
        for name, method in methods.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            method.train_step(source, target, it)
            sync(device)
            elapsed = time.perf_counter() - start
            if it >= args.warmup:
                times[name].append(elapsed)
                cpu_times[name].append(time.process_time() - cpu_start)
                if device.type == "cuda":
                    peak = torch.cuda.max_memory_allocated(device) / 2**20
                    peak_gpu[name] = max(peak_gpu[name], peak)
        print(
            f"  [{setting.key}] iteration {it + 1}/{args.warmup + args.iters}: "
            + ", ".join(f"{n} {times[n][-1] if times[n] else float('nan'):.3f}s" for n in methods),
            flush=True,
        )
    rows = []
    for name, method in methods.items():
        flops = count_flops(method, source, target, args.warmup + args.iters)
        median = statistics.median(times[name])
        row: dict[str, Any] = {
            "method": name,
            "backbone": setting.key,
            "arch": setting.arch,
            "size": setting.size_label,
            "seg_loss": method.settings.seg_loss,
            "discriminator_width": getattr(method.settings, "discriminator_width", None),
            "sec_per_iter_median": round(median, 4),
            "sec_per_iter_min": round(min(times[name]), 4),
            "sec_per_iter_max": round(max(times[name]), 4),
            "iters_per_sec": round(1.0 / median, 3),
            "cpu_sec_per_iter_median": round(statistics.median(cpu_times[name]), 4),
            "gflop_per_iter": round(flops / 1e9, 2),
            "skipped_steps": method.skipped_steps,
        }
        if device.type == "cuda":
            row["peak_gpu_mb"] = round(peak_gpu[name], 1)
        rows.append(row)
    del methods
    if device.type == "cpu" and not args.no_memory:
        for row in rows:
            mem = measure_memory_subprocess(row["method"], setting, args)
            row["peak_rss_mb"] = round(mem["peak_rss_mb"], 1)
            row["rss_step_increase_mb"] = round(mem["peak_rss_mb"] - mem["rss_built_mb"], 1)
    return rows


def ratios(rows: list[dict], key: str) -> dict[str, dict[str, float]]:
    """APODA's and the self-training rows' `key` over each baseline's, per backbone."""
    table = {(r["method"], r["backbone"]): r[key] for r in rows}
    out: dict[str, dict[str, float]] = {}
    for method in ("apoda", "dacs", *DACS_VARIANTS):
        for base in ("asn", "advent", "source_only"):
            per = {
                bb: round(table[(method, bb)] / table[(base, bb)], 3)
                for (m, bb) in table
                if m == method and (base, bb) in table and table[(base, bb)] > 0
            }
            if per:
                out[f"{method}_over_{base}"] = per
    return out


def machine(device: torch.device) -> dict[str, Any]:
    """What ran the benchmark: CPU model, cores, threads, load, torch, GPU name."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_results(result: dict[str, Any], out: str | Path) -> Path:
    """The benchmark's JSON, written where its README reads it."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def print_markdown(head: list[str], rows: list[list[str]]) -> None:
    """A Markdown table (what the benchmarks' README quotes)."""
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


def print_table(rows: list[dict]) -> None:
    """A Markdown table of the rows."""
    mem_key = "peak_gpu_mb" if any("peak_gpu_mb" in r for r in rows) else "peak_rss_mb"
    head = ["method", "backbone", "size", "s/iter (median)", "min-max", "CPU s/iter"]
    head += ["GFLOP/iter", mem_key]
    table = []
    for r in rows:
        cells = [
            r["method"],
            r["backbone"],
            r["size"],
            f"{r['sec_per_iter_median']:.3f}",
            f"{r['sec_per_iter_min']:.3f}-{r['sec_per_iter_max']:.3f}",
            f"{r['cpu_sec_per_iter_median']:.3f}",
            f"{r['gflop_per_iter']:.1f}",
            str(r.get(mem_key, "-")),
        ]
        table.append(cells)
    print_markdown(head, table)


def settings_from(args: argparse.Namespace) -> list[Setting]:
    """The DEFAULTS for the chosen backbones, with --size / --batch applied."""
    chosen = []
    for key in args.backbones:
        if key not in DEFAULTS:
            raise ApodaError(f"--backbones {key!r}: expected one of {', '.join(DEFAULTS)}")
        s = DEFAULTS[key]
        source, target = parse_sizes(args.size) if args.size else (s.source, s.target)
        chosen.append(Setting(key, s.arch, source, target, args.batch or s.batch))
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--iters", type=int, default=5, help="timed iterations per method")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations per method first")
    p.add_argument(
        "--backbones",
        nargs="+",
        default=["small", "r101"],
        help="small, r101, vgg16 and/or efficientnet_lite0",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--size", help="HxW or HxW,HxW (source,target) for every chosen backbone")
    p.add_argument("--batch", type=int, help="batch size for every chosen backbone")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (train.amp; CUDA only)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method RSS subprocesses")
    p.add_argument("--out", default=str(RESULTS / "step_time.json"), help="JSON output")
    p.add_argument(
        "--append",
        action="store_true",
        help="keep the rows of other backbones already in --out (ratios are recomputed)",
    )
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden --child, one memory measurement)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ApodaError("--device cuda: no CUDA device is available")
    settings = settings_from(args)
    if args.child:
        print(json.dumps(child_memory(args.child, settings[0], device, args.amp)))
        return 0
    started = machine(device)
    rows = []
    for setting in settings:
        names = methods_for(setting, args.methods)
        print(f"{setting.key}: {setting.size_label}, methods {', '.join(names)}", flush=True)
        rows += time_setting(setting, args, device)
    out = Path(args.out)
    machines = {s.key: {**started, "load_average_at_end": list(os.getloadavg())} for s in settings}
    if args.append and out.is_file():
        previous = json.loads(out.read_text())
        measured = {s.key for s in settings}
        rows = [r for r in previous["rows"] if r["backbone"] not in measured] + rows
        machines = {**previous.get("machines", {}), **machines}
    result = {
        "rows": rows,
        "ratios": ratios(rows, "sec_per_iter_median"),
        "cpu_time_ratios": ratios(rows, "cpu_sec_per_iter_median"),
        "flop_ratios": ratios(rows, "gflop_per_iter"),
        "machine": started,
        "machines": machines,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {
            "iters": args.iters,
            "warmup": args.warmup,
            "amp": args.amp and device.type == "cuda",
            "attack": "i_fgspm, K=3",
            "order": "round-robin over methods in one process",
        },
    }
    write_results(result, out)
    print()
    print_table(rows)
    print("\nratios of median s/iter:", json.dumps(result["ratios"]))
    print("ratios of median CPU s/iter:", json.dumps(result["cpu_time_ratios"]))
    print("ratios of FLOPs:", json.dumps(result["flop_ratios"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
