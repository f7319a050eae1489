"""Readers of the released corrupted sets (CIFAR-10-C, CIFAR-100-C, MNIST-C) and of generated ones, on small files
written here in the published layouts, well-formed and malformed; one `trainer.test` over all sets."""

import json
import pickle

import lightning as L
import numpy as np
import pytest
import torch

from lit_dendrite.data.corrupted import (
    CIFAR_C_BENCHMARK,
    CorruptedDataModule,
    accuracy_table,
    load_corrupted,
    open_source,
    parse_spec,
)
from lit_dendrite.models import Classifier

PER_SEVERITY = 5
LEVEL = 20  # an image's pixels all hold LEVEL * label, so its label can be read back from it


def encoded_images(labels: np.ndarray, wrong: np.ndarray, shape: tuple[int, int, int], dtype=np.uint8) -> np.ndarray:
    """Images that encode their label, except where `wrong` is set (they encode label + 1)."""
    values = LEVEL * ((labels + wrong) % 10)
    return np.broadcast_to(values[:, None, None, None], (len(labels), *shape)).astype(dtype)


def expected_accuracy(corruption_index: int, severity: int) -> float:
    """Fraction right by construction: severity s of corruption c gets (s - 1 + c) % PER_SEVERITY wrong images."""
    return 1 - ((severity - 1 + corruption_index) % PER_SEVERITY) / PER_SEVERITY


def wrong_mask(corruption_index: int, severities=(1, 2, 3, 4, 5)) -> np.ndarray:
    blocks = []
    for severity in severities:
        wrong = round((1 - expected_accuracy(corruption_index, severity)) * PER_SEVERITY)
        blocks.append(np.arange(PER_SEVERITY) >= PER_SEVERITY - wrong)
    return np.concatenate(blocks).astype(np.int64)


def write_cifar_c(root, corruptions=("gaussian_noise", "fog"), name="CIFAR-10-C", labels_dtype=np.uint8):
    """A small CIFAR-10-C: 5 images per severity instead of 10,000."""
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    labels = np.tile(np.arange(PER_SEVERITY) % 10, 5)
    np.save(directory / "labels.npy", labels.astype(labels_dtype))
    for index, corruption in enumerate(corruptions):
        np.save(directory / f"{corruption}.npy", encoded_images(labels, wrong_mask(index), (32, 32, 3)))
    return directory


def write_mnist_c(root, corruptions=("shot_noise", "fog"), dtype=np.float64):
    """A small MNIST-C: the published float64 0..255 images (or uint8), uint8 labels, train and test splits."""
    labels = np.arange(PER_SEVERITY) % 10
    for index, corruption in enumerate(corruptions):
        directory = root / "mnist_c" / corruption
        directory.mkdir(parents=True)
        images = encoded_images(labels, wrong_mask(index, severities=(1,)), (28, 28, 1), dtype)
        for split in ("train", "test"):
            np.save(directory / f"{split}_images.npy", images)
            np.save(directory / f"{split}_labels.npy", labels.astype(np.uint8))
    return root / "mnist_c"


