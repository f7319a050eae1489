"""Shuffling that a resumed run repeats exactly: each epoch's order is a function of a seed and the epoch only."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochShuffle(Sampler[int]):
    """A random order of ``size`` indices drawn from ``seed`` and the epoch (set by Lightning's ``set_epoch``), not
    from the global random state, so that it does not depend on what consumed random numbers before (the same
    order whether or not the process trained the epochs before). ``seed`` defaults to ``torch.initial_seed()``,
    the seed the session was started from."""

    def __init__(self, size: int, seed: int | None = None) -> None:
        self.size = size
        self.seed = torch.initial_seed() if seed is None else seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        yield from torch.randperm(self.size, generator=torch.Generator().manual_seed(seed)).tolist()
