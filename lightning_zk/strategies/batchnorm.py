"""BatchNorm in a sharded step: batch statistics per shard, running statistics from shard 0.

A sharded step (:mod:`lightning_zk.strategies.ddp`) runs each shard's forward and backward pass
in turn, so a BatchNorm layer in training mode normalises every shard with that shard's own batch
statistics — what plain DDP does with ``BatchNorm2d`` when each process holds one shard. Its
running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) would be updated
once per shard, in an order that depends on how many processes computed the shards. The canonical
rule (``strategy.batch_norm = "per_shard"`` in the manifest) removes that dependence:

- every shard starts from the running statistics the step started with (a process running several
  shards puts them back before each further shard);
- after the step, the running statistics are those shard 0's forward pass left: the process that
  ran shard 0 (rank 0) sends them to the others (a broadcast moves bits, it computes nothing).

This is what ``DistributedDataParallel`` keeps with its default ``broadcast_buffers=True`` and one
shard per process (rank 0's buffers overwrite the others' before every forward pass), and it gives
the same committed state whether ``S`` shards run on 1, 2 or ``S`` processes. The update itself is
the BatchNorm op's, rounded (and logged) like any op of shard 0.

``SyncBatchNorm`` (synchronised batch statistics over the global batch) is not supported: the
shards of a process run one after the other, each to the end of its backward pass, whereas
synchronised statistics need every shard's forward pass to reach each BatchNorm layer first.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import SyncBatchNorm, _BatchNorm

#: The only BatchNorm mode of a sharded run: recorded as ``strategy.batch_norm``.
PER_SHARD = "per_shard"
_RUNNING = ("running_mean", "running_var", "num_batches_tracked")


def running_stat_layers(module: torch.nn.Module) -> list[str]:
    """Paths of the BatchNorm layers that keep running statistics (``"."`` for the module itself)."""
    return [path or "." for path, m in module.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats]


def sync_layers(module: torch.nn.Module) -> list[str]:
    """Paths of the module's ``SyncBatchNorm`` layers."""
    return [path or "." for path, m in module.named_modules() if isinstance(m, SyncBatchNorm)]


def batch_norm_mode(module: torch.nn.Module) -> str | None:
    """The module's BatchNorm mode for the manifest: ``"per_shard"`` when a layer keeps running
    statistics, ``None`` (nothing recorded, as in runs before BatchNorm was supported) otherwise."""
    return PER_SHARD if running_stat_layers(module) else None


class ShardRunningStats:
    """The running statistics of a module's BatchNorm layers across one sharded step.

    Call :meth:`restore` before every shard but a process's first, :meth:`keep` after shard 0, and
    :meth:`finish` once after the shards (on every process: it may broadcast).
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        for path, m in module.named_modules():
            if isinstance(m, _BatchNorm) and m.track_running_stats:
                for attr in _RUNNING:
                    t = getattr(m, attr, None)
                    if isinstance(t, torch.Tensor):
                        self.tensors[f"{path}.{attr}" if path else attr] = t
        self._start = {name: t.detach().clone() for name, t in self.tensors.items()}
        self._kept: dict[str, torch.Tensor] | None = None

    def __bool__(self) -> bool:
        return bool(self.tensors)

    def restore(self) -> None:
        """Back to the step's starting statistics (before a process's second, third ... shard)."""
        with torch.no_grad():
            for name, t in self.tensors.items():
                t.copy_(self._start[name])

    def keep(self) -> None:
        """Remember what shard 0's forward pass left: the step's running statistics."""
        self._kept = {name: t.detach().clone() for name, t in self.tensors.items()}

    def finish(self, world_size: int, holds_shard_0: bool) -> None:
        """Set every running statistic to shard 0's; with several processes, the one that ran
        shard 0 broadcasts them (``holds_shard_0`` must be true on exactly that one, rank 0)."""
        if not self.tensors:
            return
        if holds_shard_0 and self._kept is None:
            raise RuntimeError("ShardRunningStats.finish: shard 0 ran here but keep() was not called")
        with torch.no_grad():
            for name, t in self.tensors.items():
                if holds_shard_0:
                    t.copy_(self._kept[name])  # type: ignore[index]
                if world_size > 1:
                    torch.distributed.broadcast(t, src=0)