class PixelNet(torch.nn.Module):
    """A stand-in network that reads the label an image encodes (one-hot logits)."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images):
        predicted = (images.mean(dim=(1, 2, 3)) * 255 / LEVEL).round().long() % 10
        return torch.nn.functional.one_hot(predicted, 10).float()


def run_test(datamodule):
    """One `trainer.test` of the real Classifier over every (corruption, severity) dataloader."""
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.test(Classifier(PixelNet()), datamodule=datamodule, verbose=False)


def test_one_trainer_test_evaluates_every_cifar_c_set(tmp_path):
    write_cifar_c(tmp_path)
    datamodule = CorruptedDataModule("cifar10_c", tmp_path, corruptions=["gaussian_noise", "fog"], batch_size=2)
    assert datamodule.names[:2] == ["gaussian_noise/1", "gaussian_noise/2"] and len(datamodule.names) == 10
    table = accuracy_table(run_test(datamodule), datamodule.names)
    for index, corruption in enumerate(["gaussian_noise", "fog"]):
        assert table[corruption] == pytest.approx({s: expected_accuracy(index, s) for s in range(1, 6)})


@pytest.mark.parametrize("dtype", [np.float64, np.uint8])
def test_mnist_c_as_published(tmp_path, dtype):
    write_mnist_c(tmp_path, dtype=dtype)
    datamodule = CorruptedDataModule("mnist_c", tmp_path, corruptions=["shot_noise", "fog"], batch_size=3)
    assert datamodule.names == ["shot_noise/1", "fog/1"]
    table = accuracy_table(run_test(datamodule), datamodule.names)
    assert table.keys() == {"shot_noise", "fog"}
    assert table["shot_noise"] == pytest.approx({1: expected_accuracy(0, 1)})
    assert table["fog"] == pytest.approx({1: expected_accuracy(1, 1)})


def test_items_are_float_chw_in_unit_range_and_first_n_are_kept(tmp_path):
    write_cifar_c(tmp_path, name="CIFAR-100-C")
    sets = load_corrupted(open_source("cifar100_c", tmp_path), "fog", severities=[3], n=2)
    image, label = sets[3][1]
    assert len(sets[3]) == 2 and image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert image.max().item() == pytest.approx(LEVEL * ((label + wrong_mask(1)[10 + 1]) % 10) / 255)
    batch = sets[3].__getitems__([1, 0])
    assert torch.equal(batch[0][0], image) and batch[0][1] == label
    reloaded = pickle.loads(pickle.dumps(sets[3]))  # what a DataLoader worker receives
    assert torch.equal(reloaded[1][0], image)


def write_generated(directory, dataset="digits", image_shape=(28, 28, 1)):
    """A small set in the layout `lit_dendrite.data.corrupt` writes (one corruption, contrast), with its metadata."""
    directory.mkdir(parents=True)
    labels = np.tile(np.arange(PER_SEVERITY) % 10, 5)
    np.save(directory / "labels.npy", labels)
    np.save(directory / "contrast.npy", encoded_images(labels, wrong_mask(0), image_shape))
    metadata = {
        "dataset": dataset,
        "corruptions": ["contrast"],
        "severities": [1, 2, 3, 4, 5],
        "images_per_severity": PER_SEVERITY,
        "image_shape": list(image_shape),
        "num_classes": 10,
    }
    (directory / "metadata.json").write_text(json.dumps(metadata))
    return directory


def test_generated_layout_with_its_own_corruption_list(tmp_path):
    directory = write_generated(tmp_path / "digits_c")
    labels = np.tile(np.arange(PER_SEVERITY) % 10, 5)
    datamodule = CorruptedDataModule.from_spec(f"generated:{directory}", batch_size=4)
    table = accuracy_table(run_test(datamodule), datamodule.names)
    assert table.keys() == {"contrast"}
    assert table["contrast"] == pytest.approx({s: expected_accuracy(0, s) for s in range(1, 6)})
    with pytest.raises(ValueError, match=r"unknown corruptions.*valid: contrast"):
        CorruptedDataModule("generated", directory, corruptions=["fog"])
    np.save(directory / "contrast.npy", encoded_images(labels[:20], wrong_mask(0)[:20], (28, 28, 1)))
    with pytest.raises(ValueError, match=r"contrast.npy: expected 25 images .* found 20"):
        CorruptedDataModule("generated", directory).setup("test")


def test_defaults_are_the_benchmark_corruptions_and_all_severities(tmp_path):
    write_cifar_c(tmp_path)
    datamodule = CorruptedDataModule("cifar10_c", tmp_path)
    assert datamodule.corruptions == CIFAR_C_BENCHMARK and datamodule.severities == (1, 2, 3, 4, 5)
    with pytest.raises(
        FileNotFoundError, match=r"13 missing files of cifar10_c: .*shot_noise\.npy, .*defocus_blur\.npy"
    ):
        datamodule.setup("test")  # every file is checked before anything is evaluated


def malformed_cifar(tmp_path, problem):
    directory = write_cifar_c(tmp_path, corruptions=("fog",))
    images, labels = np.load(directory / "fog.npy"), np.load(directory / "labels.npy")
    if problem == "dtype":
        np.save(directory / "fog.npy", images.astype(np.float32))
    elif problem == "shape":
        np.save(directory / "fog.npy", images[:, :28, :28])
    elif problem == "blocks":
        np.save(directory / "fog.npy", images[:23])
    elif problem == "label count":
        np.save(directory / "labels.npy", labels[:20])
    elif problem == "label range":
        np.save(directory / "labels.npy", labels + 9)
    elif problem == "label dtype":
        np.save(directory / "labels.npy", labels.astype(np.float32))
    elif problem == "not npy":
        (directory / "fog.npy").write_text("not an array")
    elif problem == "missing labels":
        (directory / "labels.npy").unlink()


@pytest.mark.parametrize(
    ("problem", "error", "message"),
    [
        ("dtype", ValueError, r"fog.npy: expected dtype uint8, found float32"),
        ("shape", ValueError, r"fog.npy: expected shape \(N, 32, 32, 3\), found \(25, 28, 28, 3\)"),
        ("blocks", ValueError, r"fog.npy: expected 5 severity blocks of equal size, found 23 images"),
        ("label count", ValueError, r"labels.npy: expected 25 labels, one per image of .*fog.npy, found 20"),
        ("label range", ValueError, r"labels.npy: expected labels in 0..9, found 9..13"),
        ("label dtype", ValueError, r"labels.npy: expected integer labels of shape \(N,\), found float32"),
        ("not npy", ValueError, r"fog.npy: not a readable .npy array"),
        ("missing labels", FileNotFoundError, r"missing files of cifar10_c: .*labels.npy"),
    ],
)
def test_malformed_cifar_c_is_named(tmp_path, problem, error, message):
    malformed_cifar(tmp_path, problem)
    with pytest.raises(error, match=message):
        CorruptedDataModule("cifar10_c", tmp_path, corruptions=["fog"]).setup("test")


def test_malformed_mnist_c_is_named(tmp_path):
    directory = write_mnist_c(tmp_path) / "fog"
    np.save(directory / "test_images.npy", np.load(directory / "test_images.npy") / 255.0)
    with pytest.raises(
        ValueError,
        match=r"fog/test_images.npy: expected pixel values on 0..255, found values in \[0, 0.39.*multiply it by 255",
    ):
        CorruptedDataModule("mnist_c", tmp_path, corruptions=["fog"]).setup("test")
    np.save(directory / "test_images.npy", np.zeros((5, 28, 28, 1), dtype=np.int16))
    with pytest.raises(ValueError, match="expected dtype uint8 or float32 or float64, found int16"):
        CorruptedDataModule("mnist_c", tmp_path, corruptions=["fog"]).setup("test")
    with pytest.raises(ValueError, match=r"severities \[3\] not in mnist_c; valid: \[1\]"):
        CorruptedDataModule("mnist_c", tmp_path, severities=[3])


@pytest.mark.parametrize(
    ("spec", "run_dataset", "message"),
    [
        ("generated:digits", "mnist", r"made from 'digits'.*trained on 'mnist'.*use --corruptions mnist_c"),
        ("generated:fashion_mnist", "digits", r"made from 'fashion_mnist'.*corrupt --dataset digits --out DIR"),
        ("cifar10_c", "mnist", r"made from 'cifar10': images \(32, 32, 3\).*'mnist': images \(28, 28, 1\)"),
        ("cifar10_c", "cifar100", r"10 classes; the run was trained on 'cifar100'.* 100 classes.*cifar100_c"),
        ("mnist_c", "fashion_mnist", r"made from 'mnist'.*trained on 'fashion_mnist'"),
        ("generated:imagefolder:/photos", "mnist", r"made from 'imagefolder:/photos': images \(32, 32, 3\)"),
    ],
)
def test_a_set_made_from_another_data_set_is_refused(tmp_path, spec, run_dataset, message):
    write_cifar_c(tmp_path)
    write_mnist_c(tmp_path)
    kind, _, made_from = spec.partition(":")
    if kind == "generated":
        shape = (32, 32, 3) if made_from.startswith("imagefolder") else (28, 28, 1)
        source = open_source(kind, write_generated(tmp_path / "generated", made_from, shape))
    else:
        source = open_source(kind, tmp_path)
    with pytest.raises(ValueError, match=message):
        source.check_made_from(run_dataset)


def test_a_set_made_from_the_run_data_set_is_accepted(tmp_path):
    write_cifar_c(tmp_path)
    open_source("cifar10_c", tmp_path).check_made_from("cifar10")
    open_source("generated", write_generated(tmp_path / "digits_c")).check_made_from("digits")
    folder_set = write_generated(tmp_path / "folder_c", "imagefolder:/scans", (28, 28, 1))
    open_source("generated", folder_set).check_made_from("mnist")  # no name to compare: same shape and classes


@pytest.mark.parametrize(
    ("kind", "corruptions", "error", "message"),
    [
        ("cifar10_c", ["fgos"], ValueError, "unknown corruptions.*fgos.*valid: gaussian_noise, shot_noise"),
        ("mnist_c", ["gaussian_noise"], ValueError, "valid: identity, shot_noise"),
        ("cifar100_c", None, FileNotFoundError, "CIFAR-100-C: missing; download CIFAR-100-C.tar from"),
        ("generated", None, FileNotFoundError, "metadata.json: missing"),
        ("imagenet_c", None, ValueError, "unknown corrupted set kind 'imagenet_c'"),
    ],
)
def test_bad_names_and_missing_sets_are_named(tmp_path, kind, corruptions, error, message):
    write_cifar_c(tmp_path)
    write_mnist_c(tmp_path)
    with pytest.raises(error, match=message):
        CorruptedDataModule(kind, tmp_path, corruptions=corruptions)


def test_spec_parsing(tmp_path):
    assert parse_spec("cifar10_c", tmp_path) == ("cifar10_c", tmp_path)
    assert parse_spec(f"generated:{tmp_path / 'x'}") == ("generated", tmp_path / "x")
    for bad in ("generated", "cifar10_c:extra", "cifar10"):
        with pytest.raises(ValueError, match="spec"):
            parse_spec(bad)


def test_accuracy_table_reads_single_and_multiple_dataloader_keys():
    assert accuracy_table([{"test/acc": 0.5}], ["fog/2"]) == {"fog": {2: 0.5}}
    results = [{"test/acc/dataloader_idx_0": 0.75}, {"test/acc/dataloader_idx_1": 0.25}]
    assert accuracy_table(results, ["fog/1", "fog/2"]) == {"fog": {1: 0.75, 2: 0.25}}
    with pytest.raises(ValueError, match="2 result dicts for 3 dataloaders"):
        accuracy_table(results, ["fog/1", "fog/2", "fog/3"])
    with pytest.raises(KeyError, match="lack 'test/acc'"):
        accuracy_table([{"test/loss": 1.0}], ["fog/1"])
