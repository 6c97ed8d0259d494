"""The MiniCity pretraining stage: a cached backbone that loads like an init checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from apoda.config import load_config
from apoda.configs import resolve_config
from apoda.engine.trainer import Trainer
from apoda.errors import ApodaError
from apoda.models import build_segmenter, load_pretrained
from apoda.models.build import BUILTIN_PRETRAINED
from apoda.pretrain import pretrain_minicity, resolve_pretrained
from conftest import TINY


def test_pretrained_backbone_is_cached_and_used_by_runs(
    tmp_path: Path, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    overrides = [*TINY, "data.minicity.n_randomised=16"]
    config = load_config(resolve_config("minicity/source_only"), overrides)
    path = pretrain_minicity(config, iterations=2)
    assert path.is_file()
    seg = build_segmenter("small", 19)
    lines: list[str] = []
    report = load_pretrained(seg, path, log=lines.append)
    assert report.loaded == report.total and "loaded" in lines[0]

    calls = []
    monkeypatch.setattr(Trainer, "fit", lambda self: calls.append(self))
    assert pretrain_minicity(config, iterations=2) == path  # cached: not trained again
    assert calls == []
    monkeypatch.undo()

    run_cfg = load_config(
        resolve_config("minicity/source_only"),
        [
            *overrides,
            f"model.pretrained={BUILTIN_PRETRAINED}",
            "train.iterations=1",
            "train.eval_every=0",
        ],
    )
    # the built-in name resolves to the pretraining config's default length: pre-seed that file
    default = load_config(resolve_config("minicity/pretrain")).train.iterations
    target = path.with_name(path.name.replace("-i2.pth", f"-i{default}.pth"))
    torch.save(torch.load(path, weights_only=True), target)
    capsys.readouterr()
    # built-in weights are resolved before a run's Trainer exists, never from inside it
    with pytest.raises(ApodaError, match="names built-in weights: resolve them first"):
        Trainer(run_cfg, tmp_path / "unresolved").fit()
    assert resolve_pretrained(run_cfg) == target
    Trainer(run_cfg, tmp_path / "run", pretrained_file=target).fit()
    assert f"from {target}" in capsys.readouterr().out  # the run loaded the cached backbone
