"""Deterministic, recorded data order for the training DataLoader.

Two kinds of order, both recorded per step (the dataset indices of each batch):

- **seeded** (DataLoaders built from ``batch_size``/``shuffle``/``drop_last``): the strategy
  rebuilds the loader around :class:`VerifiableSampler`, whose order in epoch ``e`` is a pure
  function of ``(seed, e)`` computed from the device-independent stream, so a replay draws the
  same batches by itself.
- **recorded** (a custom ``sampler`` or ``batch_sampler``, e.g. a length-bucketing sampler of a
  language model, or sampling with replacement): the user's sampler keeps its own order; a
  :class:`RecordingBatchSampler` around it notes the indices of every batch it yields, and the
  replay feeds exactly those indices from the step records (:class:`ReplayBatchSampler`),
  checking them against the replay's own sampler where that sampler is deterministic.
"""

from __future__ import annotations

import copy
import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
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
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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
    """Which dataset indices training batch ``batch_idx`` of an epoch holds (seeded order)."""

    kind = "seeded"

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

    def sampler_indices(self, epoch: int, batch_idx: int) -> list[int] | None:
        """What the run's own sampler yields there (``None``: no independent check)."""
        return None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next pass over ``epoch`` starts after its first ``batches_done`` batches."""
        self.sampler.resume_at(epoch, batches_done * self.batch_size)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "length": self.sampler.length,
            "shuffle": self.sampler.shuffle,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
        }


def _as_indices(batch: object) -> list[int]:
    items = [batch] if isinstance(batch, (int, np.integer)) else batch
    try:
        return [int(i) for i in items]  # type: ignore[union-attr]
    except (TypeError, ValueError) as err:
        raise UnsupportedDataLoaderError(
            f"the training DataLoader's sampler yields {type(batch).__name__} batches; "
            "VerifiableStrategy records the dataset indices of each batch and needs integer "
            "indices (or lists of them). HINT: make the (batch) sampler yield dataset indices."
        ) from err


class RecordingBatchSampler(Sampler[list[int]]):
    """The user's (batch) sampler, unchanged, noting the indices of each batch it yields.

    Batches are consumed in the order they are yielded (also with worker processes and Lightning's
    prefetching), so the step of each training batch takes the oldest noted entry.
    """

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner
        self.queue: deque[list[int]] = deque()
        self._skip = 0

    def __iter__(self) -> Iterator:
        self.queue.clear()  # a new pass: what the last one prefetched was never trained on
        skip, self._skip = self._skip, 0
        for k, batch in enumerate(self.inner):
            if k < skip:
                continue
            self.queue.append(_as_indices(batch))
            yield batch

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    # Lightning calls ``set_epoch`` on ``loader.sampler`` and ``loader.batch_sampler.sampler``:
    # the wrapper passes those calls on to the objects they would have reached without it.
    @property
    def sampler(self) -> object:
        return getattr(self.inner, "sampler", None)

    def set_epoch(self, epoch: int) -> None:
        if callable(getattr(self.inner, "set_epoch", None)):
            self.inner.set_epoch(epoch)


class RecordedOrder:
    """The order of a custom sampler: the indices its batches held, noted as they are yielded."""

    kind = "recorded"

    def __init__(self, sampler: RecordingBatchSampler, loader: DataLoader) -> None:
        """``loader``: the user's DataLoader (what the manifest describes)."""
        self.sampler = sampler
        self.batch_size: int | None = loader.batch_size  # None with a custom batch_sampler
        self.description: dict[str, object] = {
            "kind": self.kind,
            "sampler": type(loader.sampler).__qualname__,
            "batch_sampler": type(loader.batch_sampler).__qualname__ if loader.batch_sampler is not None else None,
            "length": len(loader.dataset),  # type: ignore[arg-type]
            "batch_size": loader.batch_size,
            "drop_last": loader.drop_last,
        }

    def indices(self, epoch: int, batch_idx: int) -> list[int] | None:
        return self.sampler.queue.popleft() if self.sampler.queue else None

    def sampler_indices(self, epoch: int, batch_idx: int) -> list[int] | None:
        return None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        # Lightning resumes mid-epoch with a fresh iterator: skip what the epoch already trained on.
        self.sampler._skip = batches_done

    def to_json(self) -> dict[str, object]:
        return dict(self.description)


