"""Corrupted test sets read as published and memory-mapped: CIFAR-10-C, CIFAR-100-C, MNIST-C, and sets written by
`lit_dendrite.data.corrupt` in the CIFAR-10-C layout; one test dataloader per (corruption, severity).

On-disk layouts:
- CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich 2019): `<root>/CIFAR-10-C/<corruption>.npy`, uint8
  (5k, 32, 32, 3), the k test images at severities 1..5 in blocks of k (k = 10,000 in the release), and one
  `labels.npy` (5k,) shared by all corruptions.
- MNIST-C (Mu & Gilmer 2019): `<root>/mnist_c/<corruption>/test_{images,labels}.npy`, images (N, 28, 28, 1) holding
  0..255 values (uint8 or float), one severity per corruption, numbered 1 here.
- generated: the CIFAR-10-C layout in one directory plus `metadata.json` that lists its corruptions, image shape and
  images per severity.
"""

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lit_dendrite.data.datasets import DATASETS, dataset_spec
from lit_dendrite.errors import DataError, MissingFile

CIFAR_C_BENCHMARK = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
CIFAR_C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
MNIST_C_CORRUPTIONS = (
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "shear",
    "scale",
    "rotate",
    "brightness",
    "translate",
    "stripe",
    "fog",
    "spatter",
    "dotted_line",
    "zigzag",
    "canny_edges",
)
MNIST_C_IDENTITY = "identity"
SEVERITIES = (1, 2, 3, 4, 5)
KINDS = ("cifar10_c", "cifar100_c", "mnist_c", "generated")
METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.npy"
METADATA_KEYS = ("dataset", "corruptions", "severities", "images_per_severity", "image_shape", "num_classes")

_CIFAR_C_DIRS = {"cifar10_c": ("CIFAR-10-C", 10), "cifar100_c": ("CIFAR-100-C", 100)}
RELEASED_FROM = {"cifar10_c": "cifar10", "cifar100_c": "cifar100", "mnist_c": "mnist"}
"""The clean data set whose test images each released corrupted set was made from."""


@dataclass(frozen=True)
class Release:
    """Where a released corrupted set is published: its archive (which unpacks to the set's folder) and the archive's
    md5 as its Zenodo record lists it."""

    url: str
    md5: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def record(self) -> str:
        return self.url.split("/files/", 1)[0]


RELEASES = {
    "cifar10_c": Release("https://zenodo.org/records/2535967/files/CIFAR-10-C.tar", "56bf5dcef84df0e2308c6dcbcbbd8499"),
    "cifar100_c": Release(
        "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar", "11f0ed0f1191edbf9fa23466ae6021d3"
    ),
    "mnist_c": Release("https://zenodo.org/records/3239543/files/mnist_c.zip", "4b34b33045869ee6d424616cd3a65da3"),
}
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class CorruptedSource:
    """One kind of corrupted set on disk: where it lies, which corruptions and severities it holds."""

    kind: str
    directory: Path
    corruptions: tuple[str, ...]
    default_corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    image_shape: tuple[int, int, int]
    num_classes: int
    images_per_severity: int | None = None
    made_from: str | None = None

    def check_made_from(self, dataset: str) -> None:
        """Raise, naming both and the fix, unless this set was made from the test images of ``dataset`` (a set
        generated from an image folder must at least match its image shape and classes)."""
        spec = dataset_spec(dataset)
        channels, height, width = spec.in_shape
        same_images = self.image_shape == (height, width, channels) and self.num_classes == spec.num_classes
        if self.made_from == dataset or (self.made_from not in DATASETS and same_images):
            return
        released = [kind for kind, source in RELEASED_FROM.items() if source == dataset]
        fix = (
            f"use --corruptions {released[0]}"
            if released
            else f"generate one with `python -m lit_dendrite.data.corrupt --dataset {dataset} --out DIR` and use "
            "--corruptions generated:DIR"
        )
        raise DataError(
            f"{self.directory} ({self.kind}) was made from {self.made_from!r}: images {self.image_shape}, "
            f"{self.num_classes} classes; the run was trained on {dataset!r}: images {(height, width, channels)}, "
            f"{spec.num_classes} classes. Evaluate a run on a corrupted set of its own data set: {fix}"
        )

    def files(self, corruption: str) -> tuple[Path, Path]:
        """The (images, labels) .npy paths of one corruption."""
        if self.kind == "mnist_c":
            return self.directory / corruption / "test_images.npy", self.directory / corruption / "test_labels.npy"
        return self.directory / f"{corruption}.npy", self.directory / LABELS_FILE


