"""Clean image data sets as uint8 arrays: scikit-learn's digits (embedded) and torchvision's on-disk sets.

Every loader returns ``(images, labels)``: uint8 ``(N, H, W, C)`` and int64 ``(N,)``. Nothing is downloaded
unless ``download=True``; a missing set fails at once with the path looked in and the fix.
"""

from __future__ import annotations

import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_dendrite.errors import DataError, MissingFile, UntrustedInput

NET_ARGS = ("in_shape", "num_classes", "mean", "std")
"""The arguments of an outer net that its data set determines (fields of :class:`DatasetSpec`): training sets them
from ``data.dataset``, so an experiment config never states them."""


@dataclass(frozen=True)
class IdxFiles:
    """MNIST's on-disk format: ``<root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, as the
    torchvision class named ``torchvision`` (``MNIST`` or one of its subclasses) downloads and reads it."""

    folder: str
    torchvision: str


@dataclass(frozen=True)
class CifarFiles:
    """CIFAR's python format: pickled batches under ``<root>/<folder>`` with the labels under ``label_key``, as the
    torchvision class named ``torchvision`` downloads them."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    torchvision: str


@dataclass(frozen=True)
class DatasetSpec:
    """What a network needs to know about a data set (image shape, classes, per-channel mean and std of the
    training pixels in [0,1]), the paper's validation fraction, and where its files are (``files``; None: the
    embedded digits)."""

    in_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_fraction: float
    files: IdxFiles | CifarFiles | None = None

    @property
    def net_args(self) -> dict[str, Any]:
        """``{argument: value}`` of :data:`NET_ARGS` for an outer net trained on this data set."""
        return {name: getattr(self, name) for name in NET_ARGS}


DATASETS: dict[str, DatasetSpec] = {}
"""The data set registry: name -> spec. Add to it with :func:`register_dataset`; every config, sweep and evaluation
then accepts the name as ``data.dataset``."""


def register_dataset(name: str, spec: DatasetSpec) -> DatasetSpec:
    """Make ``name`` a data set every command accepts; refuses to redefine a known name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a data set name must be a non-empty string, got {name!r}")
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"register_dataset takes a DatasetSpec, got {spec!r}")
    if DATASETS.get(name, spec) != spec:
        raise ValueError(f"a data set named {name!r} is already registered ({DATASETS[name]}); choose another name")
    DATASETS[name] = spec
    return spec


