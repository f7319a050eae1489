"""What a person sees of a training run: the quick run's recipe, the console of a run written to a file, and the
TensorBoard layout its event files hold."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CONFIGS, REPO
from lightning.pytorch.callbacks import TQDMProgressBar
from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from tensorboard.util import tensor_util

from lit_dendrite.cli import parse, run_directory
from lit_dendrite.models.console import ProgressLines, SessionProgressBar, progress_callbacks
from lit_dendrite.runs import FROZEN, JOINT, PRETRAIN

QUICK = REPO / "configs" / "quick.yaml"
EXPERIMENT = CONFIGS / "mlp_digits_2arg.yaml"
SESSION_NAMES = ("session I (pretrain the inner net)", "session II (joint)", "session III (frozen inner net)")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The documented quick run, as a user starts it from a directory of their own (stdout is a file), after an
    option that fixes session II's schedule at the paper's 200 epochs: its console output and run directory."""
    cwd = tmp_path_factory.mktemp("user")
    command = [sys.executable, str(REPO / "launch" / "train.py"), "--config", str(EXPERIMENT)]
    command += ["--protocol.joint_epochs", "200", "--config", str(QUICK)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr, cwd / "runs" / "mlp_digits_2arg" / "variant=quick,seed=0"


def test_quick_run_shortens_every_session_in_its_own_run_directory(quick_run):
    _, run_dir = quick_run
    result = json.loads((run_dir / "result.json").read_text())
    assert set(result["epochs"]) == {PRETRAIN, JOINT, FROZEN}
    assert all(1 <= epochs <= 5 for epochs in result["epochs"].values()), result["epochs"]
    assert result["protocol"]["pretrain_epochs"] == 5


def test_quick_run_never_resumes_the_full_runs_directory():
    full = run_directory(parse(["--config", str(EXPERIMENT)]).config)
    quick = run_directory(parse(["--config", str(EXPERIMENT), "--config", str(QUICK)]).config)
    assert full.path == Path.cwd() / "runs" / "mlp_digits_2arg" / "seed=0"
    assert quick.path == Path.cwd() / "runs" / "mlp_digits_2arg" / "variant=quick,seed=0"


def test_console_names_each_session_and_hides_lightnings_noise(quick_run):
    console, _ = quick_run
    lines = console.splitlines()
    for name in SESSION_NAMES:
        started = [line for line in lines if line.startswith(f"[lit_dendrite] {name}: ")]
        ended = [line for line in lines if line.startswith(f"[lit_dendrite] {name} done in ")]
        progress = [line for line in lines if line.startswith(f"[lit_dendrite] {name}: epoch 1 of 5 done: ")]
        assert started and ended and progress, f"no start, progress or end line of {name} in:\n{console}"
    assert "up to 5 epochs" in console and "5 epochs of 40 steps" in console  # each session's budget
    assert "best val/loss" in console and "explained variance" in console  # each session's best metric
    for noise in ("Tip:", "litlogger", "Total Flops", "LeafSpec", "v_num", "\r"):
        assert noise not in console, f"{noise!r} printed:\n{console}"
    assert console.count("GPU available") == 1
    assert len(lines) < 30, console


def test_model_summary_is_off_unless_asked_for():
    assert parse(["--config", str(EXPERIMENT)]).config.trainer.enable_model_summary is False
    asked = parse(["--config", str(EXPERIMENT), "--trainer.enable_model_summary", "true"])
    assert asked.config.trainer.enable_model_summary is True


def _events(session_dir):
    events = EventAccumulator(str(session_dir), size_guidance={TENSORS: 0})
    events.Reload()
    return events


def test_tensorboard_layout_puts_validation_first_and_session_one_in_its_own_group(quick_run):
    _, run_dir = quick_run
    sessions = {name: _events(run_dir / name) for name in (PRETRAIN, JOINT, FROZEN)}
    layouts = [
        layout_pb2.Layout.FromString(tensor_util.make_ndarray(event.tensor_proto).item())
        for events in sessions.values()
        if metadata.CONFIG_SUMMARY_TAG in events.Tags()[TENSORS]
        for event in events.Tensors(metadata.CONFIG_SUMMARY_TAG)
    ]
    assert len(layouts) == 1, "the layout is written once per run"
    categories = layouts[0].category
    first = {tag for chart in categories[0].chart for tag in chart.multiline.tag}
    assert "Validation" in categories[0].title and first == {r"^val/acc$", r"^val/loss$"}
    session_one = [c for c in categories if c.title.startswith(SESSION_NAMES[0])]
    assert len(session_one) == 1
    assert {tag for chart in session_one[0].chart for tag in chart.multiline.tag} == {
        r"^pretrain/explained_variance$",
        r"^pretrain/loss$",
    }
    for name in (JOINT, FROZEN):
        assert {"val/acc", "val/loss", "train/acc", "train/loss_epoch"} <= set(sessions[name].Tags()["scalars"])
    assert {"pretrain/explained_variance", "pretrain/loss"} <= set(sessions[PRETRAIN].Tags()["scalars"])


def test_progress_is_a_bar_on_request_lines_in_a_file_and_nothing_when_turned_off(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    title = SESSION_NAMES[1]
    assert [type(c) for c in progress_callbacks(None, [], title)] == [ProgressLines]
    assert [type(c) for c in progress_callbacks(True, [], title)] == [SessionProgressBar]
    assert progress_callbacks(False, [], title) == []
    own = TQDMProgressBar(refresh_rate=10)
    assert progress_callbacks(None, [own], title) == [own]  # a bar of the user's own is kept, and alone
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert [type(c) for c in progress_callbacks(None, [], title)] == [SessionProgressBar]
