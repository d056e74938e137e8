"""Fixed-point mode: train a Linear+ReLU MLP with MSE and SGD in exact integer arithmetic.

``VerifiableStrategy(mode="fixed", frac_bits=16)`` replaces autograd and the torch optimizer by
the exact integer engine (:mod:`lightning_zk.fixed`): each batch is quantised, one SGD step is
computed in int64 with round-to-nearest rescaling and magnitude bounds, the torch module receives
the dequantised weights, and the step's witness tape is kept for the zk prover (and spilled to
``RUN/tapes/`` for offline proving). Integer arithmetic is the same on every device, so there is no
rounding log: each step record carries an empty one, and the state digest commits the integer
weights.

What a fixed-point run commits publicly must not reveal its private data: the state and batch
digests of its step records (hence its Merkle ledger) are *hidden* digests, keyed by a private
run key in ``RUN/tapes/digest-key.json`` whose commitment is in the manifest
(:mod:`lightning_zk.ledger.hiding`). The manifest's ``fixed`` section declares everything the
proofs' public statements must carry: dims, scale, bound, learning rate, batch size and the
commitment parameters of the proofs (``ProofCallback(security_bits=..., blowup=...)``).

The LightningModule must hold the network as an ``nn.Sequential`` of Linear(+bias)/ReLU (its
``net`` attribute, or its only Sequential child), a ``loss_fn = nn.MSELoss()``, and configure a
plain ``torch.optim.SGD``; its ``training_step`` is not called (the engine computes the loss).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fixed import FixedPointConfig, WitnessTape, dequantize
from ..fixed.torch_bridge import (
    UnsupportedModelError,
    check_loss_and_optimizer,
    mlp_from_torch,
    write_back,
)
from ..ledger.hiding import KEY_FILE, SCHEME, DigestKey, DigestKeyError
from ..ledger.rundir import PRIVATE_DIR, RunDirectoryError
from ..ledger.state import StateSnapshot
from ..rounding.log import StepLog
from .session import TrainingSession

TAPE_DIR = PRIVATE_DIR
DEFAULT_PROOF_PARAMS = {"security_bits": 100, "blowup": 4}


def find_network(module: nn.Module) -> nn.Sequential:
    """The Linear/ReLU network of a LightningModule (``net`` or its only Sequential child)."""
    if isinstance(module, nn.Sequential):
        return module
    net = getattr(module, "net", None)
    if isinstance(net, nn.Sequential):
        return net
    sequentials = [m for m in module.children() if isinstance(m, nn.Sequential)]
    if len(sequentials) == 1:
        return sequentials[0]
    raise UnsupportedModelError(
        f"fixed-point mode needs the network as an nn.Sequential of Linear/ReLU layers in "
        f"`self.net` (or as the module's only Sequential child); {type(module).__name__} has "
        f"{len(sequentials)} Sequential children."
    )


class FixedPointSession(TrainingSession):
    """Commits exact fixed-point steps; keeps the witness tape of the last step."""

    def __init__(self, strategy, trainer, run, batch_order) -> None:
        super().__init__(strategy, trainer, run, batch_order)
        module = strategy.lightning_module
        self.net = find_network(module)
        loss_fn = getattr(module, "loss_fn", None)
        if loss_fn is None:
            raise UnsupportedModelError(
                f"fixed-point mode needs the loss as `self.loss_fn = nn.MSELoss()` on "
                f"{type(module).__name__}: the engine computes the MSE step exactly in integers."
            )
        if len(self.optimizers) != 1:
            raise UnsupportedModelError("fixed-point mode trains with exactly one SGD optimizer")
        lr = check_loss_and_optimizer(loss_fn, self.optimizers[0])
        if trainer.gradient_clip_val:
            raise UnsupportedModelError("gradient clipping is not part of the fixed-point SGD step")
        self.config = FixedPointConfig(frac_bits=strategy.frac_bits, value_bits=strategy.value_bits)
        self.engine = mlp_from_torch(self.net, lr, self.config, step=trainer.global_step)
        write_back(self.engine, self.net)  # the module holds exactly the dequantised weights
        self.save_tapes = strategy.save_tapes
        self.batch_size = getattr(batch_order, "batch_size", None)
        if self.batch_size is None:
            raise UnsupportedModelError(
                "fixed-point mode needs a training DataLoader over a map-style dataset with a "
                "batch_size (no batch_sampler): every step of a proof chain has the same public "
                "batch size. HINT: DataLoader(dataset, batch_size=B, drop_last=True)."
            )
        self.last_tape: WitnessTape | None = None
        self.last_loss: float | None = None
        self._key: DigestKey | None = None

    @property
    def tape_dir(self) -> Path:
        return self.run.path / TAPE_DIR

    def tape_path(self, step: int) -> Path:
        return self.tape_dir / f"step-{step:08d}.npz"

    def _manifest_sections(self) -> dict[str, Any]:
        """The public constants every proof of this run must carry (in the first manifest write:
        a kill can never leave a fixed-point manifest without them)."""
        return {"fixed": {
            "dims": list(self.engine.dims), "frac_bits": self.config.frac_bits,
            "value_bits": self.config.value_bits, "lr": self.engine.lr,
            "batch_size": self.batch_size, "proof": self._proof_params(),
            "digests": {"scheme": SCHEME, "key_commitment": self.digest_key.commitment()},
        }}

    def _resume(self, marker) -> None:
        super()._resume(marker)
        declared = (self.manifest.get("fixed") or {}).get("proof")
        if declared != self._proof_params():
            raise RunDirectoryError(
                f"the run {self.run.path} declares proof parameters {declared}, but this "
                f"training passes {self._proof_params()}: a chain is proved under one set. "
                "HINT: resume with the ProofCallback(security_bits=..., blowup=...) of the run."
            )

    def _proof_params(self) -> dict[str, int]:
        return dict(getattr(self.strategy, "proof_params", None) or DEFAULT_PROOF_PARAMS)

    @property
    def digest_key(self) -> DigestKey:
        """The run's private digest key: created at the start, loaded (and checked) on resume."""
        if self._key is None:
            path = self.tape_dir / KEY_FILE
            committed = ((self.manifest.get("fixed") or {}).get("digests") or {}).get(
                "key_commitment")
            if committed is None:
                self._key = DigestKey.new()
                self._key.save(path)
            else:
                try:
                    self._key = DigestKey.load(path, committed)
                except DigestKeyError as err:
                    raise RunDirectoryError(
                        f"cannot resume the fixed-point run {self.run.path}: {err}. The run's "
                        "private files in RUN/tapes/ must be kept to continue it."
                    ) from err
        return self._key

    def public_digest(self, kind: str, index: int, digest: str) -> str:
        """Hidden (keyed) digests: the records and the ledger of a zk run reveal no data."""
        return self.digest_key.hide(kind, index, digest)

    def _round_initial_state(self) -> None:
        """Nothing to round: the engine quantised the weights onto the 2^-s grid."""

    def snapshot(self, grads: bool = False, reuse: StateSnapshot | None = None) -> StateSnapshot:
        """The committed state: the engine's integer weights and biases, and the public constants."""
        tensors = {}
        for i, (w, b) in enumerate(zip(self.engine.weights, self.engine.biases, strict=True)):
            tensors[f"fixed/W{i + 1}"] = torch.from_numpy(w.copy())
            tensors[f"fixed/b{i + 1}"] = torch.from_numpy(b.copy())
        meta = {"mode": "fixed", "frac_bits": self.config.frac_bits,
                "value_bits": self.config.value_bits, "lr": self.engine.lr,
                "dims": list(self.engine.dims)}
        return StateSnapshot(tensors=tensors, meta=meta, digest_format=self.digest_format)

    # --- per step ----------------------------------------------------------------------------
    @property
    def in_step(self) -> bool:
        return self._pending is not None

    def boundary(self) -> None:
        """Fixed-point steps are committed inside the optimizer step: no boundary to keep."""

    def end_of_training(self) -> None:
        """Every step was committed inside its optimizer step."""

    def begin_batch(self, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            raise RuntimeError("the previous fixed-point step was never committed")
        if self.trainer.global_step != self.next_step:
            raise RuntimeError(
                f"Trainer.global_step is {self.trainer.global_step} at committed step "
                f"{self.next_step}: fixed-point mode commits one SGD step per batch"
            )
        self._prepare_step(batch, batch_idx)
        self._pending_batch = batch

    def run_step(self) -> torch.Tensor:
        """One exact SGD step on the current batch; returns the (dequantised) MSE for logging."""
        batch = self._pending_batch
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise UnsupportedModelError(
                "fixed-point mode expects batches (x, y) with float inputs x (B, d_in) and "
                "regression targets y (B, d_out)"
            )
        x, y = (t.detach().to("cpu", torch.float64).numpy() for t in batch)
        if y.ndim == 1:
            y = y[:, None]
        if self.batch_size is not None and x.shape[0] != self.batch_size:
            raise UnsupportedModelError(
                f"batch {self._pending['batch_idx']} of epoch {self._pending['epoch']} has "
                f"{x.shape[0]} samples, the DataLoader's batch_size is {self.batch_size}: every "
                "step of a proof chain has the same public batch size. HINT: "
                "DataLoader(..., drop_last=True), or a dataset size divisible by the batch size."
            )
        tape = self.engine.step_float(x, y)
        write_back(self.engine, self.net)
        s = self.config.frac_bits
        output = dequantize(tape.tensors[f"Z{self.engine.num_layers}"], s)
        self.last_loss = float(np.mean((output - dequantize(tape.tensors["y"], s)) ** 2))
        self.last_tape = tape
        self._updates = [0]  # the engine's SGD update (no torch optimizer step runs)
        return torch.tensor(self.last_loss)

    def finish_step(self) -> None:
        tape = self.last_tape
        extra: dict[str, Any] = {"loss": self.last_loss}
        if self.save_tapes and tape is not None:
            path = self.tape_path(self.next_step)
            if not self._expected:  # a re-verified step keeps its committed tape
                self.tape_dir.mkdir(exist_ok=True)
                tape.save(path)
            extra["tape"] = str(path.relative_to(self.run.path))
            extra["tape_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        self._commit_step(StepLog(self.next_step, []), extra)
        self._pending_batch = None