def read_metadata(directory: str | Path) -> dict:
    """The metadata of a set written by `lit_dendrite.data.corrupt`, checked for the keys the reader needs."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise MissingFile(
            f"{path}: missing; {directory} is not a generated corrupted set. "
            f"Create one with `python -m lit_dendrite.data.corrupt --dataset NAME --root DIR --out {directory}`."
        )
    regenerate = f"regenerate the set: python -m lit_dendrite.data.corrupt --dataset NAME --out {directory}"
    try:
        metadata = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})", regenerate) from None
    if not isinstance(metadata, dict):
        raise DataError(f"{path}: holds {type(metadata).__name__}, not the set's metadata (a JSON object)", regenerate)
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise DataError(f"{path}: expected keys {list(METADATA_KEYS)}, missing {missing}; regenerate the set.")
    return metadata


def open_source(kind: str, root: str | Path) -> CorruptedSource:
    """Describe the corrupted set of `kind` under `root` (for "generated", `root` is the set's own directory)."""
    root = Path(root)
    if kind in _CIFAR_C_DIRS:
        name, num_classes = _CIFAR_C_DIRS[kind]
        source = CorruptedSource(
            kind,
            root / name,
            CIFAR_C_BENCHMARK + CIFAR_C_EXTRA,
            CIFAR_C_BENCHMARK,
            SEVERITIES,
            (32, 32, 3),
            num_classes,
        )
    elif kind == "mnist_c":
        corruptions = (MNIST_C_IDENTITY, *MNIST_C_CORRUPTIONS)
        shape = (28, 28, 1)
        source = CorruptedSource(kind, root / "mnist_c", corruptions, MNIST_C_CORRUPTIONS, (1,), shape, 10)
    elif kind == "generated":
        metadata = read_metadata(root)
        corruptions = tuple(metadata["corruptions"])
        return CorruptedSource(
            kind,
            root,
            corruptions,
            corruptions,
            tuple(metadata["severities"]),
            tuple(metadata["image_shape"]),
            int(metadata["num_classes"]),
            int(metadata["images_per_severity"]),
            made_from=metadata["dataset"],
        )
    else:
        raise DataError(f"unknown corrupted set kind {kind!r}; expected one of {list(KINDS)}")
    if not source.directory.is_dir():
        release = RELEASES[kind]
        raise MissingFile(
            f"{source.directory}: missing; download {release.filename} from {release.record} and extract it under "
            f"{root}",
            f"or run `python launch/sweep.py fetch-data {kind} --root {root}`, which checks its md5",
        )
    return replace(source, made_from=RELEASED_FROM[kind])


def parse_spec(spec: str, root: str | Path = "data") -> tuple[str, Path]:
    """Turn a command-line spec (`cifar10_c`, `cifar100_c`, `mnist_c` or `generated:DIR`) into (kind, root)."""
    kind, _, directory = spec.partition(":")
    if kind == "generated":
        if not directory:
            raise DataError(f"corruption spec {spec!r}: write generated:DIR with the generated set's directory")
        return kind, Path(directory)
    if directory or kind not in KINDS:
        raise DataError(
            f"unknown corruption spec {spec!r}; expected one of cifar10_c, cifar100_c, mnist_c, generated:DIR"
        )
    return kind, Path(root)


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise MissingFile(f"{path}: missing file; the corrupted set is incomplete (re-extract or regenerate it)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise DataError(f"{path}: not a readable .npy array ({error})") from error


def _check_images(path: Path, images: np.ndarray, source: CorruptedSource) -> None:
    allowed = [np.dtype(np.uint8), *_FLOAT_DTYPES] if source.kind == "mnist_c" else [np.dtype(np.uint8)]
    if images.dtype not in allowed:
        raise DataError(f"{path}: expected dtype {' or '.join(map(str, allowed))}, found {images.dtype}")
    if images.ndim != 4 or tuple(images.shape[1:]) != source.image_shape:
        raise DataError(f"{path}: expected shape (N, {', '.join(map(str, source.image_shape))}), found {images.shape}")
    blocks = len(source.severities)
    if len(images) % blocks:
        raise DataError(f"{path}: expected {blocks} severity blocks of equal size, found {len(images)} images")
    if source.images_per_severity is not None and len(images) != blocks * source.images_per_severity:
        raise DataError(
            f"{path}: expected {blocks * source.images_per_severity} images "
            f"({blocks} severities x {source.images_per_severity} as {METADATA_FILE} says), found {len(images)}"
        )
    if images.dtype in _FLOAT_DTYPES:
        sample = np.asarray(images[:1000])
        low, high = float(sample.min()), float(sample.max())
        if low < 0 or high > 255 or high <= 1:
            hint = "; the file looks scaled to [0, 1], multiply it by 255" if low >= 0 and high <= 1 else ""
            raise DataError(f"{path}: expected pixel values on 0..255, found values in [{low:g}, {high:g}]{hint}")


def _check_labels(path: Path, labels: np.ndarray, num_images: int, images_path: Path, num_classes: int) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: expected integer labels of shape (N,), found {labels.dtype} {labels.shape}")
    if len(labels) != num_images:
        raise DataError(f"{path}: expected {num_images} labels, one per image of {images_path}, found {len(labels)}")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: expected labels in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    return labels


class CorruptedImages(Dataset):
    """One (corruption, severity) block of a memory-mapped .npy file as (float32 CHW image in [0,1], label) pairs."""

    def __init__(self, images_path: Path, start: int, labels: np.ndarray, name: str = "") -> None:
        self.images_path, self.start, self.labels, self.name = Path(images_path), start, labels, name
        self._images: np.ndarray | None = None

    def _array(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return self._images

    def __len__(self) -> int:
        return len(self.labels)

    def _read(self, rows: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(np.ascontiguousarray(self._array()[rows + self.start]))
        return pixels.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images of {self.name or self.images_path}")
        index %= len(self)
        return self._read(np.array([index]))[0], int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """A whole batch in one read of the memory map (the DataLoader's fast path)."""
        rows = np.asarray(indices, dtype=np.int64) % len(self)
        return list(zip(self._read(rows).unbind(0), self.labels[rows].tolist()))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}


def load_corrupted(
    source: CorruptedSource, corruption: str, severities: Sequence[int] | None = None, n: int | None = None
) -> dict[int, CorruptedImages]:
    """Validate one corruption's files and return {severity: dataset}, each with the first `n` images (all if None)."""
    _check_names(source, [corruption])
    severities = tuple(source.severities if severities is None else severities)
    _check_severities(source, severities)
    images_path, labels_path = source.files(corruption)
    images = _load_npy(images_path)
    _check_images(images_path, images, source)
    labels = _check_labels(labels_path, _load_npy(labels_path), len(images), images_path, source.num_classes)
    block = len(images) // len(source.severities)
    count = block if n is None else min(n, block)
    datasets = {}
    for severity in severities:
        start = source.severities.index(severity) * block
        datasets[severity] = CorruptedImages(
            images_path, start, labels[start : start + count], f"{corruption}/{severity}"
        )
    return datasets


def _check_names(source: CorruptedSource, corruptions: Sequence[str]) -> None:
    unknown = [c for c in corruptions if c not in source.corruptions]
    if unknown or not corruptions:
        raise DataError(f"unknown corruptions {unknown} for {source.kind}; valid: {', '.join(source.corruptions)}")


def _check_severities(source: CorruptedSource, severities: Sequence[int]) -> None:
    unknown = [s for s in severities if s not in source.severities]
    if unknown or not severities:
        raise DataError(f"severities {list(severities)} not in {source.kind}; valid: {list(source.severities)}")


class CorruptedDataModule(L.LightningDataModule):
    """One test dataloader per (corruption, severity), named `names[i]` = "corruption/severity", so a single
    `trainer.test` evaluates them all; `accuracy_table` turns its results into {corruption: {severity: acc}}."""

    def __init__(
        self,
        kind: str,
        root: str | Path = "data",
        corruptions: list[str] | None = None,
        severities: list[int] | None = None,
        batch_size: int = 500,
        n: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0 or (n is not None and n < 1):
            raise DataError(f"need batch_size >= 1, num_workers >= 0, n >= 1; got {batch_size}, {num_workers}, {n}")
        self.source = open_source(kind, root)
        self.corruptions = tuple(self.source.default_corruptions if corruptions is None else corruptions)
        _check_names(self.source, self.corruptions)
        self.severities = tuple(self.source.severities if severities is None else severities)
        _check_severities(self.source, self.severities)
        self.batch_size, self.n, self.num_workers = batch_size, n, num_workers
        self.names = [f"{c}/{s}" for c in self.corruptions for s in self.severities]
        self.datasets: list[CorruptedImages] | None = None

    @classmethod
    def from_spec(cls, spec: str, root: str | Path = "data", **kwargs) -> "CorruptedDataModule":
        """Build from a command-line spec: `cifar10_c`, `cifar100_c`, `mnist_c` or `generated:DIR`."""
        kind, root = parse_spec(spec, root)
        return cls(kind, root, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        """Validate every file before any evaluation starts."""
        if self.datasets is None:
            missing = [str(f) for c in self.corruptions for f in self.source.files(c) if not f.is_file()]
            if missing:
                raise MissingFile(
                    f"{len(missing)} missing files of {self.source.kind}: {', '.join(dict.fromkeys(missing))}; "
                    "the set is incomplete (re-extract or regenerate it) or choose other corruptions"
                )
            per_corruption = [load_corrupted(self.source, c, self.severities, self.n) for c in self.corruptions]
            self.datasets = [sets[s] for sets in per_corruption for s in self.severities]

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per name in `self.names`, in that order."""
        self.setup("test")
        return [
            DataLoader(d, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
            for d in self.datasets
        ]


def accuracy_table(
    results: Sequence[Mapping[str, float]], names: Sequence[str], metric: str = "test/acc"
) -> dict[str, dict[int, float]]:
    """Turn `trainer.test` results (one dict per dataloader, in `names` order) into {corruption: {severity: value}}."""
    if len(results) != len(names):
        raise DataError(f"got {len(results)} result dicts for {len(names)} dataloaders; pass the module's `.names`")
    table: dict[str, dict[int, float]] = {}
    for index, (result, name) in enumerate(zip(results, names)):
        keys = (f"{metric}/dataloader_idx_{index}", metric)
        key = next((k for k in keys if k in result), None)
        if key is None:
            raise KeyError(f"results of dataloader {index} ({name}) lack {metric!r}; found {sorted(result)}")
        corruption, _, severity = name.rpartition("/")
        value = float(result[key])
        if not math.isfinite(value):
            raise DataError(f"{metric} of {name} is {value}")
        table.setdefault(corruption, {})[int(severity)] = value
    return table
