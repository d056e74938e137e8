"""Fixed-point mode: the user's own training step, executed in exact integer arithmetic.

``VerifiableStrategy(mode="fixed", frac_bits=16)`` runs Lightning's closure (``training_step``,
``backward``) and the optimizer step under :class:`~lightning_zk.fixed.intercept.FixedPointTracer`,
which executes every ATen op in exact fixed point and records the step's graph. A step whose
graph is the provable template (Linear+ReLU MLP, MSE of the output against the batch target,
SGD, with momentum and weight decay when configured; the step may first flatten image-shaped
samples and scale them by a public constant, ``net(x.view(len(x), -1) / 16)``,
:mod:`..fixed.scaling`) gets its witness tape from the exact
integer engine (:mod:`lightning_zk.fixed`),
checked bit for bit against the weights the user's code produced, and kept for the zk prover
(spilled to ``RUN/tapes/`` for offline proving); any other graph is refused
(:class:`NotProvableError`) and rolled back. Integer arithmetic is the same on every device, so
there is no rounding log: each step record carries an empty one, and the state digest commits
the integer weights.

What a fixed-point run commits publicly must not reveal its private data: the state and batch
digests of its step records (hence its Merkle ledger) are *hidden* digests, keyed by a private
run key in ``RUN/tapes/digest-key.json`` whose commitment is in the manifest
(:mod:`lightning_zk.ledger.hiding`). The manifest's ``fixed`` section declares everything the
proofs' public statements must carry: dims, scale, bound, learning rate, batch size and the
commitment parameters of the proofs (``ProofCallback(security_bits=..., blowup=...)``).

The LightningModule must hold the network as an ``nn.Sequential`` of Linear(+bias)/ReLU (its
``net`` attribute, or its only Sequential child) and configure one ``torch.optim.SGD`` (momentum
and weight decay allowed, no Nesterov or dampening; its momentum buffers are committed state; an
LR schedule may move the rate, which each step reads as SGD applies it: ``_step_lr``); its
``training_step`` computes the MSE loss however it likes to spell it through ``aten.mse_loss``
(``F.mse_loss``, ``nn.MSELoss``), or softmax cross-entropy on integer class targets
(``F.cross_entropy``, ``nn.CrossEntropyLoss``; mean, no weights, smoothing or ignore_index).
The loss kind follows the training targets' dtype (integer class labels: cross-entropy) and is
declared in the manifest (``fixed.loss``) from the dataset's first sample.

The network may start with one ``Conv2d`` (bias, groups 1, dilation 1, square kernel, equal
stride and zero padding), ``ReLU`` and ``Flatten()`` before the Linear/ReLU layers; its input
shape (C, H, W) comes from the dataset's first sample and its public shape is declared in the
manifest (``fixed.conv``, [C, H, W, F, k, stride, padding]) and carried by every statement.
Its output height and width must be powers of two (the proofs read the Flatten as a relabelling
of variables), so e.g. 8x8 digits with k=3, padding=1.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fixed import FixedPointConfig, WitnessTape, dequantize
from ..fixed.format import fixed_constant
from ..fixed.intercept import FixedPointTracer, graph_digest
from ..fixed.scaling import (
    InputOp,
    InputScaleError,
    check_input_ops,
    input_ops_from_graph,
    view_of,
)
from ..fixed.softmax import onehot_targets, xent_loss
from ..fixed.template import new_tracer, template_graph, template_network
from ..fixed.torch_bridge import (
    UnsupportedModelError,
    check_loss_and_optimizer,
    conv_spec,
    mlp_from_torch,
    momentum_buffers,
    sgd_settings,
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


_LOSS_SPELLING = {"mse": "F.mse_loss(self.net(x), y)", "xent": "F.cross_entropy(self.net(x), y)"}


def declared_loss(trainer) -> str:
    """The run's loss kind from the training dataset's first sample: integer class targets mean
    softmax cross-entropy, anything else MSE (every batch is checked against it)."""
    loader = getattr(trainer, "train_dataloader", None)
    dataset = getattr(loader, "dataset", None)
    try:
        sample = dataset[0] if dataset is not None else None
    except Exception:  # an iterable or exotic dataset: MSE, and each batch is checked
        return "mse"
    target = sample[1] if isinstance(sample, (tuple, list)) and len(sample) == 2 else None
    if isinstance(target, torch.Tensor):
        return "mse" if target.is_floating_point() else "xent"
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return "xent"
    return "mse"


def sample_shape(trainer) -> tuple[int, ...] | None:
    """The shape of the training dataset's first input (a conv network's (C, H, W))."""
    dataset = getattr(getattr(trainer, "train_dataloader", None), "dataset", None)
    try:
        sample = dataset[0] if dataset is not None else None
    except Exception:  # an iterable or exotic dataset: no shape known
        return None
    x = sample[0] if isinstance(sample, (tuple, list)) and len(sample) == 2 else None
    return tuple(int(d) for d in x.shape) if isinstance(x, torch.Tensor) else None


class NotProvableError(UnsupportedModelError):
    """The user's step ran in fixed point, but its graph is not one the prover proves yet."""


