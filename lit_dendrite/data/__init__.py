"""Data: clean sets (digits embedded, torchvision formats), released and generated corrupted sets."""

from lit_dendrite.data.datamodule import ImageArrayDataset, ImageDataModule
from lit_dendrite.data.datasets import DATASETS, DatasetSpec, dataset_spec, load_arrays

__all__ = ["DATASETS", "DatasetSpec", "ImageArrayDataset", "ImageDataModule", "dataset_spec", "load_arrays"]