class _GlobalRng:
    """Save and restore the global RNGs around a probe of the user's sampler."""

    def __enter__(self) -> None:
        self.states = (torch.get_rng_state(), np.random.get_state(), random.getstate())

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self.states[0])
        np.random.set_state(self.states[1])
        random.setstate(self.states[2])


def _first_batches(loader: DataLoader, sampler: Sampler, epoch: int, count: int) -> list[list[int]]:
    """The first batches ``sampler`` yields in ``epoch``, told the epoch the way Lightning does."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    _set_sampler_epoch(loader, epoch)
    out: list[list[int]] = []
    for batch in sampler:
        if len(out) >= count:
            break
        out.append(_as_indices(batch))
    return out


class ReplayBatchSampler(Sampler[list[int]]):
    """Yields the committed indices of the replayed steps, epoch by epoch.

    After the committed batches of an epoch it repeats the last one until the epoch has as many
    batches as the replay's own sampler (never trained on: the replay stops first), so Lightning
    sees the same epoch length as the trainer did. ``committed`` maps an epoch to its batches by
    position; ``inner`` is the replay's own (batch) sampler of ``loader``; ``epoch`` says which
    epoch the trainer is in.
    """

    def __init__(self, committed: dict[int, list[list[int]]], inner: Sampler, loader: DataLoader,
                 epoch: Callable[[], int]) -> None:
        self.committed = committed
        self.inner = inner
        self.loader = loader
        self.epoch = epoch
        self.queue: deque[list[int]] = deque()
        self._skip = 0
        self.deterministic = self._probe()
        self._own: dict[int, list[list[int]]] = {}

    def _probe(self) -> bool:
        """Does the replay's own sampler yield the same batches twice for the same epoch?"""
        if not self.committed:
            return False
        epoch = min(self.committed)
        with _GlobalRng():
            try:
                first = _first_batches(self.loader, self.inner, epoch, 4)
                return bool(first) and first == _first_batches(self.loader, self.inner, epoch, 4)
            except UnsupportedDataLoaderError:
                return False

    def own(self, epoch: int, position: int) -> list[int] | None:
        """The replay sampler's own batch there, when it is deterministic (else ``None``)."""
        if not self.deterministic:
            return None
        if epoch not in self._own:
            count = len(self.committed.get(epoch, []))
            with _GlobalRng():
                self._own[epoch] = _first_batches(self.loader, self.inner, epoch, count)
        batches = self._own[epoch]
        return batches[position] if position < len(batches) else None

    def __iter__(self) -> Iterator[list[int]]:
        self.queue.clear()
        skip, self._skip = self._skip, 0
        batches = self.committed.get(self.epoch(), [])[skip:]
        try:
            total: int | None = len(self.inner) - skip  # type: ignore[arg-type]
        except TypeError:
            total = None
        k = 0
        while total is None or k < total:
            batch = batches[k] if k < len(batches) else (batches[-1] if batches else None)
            if batch is None:
                return
            self.queue.append(batch)
            yield batch
            k += 1

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]


class ReplayedOrder(RecordedOrder):
    """The replay's side of a recorded order: feeds the committed indices, checks the sampler."""

    def __init__(self, sampler: ReplayBatchSampler, loader: DataLoader) -> None:
        super().__init__(sampler, loader)  # type: ignore[arg-type]
        self.replay_sampler = sampler

    def sampler_indices(self, epoch: int, batch_idx: int) -> list[int] | None:
        return self.replay_sampler.own(epoch, batch_idx)


def _with_index_sampler(loader: DataLoader, sampler: Sampler) -> DataLoader:
    """A copy of ``loader`` drawing its batches from ``sampler`` (the user's object is untouched)."""
    new = copy.copy(loader)
    attribute = "batch_sampler" if loader.batch_sampler is not None else "sampler"
    object.__setattr__(new, attribute, sampler)
    object.__setattr__(new, "_iterator", None)
    return new


