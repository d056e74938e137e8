"""Verifiable data-parallel training: a DDP run whose every step is defined by its shards.

**The step.** A sharded run fixes ``shards`` (``S``, default: the world size) when it starts. Step
``t``'s global batch is ``S`` shards of ``batch_size`` samples, consecutive in the run's seeded
order (:class:`~lightning_zk.strategies.data.ShardedOrder`). Each shard's forward and backward
pass runs under the rounding mode (so its gradient lies on the committed grid), with its random
draws keyed by ``(seed, step, shard)``. The step's gradient is then defined as

    ``g = round((((g_0 + g_1) + g_2) + … + g_{S−1}) / S)``

computed in the compute dtype in shard order (IEEE additions and one division: identical on every
device, so never logged) and rounded once to the grid. It does not depend on how many processes
computed the shards: ``W`` processes (``W`` divides ``S``) compute ``S / W`` shards each, gather
them with ``all_gather`` and all form the same ordered sum. There is no floating all-reduce: the
module is *not* wrapped in ``DistributedDataParallel`` (its bucketed all-reduce, whose summation
order depends on the topology, never runs); the ranks start from rank 0's state (broadcast, as DDP
does) and each applies the same update to the same gradient.

**The record.** Rank 0 alone writes the run directory (manifest, records, logs, ledger through
``CommitCallback``). A record's ``batch_indices`` are the global batch in shard order (as the ranks
loaded them, gathered), its ``batch_digest`` a digest over the shards' digests, and its rounding log
is one file holding every rank's entries in the numbering of a one-process run: the ops before the
shards, shard 0's, shard 1's, …, then the rest of the step (the update, the boundary); the record's
``extra.shards`` gives each shard's op range. The manifest records ``strategy.shards`` (identity)
and ``hardware.world_size``. At each boundary the ranks compare their logs of the ops outside
their shards and a CRC-32 of their states; a rank that differs from rank 0 (a near-tie of the update
rounded the other way, a skipped update) takes rank 0's committed state (``extra.resynced_ranks``).

**Replay.** :class:`VerifiableShardedStrategy` runs the ``S`` shards of each step in turn on one
process with the same arithmetic: ``replay()`` and ``lightning-zk audit`` use it for a sharded run,
so an auditor with one machine reproduces an ``N``-process run bit for bit (and the dispute's
referee, which replays through ``replay()``, too). It also trains: a one-process run with
``shards=S`` commits the same steps as an ``S``-process DDP run. ``replay(..., devices=M)`` (``M``
dividing ``S``) replays on ``M`` DDP processes instead, each with its shards' part of the log.

**BatchNorm** normalises each shard with its own batch statistics; its running statistics after
a step are shard 0's, on any number of processes (``strategy.batch_norm``: :mod:`.batchnorm`).

**Refused** (a clear error at ``fit``): fixed-point mode, manual optimization, gradient
accumulation, validation during fit (Lightning shards it across ranks), ``SyncBatchNorm``, other
buffers that change in the forward pass, ``broadcast_buffers=False``, ``background_commit``, and
custom samplers or iterable datasets.

**Resume** from a Lightning checkpoint (``ckpt_path``) works as on one device: rank 0's session
checks the checkpoint against the records and tells the other ranks their next step and data
position; a crashed run also restarts without one (the committed steps are recomputed and
re-verified).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.strategies.parallel import ParallelStrategy
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from torch.distributed.constants import default_pg_timeout

from ..ledger.rundir import RunDirectory
from ..ledger.state import batch_digest, named_state_tensors
from ..rounding.log import LogEntry, StepLog
from ..rounding.precision import round_values
from . import manifest as mf
from .batchnorm import ShardRunningStats, batch_norm_mode, sync_layers
from .data import ShardedOrder, make_sharded
from .replay import AuditInputError, ReplaySession
from .session import TrainingSession
from .verifiable import VerifiableStrategy

SHARDED_BATCH_TAG = b"lightning-zk/sharded-batch/v1"


class ShardedRunError(ValueError):
    """A configuration a sharded (data-parallel) verifiable run does not support."""


def sharded_batch_digest(shard_digests: list[str]) -> str:
    """The batch digest of a sharded step: SHA-256 over its shards' batch digests, in order."""
    h = hashlib.sha256(SHARDED_BATCH_TAG)
    for digest in shard_digests:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def split_batch(batch: Any, count: int, shard_size: int) -> list[Any]:
    """The ``count`` shards of a collated batch: every tensor sliced along its first dimension."""
    sizes = {t.shape[0] for t in _tensors(batch)}
    if sizes != {count * shard_size}:
        raise ShardedRunError(
            f"a sharded step splits its batch along the first dimension into {count} shards of "
            f"{shard_size}, but the batch's tensors have first dimensions {sorted(sizes)}. HINT: "
            "collate the batch into tensors whose first dimension is the sample.")
    return [apply_to_collection(batch, torch.Tensor, lambda t, k=k: t[k * shard_size:(k + 1) * shard_size])
            for k in range(count)]


