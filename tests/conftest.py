"""Shared fixtures: a private dataset cache, so tests never touch ~/.cache/apoda."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Tiny MiniCity settings used by the engine, CLI and demo tests (generated once per session).
TINY = [
    "data.minicity.n_source=16",
    "data.minicity.n_target_train=16",
    "data.minicity.n_target_val=8",
    "data.minicity.height=32",
    "data.minicity.width=64",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "train.progress=false",
    "train.samples=2",
]


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
