"""Deterministic, recorded data order for the training DataLoader.

Whatever sampler the user configured (``shuffle=True`` or not), the strategy rebuilds the training
DataLoader around :class:`VerifiableSampler`: its order in epoch ``e`` is a pure function of
``(seed, e)`` computed from the device-independent stream, so a replay draws the same batches and
each step can record the dataset indices it consumed.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

from ..rounding.rng import random_bits, stream_key

_DATA_ORDER_STEP = -1  # stream keys with step -1 are reserved for the data order


class UnsupportedDataLoaderError(ValueError):
    """A training DataLoader whose order the strategy cannot make deterministic."""


class VerifiableSampler(Sampler[int]):
    """Shuffled (or sequential) order that depends only on ``seed`` and the epoch."""

    def __init__(self, length: int, shuffle: bool, seed: int) -> None:
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.epoch_offset = 0  # a replay that starts mid-run counts Lightning's epochs from here
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch + self.epoch_offset

    def resume_at(self, epoch: int, skip: int) -> None:
        """Fast-forward: the next pass over ``epoch`` starts after its first ``skip`` samples.

        Lightning resumes mid-epoch with the batch counter restored but a fresh iterator; without
        this the resumed steps would see the epoch's first batches again.
        """
        self._resume = (epoch, skip)

    def order(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return np.arange(self.length, dtype=np.int64)
        keys = random_bits(stream_key(self.seed, _DATA_ORDER_STEP, epoch), self.length)
        return np.argsort(keys, kind="stable").astype(np.int64)

    def __iter__(self):
        order = self.order()
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] :]
            self._resume = None
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.length


class BatchOrder:
    """Which dataset indices training batch ``batch_idx`` of an epoch holds."""

    def __init__(self, sampler: VerifiableSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self._cache: tuple[int, np.ndarray] | None = None

    def indices(self, epoch: int, batch_idx: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.sampler.order(epoch))
        order = self._cache[1]
        return order[batch_idx * self.batch_size : (batch_idx + 1) * self.batch_size].tolist()

    def to_json(self) -> dict[str, object]:
        return {
            "length": self.sampler.length,
            "shuffle": self.sampler.shuffle,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
        }


def make_deterministic(dataloader: object, seed: int) -> tuple[object, BatchOrder | None]:
    """Rebuild ``dataloader`` with a :class:`VerifiableSampler`; returns it and its batch order.

    Iterable-style datasets are returned unchanged (their order is the dataset's own and each
    batch is still committed by content digest); ``batch_order`` is then ``None``.
    """
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    if not isinstance(dataloader, DataLoader):
        return dataloader, None
    if dataloader._dataset_kind != 0:  # iterable-style dataset
        return dataloader, None
    batch_sampler = dataloader.batch_sampler
    if batch_sampler is None or type(batch_sampler) is not BatchSampler:
        raise UnsupportedDataLoaderError(
            f"the training DataLoader uses batch_sampler={type(batch_sampler).__name__}; "
            "VerifiableStrategy needs to fix and record the data order and supports DataLoaders "
            "built from batch_size/shuffle/drop_last. HINT: use DataLoader(dataset, batch_size=..., "
            "shuffle=...) instead of a custom batch sampler."
        )
    sampler = batch_sampler.sampler
    if isinstance(sampler, VerifiableSampler):
        return dataloader, BatchOrder(sampler, batch_sampler.batch_size, batch_sampler.drop_last)
    if isinstance(sampler, RandomSampler):
        if sampler.replacement or sampler._num_samples is not None:
            raise UnsupportedDataLoaderError(
                "RandomSampler(replacement=True or num_samples=...) is not supported; use "
                "shuffle=True without replacement."
            )
        shuffle = True
    elif isinstance(sampler, SequentialSampler):
        shuffle = False
    else:
        raise UnsupportedDataLoaderError(
            f"the training DataLoader uses sampler={type(sampler).__name__}, whose order "
            "VerifiableStrategy cannot reproduce on another machine. HINT: use shuffle=True or "
            "shuffle=False; the strategy then draws a seeded, recorded order."
        )
    new_sampler = VerifiableSampler(len(dataloader.dataset), shuffle, seed)
    new_loader = _update_dataloader(dataloader, new_sampler, mode=RunningStage.TRAINING)
    new_batch_sampler = new_loader.batch_sampler
    return new_loader, BatchOrder(new_sampler, new_batch_sampler.batch_size, new_batch_sampler.drop_last)
