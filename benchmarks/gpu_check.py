"""The first GPU run of apoda (issue 14): one command that times every method at the real sizes,
compares bf16 with float32, measures evaluation, and runs the whole CLI path once.

Sections (each writes its part of the JSON as soon as it ends, so a run cut short keeps what it
measured; a section that fails records its error and the others still run):

  train_step       median s/iter after warm-up and torch.cuda.max_memory_allocated of source
                   only, ASN (multi-level), AdvEnt and APODA (K=3, I-FGSPM), float32 and bf16
                   autocast (train.amp), on synthetic tensors: DeepLab-v2 ResNet-101 and VGG-16
                   at source 1280x720 / target 1024x512, batch 1; the small backbone at MiniCity
                   size (64x128, batch 8). Ratios APODA/ASN and APODA/source only, and the
                   targets (R101: APODA step <= 0.8x ASN's time and <= 0.5x ASN's peak memory).
  eval_throughput  images/s at the Cityscapes protocol: 1024x512 in, logits upsampled to
                   2048x1024, argmax, confusion matrix (apoda.evaluation.predict_full_res).
  apoda_eval       `apoda eval`'s wall time on generated images in Cityscapes' on-disk layout.
  bf16             one APODA step from one state in float32 and in bf16: the largest difference
                   of each loss term and of the perturbed features, and the sign agreement of
                   the attack's step (CUDA only; reported as skipped on the CPU).
  end_to_end       `apoda train minicity/source_only`, `apoda train minicity/apoda
                   model.init_from=...` and `apoda eval` as subprocesses (train.device=cuda).

    python benchmarks/gpu_check.py                         # on a GPU: results/gpu.json
    python benchmarks/gpu_check.py --device cpu --tiny     # every section, tiny, ~1 min on CPU

On the CPU the peak-memory fields are null (the process's peak RSS is reported on its own, as
`process_peak_rss_mb`), and the default output is results/gpu_check_cpu.json, never gpu.json.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

import apoda.methods.apoda as apoda_module
from apoda.checkpoints import save_checkpoint
from apoda.config import Config, config_to_dict, load_config
from apoda.configs import resolve_config
from apoda.demo import TINY_MINICITY
from apoda.evaluation import ConfusionMatrix, predict_full_res
from apoda.methods import Batch, Method
from apoda.models.build import architecture_from_config
from step_time import (  # the sibling script: inputs, sync, machine, JSON and table writers
    DACS_VARIANTS,
    METHODS,
    NUM_CLASSES,
    RESULTS,
    Setting,
    batches,
    machine,
    methods_for,
    prepared_method,
    print_markdown,
    proc_status_mb,
    sync,
    write_results,
)

SECTIONS = ("train_step", "eval_throughput", "apoda_eval", "bf16", "end_to_end")
PRECISIONS = ("float32", "bf16")
BF16_CUDA_ONLY = "bf16 autocast is CUDA-only in apoda (Method.autocast): nothing to compare"

# (H, W). The paper's sizes: GTA5 resized to 1280x720, Cityscapes to 1024x512.
FULL = {
    "r101": Setting("r101", "resnet101", (720, 1280), (512, 1024), 1),
    "vgg16": Setting("vgg16", "vgg16", (720, 1280), (512, 1024), 1),
    "small": Setting("small", "small", (64, 128), (64, 128), 8),  # MiniCity steps 2-3
}
TINY = {
    "r101": Setting("r101", "resnet101", (48, 96), (32, 64), 1),
    "vgg16": Setting("vgg16", "vgg16", (48, 96), (32, 64), 1),
    "small": Setting("small", "small", (32, 64), (32, 64), 2),
}
ARCHS = {"r101": "resnet101", "vgg16": "vgg16", "small": "small"}
# Evaluation at the protocol: network input and label size, (H, W).
EVAL_FULL = ((512, 1024), (1024, 2048))
EVAL_TINY = ((32, 64), (64, 128))
# The 19 Cityscapes label ids that are trained on, and 0 (unlabelled, ignored).
CITYSCAPES_IDS = np.array(
    [0, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
)
CITIES = ("frankfurt", "lindau", "munster")
# MiniCity for the end-to-end run: a reduced set (generated in about 10 s) and the tests' tiny one.
MINICITY_FULL = [
    "data.minicity.n_source=1000",
    "data.minicity.n_target_train=1000",
    "data.minicity.n_target_val=200",
    "data.num_workers=4",
    "train.progress=false",
    "train.samples=0",
]
MINICITY_TINY = TINY_MINICITY


def is_cuda(device: torch.device) -> bool:
    """Whether numbers measured on `device` came from CUDA."""
    return device.type == "cuda"


def mb(n_bytes: int) -> float:
    """Bytes as MiB, one decimal."""
    return round(n_bytes / 2**20, 1)


def free(device: torch.device) -> None:
    """Release what the last measurement left: Python garbage and the CUDA cache."""
    gc.collect()
    if is_cuda(device):
        torch.cuda.empty_cache()


def cuda_peak_start(device: torch.device) -> None:
    """Start a peak-memory window (no-op on the CPU)."""
    if is_cuda(device):
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mb(device: torch.device) -> float | None:
    """Peak allocated CUDA memory since `cuda_peak_start`; None on the CPU (not invented)."""
    if not is_cuda(device):
        return None
    sync(device)
    return mb(torch.cuda.max_memory_allocated(device))


def device_info(device: torch.device) -> dict[str, Any]:
    """The GPU, torch and CUDA versions, and the float32 settings the numbers were taken with."""
    info: dict[str, Any] = {
        "type": device.type,
        "cuda": is_cuda(device),
        "name": None,
        "torch": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version()
        if torch.backends.cudnn.is_available()
        else None,
        "bf16_supported": None,
        "capability": None,
        "total_memory_mb": None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "python": platform.python_version(),
    }
    if is_cuda(device):
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=torch.cuda.get_device_name(device),
            bf16_supported=torch.cuda.is_bf16_supported(),
            capability=list(torch.cuda.get_device_capability(device)),
            total_memory_mb=mb(props.total_memory),
        )
    return info


# -- training steps --------------------------------------------------------------------------
def step_config(setting: Setting, name: str, amp: bool) -> Config:
    """The project's own config for `name` (gta5_to_cityscapes for R101/VGG-16, minicity for the
    small backbone), with ASN multi-level, bf16 autocast on or off, non-finite steps skipped."""
    family = "minicity" if setting.arch == "small" else "gta5_to_cityscapes"
    overrides = [
        f"model.arch={setting.arch}",
        f"train.amp={str(amp).lower()}",
        "train.nonfinite=skip",
    ]
    if name == "asn":
        overrides.append("model.multi_level=true")
    overrides += DACS_VARIANTS.get(name, ())
    config = "dacs" if name in DACS_VARIANTS else name
    return load_config(resolve_config(f"{family}/{config}"), overrides)


def calibrate_batch_norm(segmenter: nn.Module, image: torch.Tensor) -> None:
    """Set every batch norm's running statistics to those of one forward of `image`.

    Random weights with frozen batch norm (unit statistics) let ResNet-101's features grow to
    about 1e4-1e5, where the softmax saturates and the attack's 0.01 steps vanish in float32
    rounding; after this, the frozen statistics normalise as trained ones would, so the losses,
    the attack and the bf16 comparison run in a realistic regime. Speed does not depend on it.
    """
    norms = [m for m in segmenter.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.training, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, that batch's statistics
        m.training = True  # set directly: FrozenBatchNorm2d.train() refuses train mode
    with torch.no_grad():
        segmenter(image)
    for m, (training, momentum) in zip(norms, saved, strict=True):
        m.training, m.momentum = training, momentum


def build_step_method(
    setting: Setting, name: str, amp: bool, device: torch.device, calibrate_on: torch.Tensor
) -> Method:
    """A fresh segmenter (random weights, the config's cut / BN / heads, batch norm calibrated
    on `calibrate_on`) and its method."""
    config = step_config(setting, name, amp)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # APODA without model.init_from warns: speed is the same
        segmenter = architecture_from_config(config, NUM_CLASSES).to(device)
        calibrate_batch_norm(segmenter, calibrate_on)
        method = prepared_method(segmenter, config, device)
    method.set_train_mode()
    return method


def time_method(
    setting: Setting,
    name: str,
    precision: str,
    inputs: tuple[Batch, Batch],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """Median s/iter after warm-up and peak CUDA memory of one (backbone, method, precision)."""
    row: dict[str, Any] = {
        "backbone": setting.key,
        "arch": setting.arch,
        "method": name,
        "precision": precision,
        "size": setting.size_label,
        "multi_level": name == "asn",
        "from_cuda": is_cuda(device),
        "sec_per_iter_median": None,
        "sec_per_iter_min": None,
        "sec_per_iter_max": None,
        "peak_gpu_mb": None,
        "allocated_before_step_gpu_mb": None,
    }
    amp = precision == "bf16"
    if amp and not is_cuda(device):
        row["skipped"] = BF16_CUDA_ONLY
        return row
    if amp and not torch.cuda.is_bf16_supported():
        row["skipped"] = "this GPU does not support bf16 (torch.cuda.is_bf16_supported)"
        return row
    method = None
    try:
        source, target = inputs
        method = build_step_method(setting, name, amp, device, source["image"])
        for it in range(args.warmup):
            method.train_step(source, target, it)
        cuda_peak_start(device)
        if is_cuda(device):
            row["allocated_before_step_gpu_mb"] = mb(torch.cuda.memory_allocated(device))
        times = []
        for it in range(args.warmup, args.warmup + args.iters):
            sync(device)
            start = time.perf_counter()
            method.train_step(source, target, it)
            sync(device)
            times.append(time.perf_counter() - start)
        row["peak_gpu_mb"] = cuda_peak_mb(device)
        row.update(
            sec_per_iter_median=round(statistics.median(times), 4),
            sec_per_iter_min=round(min(times), 4),
            sec_per_iter_max=round(max(times), 4),
            timed_iters=len(times),
            skipped_steps=method.skipped_steps,
        )
    except torch.cuda.OutOfMemoryError:
        row["error"] = "CUDA out of memory"
    except Exception as exc:  # a first run on new hardware: keep the other rows
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        traceback.print_exc()
    finally:
        del method
        free(device)
    return row


def step_ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """APODA over ASN and over source only, in time and peak memory, per backbone and precision."""
    table = {(r["backbone"], r["precision"], r["method"]): r for r in rows}
    out: dict[str, Any] = {}
    for backbone, precision, method in table:
        if method != "apoda":
            continue
        apoda = table[(backbone, precision, "apoda")]
        entry = {}
        for base in ("asn", "source_only"):
            other = table.get((backbone, precision, base))
            for key, label in (("sec_per_iter_median", "time"), ("peak_gpu_mb", "peak_memory")):
                a, b = apoda.get(key), other.get(key) if other else None
                entry[f"apoda_over_{base}_{label}"] = round(a / b, 3) if a and b else None
        out[f"{backbone}/{precision}"] = entry
    return out


def step_targets(ratios: dict[str, Any], device: torch.device, tiny: bool) -> dict[str, Any]:
    """Issue 14's targets on ResNet-101 at the paper's sizes: APODA <= 0.8x ASN's time and
    <= 0.5x ASN's peak memory. `met` is null unless measured on CUDA at those sizes."""
    out: dict[str, Any] = {}
    judged = is_cuda(device) and not tiny
    for precision in PRECISIONS:
        entry = ratios.get(f"r101/{precision}")
        if entry is None:
            continue
        time_ratio = entry["apoda_over_asn_time"]
        mem_ratio = entry["apoda_over_asn_peak_memory"]
        out[f"r101/{precision}"] = {
            "time_ratio": time_ratio,
            "time_target": 0.8,
            "time_met": (time_ratio <= 0.8) if judged and time_ratio is not None else None,
            "memory_ratio": mem_ratio,
            "memory_target": 0.5,
            "memory_met": (mem_ratio <= 0.5) if judged and mem_ratio is not None else None,
        }
    if not judged:
        out["note"] = "not judged: the targets are for CUDA at 1280x720 / 1024x512"
    return out


