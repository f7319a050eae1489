"""A run directory given as a relative path, through a symlink or with ``~`` is one run directory (issue 12.1)."""

import json
import os
from pathlib import Path

import pytest
from helpers import quick_train

from lit_dendrite.models import load_net


def _check_run(written: Path, result: dict) -> None:
    assert result["status"] == "done"
    assert Path(result["run_dir"]).is_absolute()
    assert Path(result["run_dir"]) == written.resolve()
    on_disk = json.loads((written / "result.json").read_text())
    assert on_disk["best_checkpoint"] == "II_joint/checkpoints/best.ckpt"
    load_net(written)


def test_relative_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = quick_train("mlp_digits_relu", Path("runs/relative/seed=0"), 1)
    _check_run(tmp_path / "runs" / "relative" / "seed=0", result)
    load_net("runs/relative/seed=0")


def test_run_dir_through_a_symlink(tmp_path):
    (tmp_path / "scratch").mkdir()
    os.symlink(tmp_path / "scratch", tmp_path / "link")
    result = quick_train("mlp_digits_relu", tmp_path / "link" / "run", 1)
    _check_run(tmp_path / "link" / "run", result)
    assert (tmp_path / "scratch" / "run" / "result.json").is_file()


def test_run_dir_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    result = quick_train("mlp_digits_relu", "~/runs/home", 1)
    _check_run(tmp_path / "runs" / "home", result)
    assert not Path("~").exists()


@pytest.mark.parametrize("spelling", ["relative", "symlink", "home"])
def test_record_accessors_resolve_every_spelling(tmp_path, monkeypatch, spelling):
    from lit_dendrite.runs import RunDir

    real = tmp_path / "real" / "run"
    real.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    os.symlink(tmp_path / "real", tmp_path / "link")
    given = {"relative": "real/run", "symlink": str(tmp_path / "link" / "run"), "home": "~/real/run"}[spelling]
    assert RunDir(given).path == real.resolve()
    assert RunDir(given).relative(RunDir(given).session("II_joint").best_checkpoint) == "II_joint/checkpoints/best.ckpt"
