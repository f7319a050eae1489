"""The stall rule: a run that cannot learn ends ``stalled`` within its budget, keeping the sessions it finished; a
learning run is never stopped by it; status and report show stalled runs apart."""

import json
import math

import lightning as L
import pytest
import torch
from helpers import quick_train

from lit_dendrite.models.protocol import Protocol
from lit_dendrite.models.stall import STALL_EPOCHS


class ConstantInputs(L.Callback):
    """Every training image becomes zeros: the net can learn the class frequencies only, i.e. a loss at chance."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        batch[0].zero_()


def test_a_net_that_cannot_learn_ends_stalled_within_its_budget(tmp_path):
    budget = 3 * STALL_EPOCHS
    rule = ("--protocol.stall_epochs", str(STALL_EPOCHS))
    result = quick_train("mlp_digits_relu", tmp_path / "run", budget, 2, *rule, extra_callbacks=[ConstantInputs()])
    assert result["status"] == "stalled", result["error"]
    assert f"for {STALL_EPOCHS} epochs" in result["error"] and "II_joint" in result["error"]
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert on_disk["status"] == "stalled" and on_disk["test_acc"] is None
    # it stopped at the end of the first streak of epochs at chance, well within its budget
    first, last = map(int, result["error"].split("epochs (")[1].split(")")[0].split("-"))
    assert last - first + 1 == STALL_EPOCHS
    checkpoint = torch.load(tmp_path / "run" / "II_joint" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] + 1 == last < budget


def test_a_stalled_run_keeps_the_sessions_it_finished_and_is_not_trained_again(tmp_path):
    run_dir = tmp_path / "run"
    args = (4, 1, "--protocol.stall_epochs", "2")
    result = quick_train("mlp_digits_2arg", run_dir, *args, extra_callbacks=[ConstantInputs()])
    assert result["status"] == "stalled" and list(result["sessions"]) == ["I_pretrain"]
    assert (run_dir / "I_pretrain" / "inner.pt").is_file() and (run_dir / "I_pretrain" / "session.json").is_file()
    assert (run_dir / "II_joint" / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "II_joint" / "session.json").exists() and not (run_dir / "III_frozen").exists()
    again = quick_train("mlp_digits_2arg", run_dir, *args)  # a finished record: nothing is trained
    assert again == json.loads((run_dir / "result.json").read_text())


@pytest.mark.parametrize("config", ["mlp_digits_relu", "mlp_digits_2arg"])
def test_a_learning_run_is_not_stopped_even_by_a_rule_twice_as_strict(config, tmp_path):
    """On digits (6 steps an epoch) the paper's MLPs average a loss at chance (2.30) over their first one (ReLU) or
    two (2-arg, after a 1-epoch session I) epochs, then learn: the tested rule waits ten."""
    stall = STALL_EPOCHS // 2
    result = quick_train(config, tmp_path / "run", stall + 3, 1, "--protocol.stall_epochs", str(stall))
    assert result["status"] == "done", result["error"]
    assert result["epochs"]["II_joint"] == stall + 3 and result["test_acc"] > 0.5


@pytest.mark.parametrize("setting", [(), ("--protocol.stall_epochs", "0")])
def test_the_rule_is_off_by_default_and_at_zero(setting, tmp_path):
    budget = STALL_EPOCHS + 2
    result = quick_train("mlp_digits_relu", tmp_path / "run", budget, 0, *setting, extra_callbacks=[ConstantInputs()])
    assert result["status"] == "done" and result["epochs"]["II_joint"] == budget


@pytest.mark.parametrize(("key", "value"), [("stall_epochs", -1), ("stall_margin", 0.0), ("stall_margin", math.inf)])
def test_bad_stall_settings_are_refused_with_the_key(key, value):
    with pytest.raises(ValueError, match=f"protocol.{key}"):
        Protocol(**{key: value})