def section_train_step(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every (backbone, method, precision), one at a time, memory freed in between."""
    settings = TINY if args.tiny else FULL
    rows = []
    for key in args.backbones:
        setting = settings[key]
        inputs = batches(setting, device)
        for precision in PRECISIONS:
            for name in methods_for(setting, METHODS):
                row = time_method(setting, name, precision, inputs, args, device)
                rows.append(row)
                print(f"  train_step {key} {precision} {name}: {_step_text(row)}", flush=True)
        del inputs
        free(device)
    ratios = step_ratios(rows)
    return {
        "ok": not any("error" in r for r in rows),
        "rows": rows,
        "ratios": ratios,
        "targets": step_targets(ratios, device, args.tiny),
        "warmup": args.warmup,
        "iters": args.iters,
        "order": "one method at a time (built, warmed up, timed, freed); peak reset after warm-up",
        "inputs": "random tensors (target labels 255), random weights, 19 classes",
    }


def _step_text(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return "skipped"
    if "error" in row:
        return row["error"]
    peak = row["peak_gpu_mb"]
    return f"{row['sec_per_iter_median']:.3f} s" + (f", peak {peak:.0f} MiB" if peak else "")


# -- evaluation ------------------------------------------------------------------------------
def section_eval_throughput(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Images/s of the evaluation protocol (float32, as `apoda eval` runs) per architecture."""
    in_size, label_size = EVAL_TINY if args.tiny else EVAL_FULL
    images = 2 if args.tiny else args.eval_images
    rows = []
    for key in [k for k in args.backbones if k != "small"] or ["small"]:
        config = load_config(
            resolve_config("gta5_to_cityscapes/source_only"), [f"model.arch={ARCHS[key]}"]
        )
        torch.manual_seed(0)
        model = architecture_from_config(config, NUM_CLASSES).to(device).eval()
        gen = torch.Generator().manual_seed(0)
        image = torch.randn(1, 3, *in_size, generator=gen).to(device)
        label = torch.randint(0, NUM_CLASSES, (1, *label_size), generator=gen).to(device)
        cm = ConfusionMatrix(NUM_CLASSES, device=device)
        with torch.no_grad():
            for _ in range(0 if args.tiny else 3):
                cm.update(predict_full_res(model, image, label.shape[-2:]), label)
            cuda_peak_start(device)
            sync(device)
            start = time.perf_counter()
            for _ in range(images):
                cm.update(predict_full_res(model, image, label.shape[-2:]), label)
            sync(device)
            elapsed = time.perf_counter() - start
        row = {
            "arch": ARCHS[key],
            "input": f"{in_size[0]}x{in_size[1]}",
            "output": f"{label_size[0]}x{label_size[1]}",
            "batch": 1,
            "images": images,
            "precision": "float32",
            "seconds": round(elapsed, 4),
            "sec_per_image": round(elapsed / images, 4),
            "images_per_sec": round(images / elapsed, 3),
            "peak_gpu_mb": cuda_peak_mb(device),
            "from_cuda": is_cuda(device),
        }
        rows.append(row)
        print(f"  eval_throughput {key}: {row['images_per_sec']} images/s", flush=True)
        del model, image, label, cm
        free(device)
    return {"rows": rows, "note": "tensors already on the device; no decoding; warm-up untimed"}


def write_cityscapes(root: Path, count: int, size: tuple[int, int]) -> None:
    """`count` images in Cityscapes' layout at `size` (H, W): leftImg8bit/val/<city>/ and
    gtFine/val/<city>/*_gtFine_labelIds.png (blocky random content, as real PNGs compress)."""
    rng = np.random.default_rng(0)
    height, width = size
    block = max(1, min(height, width) // 32)
    for k in range(count):
        city = CITIES[k % len(CITIES)]
        stem = f"{city}_{k:06d}_000019"
        coarse = rng.integers(0, 256, (-(-height // block), -(-width // block), 3), dtype=np.uint8)
        rgb = np.kron(coarse, np.ones((block, block, 1), np.uint8))[:height, :width]
        ids = CITYSCAPES_IDS[rng.integers(0, len(CITYSCAPES_IDS), coarse.shape[:2])]
        labels = np.kron(ids, np.ones((block, block), np.int64))[:height, :width].astype(np.uint8)
        for folder, suffix, array in (
            ("leftImg8bit", "_leftImg8bit.png", rgb),
            ("gtFine", "_gtFine_labelIds.png", labels),
        ):
            path = root / folder / "val" / city / f"{stem}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path, compress_level=1)


def apoda_command(*args: str) -> list[str]:
    """The `apoda` console script beside this interpreter, or the same entry point through -c."""
    script = Path(sys.executable).parent / "apoda"
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-c", "import sys; from apoda.cli import main; sys.exit(main())", *args]


def run_cli(args: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run `apoda ARGS`, time it, keep its output in `log`; the tail of stderr on failure."""
    start = time.perf_counter()
    done = subprocess.run(
        apoda_command(*args), capture_output=True, text=True, env=env, check=False
    )
    elapsed = time.perf_counter() - start
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ apoda {' '.join(args)}\n{done.stdout}\n--- stderr ---\n{done.stderr}")
    out: dict[str, Any] = {"command": "apoda " + " ".join(args), "rc": done.returncode}
    out["wall_s"] = round(elapsed, 2)
    if done.returncode != 0:
        out["error"] = "\n".join(done.stderr.strip().splitlines()[-15:])
    return out


def read_miou(path: Path) -> float | None:
    """mIoU (%) of a metrics.json, None when it is missing."""
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("miou")
    return None if value is None else round(float(value), 2)


def cli_env(workdir: Path) -> dict[str, str]:
    """The subprocesses' environment: a private $APODA_CACHE in the work folder."""
    return {**os.environ, "APODA_CACHE": str(workdir / "cache"), "PYTHONUNBUFFERED": "1"}


def section_apoda_eval(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """`apoda eval` on a randomly initialised DeepLab-v2 checkpoint and generated Cityscapes
    files: the command's own wall time (process start, checkpoint load, decoding, protocol)."""
    workdir: Path = args.workdir / "apoda_eval"
    arch = "small" if args.tiny else "resnet101"
    images = 3 if args.tiny else args.eval_cli_images
    label_size = EVAL_TINY[1] if args.tiny else EVAL_FULL[1]
    net_h, net_w = EVAL_TINY[0] if args.tiny else EVAL_FULL[0]
    root = workdir / "cityscapes"
    start = time.perf_counter()
    write_cityscapes(root, images, label_size)
    written = time.perf_counter() - start
    overrides = [f"model.arch={arch}", f"train.device={device}"]
    overrides.append(f"data.target_size=[{net_w},{net_h}]")
    config = load_config(resolve_config("gta5_to_cityscapes/source_only"), overrides)
    torch.manual_seed(0)
    segmenter = architecture_from_config(config, NUM_CLASSES)
    checkpoint = workdir / "checkpoint.pt"
    state = {"iteration": 0, "config": config_to_dict(config)}
    save_checkpoint({**state, "modules": {"segmenter": segmenter.state_dict()}}, checkpoint)
    del segmenter
    cmd = ["eval", str(checkpoint), "--data", "cityscapes", "--root", str(root), "--split", "val"]
    cmd += ["--out", str(workdir / "eval")]
    result = run_cli(cmd, cli_env(args.workdir), workdir / "apoda_eval.log")
    result.update(
        arch=arch,
        images=images,
        image_size=f"{label_size[0]}x{label_size[1]}",
        network_input=f"{net_h}x{net_w}",
        batch_size=config.data.eval_batch_size,
        sec_per_image_including_startup=round(result["wall_s"] / images, 3),
        miou_random_weights=read_miou(workdir / "eval" / "metrics.json"),
        files_written_s=round(written, 2),
        from_cuda=is_cuda(device),
    )
    print(f"  apoda_eval: {images} images in {result['wall_s']} s (rc {result['rc']})", flush=True)
    return result


# -- bf16 against float32 --------------------------------------------------------------------
def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _sign_agreement(step_a: torch.Tensor, step_b: torch.Tensor) -> float:
    return round(float((step_a.sign() == step_b.sign()).float().mean()), 6)


def section_bf16(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One APODA step from one saved state in float32, then in bf16 autocast (train.amp)."""
    if not is_cuda(device):
        return {"skipped": True, "reason": BF16_CUDA_ONLY, "from_cuda": False}
    if not torch.cuda.is_bf16_supported():
        return {"skipped": True, "reason": "no bf16 on this GPU", "from_cuda": True}
    setting = (TINY if args.tiny else FULL)["r101" if "r101" in args.backbones else "small"]
    source, target = batches(setting, device)
    method = build_step_method(setting, "apoda", False, device, source["image"])
    # One float32 step first, so the optimisers' state is not empty.
    method.train_step(source, target, 0)
    state = copy.deepcopy(method.state_dict())
    where = Path("<gpu_check state>")
    attack = method.settings.attack  # type: ignore[attr-defined]
    classifier, disc = method.segmenter.classifier, method.modules["discriminator"]
    size_s = tuple(source["image"].shape[2:])

    # The attack itself in bf16 (apoda does not do this): how many step signs would flip.
    features = method._features(source["image"])  # type: ignore[attr-defined]
    ref, _ = apoda_module.perturb_features(
        classifier, disc, features, "source", attack, size_s, labels=source["label"]
    )
    attack_bf16: dict[str, Any]
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low, _ = apoda_module.perturb_features(
                classifier, disc, features, "source", attack, size_s, labels=source["label"]
            )
        attack_bf16 = {
            "source_step_sign_agreement": _sign_agreement(low - features, ref - features),
            "perturbed_max_abs_diff": _max_abs(low, ref),
        }
    except Exception as exc:  # bf16 attack may fail (e.g. sort); report it
        attack_bf16 = {"error": str(exc).splitlines()[0]}

    original = apoda_module.perturb_features
    runs: dict[str, dict[str, Any]] = {}
    try:
        for precision in PRECISIONS:
            method.load_state_dict(state, where)
            method.loop.amp = precision == "bf16"
            seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

            def recording(*a: Any, _seen: dict = seen, **kw: Any) -> Any:
                out, diag = original(*a, **kw)
                _seen[a[3]] = (a[2].detach().clone(), out.detach().clone())  # domain: (f, f*)
                return out, diag

            apoda_module.perturb_features = recording  # type: ignore[assignment]
            log = method.train_step(source, target, 1)
            losses = {k: float(v) for k, v in log.items() if k.startswith("loss/")}
            runs[precision] = {"losses": losses, "features": seen}
    finally:
        apoda_module.perturb_features = original  # type: ignore[assignment]
    full, half = runs["float32"], runs["bf16"]
    losses = {
        k: {
            "float32": full["losses"][k],
            "bf16": half["losses"][k],
            "abs_diff": abs(full["losses"][k] - half["losses"][k]),
            "rel_diff": abs(full["losses"][k] - half["losses"][k])
            / max(abs(full["losses"][k]), 1e-12),
        }
        for k in full["losses"]
    }
    features_out = {}
    for domain, (f32, adv32) in full["features"].items():
        f16, adv16 = half["features"][domain]
        features_out[domain] = {
            "clean_max_abs_diff": _max_abs(f16, f32),
            "perturbed_max_abs_diff": _max_abs(adv16, adv32),
            "perturbed_max_abs_float32": float(adv32.abs().max()),
            "step_sign_agreement": _sign_agreement(adv16 - f16, adv32 - f32),
            "step_nonzero_fraction_float32": round(float((adv32 != f32).float().mean()), 6),
        }
    del method, state, runs, full, half, features, ref
    free(device)
    out = {
        "skipped": False,
        "backbone": setting.key,
        "size": setting.size_label,
        "losses": losses,
        "features": features_out,
        "attack_in_bf16_for_contrast": attack_bf16,
        "note": "one APODA step from the same state (after one float32 step); apoda runs G in "
        "bf16 and the attack in float32, so step signs differ only through G's features",
        "from_cuda": True,
    }
    worst = max(v["abs_diff"] for v in losses.values())
    print(f"  bf16: largest loss difference {worst:.3g}", flush=True)
    return out


# -- end to end ------------------------------------------------------------------------------
def section_end_to_end(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """source only, then APODA from it, then `apoda eval`, all through the CLI on MiniCity."""
    runs = args.workdir / "runs"
    common = [*(MINICITY_TINY if args.tiny else MINICITY_FULL), f"train.device={device}"]
    so_iters, apoda_iters = (4, 4) if args.tiny else (args.e2e_iters, args.e2e_iters)
    env = cli_env(args.workdir)
    steps = []

    def train(name: str, config: str, iters: int, extra: list[str]) -> dict[str, Any]:
        cmd = ["train", config, *common, f"train.iterations={iters}", "train.eval_every=0"]
        cmd += [f"train.checkpoint_every={iters}", *extra, "--out", str(runs / name), "--overwrite"]
        result = run_cli(cmd, env, runs / f"{name}.log")
        result.update(step=name, iterations=iters, miou=read_miou(runs / name / "metrics.json"))
        print(f"  end_to_end {name}: {result['wall_s']} s (rc {result['rc']})", flush=True)
        return result

    steps.append(train("source_only", "minicity/source_only", so_iters, []))
    if steps[-1]["rc"] == 0:
        init = f"model.init_from={runs / 'source_only'}"
        steps.append(train("apoda", "minicity/apoda", apoda_iters, [init]))
    if steps[-1]["rc"] == 0 and steps[-1]["step"] == "apoda":
        cmd = ["eval", str(runs / "apoda"), "--data", "minicity", "--out", str(runs / "eval")]
        result = run_cli(cmd, env, runs / "eval.log")
        result.update(step="eval", iterations=None, miou=read_miou(runs / "eval" / "metrics.json"))
        steps.append(result)
        print(f"  end_to_end eval: {result['wall_s']} s (rc {result['rc']})", flush=True)
    ok = len(steps) == 3 and all(s["rc"] == 0 for s in steps)
    return {
        "steps": steps,
        "ok": ok,
        "from_cuda": is_cuda(device),
        "overrides": common,
        "note": "wall times include process start; the first also generates MiniCity, and each "
        "training run ends with its evaluation and report",
    }


RUNNERS: dict[str, Callable[[argparse.Namespace, torch.device], dict[str, Any]]] = {
    "train_step": section_train_step,
    "eval_throughput": section_eval_throughput,
    "apoda_eval": section_apoda_eval,
    "bf16": section_bf16,
    "end_to_end": section_end_to_end,
}


# -- output ----------------------------------------------------------------------------------
def _num(value: Any, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _met(value: bool | None) -> str:
    return "not judged" if value is None else ("yes" if value else "**no**")


def print_tables(result: dict[str, Any]) -> None:
    """Markdown tables of every section that ran."""
    dev = result["device"]
    name = dev["name"] or "CPU"
    print(f"\n## gpu_check on {name} (torch {dev['torch']}, CUDA {dev['cuda_version']})")
    steps = result.get("train_step")
    if steps and "rows" in steps:
        print("\n### Training step\n")
        head = ["backbone", "method", "precision", "size", "s/iter (median)", "min-max"]
        head += ["peak GPU MiB", "CUDA"]
        table = []
        for r in steps["rows"]:
            status = "skipped" if "skipped" in r else r.get("error")
            table.append(
                [
                    r["backbone"],
                    r["method"],
                    r["precision"],
                    r["size"],
                    status or _num(r["sec_per_iter_median"]),
                    "-" if status else f"{r['sec_per_iter_min']:.3f}-{r['sec_per_iter_max']:.3f}",
                    _num(r["peak_gpu_mb"], "{:.0f}"),
                    "yes" if r["from_cuda"] else "no",
                ]
            )
        print_markdown(head, table)
        print()
        head = ["backbone/precision", "APODA/ASN time", "APODA/ASN memory"]
        head += ["APODA/source only time", "APODA/source only memory"]
        table = [
            [
                key,
                _num(v["apoda_over_asn_time"]),
                _num(v["apoda_over_asn_peak_memory"]),
                _num(v["apoda_over_source_only_time"]),
                _num(v["apoda_over_source_only_peak_memory"]),
            ]
            for key, v in steps["ratios"].items()
        ]
        print_markdown(head, table)
        targets = {k: v for k, v in steps["targets"].items() if k != "note"}
        if targets:
            print()
            head = ["target (R101)", "APODA/ASN time (<= 0.8)", "met", "APODA/ASN memory (<= 0.5)"]
            head.append("met")
            print_markdown(
                head,
                [
                    [
                        k,
                        _num(v["time_ratio"]),
                        _met(v["time_met"]),
                        _num(v["memory_ratio"]),
                        _met(v["memory_met"]),
                    ]
                    for k, v in targets.items()
                ],
            )
            if "note" in steps["targets"]:
                print(steps["targets"]["note"])
    evals = result.get("eval_throughput")
    if evals and "rows" in evals:
        print("\n### Evaluation at the protocol\n")
        print_markdown(
            ["arch", "in -> out", "images", "s/image", "images/s", "peak GPU MiB", "CUDA"],
            [
                [
                    r["arch"],
                    f"{r['input']} -> {r['output']}",
                    str(r["images"]),
                    _num(r["sec_per_image"], "{:.4f}"),
                    _num(r["images_per_sec"], "{:.2f}"),
                    _num(r["peak_gpu_mb"], "{:.0f}"),
                    "yes" if r["from_cuda"] else "no",
                ]
                for r in evals["rows"]
            ],
        )
    cli = result.get("apoda_eval")
    if cli and "rc" in cli:
        print("\n### `apoda eval` on generated Cityscapes files\n")
        print_markdown(
            ["arch", "images", "image -> network", "wall s", "s/image (with start-up)", "rc"],
            [
                [
                    cli["arch"],
                    str(cli["images"]),
                    f"{cli['image_size']} -> {cli['network_input']}",
                    _num(cli["wall_s"], "{:.1f}"),
                    _num(cli["sec_per_image_including_startup"], "{:.2f}"),
                    str(cli["rc"]),
                ]
            ],
        )
    bf16 = result.get("bf16")
    if bf16 is not None and "skipped" in bf16:
        print("\n### bf16 against float32 (one APODA step)\n")
        if bf16["skipped"]:
            print(f"skipped: {bf16['reason']}")
        else:
            print_markdown(
                ["loss term", "float32", "bf16", "|diff|", "relative"],
                [
                    [
                        k,
                        f"{v['float32']:.5g}",
                        f"{v['bf16']:.5g}",
                        f"{v['abs_diff']:.3g}",
                        f"{v['rel_diff']:.3g}",
                    ]
                    for k, v in bf16["losses"].items()
                ],
            )
            print()
            print_markdown(
                ["features", "clean max |diff|", "perturbed max |diff|", "step sign agreement"],
                [
                    [
                        d,
                        f"{v['clean_max_abs_diff']:.3g}",
                        f"{v['perturbed_max_abs_diff']:.3g}",
                        f"{v['step_sign_agreement']:.4f}",
                    ]
                    for d, v in bf16["features"].items()
                ],
            )
            contrast = bf16["attack_in_bf16_for_contrast"]
            if "source_step_sign_agreement" in contrast:
                agreement = contrast["source_step_sign_agreement"]
                print(
                    f"\nthe attack itself in bf16 (not done by apoda): sign agreement {agreement}"
                )
    e2e = result.get("end_to_end")
    if e2e and "steps" in e2e:
        print("\n### End to end (MiniCity, through the CLI)\n")
        print_markdown(
            ["step", "iterations", "wall s", "mIoU %", "rc"],
            [
                [
                    s["step"],
                    str(s["iterations"] if s["iterations"] is not None else "-"),
                    _num(s["wall_s"], "{:.1f}"),
                    _num(s["miou"], "{:.1f}"),
                    str(s["rc"]),
                ]
                for s in e2e["steps"]
            ],
        )
    for section in SECTIONS:
        entry = result.get(section)
        if isinstance(entry, dict) and "exception" in entry:
            print(f"\n{section} FAILED: {entry['exception']}")


def default_out(device: torch.device) -> Path:
    """results/gpu.json for a CUDA run; a CPU run never takes the GPU file's name."""
    return RESULTS / ("gpu.json" if is_cuda(device) else "gpu_check_cpu.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes and few iterations (CPU test)")
    p.add_argument(
        "--out", help="JSON output (default results/gpu.json; on CPU gpu_check_cpu.json)"
    )
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--backbones", nargs="+", choices=list(FULL), default=list(FULL))
    p.add_argument("--warmup", type=int, help="untimed steps per method (default 3; tiny 0)")
    p.add_argument("--iters", type=int, help="timed steps per method (default 10; tiny 1)")
    p.add_argument("--eval-images", type=int, default=20, help="timed images, eval throughput")
    p.add_argument("--eval-cli-images", type=int, default=12, help="images for `apoda eval`")
    p.add_argument("--e2e-iters", type=int, default=300, help="iterations of each training run")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 3)
    args.iters = args.iters if args.iters is not None else (1 if args.tiny else 10)
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    if min(args.eval_images, args.eval_cli_images, args.e2e_iters) < 1:
        p.error("--eval-images, --eval-cli-images and --e2e-iters must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, writing the JSON after each; print the tables; 1 on any error."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if is_cuda(device):
        if not torch.cuda.is_available():
            print(
                "--device cuda: no CUDA device is visible (use --device cpu --tiny)",
                file=sys.stderr,
            )
            return 2
        if device.index is None:
            device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    out = Path(args.out) if args.out else default_out(device)
    scratch = args.workdir is None
    args.workdir = Path(tempfile.mkdtemp(prefix="apoda-gpu-check-")) if scratch else args.workdir
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "check": "gpu_check (issue 14)",
        "tiny": args.tiny,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_info(device),
        "machine": machine(device),
        "sections_asked": args.sections,
        "section_seconds": {},
        "complete": False,
    }
    print(f"gpu_check on {result['device']['name'] or device.type}; writing {out}", flush=True)
    failed: list[str] = []
    section = args.sections[0]
    try:
        for section in args.sections:
            print(f"[{section}]", flush=True)
            t0 = time.perf_counter()
            try:
                result[section] = entry = RUNNERS[section](args, device)
                if entry.get("ok") is False or entry.get("rc", 0) != 0:
                    failed.append(section)
            except Exception as exc:  # a first run on new hardware: record it and go on
                failed.append(section)
                result[section] = {
                    "exception": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc().splitlines()[-12:],
                }
                print(traceback.format_exc(), file=sys.stderr, flush=True)
                free(device)
            result["section_seconds"][section] = round(time.perf_counter() - t0, 1)
            result["elapsed_s"] = round(time.perf_counter() - started, 1)
            result["process_peak_rss_mb"] = round(proc_status_mb("VmHWM"), 1)
            write_results(result, out)
        result["complete"] = True
    except KeyboardInterrupt:  # `timeout --signal=INT` (gpu_check.sh): keep what was measured
        result["interrupted_in"] = section
        failed.append(section)
    finally:
        result["failed_sections"] = failed
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        write_results(result, out)
        if scratch and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print_tables(result)
    print(f"\n{result['elapsed_s']:.0f} s; wrote {out}")
    if scratch and args.keep:
        print(f"scratch folder kept: {args.workdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
