"""Shared fixtures: a private dataset cache, so tests never touch ~/.cache/apoda."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from apoda.demo import TINY_MINICITY

# Tiny MiniCity settings used by the engine, CLI and demo tests (generated once per session).
TINY = TINY_MINICITY


@pytest.fixture(scope="session", autouse=True)
def apoda_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point $APODA_CACHE at a session-private folder."""
    cache = tmp_path_factory.mktemp("apoda-cache")
    old = os.environ.get("APODA_CACHE")
    os.environ["APODA_CACHE"] = str(cache)
    torch.set_num_threads(2)
    yield cache
    if old is None:
        os.environ.pop("APODA_CACHE", None)
    else:
        os.environ["APODA_CACHE"] = old


@pytest.fixture(scope="session")
def one_iteration_run(tmp_path_factory: pytest.TempPathFactory, apoda_cache: Path) -> Path:
    """A finished one-iteration MiniCity source-only run (32x64 images, no data.target_size),
    shared by the tests that only read it (predict, export)."""
    from apoda.cli import main

    folder = tmp_path_factory.mktemp("one-iteration") / "run"
    args = ["train", "minicity/source_only", *TINY, "train.iterations=1", "train.eval_every=0"]
    assert main([*args, "--out", str(folder)]) == 0
    return folder