def _committed_batches(records: Sequence[object]) -> dict[int, list[list[int]]]:
    by_epoch: dict[int, list[list[int]]] = {}
    for record in records:
        by_epoch.setdefault(record.epoch, []).append(list(record.batch_indices or []))  # type: ignore[attr-defined]
    return by_epoch


def make_deterministic(
    dataloader: object, seed: int, replay_records: Sequence[object] | None = None,
    epoch: Callable[[], int] = lambda: 0,
) -> tuple[object, BatchOrder | RecordedOrder | None]:
    """Rebuild ``dataloader`` so that its order is fixed and recorded; returns it and its order.

    Iterable-style datasets are returned unchanged (their order is the dataset's own and each
    batch is still committed by content digest); the order is then ``None``. With
    ``replay_records`` (the committed steps, in order) a custom sampler's loader is rebuilt to
    yield the committed indices instead, those of the epoch ``epoch()`` names.
    """
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    if not isinstance(dataloader, DataLoader):
        return dataloader, None
    if dataloader._dataset_kind != 0:  # iterable-style dataset
        return dataloader, None
    batch_sampler = dataloader.batch_sampler
    sampler = batch_sampler.sampler if type(batch_sampler) is BatchSampler else None
    if isinstance(sampler, VerifiableSampler):
        return dataloader, BatchOrder(sampler, batch_sampler.batch_size, batch_sampler.drop_last)
    plain_shuffle = type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None
    if not plain_shuffle and type(sampler) is not SequentialSampler:
        inner = batch_sampler if batch_sampler is not None else dataloader.sampler
        if replay_records is not None:
            replayed = ReplayBatchSampler(_committed_batches(replay_records), inner, dataloader, epoch)
            return _with_index_sampler(dataloader, replayed), ReplayedOrder(replayed, dataloader)
        recording = RecordingBatchSampler(inner)
        return _with_index_sampler(dataloader, recording), RecordedOrder(recording, dataloader)
    new_sampler = VerifiableSampler(len(dataloader.dataset), plain_shuffle, seed)
    if dataloader.batch_size is None:  # DataLoader(batch_sampler=BatchSampler(...)) given as such:
        # Lightning's rebuild would drop it (and yield single samples); keep its batching
        batches = BatchSampler(new_sampler, batch_sampler.batch_size, batch_sampler.drop_last)
        return _with_index_sampler(dataloader, batches), BatchOrder(new_sampler, batches.batch_size,
                                                                    batches.drop_last)
    new_loader = _update_dataloader(dataloader, new_sampler, mode=RunningStage.TRAINING)
    new_batch_sampler = new_loader.batch_sampler
    return new_loader, BatchOrder(new_sampler, new_batch_sampler.batch_size, new_batch_sampler.drop_last)


