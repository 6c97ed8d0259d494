"""docs/extending.md's own method and config, run exactly as the page shows them: train, eval in
a fresh process (the saved config imports the file again), resume, and the errors a user meets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from apoda.cli import main
from apoda.config import load_config

PAGE = Path(__file__).parents[1] / "docs" / "extending.md"


def _first_block(language: str) -> str:
    found = re.search(rf"```{language}\n(.*?)```", PAGE.read_text(), re.S)
    assert found, f"docs/extending.md has no ```{language} block"
    return found[1]


@pytest.fixture
def user_files(tmp_path: Path) -> Path:
    """my_method.py and my_config.yaml, as the page gives them, in a folder of their own."""
    (tmp_path / "my_method.py").write_text(_first_block("python"))
    config = tmp_path / "my_config.yaml"
    config.write_text(_first_block("yaml"))
    return config


@pytest.mark.slow
def test_the_pages_method_trains_evaluates_in_a_new_process_and_resumes(
    user_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "maxsquare"
    assert main(["train", str(user_files), "--out", str(run), "train.progress=false"]) == 0
    assert "| mIoU |" in capsys.readouterr().out
    saved = (run / "config.yaml").read_text()
    assert f"- {tmp_path / 'my_method.py'}" in saved and "name: maxsquare" in saved
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("loss/max_square" in r.get("values", {}) for r in log)  # its own term is logged

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    evaluated = subprocess.run(
        [sys.executable, "-m", "apoda", "eval", str(run)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path.parent,  # not beside the files: the saved absolute path is what counts
        timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "| mIoU |" in evaluated.stdout

    args = ["train", str(user_files), "--out", str(run), "--resume", "train.iterations=32"]
    assert main([*args, "train.progress=false"]) == 0
    assert json.loads((run / "metrics.json").read_text())["iteration"] == 32


def test_a_misspelt_setting_and_an_unregistered_name_are_refused(user_files: Path) -> None:
    from apoda.errors import ApodaError

    with pytest.raises(ApodaError, match=r"method\.lambda_targt is not a setting of method "):
        load_config(user_files, ["method.lambda_targt=1"])
    with pytest.raises(ApodaError, match=r"unknown method 'maxsqare'; expected one of .*maxsquare"):
        load_config(user_files, ["method.name=maxsqare"])
    missing = user_files.with_name("other.yaml")
    missing.write_text("imports: [not_there.py]\n")
    with pytest.raises(ApodaError, match=r"imports: .*not_there\.py does not exist"):
        load_config(missing)
