"""Random augmentation that a resumed run repeats exactly: each training sample's augmentation draws its randomness
from a generator seeded with (seed, epoch, index), not from the process's running random state.

With the running state, a run resumed from a checkpoint draws other crops and flips than the uninterrupted run
did: the DataLoader fetches ahead of the step that is saved (Accelerate reads one batch ahead), so the random state
saved with a checkpoint is not the one the next batch was augmented with. Seeded per sample, the augmentation of
sample ``index`` in epoch ``epoch`` is the same whenever and in whichever process (DDP rank, DataLoader worker) it is
computed, so resuming at any checkpoint (epoch boundaries included) gives the uninterrupted run's weights bit for
bit on CPU (the rest of the step is deterministic there; on GPU, nondeterministic kernels may still differ).

The epoch is set by `SampleEpochCallback` at the start of each epoch (Trainer's epoch, also for the epoch a run
resumes in; Accelerate's DataLoader forwards ``set_epoch`` to its dataset only sometimes, and not after skipping the
batches a resumed epoch already trained); it is kept in shared memory, so persistent DataLoader workers see it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

__all__ = ["SeededAugmentation", "SampleEpochCallback", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed mixed from (seed, epoch, index) (numpy's SeedSequence: nearby triples give unrelated seeds)."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, epoch, index]).generate_state(2)
    return (int(words[0]) << 31 ^ int(words[1])) & 0x7FFFFFFFFFFFFFFF


class SeededAugmentation(torch.utils.data.Dataset):
    """`dataset` (rows transformed on access) whose row ``index`` is computed with torch's random generator seeded by
    ``sample_seed(seed, epoch, index)``; the process's own random state is left as it was."""

    def __init__(self, dataset: Any, seed: int):
        self.dataset = dataset
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, int(index)))
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:  # column_names, features, ... of the wrapped dataset
        if name.startswith("_") or name in ("dataset", "seed"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class SampleEpochCallback(TrainerCallback):
    """Sets a `SeededAugmentation`'s epoch from Trainer's state at the start of every epoch (the state's epoch is
    whole at an epoch's start, and a fraction past the resumed epoch's number when resuming inside it)."""

    def __init__(self, dataset: SeededAugmentation):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor((state.epoch or 0) + 1e-9))
