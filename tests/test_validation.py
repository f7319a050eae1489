"""Bad input fails at once, before session I, with an error that names the key or file and the fix."""

from __future__ import annotations

import pickle

import pytest
from helpers import CONFIGS, quick_train
from test_data import make_cifar10, make_mnist

from lit_dendrite.cli import parse
from lit_dendrite.data import ImageDataModule, load_arrays
from lit_dendrite.nn import DendriticCNN, DendriticMLP

MLP_2ARG = str(CONFIGS / "mlp_digits_2arg.yaml")
MLP_1ARG = str(CONFIGS / "mlp_digits_1arg.yaml")


def assert_nothing_trained(run_dir) -> None:
    assert not any(run_dir.glob("*_*")), f"sessions were started in {run_dir}: {list(run_dir.iterdir())}"


@pytest.mark.parametrize("widths", ["[64, 0, 64]", "[64, -3, 64]"])
@pytest.mark.parametrize("config", [MLP_2ARG, MLP_1ARG], ids=["2arg", "matched_1arg"])
def test_non_positive_widths_fail_when_the_net_is_built(config, widths):
    with pytest.raises(ValueError, match=r"model\.net\.init_args\.widths.*positive"):
        parse(["--config", config, "--model.net.init_args.widths", widths])


@pytest.mark.parametrize(
    ("net", "arguments", "key"),
    [
        (DendriticMLP, {"widths": (8, 0)}, "widths"),
        (DendriticCNN, {"widths": (4, 8, -1, 8)}, "widths"),
        (DendriticCNN, {"kernels": (3, 0, 3)}, "kernels"),
        (DendriticCNN, {"pool": 0}, "pool"),
        (DendriticMLP, {"dropout": 1.0}, "dropout"),
        (DendriticMLP, {"dropout": float("nan")}, "dropout"),
        (DendriticMLP, {"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_net_arguments_name_the_key(net, arguments, key):
    with pytest.raises(ValueError, match=rf"model\.net\.init_args\.{key}"):
        net(**arguments)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (["--model.lr", ".nan"], "model.lr"),
        (["--model.lr", ".inf"], "model.lr"),
        (["--model.lr", "0"], "model.lr"),
        (["--protocol.pretrain_lr", ".nan"], "protocol.pretrain_lr"),
        (["--protocol.pretrain_batch_size", "0"], "protocol.pretrain_batch_size"),
        (["--model.net.init_args.dropout", "-0.1"], "model.net.init_args.dropout"),
        (["--data.num_workers", "-1"], "data.num_workers"),
        (["--data.val_fraction", ".nan"], "data.val_fraction"),
    ],
)
def test_bad_hyperparameters_fail_when_parsed(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        parse(["--config", MLP_2ARG, *override])


@pytest.mark.parametrize("option", ["max_epochs", "max_steps"])
def test_zero_epochs_or_steps_fail_before_session_one(tmp_path, option):
    with pytest.raises(ValueError, match=rf"trainer\.{option} .*at least 1"):
        quick_train("mlp_digits_2arg", tmp_path / "run", 3, 1, f"--trainer.{option}", "0")
    assert_nothing_trained(tmp_path / "run")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--trainer.limit_val_batches", "0"], r"trainer\.limit_val_batches is 0"),
        (["--trainer.check_val_every_n_epoch", "5"], r"check_val_every_n_epoch is 5 but trainer\.max_epochs is 3"),
        (["--trainer.fast_dev_run", "true"], r"fast_dev_run saves no checkpoints"),
    ],
)
def test_trainer_options_without_a_best_checkpoint_fail_when_parsed(override, message):
    with pytest.raises(ValueError, match=message):
        parse(["--config", MLP_2ARG, "--trainer.max_epochs", "3", *override])


@pytest.mark.parametrize(("given", "expected"), [("1", 1), ("3", 3), ("1.0", 1.0), ("0.25", 0.25)])
def test_batch_limits_are_counts_when_integers_and_fractions_otherwise(tmp_path, given, expected):
    """Lightning reads an int as a number of batches and a float as a fraction of the epoch: ``1`` is one batch."""
    from_file = tmp_path / "limits.yaml"
    from_file.write_text(f"trainer:\n  limit_val_batches: {given}\n")
    config = parse(["--config", MLP_2ARG, "--config", str(from_file), "--trainer.limit_train_batches", given]).config
    for key in ("limit_train_batches", "limit_val_batches"):
        assert config.trainer[key] == expected and type(config.trainer[key]) is type(expected), key


def test_key_prefixes_are_not_accepted():
    with pytest.raises(Exception, match=r"model\.l\b"):
        parse(["--config", MLP_2ARG, "--model.l", "5"])


def _truncate(path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize(("file", "keep"), [("train-images-idx3-ubyte", 0), ("t10k-labels-idx1-ubyte", 13)])
def test_empty_or_truncated_mnist_file_is_named_before_session_one(tmp_path, file, keep):
    make_mnist(tmp_path / "data")
    path = tmp_path / "data" / "MNIST" / "raw" / file
    _truncate(path, keep)
    with pytest.raises(ValueError, match=rf"{path}.*expected .* bytes.*found {keep}.*--data\.download true"):
        quick_train("mlp_mnist_2arg", tmp_path / "run", 1, 1, "--data.root", str(tmp_path / "data"))
    assert_nothing_trained(tmp_path / "run")


def test_mnist_images_and_labels_must_agree(tmp_path):
    make_mnist(tmp_path, n_test=20)
    labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    make_mnist(tmp_path / "other", n_test=15)
    labels.write_bytes((tmp_path / "other" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(ValueError, match=r"15 labels.*20 images"):
        load_arrays("mnist", tmp_path, train=False)


def test_cifar_labels_outside_the_classes_are_named_before_session_one(tmp_path):
    make_cifar10(tmp_path / "data")
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
    content = pickle.loads(batch.read_bytes())
    content[b"labels"][4] = 10
    batch.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(ValueError, match=rf"{batch}: expected labels in 0\.\.9, found 0\.\.10"):
        quick_train("mlp_cifar10_2arg", tmp_path / "run", 1, 1, "--data.root", str(tmp_path / "data"),
                    "--model.net.init_args.widths", "[4]")  # fmt: skip
    assert_nothing_trained(tmp_path / "run")


def test_checked_data_are_loaded_once(tmp_path):
    make_mnist(tmp_path)
    datamodule = ImageDataModule("mnist", root=str(tmp_path), batch_size=10)
    datamodule.check_available()
    train = datamodule.splits["train"]
    datamodule.setup("fit")
    assert datamodule.splits["train"] is train  # the checked data are the trained data, read once


def test_truncated_mnist_file_is_named_with_download_on(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to download")  # CI has no network: present files must never be fetched

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    make_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    _truncate(path, 100)
    datamodule = ImageDataModule("mnist", root=str(tmp_path), download=True)  # every file present: nothing fetched
    with pytest.raises(ValueError, match=rf"{path}: truncated .*expected 47056 bytes.*found 100; delete {path}"):
        datamodule.check_available()  # present files are checked, never fetched again over a broken one
