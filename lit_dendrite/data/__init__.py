"""Data: clean sets (digits embedded, torchvision formats), released and generated corrupted sets, and fetching
them with their published checksums."""

from typing import Any

from lit_dendrite.data.datasets import DATASETS, DatasetSpec, dataset_spec, load_arrays

__all__ = ["DATASETS", "DatasetSpec", "ImageArrayDataset", "ImageDataModule", "dataset_spec", "load_arrays"]


def __getattr__(name: str) -> Any:
    # The data module needs Lightning: imported on first use, so that the plain-torch nets can read the data set
    # table (their defaults) without it.
    if name in ("ImageArrayDataset", "ImageDataModule"):
        from lit_dendrite.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
