"""An interrupted run resumes as if it had never stopped (issue 12.5 and 12.8): bit-identical results, damaged
checkpoints set aside, the wall time of every process counted, and a diverged run keeping its finished sessions."""

import json
import time

import lightning as L
import pytest
import torch
from helpers import quick_train

from lit_dendrite.runs import RunDir


class Preempted(Exception):
    pass


class Interrupt(L.Callback):
    """Raise at the end of epoch ``epoch`` of ``session`` (after ``sleep_s`` seconds in its first epoch)."""

    def __init__(self, session, epoch, sleep_s=0.0):
        self.session, self.epoch, self.sleep_s = session, epoch, sleep_s

    def on_train_epoch_start(self, trainer, module):
        if trainer.logger.version == self.session and trainer.current_epoch == 0:
            time.sleep(self.sleep_s)

    def on_train_epoch_end(self, trainer, module):
        if trainer.logger.version == self.session and trainer.current_epoch == self.epoch:
            raise Preempted(f"epoch {self.epoch} of {self.session}")


def _weights(run_dir, session):
    return torch.load(RunDir(run_dir).session(session).best_checkpoint, weights_only=True)["state_dict"]


def _assert_same_run(a_dir, a, b_dir, b):
    for key in ("test_acc", "test_loss", "best_val_loss", "epochs"):
        assert a[key] == b[key], key
    for session in a["sessions"]:
        if session == "I_pretrain":
            continue
        first, second = _weights(a_dir, session), _weights(b_dir, session)
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), (session, key)


RUNS = {"relu": ("mlp_digits_relu", 3, 0), "2arg": ("mlp_digits_2arg", 3, 2)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """An uninterrupted run of each kind, trained when first asked for."""
    root, trained = tmp_path_factory.mktemp("runs"), {}

    def get(kind):
        if kind not in trained:
            trained[kind] = (root / kind, quick_train(*RUNS[kind][:1], root / kind, *RUNS[kind][1:]))
        return trained[kind]

    return get


def _interrupted(run_dir, kind, session, epoch):
    with pytest.raises(Preempted):
        quick_train(RUNS[kind][0], run_dir, *RUNS[kind][1:], extra_callbacks=[Interrupt(session, epoch)])


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, uninterrupted):
    _interrupted(tmp_path / "run", "relu", "II_joint", 1)
    resumed = quick_train(RUNS["relu"][0], tmp_path / "run", *RUNS["relu"][1:])
    _assert_same_run(*uninterrupted("relu"), tmp_path / "run", resumed)


@pytest.mark.slow
@pytest.mark.parametrize("session,epoch", [("I_pretrain", 0), ("II_joint", 1), ("III_frozen", 1)])
def test_resumed_two_arg_run_is_bit_identical_in_every_session(tmp_path, uninterrupted, session, epoch):
    _interrupted(tmp_path / "run", "2arg", session, epoch)
    resumed = quick_train(RUNS["2arg"][0], tmp_path / "run", *RUNS["2arg"][1:])
    _assert_same_run(*uninterrupted("2arg"), tmp_path / "run", resumed)


def test_truncated_last_checkpoint_is_set_aside_and_the_session_resumes_from_the_best(tmp_path, uninterrupted, capsys):
    run_dir = tmp_path / "run"
    _interrupted(run_dir, "relu", "II_joint", 2)
    last = RunDir(run_dir).session("II_joint").last_checkpoint
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a job killed while writing it
    capsys.readouterr()
    resumed = quick_train(RUNS["relu"][0], run_dir, *RUNS["relu"][1:])
    out = capsys.readouterr().out
    assert f"checkpoint {last} cannot be read" in out
    assert "session II_joint resumes from" in out and "best.ckpt" in out
    (set_aside,) = last.parent.glob("last.ckpt.corrupt-*")
    assert set_aside.stat().st_size < last.stat().st_size
    _assert_same_run(*uninterrupted("relu"), run_dir, resumed)


def test_session_without_a_readable_checkpoint_restarts(tmp_path, uninterrupted, capsys):
    run_dir = tmp_path / "run"
    _interrupted(run_dir, "relu", "II_joint", 1)
    session = RunDir(run_dir).session("II_joint")
    session.last_checkpoint.write_bytes(b"")
    session.best_checkpoint.write_bytes(session.best_checkpoint.read_bytes()[:100])
    capsys.readouterr()
    resumed = quick_train(RUNS["relu"][0], run_dir, *RUNS["relu"][1:])
    assert "session II_joint restarts from its beginning" in capsys.readouterr().out
    assert len(list(session.checkpoints.glob("*.corrupt-*"))) == 2
    _assert_same_run(*uninterrupted("relu"), run_dir, resumed)


def test_wall_time_counts_every_process_of_a_resumed_run(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Preempted):
        quick_train("mlp_digits_relu", run_dir, 3, 0, extra_callbacks=[Interrupt("II_joint", 1, 2.0)])
    result = quick_train("mlp_digits_relu", run_dir, 3, 0)
    assert result["sessions"]["II_joint"]["wall_time_s"] >= 2.0  # slept before the first process's checkpoint
    assert result["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in result["sessions"].values()))


class PoisonJointSession(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.logger.version == "II_joint":
            with torch.no_grad():
                module.net.head.bias.fill_(float("nan"))


def test_diverged_run_keeps_the_sessions_it_finished(tmp_path):
    result = quick_train("mlp_digits_2arg", tmp_path / "run", 2, 1, extra_callbacks=[PoisonJointSession()])
    assert result["status"] == "diverged"
    assert result["epochs"] == {"I_pretrain": 1}
    on_disk = json.loads(RunDir(tmp_path / "run").result.read_text())
    assert on_disk["epochs"] == {"I_pretrain": 1} and "explained_variance" in on_disk["sessions"]["I_pretrain"]
