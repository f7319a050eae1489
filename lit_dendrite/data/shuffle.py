"""Shuffling that a resumed run repeats exactly: each epoch's order is a function of a seed and the epoch only."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochShuffle(Sampler[int | tuple[int, int]]):
    """A random order of ``size`` indices drawn from ``seed`` and the epoch (set by Lightning's ``set_epoch``), not
    from the global random state, so that it does not depend on what consumed random numbers before (the same
    order whether or not the process trained the epochs before). ``seed`` defaults to ``torch.initial_seed()``,
    the seed the session was started from.

    With ``sample_seeds``, yields ``(index, sample seed)`` pairs instead: the seed of a sample's random augmentation
    in this epoch, also a function of ``seed``, the epoch and the index only, so that augmentation repeats exactly
    on resume, in whichever process (data-loader worker) it runs. The order is the same either way.
    """

    def __init__(self, size: int, seed: int | None = None, sample_seeds: bool = False) -> None:
        self.size = size
        self.seed = torch.initial_seed() if seed is None else seed
        self.sample_seeds = sample_seeds
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(self.size, generator=generator)
        if not self.sample_seeds:
            yield from order.tolist()
            return
        seeds = torch.randint(2**62, (self.size,), generator=generator)  # by index, not by position in the order
        yield from zip(order.tolist(), seeds[order].tolist())
