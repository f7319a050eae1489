"""Learning curves of a sweep read from TensorBoard event files laid out as the sweep writes them."""

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from lit_dendrite.analysis.curves import (
    epochs_to_fraction,
    learning_curves,
    read_scalars,
    session_offsets,
    summarise_speed,
)
from lit_dendrite.analysis.plots import learning_curve_figure, save_figure, speed_figure
from lit_dendrite.runs import condition_of


def write_session(directory, accuracies, steps_per_epoch=10, epoch_scalar=True):
    """Per-epoch val/acc, val/loss and Lightning's epoch scalar at the epoch's last step."""
    writer = SummaryWriter(str(directory))
    for epoch, accuracy in enumerate(accuracies):
        step = (epoch + 1) * steps_per_epoch - 1
        writer.add_scalar("val/acc", accuracy, step)
        writer.add_scalar("val/loss", 1 - accuracy, step)
        if epoch_scalar:
            writer.add_scalar("epoch", epoch, step)
    writer.close()


@pytest.fixture
def sweep(tmp_path):
    """2arg: sessions II (4 or 5 epochs) then III (3); relu: session II only; one run without epoch scalars."""
    curves = {
        ("mlp_digits_2arg", "seed=1"): {"II_joint": [0.5, 0.8, 0.9, 0.95], "III_frozen": [0.7, 0.9, 0.96]},
        ("mlp_digits_2arg", "seed=2"): {
            "II_joint": [0.6, 0.8, 0.9, 0.97, 0.98],
            "III_frozen": [0.8, 0.9, 0.94],
        },
        ("mlp_digits_relu", "seed=1"): {"II_joint": [0.4, 0.6, 0.8, 0.9, 1.0]},
        ("mlp_digits_relu", "seed=2"): {"II_joint": [0.2, 0.6, 0.8, 0.9, 1.0]},
    }
    for (experiment, run), sessions in curves.items():
        for session, accuracies in sessions.items():
            write_session(tmp_path / experiment / run / session, accuracies, epoch_scalar=run != "seed=2")
    write_session(tmp_path / "mlp_digits_2arg" / "seed=1" / "I_pretrain", [0.1])
    return tmp_path


def test_read_scalars_finds_every_run_session_and_epoch(sweep):
    scalars = read_scalars(sweep)
    assert set(scalars["condition"]) == {"mlp_digits_2arg", "mlp_digits_relu"}
    assert set(scalars["session"]) == {"II_joint", "III_frozen"}, "session I is not a learning curve"
    assert set(scalars["tag"]) == {"val/acc", "val/loss"}
    run = scalars[(scalars["run"] == "mlp_digits_2arg/seed=2") & (scalars["tag"] == "val/acc")]
    assert run[run["session"] == "II_joint"]["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert run[run["session"] == "III_frozen"]["value"].tolist() == pytest.approx([0.8, 0.9, 0.94])
    no_epoch_scalar = scalars[(scalars["run"] == "mlp_digits_relu/seed=2") & (scalars["tag"] == "val/acc")]
    assert no_epoch_scalar["epoch"].tolist() == [0, 1, 2, 3, 4]


def test_runs_differing_only_in_seed_are_one_condition(sweep):
    assert condition_of("mlp_digits_2arg", "seed=3") == "mlp_digits_2arg"
    assert condition_of("mlp_mnist_2arg", "lr=0.001,inner=32-32,seed=1") == "mlp_mnist_2arg/lr=0.001,inner=32-32"
    write_session(sweep / "mlp_digits_relu" / "lr=0.01,seed=1" / "II_joint", [0.3, 0.4])
    conditions = set(read_scalars(sweep)["condition"])
    assert conditions == {"mlp_digits_2arg", "mlp_digits_relu", "mlp_digits_relu/lr=0.01"}


def test_resumed_run_keeps_one_value_per_epoch(sweep):
    # a requeued job writes a second event file that repeats epoch 4 of session II
    write_session(sweep / "mlp_digits_relu" / "seed=1" / "II_joint", [0.4, 0.6, 0.8, 0.9, 0.99])
    scalars = read_scalars(sweep)
    run = scalars[(scalars["run"] == "mlp_digits_relu/seed=1") & (scalars["tag"] == "val/acc")]
    assert run["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert run["value"].iloc[-1] == pytest.approx(0.99)


def test_learning_curves_put_session_three_after_the_longest_session_two(sweep, tmp_path):
    scalars = read_scalars(sweep)
    offsets = session_offsets(scalars).set_index(["condition", "session"])["offset"]
    assert offsets["mlp_digits_2arg", "III_frozen"] == 5
    curves = learning_curves(scalars)
    acc = curves[(curves["condition"] == "mlp_digits_2arg") & (curves["tag"] == "val/acc")]
    assert acc[acc["session"] == "III_frozen"]["x"].tolist() == [5, 6, 7]
    first = acc[acc["x"] == 0].iloc[0]
    assert first["mean"] == pytest.approx(0.55) and first["sd"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert acc[acc["x"] == 4].iloc[0]["n"] == 1, "only one seed ran a fifth epoch of session II"
    figure = learning_curve_figure(curves, session_offsets(scalars))
    assert save_figure(figure, tmp_path / "curves.png").stat().st_size > 1000


def test_epochs_to_fraction_of_final_accuracy(sweep, tmp_path):
    speed = epochs_to_fraction(read_scalars(sweep))
    run = speed[(speed["run"] == "mlp_digits_relu/seed=1") & (speed["session"] == "II_joint")].iloc[0]
    assert run["final"] == pytest.approx(1.0)
    assert (run["epochs_to_95"], run["epochs_to_99"]) == (5, 5)
    run = speed[(speed["run"] == "mlp_digits_2arg/seed=2") & (speed["session"] == "II_joint")].iloc[0]
    assert (run["epochs_to_95"], run["epochs_to_99"]) == (4, 5)  # 0.97 >= 0.95 * 0.98, 0.97 < 0.99 * 0.98
    summary = summarise_speed(speed)
    row = summary[(summary["condition"] == "mlp_digits_relu") & (summary["session"] == "II_joint")].iloc[0]
    assert row["epochs_to_95_mean"] == 5 and row["epochs_to_95_n"] == 2
    save_figure(speed_figure(summary), tmp_path / "speed.png")


def test_empty_or_missing_sweep(tmp_path):
    assert read_scalars(tmp_path).empty
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_scalars(tmp_path / "nope")
