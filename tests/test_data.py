"""Clean data sets: the embedded digits, and torchvision's on-disk MNIST / CIFAR formats written here."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from lit_dendrite.data import DATASETS, ImageDataModule, load_arrays
from lit_dendrite.errors import UntrustedInput


def write_idx(path, array):
    """Write an array in the IDX format torchvision's MNIST reads (unsigned bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root, folder="MNIST", n_train=60, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def make_cifar10(root, per_batch=10, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), b"labels": list(range(per_batch))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_digits_is_28x28_uint8_with_fixed_test_split():
    images, labels = load_arrays("digits", "unused", train=False)
    again, _ = load_arrays("digits", "unused", train=False)
    train_images, _ = load_arrays("digits", "unused", train=True)
    assert images.shape == (360, 28, 28, 1) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert len(train_images) + len(images) == 1797
    np.testing.assert_array_equal(images, again)
    assert images.max() > 200 and set(labels) == set(range(10))


def test_datamodule_gives_pixels_in_unit_range_and_a_seeded_split():
    dm = ImageDataModule("digits", batch_size=50, split_seed=3)
    dm.setup()
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (50, 1, 28, 28) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert len(dm.splits["val"]) == round(1437 / 6)
    other = ImageDataModule("digits", split_seed=4)
    other.setup()
    assert not torch.equal(dm.splits["val"].labels, other.splits["val"].labels)


def test_mnist_reads_torchvision_raw_files(tmp_path):
    make_mnist(tmp_path)
    images, labels = load_arrays("mnist", tmp_path, train=True)
    assert images.shape == (60, 28, 28, 1) and list(labels[:3]) == [0, 1, 2]
    dm = ImageDataModule("mnist", root=str(tmp_path), batch_size=10)
    dm.setup()
    assert len(dm.splits["val"]) == 10 and len(dm.splits["train"]) == 50 and len(dm.splits["test"]) == 20


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    make_mnist(tmp_path, folder="FashionMNIST")
    images, _ = load_arrays("fashion_mnist", tmp_path, train=False)
    assert images.shape == (20, 28, 28, 1)


def test_cifar10_reads_python_batches(tmp_path):
    make_cifar10(tmp_path)
    images, labels = load_arrays("cifar10", tmp_path, train=True)
    assert images.shape == (50, 32, 32, 3) and labels.shape == (50,)
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())[b"data"][0]
    np.testing.assert_array_equal(images[0], raw.reshape(3, 32, 32).transpose(1, 2, 0))
    dm = ImageDataModule("cifar10", root=str(tmp_path), batch_size=10)
    dm.setup()
    assert len(dm.splits["val"]) == 10 and tuple(dm.splits["test"].images.shape) == (10, 3, 32, 32)


def test_cifar_reader_refuses_arbitrary_pickles(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": gzip.compress}))
    with pytest.raises(UntrustedInput, match="test_batch: refusing to unpickle"):  # names the file
        load_arrays("cifar10", tmp_path, train=False)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_data_set_says_where_it_looked_and_how_to_fix(tmp_path, name):
    with pytest.raises(FileNotFoundError, match=r"not found under .*--data.root.*--data.download true"):
        load_arrays(name, tmp_path, train=True)


def test_unknown_data_set_lists_known_ones():
    with pytest.raises(ValueError, match="choose one of"):
        ImageDataModule("svhn")
    assert set(DATASETS) == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100"}


def first_batches(epoch=0, num_workers=0, augment="cifar"):
    """The first training, validation and test batches of epoch ``epoch``, as a session seeded with 0 draws them."""
    torch.manual_seed(0)  # the shuffle's seed defaults to the session's
    dm = ImageDataModule("digits", batch_size=20, augment=augment, num_workers=num_workers)
    dm.setup()
    train = dm.train_dataloader()
    train.sampler.set_epoch(epoch)
    return [next(iter(loader)) for loader in (train, dm.val_dataloader(), dm.test_dataloader())]


def test_cifar_augmentation_changes_only_training_images_and_repeats_exactly():
    (train, labels), val, test = first_batches()
    (plain, plain_labels), plain_val, plain_test = first_batches(augment=None)
    assert torch.equal(labels, plain_labels)  # the same images in the same order, augmented
    assert not torch.equal(train, plain)
    assert train.shape == plain.shape and 0 <= train.min() and train.max() <= 1
    for ours, reference in ((val, plain_val), (test, plain_test)):  # evaluation splits are never augmented
        assert all(torch.equal(a, b) for a, b in zip(ours, reference))
    # each image is its own crop of the zero-padded image, or of its mirror image
    padded = torch.nn.functional.pad(plain, (4, 4, 4, 4))
    for image, source in zip(train, padded):
        windows = [source[:, i : i + 28, j : j + 28] for i in range(9) for j in range(9)]
        assert any(torch.equal(image, w) or torch.equal(image, w.flip(-1)) for w in windows)
    # the same seed gives the same batch; state consumed by other random draws does not change it
    again = first_batches()[0][0]
    torch.rand(100)
    assert torch.equal(train, again)


def test_augmented_epoch_is_the_same_whether_or_not_earlier_epochs_ran_and_in_workers():
    torch.manual_seed(0)
    dm = ImageDataModule("digits", batch_size=20, augment="cifar")
    dm.setup()
    loader = dm.train_dataloader()
    for epoch in range(2):  # a process that trained epoch 0 first, as an uninterrupted run does
        loader.sampler.set_epoch(epoch)
        second_epoch = next(iter(loader))
    resumed = first_batches(epoch=1)[0]  # a process that starts at epoch 1, as a resumed run does
    assert all(torch.equal(a, b) for a, b in zip(second_epoch, resumed))
    assert not torch.equal(second_epoch[0], first_batches(epoch=0)[0][0])
    in_worker = first_batches(epoch=1, num_workers=1)[0]
    assert all(torch.equal(a, b) for a, b in zip(second_epoch, in_worker))


def test_unknown_augmentation_lists_the_choices():
    with pytest.raises(ValueError, match=r"data.augment must be null \(none\) or one of \['cifar'\]"):
        ImageDataModule("digits", augment="autoaugment")
