"""Run logs: TensorBoard scalars plus the same values as JSON lines (`log.jsonl`)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from torch import Tensor


def _json_safe(value: float) -> float | None:
    return value if math.isfinite(value) else None


class RunLog:
    """Writes `train` and `eval` records; a resumed run drops records past its checkpoint."""

    def __init__(self, run_dir: Path, resume_iteration: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "log.jsonl"
        if resume_iteration is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("iteration", 0) <= resume_iteration
            ]
            self.path.write_text("".join(f"{line}\n" for line in kept))
        self.start = time.time()
        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=resume_iteration)
        self.file = open(self.path, "a")  # noqa: SIM115 - kept open for the run's duration

    def _write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def train(self, iteration: int, values: dict[str, Tensor | float]) -> dict[str, float]:
        """Log training scalars (tensors are converted here, once per log interval)."""
        floats = {k: float(v) for k, v in values.items()}
        for key, value in floats.items():
            self.writer.add_scalar(key, value, iteration)
        record = {"kind": "train", "iteration": iteration, "time": time.time() - self.start}
        self._write({**record, "values": {k: _json_safe(v) for k, v in floats.items()}})
        return floats

    def eval(self, iteration: int, metrics: dict[str, Any]) -> None:
        """Log an evaluation: mIoU, head and tail means and the per-class IoU."""
        for key in ("miou", "head_miou", "tail_miou"):
            if metrics.get(key) is not None:
                self.writer.add_scalar(f"eval/{key}", metrics[key], iteration)
        for name, value in metrics["per_class"].items():
            if value is not None:
                self.writer.add_scalar(f"eval_class/{name}", value, iteration)
        keys = ("miou", "head_miou", "tail_miou", "per_class", "subsets")
        self._write(
            {
                "kind": "eval",
                "iteration": iteration,
                **{k: metrics[k] for k in keys if k in metrics},
            }
        )

    def close(self) -> None:
        """Flush and close both sinks."""
        self.writer.close()
        self.file.close()