register_dataset("digits", DatasetSpec((1, 28, 28), 10, (0.3053,), (0.3247,), 1 / 6))
register_dataset("mnist", DatasetSpec((1, 28, 28), 10, (0.1307,), (0.3081,), 1 / 6, IdxFiles("MNIST", "MNIST")))
register_dataset(
    "fashion_mnist",
    DatasetSpec((1, 28, 28), 10, (0.2860,), (0.3530,), 1 / 6, IdxFiles("FashionMNIST", "FashionMNIST")),
)
register_dataset(
    "cifar10",
    DatasetSpec(
        (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 1 / 5,
        CifarFiles("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels",
                   "CIFAR10"),
    ),
)  # fmt: skip
register_dataset(
    "cifar100",
    DatasetSpec(
        (3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 1 / 5,
        CifarFiles("cifar-100-python", ("train",), ("test",), "fine_labels", "CIFAR100"),
    ),
)  # fmt: skip

DIGITS_TEST_SIZE = 360
"""Images of scikit-learn's 1,797 digits held out as the fixed test set (the same for every seed)."""


def dataset_spec(name: str) -> DatasetSpec:
    """Look a data set up by name, with an error listing the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None


def load_arrays(name: str, root: str | Path, train: bool, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, H, W, C) and labels int64 (N,) of one split of the data set ``name``."""
    files = dataset_spec(name).files
    if files is None:
        return _load_digits(train)
    if isinstance(files, IdxFiles):
        return _load_mnist_like(name, Path(root), train, download)
    return _load_cifar(name, Path(root), train, download)


def pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) images as float pixels in [0,1] of shape (N, C, H, W), the networks' input."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)


def data_files(name: str, root: str | Path, train: bool) -> list[Path]:
    """The files one split of ``name`` is read from (none for the embedded digits)."""
    root, files = Path(root), dataset_spec(name).files
    if files is None:
        return []
    if isinstance(files, IdxFiles):
        prefix = "train" if train else "t10k"
        raw = root / files.folder / "raw"
        return [raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"]
    return [root / files.folder / f for f in (files.train_files if train else files.test_files)]


def check_available(name: str, root: str | Path) -> None:
    """Fail at once, naming the missing files and the fix, when ``name`` is not on disk under ``root``."""
    _require_files(name, Path(root), data_files(name, root, True) + data_files(name, root, False))


def _load_digits(train: bool) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (0..16), bilinearly resized to 28x28 and scaled to 0..255."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    images = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    order = np.random.default_rng(0).permutation(len(images))
    chosen = order[DIGITS_TEST_SIZE:] if train else order[:DIGITS_TEST_SIZE]
    return np.ascontiguousarray(images[chosen]), digits.target[chosen].astype(np.int64)


def _load_mnist_like(name: str, root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision import datasets

    cls = getattr(datasets, DATASETS[name].files.torchvision)
    files = data_files(name, root, train)
    if download and not all(f.is_file() for f in files):
        cls(str(root), train=train, download=True)  # torchvision skips files that exist, checked or not
    _require_files(name, root, files)
    images_file, labels_file = files
    count, *_ = _idx_shape(images_file, ndim=3)
    (labels_count,) = _idx_shape(labels_file, ndim=1)
    if labels_count != count:
        raise DataError(
            f"{labels_file}: {labels_count} labels for the {count} images of {images_file}; the two files come from "
            f"different downloads: delete both and fetch them again with --data.download true"
        )
    data = cls(str(root), train=train, download=False)
    labels = _check_labels(labels_file, data.targets.numpy(), DATASETS[name].num_classes)
    return data.data.numpy()[..., None].astype(np.uint8), labels


IDX_UNSIGNED_BYTE = 0x08
"""The type code of MNIST's idx files (unsigned bytes), the third byte of their header."""


def _idx_shape(path: Path, ndim: int) -> tuple[int, ...]:
    """The array shape an idx file's header declares, checked against the file's size, so that an empty or truncated
    download is named here instead of failing in torchvision's parser (or, before, after session I)."""
    size = path.stat().st_size
    fix = f"delete {path} and fetch it again with --data.download true"
    header_size = 4 + 4 * ndim
    with open(path, "rb") as handle:
        header = handle.read(header_size)
    if len(header) < header_size:
        raise DataError(
            f"{path}: empty or truncated idx file: expected at least {header_size} bytes (its header), found {size}; "
            f"{fix}"
        )
    if header[:4] != bytes([0, 0, IDX_UNSIGNED_BYTE, ndim]):
        raise DataError(
            f"{path}: not an idx file of unsigned bytes with {ndim} dimension(s) (header {header[:4].hex()}, expected "
            f"0000{IDX_UNSIGNED_BYTE:02x}{ndim:02x}); {fix}"
        )
    shape = struct.unpack(f">{ndim}I", header[4:])
    expected = header_size + math.prod(shape)
    if size != expected:
        raise DataError(
            f"{path}: truncated or corrupt idx file: expected {expected} bytes (header and {shape} bytes), "
            f"found {size}; {fix}"
        )
    return shape


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``labels`` as int64, or a ValueError naming the file when one lies outside 0..num_classes-1."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path}: expected labels in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}; "
            "the file is corrupt or belongs to another data set: delete it and fetch it again with --data.download true"
        )
    return labels


def _load_cifar(name: str, root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    spec = DATASETS[name]
    label_key, num_classes = spec.files.label_key, spec.num_classes
    files = data_files(name, root, train)
    if download:
        from torchvision import datasets

        getattr(datasets, spec.files.torchvision)(str(root), train=train, download=True)
    _require_files(name, root, files)
    images, labels = [], []
    for file in files:
        batch = _read_cifar_batch(file)
        if "data" not in batch or label_key not in batch:
            raise DataError(
                f"{file}: a CIFAR batch needs the keys 'data' and {label_key!r}, found {sorted(map(str, batch))}",
                f"delete {file} and fetch the data set again (--data.download true)",
            )
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{file}: expected 'data' of shape (N, 3072), found {data.shape}")
        file_labels = _check_labels(file, batch[label_key], num_classes)
        if len(file_labels) != len(data):
            raise DataError(f"{file}: {len(file_labels)} labels for {len(data)} images; delete it and fetch it again")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(file_labels)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR's python batches contain: dicts, lists, bytes and numpy arrays."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a CIFAR batch file")
        return super().find_class(module, name)


def _read_cifar_batch(file: Path) -> dict[str, object]:
    try:
        with open(file, "rb") as handle:
            batch = _CifarUnpickler(handle, encoding="latin1").load()
    except pickle.UnpicklingError as error:
        raise UntrustedInput(f"{file}: {error}", f"delete {file} and fetch the data set again") from None
    except (EOFError, OSError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DataError(
            f"{file}: not a readable CIFAR batch ({type(error).__name__}: {error})",
            f"delete {file} and fetch the data set again (--data.download true)",
        ) from None
    if not isinstance(batch, dict):
        raise DataError(f"{file}: expected a pickled dict (CIFAR python format), found {type(batch).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _require_files(name: str, root: Path, files: list[Path]) -> None:
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise MissingFile(
            f"data set {name!r} not found under {root.resolve()}: missing {', '.join(missing)}. "
            "Point the data root (train.py: --data.root, the corruption generator: --root) at the folder that holds "
            "it, or fetch it with train.py's --data.download true."
        )
