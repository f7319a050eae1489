"""The protocol on real (tiny) digits runs: accuracy, frozen inner net, resume, reproducibility, errors."""

import json
import subprocess
import sys

import lightning as L
import pytest
import torch
from helpers import CONFIGS, digits_test_set, quick_args, quick_train

from lit_dendrite.cli import parse
from lit_dendrite.models import InnerPretrain, load_net
from lit_dendrite.nn import InnerNet, tabulate_inner


@pytest.fixture(scope="module")
def two_arg_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "mlp_digits_2arg"
    return run_dir, quick_train("mlp_digits_2arg", run_dir, 8, 3)


def test_two_arg_run_beats_chance_and_writes_a_complete_result(two_arg_run):
    run_dir, result = two_arg_run
    assert result["status"] == "done" and result["test_acc"] > 0.5
    on_disk = json.loads((run_dir / "result.json").read_text())
    assert on_disk["test_acc"] == result["test_acc"]
    assert set(on_disk["epochs"]) == {"I_pretrain", "II_joint", "III_frozen"}
    assert on_disk["num_params"] == 122_187 and on_disk["seed"] == 0
    for key in ("best_val_loss", "config", "config_hash", "versions", "git_commit", "best_checkpoint"):
        assert key in on_disk
    assert (run_dir / "III_frozen" / "checkpoints" / "last.ckpt").is_file()
    assert on_disk["best_checkpoint"] == "III_frozen/checkpoints/best.ckpt"


def test_the_recorded_commit_is_read_when_the_code_is_imported(monkeypatch):
    """A job that trains several runs keeps the code it imported: a later checkout must not change what it records."""
    import re

    from lit_dendrite.runs import record

    commit = record.git_commit()
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit), commit
    monkeypatch.setattr(record.subprocess, "run", lambda *args, **kwargs: pytest.fail(f"git asked again: {args}"))
    assert record.git_commit() == commit


