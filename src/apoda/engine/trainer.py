"""The one training loop: data, poly schedule, evaluation, checkpoints, resume, logs, DDP.

Every method runs through `Trainer.fit`; the method only takes steps. The loop writes config.yaml,
checkpoints/, tb/, log.jsonl and metrics.json into the run folder, then hands the finished run to
its `on_finish` hooks (by default `apoda.run_outputs`: stats/, samples.npz, report.md)."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from apoda import runs
from apoda.checkpoints import load_checkpoint, save_checkpoint
from apoda.config import Config, OptimConfig, config_to_dict, save_config
from apoda.data.stats import run_tail_classes
from apoda.distributed import (
    barrier,
    init_distributed,
    mean_over_ranks,
    resolve_device,
)
from apoda.engine.data import (
    CyclingLoader,
    RunData,
    build_probe_data,
    build_run_data,
    source_draw,
    source_stats,
)
from apoda.engine.label_free import DEFAULT_IMAGES, RunInputs, score_networks
from apoda.engine.pseudo_probe import PseudoLabelProbe
from apoda.errors import ApodaError, RunInterrupted
from apoda.evaluation import evaluate_segmenter
from apoda.methods import Method, RunContext, build_method
from apoda.methods.base import NonFiniteError
from apoda.models import Segmenter
from apoda.models.build import segmenter_from_config
from apoda.run_lock import FolderLock
from apoda.run_outputs import FinishedRun, FinishHook, default_hooks

SKIPPED_SHARE = 0.1
"""With `train.nonfinite=skip`, skipping more than this share of the steps is warned about."""


def lr_factor(iteration: int, total: int, optim: OptimConfig) -> float:
    """The learning rate's factor at `iteration`: poly decay (1 - it/total)^power, times a
    linear warmup from `warmup_ratio` over `warmup_iterations` (mmcv's rule, as DAFormer)."""
    poly = max(0.0, 1.0 - iteration / total) ** optim.poly_power
    warmup = optim.warmup_iterations
    if iteration >= warmup:
        return poly
    return poly * (1.0 - (1.0 - iteration / warmup) * (1.0 - optim.warmup_ratio))


class _InterruptFlag:
    """A SIGINT handler that only records the signal; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.raised = False

    def __call__(self, signum: int, frame: object) -> None:
        self.raised = True
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def deferred_interrupt(enabled: bool = True) -> Iterator[_InterruptFlag]:
    """Within the block, Ctrl-C is read by the loop between steps (so the checkpoint it saves
    is a whole step's); off outside the main thread and under torchrun (ranks must agree)."""
    flag = _InterruptFlag()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, flag)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out = {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }
    if channels_last and device.type == "cuda":
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


class Trainer:
    """Runs one config to the end (or resumes it) and writes the run folder."""

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        resume: bool = False,
        overwrite: bool = False,
        log: Callable[[str], None] = print,
        pretrained_file: Path | None = None,
        on_finish: Sequence[FinishHook] | None = None,
    ) -> None:
        """`pretrained_file`: the file that built-in `model.pretrained` weights resolved to
        (`apoda.pretrain.resolve_pretrained`), so no training starts from inside this one.
        `on_finish`: called in order on the main process once metrics.json is written (None:
        `apoda.run_outputs.default_hooks()`, every run's stats, samples and report)."""
        self.on_finish = tuple(default_hooks() if on_finish is None else on_finish)
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.train.device)
        self.rank, self.world = init_distributed(self.device.type)
        self.main = self.rank == 0
        self._print = log if self.main else (lambda _msg: None)
        # held from here to the end of `fit`: a second command aimed at this folder is refused
        self.lock = FolderLock(self.run_dir, log=self._print)
        if self.main:
            self.lock.acquire()
        try:
            if self.main:
                runs.prepare_run_dir(self.run_dir, resume, overwrite, log=self._print)
            barrier()
            self.checkpoint_path = self.run_dir / runs.LAST_CHECKPOINT
            self.resume = resume and self.checkpoint_path.is_file()
            if resume and not self.resume:
                self._print(f"no checkpoint in {self.run_dir}: --resume starts from iteration 0")
            saved = runs.saved_config(self.run_dir) if self.resume else None
            if saved is not None:
                config = runs.resume_config(saved, config, self.run_dir, log=self._print)
        except BaseException:
            self.lock.release()
            raise
        self.config = config
        self.pretrained_file = pretrained_file

    # -- set-up --------------------------------------------------------------------------------
    def _seed(self) -> None:
        seed = self.config.train.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _setup(self) -> None:
        cfg = self.config
        self._seed()
        self.data: RunData = build_run_data(cfg)
        scheme = self.data.scheme
        stats = source_stats(self.data.source, cfg.data.source)
        self.source_stats = stats
        self.tail = run_tail_classes(
            cfg.data.tail_classes, self.data.classes.tail, stats["tail_classes"], scheme.class_names
        )
        self.segmenter = segmenter_from_config(
            cfg,
            scheme.num_classes,
            log=self._print,
            pretrained_file=self.pretrained_file,
            class_names=scheme.class_names,
        ).to(self.device)
        if cfg.train.channels_last and self.device.type == "cuda":
            self.segmenter.to(memory_format=torch.channels_last)
        self.method: Method = build_method(self.segmenter, cfg, self.device, self.pretrained_file)
        self.method.prepare(RunContext(tuple(scheme.class_names), dict(stats["pixel_fraction"])))
        factor = functools.partial(lr_factor, total=cfg.train.iterations, optim=cfg.optim)
        self.schedulers = {
            name: LambdaLR(opt, factor) for name, opt in self.method.optimizers.items()
        }
        batch = cfg.data.batch_size
        workers = cfg.data.num_workers
        seed = cfg.train.seed
        self.source_loader = CyclingLoader(
            self.data.source,
            batch,
            seed,
            self.rank,
            self.world,
            workers,
            draw=source_draw(cfg, self.data.source),
        )
        self.target_loader = CyclingLoader(
            self.data.target, batch, seed + 1, self.rank, self.world, workers
        )
        self.probe = self._pseudo_label_probe()
        rule = cfg.train.select_best
        self.selection_inputs = (
            RunInputs.of(cfg, self.data, DEFAULT_IMAGES) if isinstance(rule, str) else None
        )

    def _pseudo_label_probe(self) -> PseudoLabelProbe | None:
        """The probe of a method with a mean teacher (the module named `teacher`), on the main
        process; None for other methods or with `train.probe_images: 0`."""
        cfg = self.config
        if not self.main or "teacher" not in self.method.modules or not cfg.train.probe_images:
            return None
        return PseudoLabelProbe(
            build_probe_data(cfg, cfg.train.probe_images, self.data),
            self.data.scheme.class_names,
            getattr(self.method.settings, "pseudo_threshold", None),
            cfg.train.settle_tolerance,
            cfg.data.eval_batch_size,
        )

    # -- checkpoints ---------------------------------------------------------------------------
    def _state(self, iteration: int) -> dict[str, Any]:
        state: dict[str, Any] = {
            "iteration": iteration,
            "config": config_to_dict(self.config),
            **self.method.state_dict(),
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "loaders": {
                "source": self.source_loader.state_dict(),
                "target": self.target_loader.state_dict(),
            },
            "rng": {"torch": torch.get_rng_state()},
            "best": self.best,
            "tail_classes": self.tail,
            "class_names": list(self.data.scheme.class_names),
            "classes": self.data.classes.to_dict(),
            "evaluated": self.method.evaluated,
        }
        if self.probe is not None:
            state["pseudo_label_probe"] = self.probe.state_dict()
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _restore(self, state: dict[str, Any]) -> int:
        self.method.load_state_dict(state, self.checkpoint_path)
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        self.source_loader.load_state_dict(state["loaders"]["source"])
        self.target_loader.load_state_dict(state["loaders"]["target"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.best = state.get("best")
        if self.probe is not None and "pseudo_label_probe" in state:
            self.probe.load_state_dict(state["pseudo_label_probe"])
        return int(state["iteration"])

    def _save(self, iteration: int) -> None:
        if self.main:
            save_checkpoint(self._state(iteration), self.checkpoint_path)
            if self._keeps(iteration):
                kept = self.run_dir / runs.kept_checkpoint(iteration)
                kept.unlink(missing_ok=True)  # a resumed run re-saves its iteration
                os.link(self.checkpoint_path, kept)  # last.pt is replaced, never rewritten
        self.saved_iteration = iteration
        barrier()

    def _keeps(self, iteration: int) -> bool:
        """Whether `train.keep_checkpoints` keeps the checkpoint of this (evaluation) point."""
        train = self.config.train
        evaluated = bool(train.eval_every) and iteration % train.eval_every == 0
        return train.keep_checkpoints and (evaluated or iteration == train.iterations)

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluated_network(self) -> Segmenter:
        """The network the method has evaluated: the segmenter, or e.g. a mean teacher."""
        network = self.method.modules[self.method.evaluated]
        assert isinstance(network, Segmenter)
        return network

    def _evaluate(self, iteration: int, checkpoint: str | None = None) -> dict[str, Any]:
        cfg = self.config
        metrics = evaluate_segmenter(
            self._evaluated_network(),
            self.data.val,
            self.data.scheme,
            self.tail,
            self.device,
            cfg.data.eval_batch_size,
            cfg.data.target,
            "val",
            iteration=iteration,
            checkpoint=checkpoint,
        )
        if self.probe is not None:
            probed = self.probe.measure(self.method.modules["teacher"], self.device, iteration)
            metrics["pseudo_labels"] = probed
            if probed["settled_at"] == iteration:
                self._print(
                    f"iteration {iteration}: the teacher's pseudo-labels have settled (their "
                    "agreement with the previous evaluation's moved by less than "
                    f"train.settle_tolerance={self.config.train.settle_tolerance})"
                )
        if self.selection_inputs is not None:
            metrics["selection_scores"] = self._label_free_scores()
        self.method.set_train_mode()
        return metrics

    def _label_free_scores(self) -> dict[str, float | None]:
        """`apoda.selection`'s scores of the evaluated network now (with its teacher-student
        partner, if the method has a teacher); the global RNG is restored, so that selection
        leaves training as it would be without it."""
        assert self.selection_inputs is not None
        modules = self.method.modules
        partner_name = {"segmenter": "teacher", "teacher": "segmenter"}[self.method.evaluated]
        rng = torch.get_rng_state()
        scores, _ = score_networks(
            self._evaluated_network(), modules.get(partner_name), self.selection_inputs
        )
        torch.set_rng_state(rng)
        return scores

    def _track_best(self, metrics: dict[str, Any], iteration: int) -> None:
        """`train.select_best`: keep the snapshot with the best target-val mIoU (true, oracle)
        or label-free score (its name) as best.pt."""
        rule = self.config.train.select_best
        value = metrics["miou"] if rule is True else metrics["selection_scores"][rule]
        # best.pt of runs before label-free selection holds "miou"
        best = None if self.best is None else self.best.get("value", self.best.get("miou"))
        if value is None or (best is not None and value <= best):
            return
        self.best = {"value": value, "iteration": iteration}
        if self.main:
            best = self._state(iteration)
            best["metrics"] = metrics
            save_checkpoint(best, self.run_dir / runs.BEST_CHECKPOINT)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to `train.iterations`, evaluate, write metrics.json; return the metrics.
        The run folder's lock is released at the end, however the run ends."""
        try:
            return self._fit()
        finally:
            self.lock.release()

    def _fit(self) -> dict[str, Any]:
        cfg = self.config
        self._setup()
        self.best: dict[str, Any] | None = None
        start = 0
        total = cfg.train.iterations
        if self.resume:
            start = self._restore(load_checkpoint(self.checkpoint_path))
            if start > total:
                raise ApodaError(
                    f"--resume of {self.run_dir}: its checkpoint is at iteration {start}, past "
                    f"train.iterations={total}; ask for at least {start} iterations"
                )
            self._print(f"resumed {self.run_dir} at iteration {start}")
        if self.main:
            save_config(cfg, self.run_dir / runs.CONFIG_FILE)
        runlog = runs.RunLog(self.run_dir, resume_iteration=start) if self.main else None
        self.method.set_train_mode()
        bar = tqdm(
            total=total,
            initial=start,
            desc=f"{cfg.name} [{cfg.method.name}]",
            disable=not (self.main and cfg.train.progress),
            dynamic_ncols=True,
        )
        self.saved_iteration = start if self.resume else None
        with deferred_interrupt(enabled=self.world == 1) as ctrl_c:
            try:
                self._loop(start, total, runlog, bar, ctrl_c)
            except BaseException:
                if runlog is not None:
                    runlog.close()
                raise
            finally:
                bar.close()
        metrics = self._evaluate(total, checkpoint=str(self.checkpoint_path))
        metrics["selection"] = runs.SELECTION_FINAL
        if runlog is not None:
            runlog.eval(total, metrics)
        if cfg.train.select_best:
            self._track_best(metrics, total)
            metrics = self._selected_metrics(metrics)
        metrics["skipped_steps"] = self.method.skipped_steps
        warning = self._skipped_warning(total)
        if warning:
            metrics["warnings"] = [warning]
            self._print(f"warning: {warning}")
            if runlog is not None:
                runlog.warning(total, warning)
        if self.main:
            assert runlog is not None
            runlog.close()
            (self.run_dir / runs.METRICS_FILE).write_text(json.dumps(metrics, indent=1))
            self._finish(metrics)
        barrier()
        return metrics

    def _loop(
        self,
        start: int,
        total: int,
        runlog: runs.RunLog | None,
        bar: tqdm,  # type: ignore[type-arg]
        ctrl_c: _InterruptFlag,
    ) -> None:
        """Iterations `start` .. `total`: steps, schedule, logs, evaluations, checkpoints. A
        Ctrl-C is honoured between steps, after saving the last whole step."""
        cfg = self.config
        for it in range(start, total):
            source = _to_device(next(self.source_loader), self.device, cfg.train.channels_last)
            target = _to_device(next(self.target_loader), self.device, cfg.train.channels_last)
            try:
                values = self.method.train_step(source, target, it)
            except NonFiniteError as exc:
                raise ApodaError(
                    f"iteration {it + 1}: non-finite value in {exc.term}; the run stopped. "
                    f"{self._what_is_saved()} (set train.nonfinite=skip to skip such steps)"
                ) from None
            done = it + 1
            log_now = done % cfg.train.log_every == 0 or done == total
            if log_now:  # the lr this step used, read before the schedule moves on
                lrs = {
                    f"lr/{k}": o.param_groups[-1]["lr"] for k, o in self.method.optimizers.items()
                }
            for sched in self.schedulers.values():
                sched.step()
            bar.update(1)
            if log_now:
                values = mean_over_ranks(values)  # collective: every rank, same iterations
            if runlog is not None and log_now:
                floats = runlog.train(done, {**values, **lrs})  # lr: this step's
                if self.method.skipped_steps:
                    floats["skipped"] = self.method.skipped_steps
                shown = {
                    k.split("/")[-1]: f"{v:.3g}" for k, v in floats.items() if k.startswith("loss/")
                }
                bar.set_postfix(shown, refresh=False)
            if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != total:
                metrics = self._evaluate(done)
                if runlog is not None:
                    runlog.eval(done, metrics)
                bar.write(f"iteration {done}: target val mIoU {_fmt(metrics['miou'])}")
                if cfg.train.select_best:
                    self._track_best(metrics, done)
            every = done % cfg.train.checkpoint_every == 0
            if every or done == total or ctrl_c.raised or self._keeps(done):
                self._save(done)
            if ctrl_c.raised:
                raise RunInterrupted(
                    f"interrupted at iteration {done} of {total}: saved {self.checkpoint_path}; "
                    "the same command with --resume continues from it"
                )

    def _what_is_saved(self) -> str:
        """What a stopped run leaves to resume from, truthfully."""
        if self.saved_iteration is None:
            every = self.config.train.checkpoint_every
            return (
                f"No checkpoint was written yet (the first is due at iteration {every}): "
                "nothing to resume from"
            )
        return (
            f"Its last checkpoint {self.checkpoint_path} (iteration {self.saved_iteration}) is "
            "intact"
        )

    def _skipped_warning(self, total: int) -> str | None:
        """A warning when `train.nonfinite=skip` dropped more than SKIPPED_SHARE of the steps."""
        skipped = self.method.skipped_steps
        if skipped <= SKIPPED_SHARE * total:
            return None
        return (
            f"{skipped} of {total} steps ({skipped / total:.0%}) were skipped for non-finite "
            f"values (train.nonfinite=skip): the run trained on {total - skipped} steps"
        )

    def _selected_metrics(self, final: dict[str, Any]) -> dict[str, Any]:
        """The best snapshot's metrics, labelled with the rule that chose it: oracle selection
        on the target val set, or `label-free:SCORE`."""
        best_path = self.run_dir / runs.BEST_CHECKPOINT
        assert self.best is not None
        if self.best["iteration"] == final["iteration"] or not best_path.is_file():
            chosen = dict(final)
        else:
            chosen = dict(load_checkpoint(best_path)["metrics"])
            chosen["checkpoint"] = str(best_path)
        rule = self.config.train.select_best
        label = runs.SELECTION_ORACLE if rule is True else f"{runs.SELECTION_LABEL_FREE}{rule}"
        chosen["selection"] = label
        chosen["final_miou"] = final["miou"]
        return chosen

    def _finish(self, metrics: dict[str, Any]) -> None:
        """Hand the finished run to the `on_finish` hooks, then put the method back in train
        mode (a hook may have switched the segmenter to eval)."""
        finished = FinishedRun(
            run_dir=self.run_dir,
            config=self.config,
            metrics=metrics,
            source_stats=self.source_stats,
            segmenter=self._evaluated_network(),
            val=self.data.val,
            device=self.device,
        )
        for hook in self.on_finish:
            hook(finished)
        self.method.set_train_mode()


def _fmt(value: float | None) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.2f}"
    )
