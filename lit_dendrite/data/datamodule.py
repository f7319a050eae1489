"""LightningDataModule for the clean image sets: pixels in [0,1], fixed-by-seed validation split, optional training
augmentation."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lit_dendrite.data.datasets import check_available, dataset_spec, load_arrays
from lit_dendrite.data.shuffle import EpochShuffle
from lit_dendrite.errors import ConfigError


class ImageArrayDataset(Dataset):
    """uint8 images (N, C, H, W) and labels served as float pixels in [0,1], fetched a batch at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ConfigError(
                f"expected uint8 images (N, C, H, W) and N labels, got {images.dtype} {tuple(images.shape)} "
                f"and {len(labels)} labels"
            )
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float().div_(255), self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.images[index].float().div_(255), self.labels[index]


AUGMENTATIONS = ("cifar",)
"""``data.augment`` choices besides null (none, the default: a null key is also how runs recorded before the option
existed read). ``cifar``: the standard CIFAR training augmentation, a random crop of the image's size from the image
zero-padded by 4 pixels, then a random horizontal flip (torchvision transforms v2)."""


def augmentation(name: str | None, in_shape: tuple[int, int, int]) -> v2.Transform | None:
    """The training augmentation ``name`` for images of ``in_shape`` (None for None)."""
    if name is None:
        return None
    if name not in AUGMENTATIONS:
        raise ConfigError(f"data.augment must be null (none) or one of {list(AUGMENTATIONS)}, got {name!r}")
    return v2.Compose([v2.RandomCrop(list(in_shape[1:]), padding=4), v2.RandomHorizontalFlip()])


class AugmentedImages(Dataset):
    """A split served through a random augmentation of each image, drawn from a seed per image and epoch: items are
    the ``(index, seed)`` pairs of :class:`EpochShuffle` with ``sample_seeds``, so that an augmented epoch repeats
    exactly on resume (the global random state is left as it was)."""

    def __init__(self, base: ImageArrayDataset, transform: v2.Transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([item])
        return images[0], labels[0]

    def __getitems__(self, items: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor([i for i, _ in items])
        augmented = []
        with torch.random.fork_rng(devices=[]):
            for image, (_, seed) in zip(self.base.images[index], items):
                torch.default_generator.manual_seed(seed)  # torch.manual_seed also seeds every device: 20x slower
                augmented.append(self.transform(image))
        return torch.stack(augmented).float().div_(255), self.base.labels[index]


def _keep_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W, C) uint8 numpy arrays -> (N, C, H, W) uint8 and int64 tensors."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), torch.from_numpy(labels)


class ImageDataModule(L.LightningDataModule):
    """Train/val/test loaders of one clean data set (digits, mnist, fashion_mnist, cifar10, cifar100).

    The validation set is ``val_fraction`` of the training set (default: the paper's, MNIST 1/6 and
    CIFAR 1/5), drawn with ``split_seed`` so smaller copies of a set work too. ``augment`` (null, the default,
    or one of :data:`AUGMENTATIONS`) applies to the training split only.
    """

    def __init__(
        self,
        dataset: str = "digits",
        root: str = "data",
        download: bool = False,
        batch_size: int = 200,
        val_fraction: float | None = None,
        split_seed: int = 0,
        num_workers: int = 0,
        augment: str | None = None,
    ) -> None:
        super().__init__()
        self.spec = dataset_spec(dataset)
        self.dataset = dataset
        self.root = Path(root)
        self.download = download
        self.batch_size = batch_size
        self.val_fraction = self.spec.val_fraction if val_fraction is None else val_fraction
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.augment = augment
        self.transform = augmentation(augment, self.in_shape)
        self.splits: dict[str, ImageArrayDataset] = {}

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return self.spec.in_shape

    def check_available(self) -> None:
        """Load and check the data set now, before any training: raise with the file and the fix when it is missing
        (and ``download`` is off), truncated or malformed. The loaded splits are kept for training. A set still to be
        downloaded is fetched and checked by ``prepare_data`` and ``setup`` (Lightning runs the download once)."""
        try:
            check_available(self.dataset, self.root)
        except FileNotFoundError:
            if self.download:
                return
            raise
        self.setup()

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                load_arrays(self.dataset, self.root, train, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = to_tensors(*load_arrays(self.dataset, self.root, train=True))
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        n_val = round(self.val_fraction * len(labels))
        if n_val < 1 or n_val >= len(labels):
            raise ConfigError(f"val_fraction {self.val_fraction} leaves no train or no val images of {len(labels)}")
        val, train = order[:n_val], order[n_val:]
        self.splits["train"] = ImageArrayDataset(images[train], labels[train])
        self.splits["val"] = ImageArrayDataset(images[val], labels[val])
        self.splits["test"] = ImageArrayDataset(*to_tensors(*load_arrays(self.dataset, self.root, train=False)))
        found = tuple(self.splits["test"].images.shape[1:])
        if found != self.in_shape:
            raise ConfigError(
                f"data set {self.dataset!r} under {self.root} has images {found}, expected {self.in_shape}"
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset: Dataset = self.splits[split]
        augmented = split == "train" and self.transform is not None
        if augmented:
            dataset = AugmentedImages(self.splits[split], self.transform)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffle(len(dataset), sample_seeds=augmented) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=_keep_batch,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