def test_frozen_session_keeps_the_best_joint_inner_net_bit_identical(two_arg_run):
    run_dir, _ = two_arg_run
    joint_inner = torch.load(run_dir / "II_joint" / "inner_best.pt", weights_only=True)
    for name in ("best.ckpt", "last.ckpt"):
        state = torch.load(run_dir / "III_frozen" / "checkpoints" / name, weights_only=True)["state_dict"]
        for key, value in joint_inner.items():
            assert torch.equal(state[f"net.inner.{key}"], value), (name, key)
    joint = torch.load(run_dir / "II_joint" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    frozen = torch.load(run_dir / "III_frozen" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(joint["net.head.weight"], frozen["net.head.weight"])


def test_load_net_restores_the_tested_accuracy(two_arg_run):
    run_dir, result = two_arg_run
    net = load_net(run_dir)
    x, labels = digits_test_set()
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(result["test_acc"], abs=1e-6)
    tabulate_inner(net, calibration=[x[:200]])
    with torch.no_grad():
        tabulated = (net(x).argmax(1) == labels).float().mean().item()
    assert abs(tabulated - accuracy) <= 1 / len(labels) + 1e-9


def test_finished_run_is_not_trained_again(two_arg_run):
    run_dir, result = two_arg_run
    mtime = (run_dir / "result.json").stat().st_mtime
    assert quick_train("mlp_digits_2arg", run_dir, 8, 3) == result
    assert (run_dir / "result.json").stat().st_mtime == mtime


def test_short_relu_run_beats_chance(tmp_path):
    result = quick_train("mlp_digits_relu", tmp_path / "run", 6)
    assert result["test_acc"] > 0.5, result["test_acc"]


class LearningRates(L.Callback):
    """Records (global step, learning rate) of every optimizer step, and the training batches per epoch."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float]] = []
        self.batches_per_epoch = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer) -> None:
        self.steps.append((trainer.global_step, optimizer.param_groups[0]["lr"]))
        self.batches_per_epoch = trainer.num_training_batches


@pytest.mark.parametrize("warmup_epochs", [None, 2])
def test_learning_rate_warms_up_linearly_over_its_epochs_then_stays(tmp_path, warmup_epochs):
    warmup = [] if warmup_epochs is None else ["--model.warmup_epochs", str(warmup_epochs)]
    rates = LearningRates()
    result = quick_train("mlp_digits_relu", tmp_path / "run", 3, 0, *warmup, extra_callbacks=[rates])
    assert result["status"] == "done" and len(rates.steps) == 3 * rates.batches_per_epoch > 3
    ramp = (warmup_epochs or 0) * rates.batches_per_epoch
    for step, lr in rates.steps:
        assert lr == pytest.approx(1e-3 * min(1.0, (step + 1) / ramp) if ramp else 1e-3, rel=1e-9), (step, lr)
    if warmup_epochs is not None:
        assert rates.steps[0][1] == pytest.approx(1e-3 / ramp) and rates.steps[-1][1] == 1e-3


def test_bf16_mixed_precision_runs_every_session(tmp_path):
    result = quick_train("mlp_digits_2arg", tmp_path / "run", 4, 2, "--trainer.precision", "bf16-mixed")
    assert result["status"] == "done"
    assert result["test_acc"] > 0.4, result["test_acc"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "epochs"),
    [("mlp_digits_1arg", 8), ("mlp_digits_product", 8), ("mlp_digits_swiglu", 8), ("cnn_digits_relu", 4),
     ("cnn_digits_2arg", 3), ("cnn_digits_pau", 3)],
)  # fmt: skip
def test_short_runs_of_every_other_neuron_beat_chance(tmp_path, config, epochs):
    result = quick_train(config, tmp_path / config, epochs, 2)
    assert result["test_acc"] > 0.4, result["test_acc"]


def test_pretraining_fits_the_random_smooth_function():
    L.seed_everything(0, verbose=False)
    module = InnerPretrain(InnerNet(2), seed=0)
    before = module.explained_variance()
    trainer = L.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module)
    after = module.explained_variance()
    assert before < 0.05 and after > 0.15, (before, after)


def test_one_arg_pretraining_reaches_the_target_and_records_its_fit(tmp_path):
    run_dir = tmp_path / "run"
    sessions = ["--protocol.sessions", "[I_pretrain, II_joint]", "--protocol.pretrain_target", "0.99"]
    budget = ["--protocol.pretrain_lr", "0.01", "--seed_everything", "1"]  # a short budget: 100 epochs of 40 steps
    result = quick_train("mlp_digits_1arg", run_dir, 1, 100, *sessions, *budget)
    fit = json.loads((run_dir / "I_pretrain" / "session.json").read_text())
    assert fit["target_reached"] and fit["explained_variance"] >= 0.99, fit
    assert fit["epochs"] < 100 and fit["steps"] == 40 * fit["epochs"], fit  # stopped once reached; 40 steps/epoch
    assert result["sessions"]["I_pretrain"] == fit


def test_pretraining_keeps_the_inner_net_of_its_best_epoch():
    L.seed_everything(0, verbose=False)
    module = InnerPretrain(InnerNet(1), seed=0, lr=0.05)  # a large step size: the last epoch is rarely the best
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = L.Trainer(max_epochs=8, limit_train_batches=2, enable_model_summary=False, **quiet)
    trainer.fit(module)
    last = module.explained_variance()
    module.restore_best()
    assert module.explained_variance() == pytest.approx(module.best["explained_variance"])
    assert module.best["explained_variance"] >= last


def test_a_session_that_stops_early_says_so(tmp_path):
    # a step size too small to change the validation loss in float32: no improvement after the first epoch
    schedule = ["--protocol.patience", "1", "--model.lr", "1e-12"]
    result = quick_train("mlp_digits_relu", tmp_path / "run", 10, 0, *schedule)
    assert result["epochs"] == {"II_joint": 2} and result["sessions"]["II_joint"]["stopped_early"]


def test_fixed_schedule_trains_its_epochs_without_early_stopping(tmp_path):
    schedule = ["--protocol.joint_epochs", "3", "--protocol.patience", "1"]
    result = quick_train("mlp_digits_relu", tmp_path / "run", 1, 0, *schedule)
    assert result["epochs"] == {"II_joint": 3} and not result["sessions"]["II_joint"]["stopped_early"]


def test_same_seed_gives_the_same_test_accuracy(tmp_path):
    first = quick_train("mlp_digits_relu", tmp_path / "a", 2)
    second = quick_train("mlp_digits_relu", tmp_path / "b", 2)
    other = quick_train("mlp_digits_relu", tmp_path / "c", 2, 2, "--seed_everything", "1")
    assert first["test_acc"] == second["test_acc"]
    assert first["best_val_loss"] == second["best_val_loss"] != other["best_val_loss"]


class SimulatedPreemption(Exception):
    pass


class Interrupt(L.Callback):
    """Raise at the end of a given epoch of one session, as a preemption would."""

    def __init__(self, session, epoch):
        self.session, self.epoch = session, epoch

    def on_train_epoch_end(self, trainer, module):
        if trainer.logger.version == self.session and trainer.current_epoch == self.epoch:
            raise SimulatedPreemption(f"epoch {self.epoch} of {self.session}")


class RecordStart(L.Callback):
    def __init__(self):
        self.starts = {}

    def on_train_start(self, trainer, module):
        self.starts[trainer.logger.version] = trainer.current_epoch


def test_interrupted_run_resumes_from_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(SimulatedPreemption):
        quick_train("mlp_digits_2arg", run_dir, 4, 2, extra_callbacks=[Interrupt("III_frozen", 1)])
    assert not (run_dir / "result.json").exists()
    assert (run_dir / "II_joint" / "session.json").is_file()
    record = RecordStart()
    result = quick_train("mlp_digits_2arg", run_dir, 4, 2, extra_callbacks=[record])
    assert record.starts == {"III_frozen": 1}  # epoch 1 was cut short: it reruns from the end of epoch 0
    assert result["status"] == "done" and result["epochs"]["III_frozen"] == 4


class PoisonWeights(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        with torch.no_grad():
            module.net.head.bias.fill_(float("nan"))


def test_nan_loss_stops_the_run_as_diverged(tmp_path):
    result = quick_train("mlp_digits_relu", tmp_path / "run", 3, extra_callbacks=[PoisonWeights()])
    assert result["status"] == "diverged" and "non-finite" in result["error"]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("config", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_experiment_config_parses_and_matches_its_two_arg_reference(config):
    cli = parse(["--config", str(CONFIGS / f"{config}.yaml")])
    net = cli.parser.instantiate_classes(cli.config).model.net
    count = sum(p.numel() for p in net.parameters())
    ref_cli = parse(["--config", str(CONFIGS / f"{config}.yaml"), "--model.net.init_args.neuron", "2arg"])
    reference = sum(p.numel() for p in ref_cli.parser.instantiate_classes(ref_cli.config).model.net.parameters())
    assert abs(count - reference) / reference <= 0.01, (config, count, reference)


def test_paper_configs_keep_the_paper_widths():
    expected = {
        "mlp_mnist_1arg": [114] * 3,
        "mlp_mnist_relu": [118] * 3,
        "mlp_cifar10_1arg": [123] * 3,
        "mlp_cifar10_relu": [124] * 3,
        "cnn_cifar10_1arg": [65, 150, 180, 240],
        "cnn_cifar10_relu": [120, 150, 170, 170],
    }
    for config, widths in expected.items():
        cli = parse(["--config", str(CONFIGS / f"{config}.yaml")])
        assert list(cli.parser.instantiate_classes(cli.config).model.net.widths) == widths


def test_unknown_config_key_is_a_clear_error():
    with pytest.raises(Exception, match="learning_rate"):
        parse(["--config", str(CONFIGS / "mlp_digits_2arg.yaml"), "--model.learning_rate", "0.1"])


def test_missing_data_set_fails_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data.download true"):
        quick_train("mlp_mnist_2arg", tmp_path / "run", 1, 1, "--data.root", str(tmp_path / "nowhere"))
    assert not (tmp_path / "run" / "II_joint").exists()


def test_launcher_prints_config_and_one_line_result(tmp_path):
    config = str(CONFIGS / "mlp_digits_relu.yaml")
    shown = subprocess.run(
        [sys.executable, "launch/train.py", "--config", config, "--print_config"], capture_output=True, text=True
    )
    assert shown.returncode == 0 and "DendriticMLP" in shown.stdout and "max_epochs: 100" in shown.stdout
    done = subprocess.run(
        [sys.executable, "launch/train.py", "fit", *quick_args("mlp_digits_relu", tmp_path / "run", 1)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("[lit_dendrite] mlp_digits_relu seed=0 status=done test_acc=") and "result.json" in last


def test_a_bad_warmup_is_a_clear_error():
    from lit_dendrite.models import Classifier
    from lit_dendrite.nn import DendriticMLP

    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="model.warmup_epochs must be a finite number > 0 or null"):
            Classifier(DendriticMLP(neuron="relu"), warmup_epochs=bad)