class FixedPointSession(TrainingSession):
    """Commits exact fixed-point steps; keeps the witness tape of the last step."""

    def __init__(self, strategy, trainer, run, batch_order) -> None:
        super().__init__(strategy, trainer, run, batch_order)
        module = strategy.lightning_module
        self.net = find_network(module)
        if len(self.optimizers) != 1:
            raise UnsupportedModelError("fixed-point mode trains with exactly one SGD optimizer")
        check_loss_and_optimizer("mse", self.optimizers[0])
        lr, momentum, weight_decay = sgd_settings(self.optimizers[0])
        for param in module.parameters():
            if param.dtype == torch.float32 and strategy.value_bits > 25:
                raise UnsupportedModelError(
                    f"value_bits={strategy.value_bits} does not fit float32 parameters exactly; "
                    "HINT: value_bits <= 25, or module.double()")
        if trainer.gradient_clip_val:
            raise UnsupportedModelError("gradient clipping is not part of the fixed-point SGD step")
        self.config = FixedPointConfig(frac_bits=strategy.frac_bits, value_bits=strategy.value_bits)
        shape = sample_shape(trainer)
        conv = conv_spec(self.net, shape) if shape is not None and len(shape) == 3 else None
        if conv is not None and not conv.provable:
            raise UnsupportedModelError(
                f"the Conv2d's output is {conv.out_height}x{conv.out_width}: fixed-point proofs "
                "need its height and width to be powers of two (the Flatten is then a relabelling "
                "of variables). HINT: choose padding/stride so that (H + 2p - k) / stride + 1 is "
                "a power of two (8x8 inputs, k=3, padding=1 give 8x8).")
        # with momentum, the buffers torch restored from a checkpoint (zero before step 0)
        self.loss_kind = declared_loss(trainer)
        self.engine = mlp_from_torch(self.net, lr, self.config, step=trainer.global_step,
                                     momentum=momentum, weight_decay=weight_decay,
                                     optimizer=self.optimizers[0], loss=self.loss_kind,
                                     input_shape=shape)
        self._write_back()  # the module holds exactly the dequantised weights (and buffers)
        self.save_tapes = strategy.save_tapes
        self.batch_size = getattr(batch_order, "batch_size", None)
        if self.batch_size is None:
            raise UnsupportedModelError(
                "fixed-point mode needs a training DataLoader over a map-style dataset with a "
                "batch_size (no batch_sampler): every step of a proof chain has the same public "
                "batch size. HINT: DataLoader(dataset, batch_size=B, drop_last=True)."
            )
        conv = self.engine.conv
        if conv is not None and (self.batch_size < 2 or conv.filters < 2):
            raise UnsupportedModelError(
                f"fixed-point proofs of a Conv2d network need a batch size of 2 or more and 2 or "
                f"more filters (batch size {self.batch_size}, {conv.filters} filters): nothing "
                "was trained. HINT: DataLoader(..., batch_size=B >= 2), Conv2d(C, F >= 2, k).")
        self.last_tape: WitnessTape | None = None
        self.last_loss: float | None = None
        self._key: DigestKey | None = None
        self.tracer: FixedPointTracer | None = None
        self._graph_digest: str | None = None
        self._templates: dict[tuple, list[dict[str, Any]]] = {}
        self._had_buffers = False  # the open step started with SGD momentum buffers

    @property
    def tape_dir(self) -> Path:
        return self.run.path / TAPE_DIR

    def tape_path(self, step: int) -> Path:
        return self.tape_dir / f"step-{step:08d}.npz"

    def _manifest_sections(self) -> dict[str, Any]:
        """The public constants every proof of this run must carry (in the first manifest write:
        a kill can never leave a fixed-point manifest without them)."""
        fixed = {
            "dims": list(self.engine.dims), "frac_bits": self.config.frac_bits,
            "value_bits": self.config.value_bits, "lr": self.engine.lr,
            "momentum": self.engine.momentum, "weight_decay": self.engine.weight_decay,
            "batch_size": self.batch_size, "loss": self.loss_kind, "proof": self._proof_params(),
            "digests": {"scheme": SCHEME, "key_commitment": self.digest_key.commitment()},
        }
        if self.engine.conv is not None:  # (an MLP run's manifest stays as it was)
            fixed["conv"] = list(self.engine.conv.as_tuple())
        return {"fixed": fixed}

    def _resume(self, marker) -> None:
        super()._resume(marker)
        declared = (self.manifest.get("fixed") or {}).get("loss", "mse")
        if declared != self.loss_kind:
            raise RunDirectoryError(
                f"the run {self.run.path} trains with loss {declared!r}, this training's "
                f"targets give {self.loss_kind!r}: a chain is proved for one loss.")
        conv = list(self.engine.conv.as_tuple()) if self.engine.conv is not None else None
        if (self.manifest.get("fixed") or {}).get("conv") != conv:
            raise RunDirectoryError(
                f"the run {self.run.path} declares the conv layer "
                f"{(self.manifest.get('fixed') or {}).get('conv')}, this training's network and "
                f"data give {conv}: a chain is proved for one architecture.")
        if self.last_record is not None:  # a record carries the graph when it differs from the
            # previous step's: a resumed run records exactly what the uninterrupted one did
            self._graph_digest = (self.last_record.extra or {}).get("graph_sha256")
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

    def snapshot(self, grads: bool = False, reuse: StateSnapshot | None = None,
                 live: bool = False) -> StateSnapshot:
        """The committed state: the engine's integer weights and biases, and the public constants
        (always a copy: it is small)."""
        tensors = {}
        for i, (w, b) in enumerate(zip(self.engine.weights, self.engine.biases, strict=True)):
            tensors[f"fixed/W{i + 1}"] = torch.from_numpy(w.copy())
            tensors[f"fixed/b{i + 1}"] = torch.from_numpy(b.copy())
        meta = {"mode": "fixed", "frac_bits": self.config.frac_bits,
                "value_bits": self.config.value_bits, "lr": self._run_lr(),
                "dims": list(self.engine.dims)}
        if self.engine.conv is not None:
            meta["conv"] = list(self.engine.conv.as_tuple())
        self._optimizer_state(tensors, meta)
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

    def _check_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._pending_batch
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise UnsupportedModelError(
                "fixed-point mode expects batches (x, y) with float inputs x (B, d_in) and "
                "regression targets y (B, d_out) or integer class labels y (B,)"
            )
        x, y = batch
        kind = "xent" if isinstance(y, torch.Tensor) and not y.is_floating_point() else "mse"
        if kind != self.loss_kind:
            raise NotProvableError(
                f"batch {self._pending['batch_idx']} has "
                f"{'integer class' if kind == 'xent' else 'float'} targets, but the run trains "
                f"with the {self.loss_kind!r} loss declared from the dataset's first sample: "
                "every step of a proof chain has the same loss.")
        if self.batch_size is not None and x.shape[0] != self.batch_size:
            raise UnsupportedModelError(
                f"batch {self._pending['batch_idx']} of epoch {self._pending['epoch']} has "
                f"{x.shape[0]} samples, the DataLoader's batch_size is {self.batch_size}: every "
                "step of a proof chain has the same public batch size. HINT: "
                "DataLoader(..., drop_last=True), or a dataset size divisible by the batch size."
            )
        return x, y

    def _new_tracer(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    optimizer: torch.optim.Optimizer | None = None) -> FixedPointTracer:
        return new_tracer(self.config, self.next_step, net, x, y, optimizer)

    def start_trace(self) -> FixedPointTracer:
        """The dispatch mode the user's step (training_step, backward, SGD) runs under."""
        x, y = self._check_batch()
        self._had_buffers = bool(self._buffers(self.net, self.optimizers[0]))
        self.tracer = self._new_tracer(self.net, x, y, self.optimizers[0])
        return self.tracer

    def paused_ops(self) -> contextlib.AbstractContextManager:
        """Metric logging inside the step runs natively, outside the traced graph."""
        return self.tracer.paused() if self.tracer is not None else contextlib.nullcontext()

    def abandon_trace(self) -> None:
        """A step that raised trains nothing: the module gets the weights before it back."""
        self.tracer = None
        self._write_back()

    def _write_back(self) -> None:
        """The module (and the SGD momentum buffers torch holds) get the engine's state."""
        write_back(self.engine, self.net, self.optimizers[0])

    def _optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """SGD momentum and weight decay in the committed state: the momentum buffers (zero
        before step 0, as the proofs' chain defines them) and both constants; nothing for plain
        SGD, whose states and digests stay as they were."""
        engine = self.engine
        if not (engine.momentum or engine.weight_decay):
            return
        meta["momentum"], meta["weight_decay"] = engine.momentum, engine.weight_decay
        for i, (vw, vb) in enumerate(zip(engine.velocity_w, engine.velocity_b, strict=True)):
            tensors[f"fixed/VW{i + 1}"] = torch.from_numpy(vw.copy())
            tensors[f"fixed/Vb{i + 1}"] = torch.from_numpy(vb.copy())

    def _buffers(self, net: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        """The momentum buffers torch holds for ``net`` (parameter order; none before step 0)."""
        if not self.engine.momentum:
            return []
        return [b for b in momentum_buffers(optimizer, net).values() if b is not None]

    def _template(self, x: torch.Tensor, y: torch.Tensor,
                  ops: tuple[InputOp, ...] = ()) -> list[dict[str, Any]]:
        """The graph of the provable template step (:mod:`..fixed.template`) with the run's SGD
        settings, on the canonical network the verifier rebuilds from a statement (so a network
        the verifier would not recognise is refused here, at step 0, not after the proofs);
        cached per batch shape, input scaling and whether SGD's momentum buffers exist yet
        (torch clones the first one, updates it in place later)."""
        buffers = self._had_buffers  # SGD momentum buffers before the step (from step 1 on)
        key = (tuple(x.shape), tuple(y.shape), buffers, ops, self.engine.lr)
        if key not in self._templates:
            group = self.optimizers[0].param_groups[0]
            conv = self.engine.conv.as_tuple() if self.engine.conv is not None else ()
            with torch.random.fork_rng():  # building it must not move the run's RNG
                canonical = template_network(self.engine.dims, conv).to(
                    next(self.net.parameters()).dtype)
            with torch.no_grad():
                for p in canonical.parameters():
                    p.zero_()  # on the grid; values do not shape the graph
            self._templates[key] = template_graph(
                canonical, x, y, self.config, lr=group["lr"], momentum=group["momentum"],
                weight_decay=group["weight_decay"], foreach=group["foreach"], buffers=buffers,
                loss=self.loss_kind, step=self.next_step, input_ops=ops)
        return self._templates[key]

    def _run_lr(self) -> int:
        """The run's declared learning rate (its manifest's: the rate at its start). A step's own
        rate, set by an LR scheduler or by the user's ``optimizer_step``, is in its record
        (``extra.lr``) when it differs, and in its proof's statement."""
        fixed = self.manifest.get("fixed") or {}
        return int(fixed.get("lr", self.engine.lr))

    def _step_lr(self) -> int:
        """This step's public learning rate, as SGD applied it (read after the user's
        ``optimizer_step`` and the schedulers ran); momentum and weight decay must not move."""
        lr, momentum, weight_decay = sgd_settings(self.optimizers[0])
        s, engine = self.config.frac_bits, self.engine
        moved = [f"{name}={value}" for name, value, fixed in (
            ("momentum", momentum, engine.momentum), ("weight_decay", weight_decay, engine.weight_decay))
            if fixed_constant(value, s) != fixed]
        if moved:
            raise NotProvableError(
                f"step {self.next_step}: SGD's {' and '.join(moved)} differs from the run's "
                f"({engine.momentum} and {engine.weight_decay} at 2^-{s}): a schedule may move the "
                "learning rate only (e.g. OneCycleLR(cycle_momentum=False)); nothing was trained.")
        k = fixed_constant(lr, s)
        if not 0 < k < 1 << s:
            raise NotProvableError(
                f"step {self.next_step}: the learning rate {lr} rounds to {k}/2^{s} in fixed point; "
                f"the proofs need 0 < lr < 1 at 2^-{s} (lr >= 2^-{s + 1}): nothing was trained. "
                "HINT: a schedule whose rate stays in that range (a warm-up from a small rate, not "
                "from 0), or a larger frac_bits.")
        return k

    def _check_provable(self, graph: list[dict[str, Any]], x, y) -> tuple[InputOp, ...]:
        """Refuse a step whose graph is not the provable template; return what the step does to
        its batch input first (``x.view(B, -1)``, ``x / 16``), which the template includes."""
        cfg = self.config
        ops = input_ops_from_graph(graph, cfg.frac_bits, tuple(x.shape[1:]))
        try:
            check_input_ops(ops, cfg.frac_bits, cfg.value_bits, x.shape[0], self.engine.dims[0],
                            self.engine.conv is not None)
        except InputScaleError as exc:
            raise NotProvableError(f"step {self.next_step}: {exc}; nothing was trained.") from None
        if self.engine.conv is None and view_of(ops) is None and tuple(x.shape[1:]) != (
                self.engine.dims[0],):
            raise NotProvableError(
                f"step {self.next_step}: the batch inputs have shape {tuple(x.shape)} and the "
                f"network reads ({x.shape[0]}, {self.engine.dims[0]}); the provable step flattens "
                "them with one view first (x.view(x.size(0), -1), x.flatten(1)); nothing was "
                "trained.")
        template = self._template(x, y, ops)
        if graph == template:
            return ops
        for i, (got, want) in enumerate(zip(graph, template, strict=False)):
            if got != want:
                raise NotProvableError(
                    f"step {self.next_step}: the training_step's traced graph is not the provable "
                    f"MLP template (Linear/ReLU, {_LOSS_SPELLING[self.loss_kind]} on the batch, "
                    f"optionally x * c or x / c first, the SGD step; the network as the canonical "
                    "nn.Sequential([Conv2d, ReLU, Flatten,] Linear, ReLU, ..., Linear) that the "
                    f"verifier rebuilds): op {i} is {got} where the template has {want}. Fixed-point mode "
                    "proves only that graph for now (issue 12); nothing was trained.")
        raise NotProvableError(
            f"step {self.next_step}: the training_step's traced graph has {len(graph)} ops, the "
            f"provable MLP template {len(template)}; nothing was trained.")

    def finish_step(self) -> None:
        """Check the traced step is the provable template, compute its tape with the engine,
        check the step the user's code took bit for bit against it, and commit."""
        tracer, self.tracer = self.tracer, None
        x, y = self._check_batch()
        params = list(self.net.parameters())
        buffers = self._buffers(self.net, self.optimizers[0])
        outputs = [tracer.ref(p) for p in [*params, *buffers]]
        graph = tracer.graph(outputs)
        try:
            self.engine.lr = self._step_lr()
            ops = self._check_provable(graph, x, y)
        except NotProvableError:
            self._write_back()  # the engine holds the weights (and buffers) before the step
            raise
        xq = tracer.ints(x, "batch:0")
        if self.loss_kind == "xent":
            yq = onehot_targets(y.detach().cpu().numpy(), self.engine.dims[-1], self.config.frac_bits)
        else:
            yq = tracer.ints(y, "batch:1")
            if yq.ndim == 1:
                yq = yq[:, None]
        self.engine.input_ops = ops  # the step's own view and/or x * c, x / c (): none)
        tape = self.engine.step(xq, yq)
        after = [tracer.ints(p, "check") for p in params]
        expect = [a for i in range(1, self.engine.num_layers + 1)
                  for a in (tape.tensors[f"W{i}n"], tape.tensors[f"b{i}n"])]
        if self.engine.momentum:  # torch's buffers after the step: the tape's V'
            after += [tracer.ints(b, "check") for b in buffers]
            expect += [a for i in range(1, self.engine.num_layers + 1)
                       for a in (tape.tensors[f"VW{i}n"], tape.tensors[f"Vb{i}n"])]
        if not all(a.size == b.size and np.array_equal(a.reshape(b.shape), b)
                   for a, b in zip(after, expect, strict=True)):  # (conv weights: flattened)
            raise AssertionError("the intercepted step differs from the integer engine's tape")
        s = self.config.frac_bits
        logits = tape.tensors[f"Z{self.engine.num_layers}"]
        if self.loss_kind == "xent":  # float64 from the fixed logits: logged, not proved
            self.last_loss = xent_loss(logits, tape.tensors["y"], s)
        else:
            output = dequantize(logits, s)
            self.last_loss = float(np.mean((output - dequantize(tape.tensors["y"], s)) ** 2))
        self.last_tape = tape
        extra: dict[str, Any] = {"loss": self.last_loss, "graph_sha256": graph_digest(graph)}
        if self.engine.lr != self._run_lr():  # a scheduler's rate: public, in its statement too
            extra["lr"] = self.engine.lr
        if self.next_step == 0 or self._graph_digest != extra["graph_sha256"]:
            extra["graph"] = graph  # the canonical op list, whenever it is new
        self._graph_digest = extra["graph_sha256"]
        if self.save_tapes and tape is not None:
            path = self.tape_path(self.next_step)
            if not self._expected:  # a re-verified step keeps its committed tape
                self.tape_dir.mkdir(exist_ok=True)
                tape.save(path)
            extra["tape"] = str(path.relative_to(self.run.path))
            extra["tape_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        self._commit_step(StepLog(self.next_step, []), extra)
        self._pending_batch = None