def _tensors(batch: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    apply_to_collection(batch, torch.Tensor, found.append)
    return found


def _rebased(entries: list[LogEntry], lo: int, hi: int, to: int) -> list[LogEntry]:
    """The entries of rounded ops ``[lo, hi)``, renumbered to start at ``to``."""
    return [LogEntry(e.op_seq - lo + to, e.op_name, e.output_index, e.numel, e.positions, e.away)
            for e in entries if lo <= e.op_seq < hi]


# --- sessions ----------------------------------------------------------------------------------
class _ShardedSession:
    """What a sharded step's record says about its batch (a mixin for the session classes)."""

    strategy: Any
    trainer: Any
    next_step: int
    _pending: dict[str, Any] | None

    def _prepare_step(self, batch: Any, batch_idx: int) -> None:
        strategy = self.strategy
        epoch = self.trainer.current_epoch
        order: ShardedOrder = strategy._batch_order
        mine = (order.local_indices(epoch, batch_idx), [batch_digest(b) for b in strategy._local_batches])
        gathered = strategy.gather_objects(mine)
        indices = [i for part, _ in gathered for i in part]
        digests = [d for _, part in gathered for d in part]
        self._pending = {
            "epoch": epoch,
            "batch_idx": batch_idx,
            "batch_indices": indices,
            "batch_digest": self.public_digest("batch", self.next_step, sharded_batch_digest(digests)),
            "global_step": self.trainer.global_step,
        }

    def _rest_entries(self, log: StepLog, lo: int, hi: int) -> list[LogEntry]:
        """This rank's entries outside its shards (before them; after them, renumbered to follow)."""
        return _rebased(log.entries, 0, lo, 0) + _rebased(log.entries, hi, log.ops_rounded, lo)

    def _shard_log(self, log: StepLog) -> tuple[StepLog | None, dict[str, Any]]:
        """The step's log in one-process numbering (rank 0; ``None`` elsewhere) and the record's
        ``extra``; gathers every rank's shard entries when several processes computed them.

        Every rank also sends its entries of the ops outside its shards (the update, the state
        rounding at the boundary), which every rank computes for itself and only rank 0's are
        committed, and a CRC-32 of its state at the boundary. A rank whose entries or state differ
        from rank 0's (hardware that rounded a near-tie of the update the other way, an update the
        rank skipped) takes rank 0's state, the committed one, so the ranks never drift apart.
        """
        strategy = self.strategy
        spans = strategy._shard_spans
        strategy._shard_spans = []
        lo, hi = (spans[0][1], spans[-1][3]) if spans else (log.ops_rounded, log.ops_rounded)
        shards = [(k, _rebased(log.entries, a, b, 0), b - a, eb - ea) for k, a, ea, b, eb in spans]
        rest = (self._rest_entries(log, lo, hi), log.ops_rounded - (hi - lo),
                strategy.state_checksum(self._grads_live()))
        gathered = strategy.gather_objects((shards, rest))
        items = sorted((item for part, _ in gathered for item in part), key=lambda item: item[0])
        if items and [item[0] for item in items] != list(range(strategy.shards)):
            raise RuntimeError(f"step {self.next_step}: the ranks computed shards "
                               f"{[item[0] for item in items]}, not each of {strategy.shards} once")
        diverged = [rank for rank, (_, theirs) in enumerate(gathered) if theirs != gathered[0][1]]
        if diverged:
            strategy.adopt_rank0_state()
        if not strategy.is_global_zero:
            return None, {}
        extra: dict[str, Any] = {"resynced_ranks": diverged} if diverged else {}
        if not spans:  # no update ran in this step (the loss was skipped): only rank 0's ops
            return log, extra
        local_ops = hi - lo
        local_elements = spans[-1][4] - spans[0][2]
        entries = _rebased(log.entries, 0, lo, 0)
        ranges, at = [], lo
        for _, shard_entries, ops, _elements in items:
            entries += _rebased(shard_entries, 0, ops, at)
            ranges.append([at, at + ops])
            at += ops
        entries += _rebased(log.entries, hi, log.ops_rounded, at)
        merged = StepLog(
            log.step, entries,
            log.ops_rounded - local_ops + sum(item[2] for item in items),
            log.elements_rounded - local_elements + sum(item[3] for item in items),
        )
        return merged, {"shards": ranges, **extra}


class ShardedTrainingSession(_ShardedSession, TrainingSession):
    """Rank 0's session (or the only one): commits each sharded step with every rank's log."""

    def _manifest_sections(self) -> dict[str, Any]:
        hw = mf.hardware(self.strategy.root_device)
        return {"hardware": {**hw, "world_size": self.strategy.world_size,
                             "shards_per_process": self.strategy.shards // self.strategy.world_size}}

    def _finish_open_step(self) -> None:
        grads = self._grads_live()
        self.mode.round_named(named_state_tensors(self.model, self.optimizers, grads=grads))
        log, _ = self.mode.end_step()
        merged, extra = self._shard_log(log)
        assert merged is not None
        self._commit_step(merged, extra=extra or None, grads=grads)


class ShardWorkerSession(_ShardedSession, TrainingSession):
    """A rank other than 0: computes its shards and sends rank 0 its log; writes nothing."""

    @classmethod
    def open(cls, strategy, trainer, batch_order) -> ShardWorkerSession:
        session = cls(strategy, trainer, RunDirectory(strategy.run_dir or trainer.default_root_dir),
                      batch_order)
        session._pause_metric_logging()
        session._watch_updates()
        return session

    def continue_at(self, point: tuple[int, tuple[int, int] | None] | None) -> None:
        """Resume where rank 0 resumes from a Lightning checkpoint: ``(next step, (epoch, steps of
        it done) or None)`` as rank 0's session found them in the records (``None``: a new run)."""
        if point is None:
            return
        self.next_step, done = point
        if done is not None:
            self.batch_order.resume_at(*done)

    def _finish_open_step(self) -> None:
        grads = self._grads_live()
        self.mode.round_named(named_state_tensors(self.model, self.optimizers, grads=grads))
        log, _ = self.mode.end_step()
        self._shard_log(log)
        self.next_step += 1
        self._pending = None
        self._updates = []
        writes, self._after_commit = self._after_commit, []
        for write in writes:  # Lightning's checkpoint calls: only rank 0 writes a file
            write()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.end_of_training()
        finally:
            self._release()
            self.release()


class ShardedReplaySession(_ShardedSession, ReplaySession):
    """The auditor's session for a sharded run: the shards of each step run in turn (on one
    process, or ``S / M`` of them on each of ``M`` processes)."""

    def _replay_log(self, log: StepLog, record) -> StepLog:
        """On ``M > 1`` processes: this process's part of the step's log, renumbered as it runs it
        (the ops before the shards, its own shards, the rest of the step)."""
        strategy = self.strategy
        ranges = (record.extra or {}).get("shards")
        if strategy.world_size == 1 or not ranges:
            return log
        if not _consecutive(ranges, strategy.shards, log.ops_rounded):
            raise AuditInputError(
                f"step {record.step}: record field extra.shards {str(ranges)[:80]} does not give "
                f"{strategy.shards} consecutive op ranges inside the step's {log.ops_rounded} rounded "
                "ops; replay this run on one process")
        first, count = strategy._local_shards()
        lo, hi = ranges[0][0], ranges[-1][1]
        entries, at = _rebased(log.entries, 0, lo, 0), lo
        for a, b in ranges[first:first + count]:
            entries += _rebased(log.entries, a, b, at)
            at += b - a
        entries += _rebased(log.entries, hi, log.ops_rounded, at)
        return StepLog(log.step, entries, log.ops_rounded - (hi - lo) + (at - lo), log.elements_rounded)


def _consecutive(ranges: Any, count: int, ops: int) -> bool:
    """``count`` ranges ``[a, b)`` of ints, each starting where the last ended, inside ``[0, ops]``."""
    if not isinstance(ranges, list) or len(ranges) != count:
        return False
    if not all(isinstance(r, list) and len(r) == 2 and all(type(v) is int for v in r) for r in ranges):
        return False
    ends = [ranges[0][0], *(b for _, b in ranges)]
    starts = [a for a, _ in ranges]
    return 0 <= ends[0] and ends[-1] <= ops and starts == ends[:-1] and all(a <= b for a, b in ranges)


# --- strategies --------------------------------------------------------------------------------
class _ShardedSteps:
    """Runs each training step as its shards and combines their gradients in shard order.

    A mixin in front of :class:`VerifiableStrategy` (one process) or of it and ``DDPStrategy``.
    """

    shards: int
    session: Any
    seed: int
    _batch_order: Any

    def _init_sharding(self, shards: int | None) -> None:
        if shards is not None and (not isinstance(shards, int) or isinstance(shards, bool) or shards < 1):
            raise ShardedRunError(f"shards={shards!r}: expected a positive int (or None: one per process)")
        self._requested_shards = shards
        self.shards = shards or 1
        self._local_batches: list[Any] = []
        self._shard_batch: Any = None
        self._shard_spans: list[tuple[int, int, int, int, int]] = []

    # --- what every process needs --------------------------------------------------------------
    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (the shard order)."""
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def _local_shards(self) -> tuple[int, int]:
        """The first shard this process computes and how many."""
        count = self.shards // self.world_size
        return self.global_rank * count, count

    def config_json(self) -> dict[str, object]:
        """The arithmetic, the shard count and, for a module with BatchNorm running statistics,
        their rule (``batch_norm``: see :mod:`.batchnorm`; absent otherwise, as in older runs)."""
        config: dict[str, object] = {**super().config_json(), "shards": self.shards}
        module = self.lightning_module
        bn = batch_norm_mode(module) if module is not None else None
        if bn is not None:
            config["batch_norm"] = bn
        return config

    @classmethod
    def from_manifest(cls, manifest, run_dir=None, device=None):
        """The strategy that replays a sharded run: its arithmetic and its shard count."""
        strategy = super().from_manifest(manifest, run_dir=run_dir, device=device)
        strategy._init_sharding(int(manifest["strategy"]["shards"]))
        return strategy

    # --- setup -----------------------------------------------------------------------------------
    def setup(self, trainer) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._resolve_shards()
        super().setup(trainer)

    def _resolve_shards(self) -> None:
        if self._requested_shards is None:
            self.shards = self.world_size
        if self.shards % self.world_size:
            raise ShardedRunError(
                f"{type(self).__name__}(shards={self.shards}) on {self.world_size} processes: the "
                "world size must divide the shard count (every process computes as many shards).")

    def _check_supported(self, trainer) -> None:
        name = type(self).__name__
        module = self.lightning_module
        problems = []
        if self.mode != "rounded":
            problems.append("fixed-point mode (mode='fixed'): a sharded fixed-point step has no "
                            "proof relation yet; train fixed-point runs on one process")
        if not module.automatic_optimization:
            problems.append("manual optimization: the strategy runs each shard's forward and "
                            "backward pass itself inside the optimizer's closure")
        if trainer.accumulate_grad_batches != 1:
            problems.append(f"accumulate_grad_batches={trainer.accumulate_grad_batches}: raise "
                            "the shard count or batch_size instead")
        if self.background_commit:
            problems.append("background_commit=True (not implemented for sharded runs yet)")
        if mf.trainer_section(trainer)["settings"]["validation"]:
            problems.append("validation during fit: Lightning shards the validation data across "
                            "ranks, which a one-process replay would not; set limit_val_batches=0 "
                            "and validate after fit")
        sync = sync_layers(module)
        if getattr(self, "_layer_sync", None) is not None or sync:
            what = (f"SyncBatchNorm layer{'s' * (len(sync) > 1)} {', '.join(sync)}" if sync
                    else "Trainer(sync_batchnorm=True)")
            problems.append(f"{what}: synchronised BatchNorm statistics (each shard runs its "
                            "forward and backward pass to the end before the next, so no shard "
                            "sees the global batch's statistics); use nn.BatchNorm layers, which "
                            "normalise each shard with its own statistics and keep shard 0's "
                            "running statistics (strategy.batch_norm='per_shard'), or "
                            "GroupNorm/LayerNorm")
        if problems:
            raise ShardedRunError(f"{name} does not support " + "; ".join(problems) + ".")

    def process_dataloader(self, dataloader: object) -> object:
        trainer = self.lightning_module.trainer if self.lightning_module is not None else None
        if trainer is None or trainer.state.stage != RunningStage.TRAINING:
            return dataloader
        first, count = self._local_shards()
        loader, self._batch_order = make_sharded(dataloader, self.seed, self.shards, first, count)
        return loader

    def on_train_start(self) -> None:
        super(VerifiableStrategy, self).on_train_start()
        trainer = self.lightning_module.trainer
        error: BaseException | None = None
        try:
            self._check_supported(trainer)
            if self.replay_source is not None:
                if not self.is_global_zero:  # only rank 0 writes the auditor's run directory
                    self.run_dir = None
                self.session = ShardedReplaySession.open(self, trainer, self._batch_order)
            elif self.is_global_zero:
                self.session = ShardedTrainingSession.open(self, trainer, self._batch_order)
            else:
                self.session = ShardWorkerSession.open(self, trainer, self._batch_order)
        except BaseException as err:  # every rank learns it: none waits in a collective
            error = err
        told = None if error is None else f"{type(error).__name__}: {error}"  # (a str always pickles)
        gathered = self.gather_objects((told, self._resume_point()))
        failed = [(rank, e) for rank, (e, _) in enumerate(gathered) if e is not None]
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(f"{type(self).__name__}: rank {failed[0][0]} could not start the run: "
                               f"{failed[0][1]}")
        if isinstance(self.session, ShardWorkerSession):
            self.session.continue_at(gathered[0][1])

    def _resume_point(self) -> tuple[int, tuple[int, int] | None] | None:
        """Rank 0's training session resumed from a checkpoint: where the other ranks continue."""
        session = self.session
        if not isinstance(session, ShardedTrainingSession) or not session.next_step:
            return None
        return session.next_step, session.batch_order.resume_point

    # --- one step ---------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.session is not None:
            _, count = self._local_shards()
            self._local_batches = split_batch(batch, count, self._batch_order.batch_size)
        super().on_train_batch_start(batch, batch_idx)

    def training_step(self, *args: Any, **kwargs: Any):
        if self._shard_batch is not None:  # the closure runs one shard: its slice of the batch
            args = (self._shard_batch, *args[1:])
        return super().training_step(*args, **kwargs)

    def optimizer_step(self, optimizer, closure, model=None, **kwargs: Any):
        if self.session is None or not self.session.in_step:
            return super().optimizer_step(optimizer, closure, model, **kwargs)
        return super().optimizer_step(optimizer, self._sharded(closure), model, **kwargs)

    def _sharded(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        """The closure the optimizer calls: every local shard in turn, then the combination."""

        def run() -> Any:
            session = self.session
            mode = session.mode
            params = [p for p in self.lightning_module.parameters() if p.requires_grad]
            running = ShardRunningStats(self.lightning_module)  # BatchNorm: see .batchnorm
            buffers = self._buffers(skip=running.tensors)
            first, count = self._local_shards()
            shard_grads, loss = [], None
            self._shard_spans = []
            for k in range(first, first + count):
                if k != first and running:
                    with session.paused_ops():
                        running.restore()  # every shard starts from the step's statistics
                mode.begin_shard(k)
                start = mode.position()
                self._shard_batch = self._local_batches[k - first]
                try:
                    loss = closure()
                finally:
                    self._shard_batch = None
                self._shard_spans.append((k, *start, *mode.position()))
                with session.paused_ops():
                    shard_grads.append(_flat_grads(params))
                    for p in params:
                        p.grad = None
                    self._check_buffers(buffers, k, skip=running.tensors)
                    if k == 0 and running:
                        running.keep()
            mode.end_shards()
            with session.paused_ops():
                running.finish(self.world_size, holds_shard_0=first == 0)
                self._combine(shard_grads, params)
            return loss

        return run

    def adopt_rank0_state(self) -> None:
        """Every rank takes rank 0's state — the committed one: model, optimizers, LR schedulers
        and gradients, sent as rank 0's state dicts (whatever state the other rank holds)."""
        if self.world_size == 1:
            return
        module = self.lightning_module
        schedulers = [config.scheduler for config in module.trainer.lr_scheduler_configs]
        payload: list[Any] = [None]
        if self.is_global_zero:
            payload = [{"model": module.state_dict(),
                        "optimizers": [o.state_dict() for o in self.optimizers],
                        "schedulers": [s.state_dict() for s in schedulers],
                        "grads": {n: p.grad for n, p in module.named_parameters() if p.grad is not None}}]
        torch.distributed.broadcast_object_list(payload, src=0)
        if self.is_global_zero:
            return
        state = payload[0]
        with torch.no_grad():
            module.load_state_dict(state["model"])
            for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
                optimizer.load_state_dict(saved)
            for scheduler, saved in zip(schedulers, state["schedulers"], strict=True):
                scheduler.load_state_dict(saved)
            for name, p in module.named_parameters():
                grad = state["grads"].get(name)
                p.grad = grad.to(p.device) if grad is not None else None

    def state_checksum(self, grads: bool) -> int:
        """CRC-32 of this rank's state tensors (what the ranks compare at each boundary)."""
        crc = 0
        if self.world_size == 1:
            return crc
        for name, t in named_state_tensors(self.model, self.optimizers, grads=grads):
            crc = zlib.crc32(name.encode("utf-8"), crc)
            crc = zlib.crc32(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy(), crc)
        return crc

    def _buffers(self, skip: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copies of the buffers a shard must leave unchanged (all but BatchNorm's ``skip``)."""
        return {name: b.detach().clone() for name, b in self.lightning_module.named_buffers()
                if name not in skip}

    def _check_buffers(self, before: dict[str, torch.Tensor], shard: int,
                       skip: dict[str, torch.Tensor]) -> None:
        for name, b in self.lightning_module.named_buffers():
            if name not in skip and (name not in before or not torch.equal(before[name], b)):
                raise ShardedRunError(
                    f"buffer {name!r} changed while shard {shard} ran: each shard would update it "
                    "separately, so the result would depend on how many processes ran the shards. "
                    "HINT: keep buffers constant in training_step (BatchNorm's running statistics "
                    "are the exception the strategy handles: shard 0's are kept).")

    def _combine(self, shard_grads: list[torch.Tensor], params: list[torch.nn.Parameter]) -> None:
        """``round(ordered sum / S)`` of every shard's gradient; set as each parameter's gradient."""
        local = torch.stack(shard_grads)
        if self.world_size > 1:
            parts = [torch.empty_like(local) for _ in range(self.world_size)]
            torch.distributed.all_gather(parts, local)
            local = torch.cat(parts)
        total = local[0].clone()
        for k in range(1, local.shape[0]):
            total += local[k]  # one IEEE addition per element and shard, in shard order
        numel = sum(p.numel() for p in params)
        grads = round_values(total[:numel] / local.shape[0], self.spec)
        present = total[numel:]
        at = 0
        for i, p in enumerate(params):
            n = p.numel()
            p.grad = grads[at:at + n].view_as(p).clone() if present[i] > 0 else None
            at += n


def _flat_grads(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Every parameter's gradient (zeros where none) flattened, then one presence flag each."""
    if not params:
        return torch.zeros(0, dtype=torch.float64)
    dtype = params[0].dtype
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for p in params]
    flags = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=params[0].device)
    return torch.cat([*parts, flags])


class VerifiableShardedStrategy(_ShardedSteps, VerifiableStrategy):
    """One process running every shard of each step in turn: the one-device replay (and trainer)
    of a sharded run. ``shards`` is the shard count per step (default 1)."""

    strategy_name = "verifiable_sharded"

    def __init__(self, *args: Any, shards: int | None = None, **kwargs: Any) -> None:
        self._init_sharding(shards)
        super().__init__(*args, **kwargs)



class VerifiableDDPStrategy(_ShardedSteps, VerifiableStrategy, DDPStrategy):
    """Multi-process (DDP) verifiable training whose steps do not depend on the world size.

    Lightning's launcher, process group and ``devices=N`` work as with ``DDPStrategy``. Each step
    is ``shards`` shards (default: one per process); the gradient is their rank-ordered sum,
    rounded (see :mod:`lightning_zk.strategies.ddp`). Rank 0 writes the run directory; replay it
    on one process with ``lightning_zk.audit.replay`` / ``lightning-zk audit``.

    Args:
        run_dir, seed, compute_dtype, mantissa_bits, threshold, state_digest: as
            :class:`VerifiableStrategy`.
        shards: shards per step; the world size must divide it (default: the world size).
        start_method: Lightning's DDP launcher: ``"popen"`` re-runs the script (default),
            ``"spawn"``/``"fork"`` start processes from this one.
        process_group_backend: default ``"gloo"`` on CPU, ``"nccl"`` on CUDA (Lightning's choice).
        timeout: how long a rank waits in a collective.
        device: ignored: each rank's device is Lightning's (``accelerator``, ``devices=N``); accepted
            so that a replay builds this strategy as it builds the others.

    Raises:
        ShardedRunError: an unsupported configuration (at construction or ``fit``).

    Example::

        trainer = Trainer(strategy=VerifiableDDPStrategy(run_dir="runs/ddp"), accelerator="cpu",
                          devices=2, max_steps=50)
    """

    strategy_name = "verifiable_ddp"

    def __init__(
        self,
        run_dir: str | Path | None = None,
        seed: int = 0,
        compute_dtype: str | torch.dtype = "float64",
        mantissa_bits: int = 23,
        threshold: Any = None,
        shards: int | None = None,
        start_method: str = "popen",
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        mode: str = "rounded",
        background_commit: bool = False,
        state_digest: str | None = None,
        device: str | torch.device | None = None,
        **ddp_kwargs: Any,
    ) -> None:
        if mode != "rounded":
            raise ShardedRunError(f"VerifiableDDPStrategy(mode={mode!r}): only mode='rounded' is "
                                  "supported (fixed-point runs train on one process).")
        if background_commit:
            raise ShardedRunError("VerifiableDDPStrategy(background_commit=True) is not implemented "
                                  "for sharded runs yet. HINT: drop it (inline commits).")
        if ddp_kwargs.get("broadcast_buffers", True) is not True:
            raise ShardedRunError(
                f"VerifiableDDPStrategy(broadcast_buffers={ddp_kwargs['broadcast_buffers']!r}): a "
                "run commits one state, whose buffers every rank shares (BatchNorm running "
                "statistics: shard 0's, what DDP's broadcast_buffers=True keeps). HINT: drop it.")
        self._ddp_init = dict(start_method=start_method, process_group_backend=process_group_backend,
                              timeout=timeout, **ddp_kwargs)
        self._init_sharding(shards)
        super().__init__(run_dir=run_dir, seed=seed, compute_dtype=compute_dtype,
                         mantissa_bits=mantissa_bits, threshold=threshold,
                         state_digest=state_digest)

    def _init_base_strategy(self, device: str | torch.device) -> None:
        DDPStrategy.__init__(self, **self._ddp_init)

    # SingleDeviceStrategy (VerifiableStrategy's base) comes before DDPStrategy in the MRO: these
    # are the multi-process versions.
    root_device = DDPStrategy.root_device
    is_global_zero = ParallelStrategy.is_global_zero
    reduce = DDPStrategy.reduce
    all_gather = ParallelStrategy.all_gather
    barrier = DDPStrategy.barrier
    broadcast = DDPStrategy.broadcast
    model_to_device = DDPStrategy.model_to_device

    def configure_ddp(self) -> None:
        """No ``DistributedDataParallel`` wrapper (its float all-reduce would define the gradient
        by the topology): the ranks start from rank 0's state and combine gradients in order."""
        from lightning.pytorch.overrides.distributed import _sync_module_states

        _sync_module_states(self.model)

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        strategy_registry.register(
            cls.strategy_name, cls,
            description="Verifiable DDP: sharded steps independent of the world size, one run directory",
        )
        strategy_registry.register(
            "verifiable_ddp_spawn", cls, description="Verifiable DDP with start_method='spawn'",
            start_method="spawn",
        )


def replay_strategy_class(manifest: dict[str, Any], devices: Any = None) -> type[VerifiableStrategy]:
    """The strategy class that replays a run: a sharded run runs its shards in turn on one process,
    or on ``devices`` DDP processes (an int > 1 that divides its shard count)."""
    strategy = manifest.get("strategy") or {}
    if "shards" not in strategy:
        return VerifiableStrategy
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 1:
        return VerifiableDDPStrategy
    return VerifiableShardedStrategy


if VerifiableDDPStrategy.strategy_name not in StrategyRegistry:
    VerifiableDDPStrategy.register_strategies(StrategyRegistry)