# --- data-parallel shards (VerifiableDDPStrategy) --------------------------------------------
class ShardedOrder:
    """The seeded order of a sharded run: step ``t`` of an epoch is ``shards`` shards of
    ``shard_size`` samples, consecutive in the epoch's order.

    The global batch of step ``t`` is ``order[t·S·b : (t+1)·S·b]`` (``S`` shards of ``b``), shard
    ``k`` its ``k``-th slice of ``b``; an epoch has ``length // (S·b)`` steps (an incomplete
    global batch is dropped, so every shard has ``b`` samples). A process computing shards
    ``first .. first + count − 1`` loads their indices, concatenated, as its batch. The records
    hold the global batch in shard order, whatever the number of processes.
    """

    kind = "seeded"

    def __init__(self, sampler: VerifiableSampler, shard_size: int, shards: int, first: int,
                 count: int) -> None:
        self.sampler = sampler
        self.batch_size = shard_size
        self.shards = shards
        self.first, self.count = first, count
        self.steps_per_epoch = sampler.length // (shards * shard_size)
        self._cache: tuple[int, np.ndarray] | None = None
        self._resume: tuple[int, int] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.sampler.order(epoch))
        return self._cache[1]

    def shard_indices(self, epoch: int, batch_idx: int, shard: int) -> list[int]:
        """Dataset indices of shard ``shard`` of step ``batch_idx`` of ``epoch``."""
        b = self.batch_size
        start = (batch_idx * self.shards + shard) * b
        return self._order(epoch)[start : start + b].tolist()

    def indices(self, epoch: int, batch_idx: int) -> list[int]:
        """The global batch (every shard, in shard order): what the seeded order prescribes."""
        b, s = self.batch_size, self.shards
        return self._order(epoch)[batch_idx * s * b : (batch_idx + 1) * s * b].tolist()

    def local_indices(self, epoch: int, batch_idx: int) -> list[int]:
        """What this process loads: its shards' indices, concatenated in shard order."""
        return [i for k in range(self.first, self.first + self.count)
                for i in self.shard_indices(epoch, batch_idx, k)]

    def sampler_indices(self, epoch: int, batch_idx: int) -> list[int] | None:
        return None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next pass over ``epoch`` starts after its first ``batches_done`` steps."""
        self._resume = (epoch, batches_done)

    @property
    def resume_point(self) -> tuple[int, int] | None:
        """``(epoch, batches_done)`` of a pending :meth:`resume_at` (what the other ranks need)."""
        return self._resume

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "length": self.sampler.length, "shuffle": self.sampler.shuffle,
                "batch_size": self.batch_size, "drop_last": True}


class ShardedBatchSampler(Sampler[list[int]]):
    """Yields this process's local shards of each step of the epoch (:class:`ShardedOrder`)."""

    def __init__(self, order: ShardedOrder) -> None:
        self.order = order

    @property
    def sampler(self) -> VerifiableSampler:
        return self.order.sampler

    def set_epoch(self, epoch: int) -> None:
        self.order.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.order.sampler.epoch
        start = 0
        if self.order._resume is not None and self.order._resume[0] == epoch:
            start, self.order._resume = self.order._resume[1], None
        for t in range(start, self.order.steps_per_epoch):
            yield self.order.local_indices(epoch, t)

    def __len__(self) -> int:
        return self.order.steps_per_epoch


def make_sharded(dataloader: object, seed: int, shards: int, first: int,
                 count: int) -> tuple[DataLoader, ShardedOrder]:
    """Rebuild a training ``dataloader`` (``batch_size`` = one shard) to load this process's shards.

    Accepts loaders built from ``batch_size``/``shuffle`` (also after Lightning put a
    ``DistributedSampler`` in); a custom sampler or an iterable dataset has no shardable seeded
    order: :class:`UnsupportedDataLoaderError`.
    """
    from torch.utils.data import DistributedSampler

    hint = ("HINT: build the training DataLoader from a map-style dataset with batch_size= and "
            "shuffle= (batch_size is one shard's size).")
    if not isinstance(dataloader, DataLoader) or dataloader._dataset_kind != 0:
        raise UnsupportedDataLoaderError(
            "VerifiableDDPStrategy shards the seeded order of a map-style dataset; this training "
            f"data is {type(dataloader).__name__} with an iterable dataset or no DataLoader. {hint}")
    batch_sampler = dataloader.batch_sampler
    sampler = batch_sampler.sampler if type(batch_sampler) is BatchSampler else None
    if type(sampler) is DistributedSampler:
        shuffle = bool(sampler.shuffle)
    elif type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None:
        shuffle = True
    elif type(sampler) is SequentialSampler:
        shuffle = False
    else:
        raise UnsupportedDataLoaderError(
            f"VerifiableDDPStrategy cannot shard the order of a {type(sampler or batch_sampler).__name__}: "
            f"a sharded run's order is the seeded order, split into shards. {hint}")
    shard_size = batch_sampler.batch_size
    length = len(dataloader.dataset)  # type: ignore[arg-type]
    if length < shards * shard_size:
        raise UnsupportedDataLoaderError(
            f"the dataset has {length} samples, fewer than one step of {shards} shards of "
            f"{shard_size}: no step would run. HINT: use fewer shards or a smaller batch_size.")
    order = ShardedOrder(VerifiableSampler(length, shuffle, seed), shard_size, shards, first, count)
    return _with_index_sampler(dataloader, ShardedBatchSampler(order)), order
