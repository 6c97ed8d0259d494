"""Where the time of one training step goes (issue 7): torch.profiler on an APODA and an ASN step.

Each method is built as in step_time.py, takes untimed warm-up steps, then one profiled step.
The step's phases are labelled with `record_function` by wrapping, from the outside, the
method's own calls: `_features` (APODA's no-grad G), `perturb_features` (the attack),
`supervised_loss` / `target_outputs` (the baselines' forward through G and F) and
`backward_step` (backward, gradient checks and optimiser step). The top operators by self CPU
time and the phase totals go to stdout and to benchmarks/results/profile_step.json.

    python benchmarks/profile_step.py --backbone r101
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

import apoda.methods.apoda as apoda_module
from apoda.methods import Method, output_adversarial, parts, source_only
from step_time import DEFAULTS, RESULTS, batches, build

PHASES = ("_features", "backward_step")
"""Phases that are methods of the Method object; the shared parts are labelled in `main`."""


def labelled(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` run inside `record_function("phase:<name>")`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(f"phase:{name}"):
            return fn(*args, **kwargs)

    return wrapper


def label_phases(method: Method) -> None:
    """Wrap the method's phase calls (those it has) so the profile names them."""
    for name in PHASES:
        if hasattr(method, name):
            setattr(method, name, labelled(name, getattr(method, name)))


def profile_method(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Profile one step of `name`; return top operators and phase totals (seconds)."""
    setting = DEFAULTS[args.backbone]
    method = build(name, setting, torch.device("cpu"), amp=False)
    source, target = batches(setting, torch.device("cpu"))
    for i in range(args.warmup):
        method.train_step(source, target, i)
    label_phases(method)
    with profile(activities=[ProfilerActivity.CPU]) as prof, record_function("phase:train_step"):
        method.train_step(source, target, args.warmup)
    events = prof.key_averages()
    total = next(e.cpu_time_total for e in events if e.key == "phase:train_step") / 1e6
    phases = {
        e.key.removeprefix("phase:"): round(e.cpu_time_total / 1e6, 3)
        for e in events
        if e.key.startswith("phase:")
    }
    ops = sorted(
        (e for e in events if not e.key.startswith("phase:")),
        key=lambda e: e.self_cpu_time_total,
        reverse=True,
    )[: args.top]
    top = [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_s": round(e.self_cpu_time_total / 1e6, 3),
            "self_pct": round(100 * e.self_cpu_time_total / 1e6 / total, 1),
        }
        for e in ops
    ]
    print(f"\n== {name} ({setting.key}, {setting.size_label}): step {total:.2f} s ==")
    print("phases (inclusive CPU s):", json.dumps(phases))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))
    return {"method": name, "step_s": round(total, 3), "phases_s": phases, "top_ops": top}


def main(argv: list[str] | None = None) -> int:
    """Profile the chosen methods and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="r101", choices=sorted(DEFAULTS))
    p.add_argument("--methods", nargs="+", default=["apoda", "asn"])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "profile_step.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    apoda_module.perturb_features = labelled("perturb_features", apoda_module.perturb_features)
    parts.SupervisedLoss.__call__ = labelled("supervised_loss", parts.SupervisedLoss.__call__)  # type: ignore[method-assign]
    for module in (source_only, output_adversarial):
        module.target_outputs = labelled("target_outputs", module.target_outputs)  # type: ignore[attr-defined]
    result = {
        "backbone": args.backbone,
        "size": DEFAULTS[args.backbone].size_label,
        "profiles": [profile_method(name, args) for name in args.methods],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
