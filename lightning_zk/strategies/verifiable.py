"""VerifiableStrategy: train any LightningModule so that another machine can replay it bit-exactly.

The strategy is a :class:`~lightning.pytorch.strategies.SingleDeviceStrategy` that

- computes in ``compute_dtype`` and rounds every hardware-dependent op result, the parameters and
  the optimizer state to the committed grid (float32 with ``mantissa_bits`` mantissa bits),
  logging the few roundings other hardware could decide differently (:mod:`lightning_zk.rounding`);
- fixes and records the data order, and serves dropout and other random draws from a
  device-independent stream keyed by ``(seed, step)``;
- owns the run directory (:mod:`lightning_zk.ledger.rundir`): manifest, initial state, one step
  record (batch, state and log digests) and one rounding log per step.

The heavy lifting per step lives in :class:`~lightning_zk.strategies.session.TrainingSession`
(which also says what a committed step is); the step boundary is a callback the strategy puts
first in the Trainer's callbacks (:mod:`.boundary`).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.strategies import SingleDeviceStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import RunningStage, TrainerFn

from ..fixed import FixedPointConfig
from ..ledger.rundir import RunDirectory, RunDirectoryError
from ..ledger.state import STATE_DIGEST_FORMATS
from ..rounding.precision import GridSpec, PrecisionError
from ..rounding.threshold import ThresholdPolicy
from .boundary import StepBoundary
from .data import make_deterministic
from .determinism import DeterministicFlags
from .fixed import FixedPointSession
from .precision import (
    VerifiablePrecision,
    check_trainer_settings,
    check_user_precision,
    committed_precision,
)
from .session import TrainingSession

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "64": torch.float64, "32": torch.float32}


def _parse_dtype(value: str | torch.dtype) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    key = str(value).removeprefix("torch.")
    if key not in _DTYPES:
        raise PrecisionError(
            f"VerifiableStrategy(compute_dtype={value!r}) is not supported; use 'float64' (default) "
            "or 'float32'."
        )
    return _DTYPES[key]


def _parse_threshold(value: ThresholdPolicy | float | Mapping[str, Any] | None) -> ThresholdPolicy:
    if isinstance(value, ThresholdPolicy):
        return value
    if value is None:
        return ThresholdPolicy()
    if isinstance(value, Mapping):
        return ThresholdPolicy.from_json(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ThresholdPolicy(tau=float(value))
    raise TypeError(
        f"VerifiableStrategy(threshold={value!r}): expected a float τ, a dict with keys "
        "tau/per_kind/per_op, a ThresholdPolicy, or None for the safe default."
    )


class VerifiableStrategy(SingleDeviceStrategy):
    """Single-device training whose every step can be replayed bit-for-bit on other hardware.

    Args:
        run_dir: where the run is committed; default ``<default_root_dir>/verifiable/run_<N>``.
        seed: keys the data order and every random draw (dropout, ...). The model's initial weights
            are committed as they are, so seed them yourself (``lightning.seed_everything``).
        compute_dtype: ``"float64"`` (default) or ``"float32"`` (then ``mantissa_bits < 23``).
        mantissa_bits: float32 mantissa bits kept in committed values: 23 = float32, 7 = the
            bfloat16 grid, 10 = the float16 mantissa.
        threshold: logging threshold τ as a fraction of the committed ulp: a float, a dict
            ``{"tau": ..., "per_kind": {...}, "per_op": {...}}``, a :class:`ThresholdPolicy`,
            or ``None`` for the safe default (see :func:`~lightning_zk.rounding.threshold.default_tau`).
        device: the device to train on; default: the Trainer's accelerator (``cuda:0`` or ``cpu``).
        mode: ``"rounded"`` (default: any model, rounded precision and rounding log) or
            ``"fixed"``: the module's own step with every ATen op executed in exact fixed point;
            steps whose graph is a Linear+ReLU MLP with MSE and plain SGD are proved in zero
            knowledge (``ProofCallback``), other graphs are refused (docs/fixed_point.md).
        frac_bits: fixed-point scale 2^frac_bits (``mode="fixed"``).
        value_bits: signed width every fixed-point tensor must fit (``mode="fixed"``).
        save_tapes: spill each step's witness tape to ``RUN/tapes/`` (``mode="fixed"``), for
            ``lightning-zk prove RUN``.
        background_commit: digest each step's state on a worker thread while the next steps run
            (a copy taken at the step boundary; at most two in flight; a worker error is raised
            on the training thread). Steps are committed in order once their digests are known,
            so the run directory is the same as inline, only written up to two steps later.
            Rounded mode only.
        state_digest: the state digest format of a new run, ``"lightning-zk/state/v1"``
            (SHA-256) or ``"lightning-zk/state/v2-blake3"`` (BLAKE3, the default); a resumed run
            keeps its own (:mod:`lightning_zk.ledger.state`).

    Every training batch becomes one committed step, with all its optimizer updates (manual
    optimization, several optimizers), the scheduler steps and validation that follow it (see
    :mod:`lightning_zk.strategies.session`); the Trainer settings that shape the run are recorded
    for the replay. After ``fit`` the module is float32: the committed precision.

    Raises:
        PrecisionError: unsupported ``compute_dtype``/``mantissa_bits`` combination.
        ThresholdError: τ outside [0, 0.5].
        ValueError: a conflicting ``Trainer(precision=...)``, a wall-clock ``val_check_interval``,
            or accumulation in fixed-point mode.
        RunDirectoryError: an unwritable run directory, or one that belongs to another run.

    Example::

        trainer = Trainer(strategy=VerifiableStrategy(run_dir="runs/digits", seed=7), max_steps=50)
        trainer.fit(model, datamodule=data)
    """

    strategy_name = "verifiable"

    def __init__(
        self,
        run_dir: str | Path | None = None,
        seed: int = 0,
        compute_dtype: str | torch.dtype = "float64",
        mantissa_bits: int = 23,
        threshold: ThresholdPolicy | float | dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        mode: str = "rounded",
        frac_bits: int = 16,
        value_bits: int = 24,
        save_tapes: bool = True,
        background_commit: bool = False,
        state_digest: str | None = None,
    ) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise ValueError(f"VerifiableStrategy(seed={seed!r}): seed must be an int in [0, 2**63).")
        if mode not in ("rounded", "fixed"):
            raise ValueError(
                f"VerifiableStrategy(mode={mode!r}): use 'rounded' (any model, replayable) or "
                "'fixed' (Linear+ReLU MLPs in exact fixed point, provable in zero knowledge)."
            )
        if not isinstance(background_commit, bool):
            raise ValueError(f"VerifiableStrategy(background_commit={background_commit!r}): "
                             "expected True or False.")
        if background_commit and mode == "fixed":
            raise ValueError(
                "VerifiableStrategy(mode='fixed', background_commit=True): a fixed-point step is "
                "proved from its committed record at the step boundary, and its state (integer "
                "MLP weights) is digested in microseconds. HINT: background_commit is for "
                "mode='rounded' with large models."
            )
        if state_digest is not None and state_digest not in STATE_DIGEST_FORMATS:
            raise ValueError(f"VerifiableStrategy(state_digest={state_digest!r}): use one of "
                             f"{', '.join(STATE_DIGEST_FORMATS)}, or None for the default.")
        self.background_commit = background_commit
        self.state_digest = state_digest
        self.mode = mode
        self.fixed_config = FixedPointConfig(frac_bits=frac_bits, value_bits=value_bits)
        self.frac_bits, self.value_bits, self.save_tapes = frac_bits, value_bits, bool(save_tapes)
        self.spec = GridSpec(_parse_dtype(compute_dtype), mantissa_bits)
        self.threshold_policy = _parse_threshold(threshold)
        self.thresholds = self.threshold_policy.resolve(self.spec)
        self.seed = seed
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._explicit_device = device is not None
        self._init_base_strategy(device if device is not None else "cpu")
        self.session: TrainingSession | None = None
        self.replay_source: RunDirectory | None = None  # set by lightning_zk.audit.replay
        self.replay_start = None  # ReplayStart: where a replay begins (default: step 0)
        self.replay_stop: int | None = None  # the replay ends before this step (default: all)
        self._flags = DeterministicFlags()
        self._batch_order = None
        self._user_precision = None

    def _init_base_strategy(self, device: str | torch.device) -> None:
        """Initialise the Lightning strategy underneath (``VerifiableDDPStrategy``: DDP's)."""
        SingleDeviceStrategy.__init__(self, device=device)

    @classmethod
    def from_manifest(
        cls,
        manifest: Mapping[str, Any],
        run_dir: str | Path | None = None,
        device: str | torch.device | None = None,
    ) -> VerifiableStrategy:
        """The strategy a committed run was trained with (its arithmetic, τ and seed).

        ``manifest`` is a schema-checked manifest (``RunDirectory.read_manifest``); a setting this
        lightning-zk rejects is a :class:`RunDirectoryError` naming the manifest field.
        """
        config = manifest["strategy"]
        if config.get("mode") != "rounded":
            raise RunDirectoryError(
                f"manifest field 'strategy.mode' is {config.get('mode')!r}: only a rounded-mode run "
                "is replayed; check a fixed-point run with `lightning-zk verify RUN` (zk proofs)"
            )
        try:
            strategy = cls(
                run_dir=run_dir,
                seed=config["seed"],
                compute_dtype=config["compute_dtype"],
                mantissa_bits=config["mantissa_bits"],
                threshold=ThresholdPolicy.from_json(config["threshold_policy"]),
                device=device,
            )
        except (ValueError, TypeError, KeyError) as err:  # PrecisionError, ThresholdError, ...
            raise RunDirectoryError(f"manifest field 'strategy' is not usable: {err}") from err
        if strategy.thresholds.to_json() != config.get("thresholds"):
            raise RunDirectoryError(
                f"manifest field 'strategy.thresholds': the run's resolved thresholds "
                f"{config.get('thresholds')} differ from what this lightning-zk resolves from its "
                f"policy ({strategy.thresholds.to_json()})"
            )
        return strategy

    # --- configuration -----------------------------------------------------------------------
    def config_json(self) -> dict[str, object]:
        """Everything about the strategy an auditor needs to reproduce the arithmetic."""
        if self.mode == "fixed":
            return {"mode": "fixed", "frac_bits": self.frac_bits, "value_bits": self.value_bits,
                    "seed": self.seed}
        return {
            "mode": "rounded",
            **self.spec.to_json(),
            "seed": self.seed,
            "threshold_policy": self.threshold_policy.to_json(),
            "thresholds": self.thresholds.to_json(),
        }

    def setup_environment(self) -> None:
        if self._user_precision is None:
            self._user_precision = self.precision_plugin
        fitting = self._fitting()
        if self.mode == "fixed":  # the torch module only mirrors the integer weights in float32
            check_user_precision(self._user_precision, torch.float32)
        else:
            check_user_precision(self._user_precision, self.spec.compute_dtype)
            # Fit computes in the compute dtype; validate/test/predict use the committed float32 model.
            self.precision_plugin = VerifiablePrecision(self.spec.compute_dtype) if fitting \
                else self._user_precision
        if not self._explicit_device:
            if isinstance(self.accelerator, CUDAAccelerator):
                self._root_device = torch.device("cuda", torch.cuda.current_device())
            elif not isinstance(self.accelerator, CPUAccelerator):
                raise ValueError(
                    f"VerifiableStrategy does not support accelerator "
                    f"{type(self.accelerator).__name__}: it needs float64 arithmetic (CPU or CUDA)."
                )
        if fitting:
            self._flags.enable()
        super().setup_environment()

    def _fitting(self) -> bool:
        module = self.lightning_module
        trainer = getattr(module, "_trainer", None) if module is not None else None
        return trainer is not None and trainer.state.fn == TrainerFn.FITTING

    def setup(self, trainer) -> None:
        super().setup(trainer)
        if trainer.state.fn != TrainerFn.FITTING:
            return
        check_trainer_settings(trainer, self.mode)
        StepBoundary.install(trainer, self)
        if self.replay_source is not None and self.replay_start is not None and self.replay_start.step:
            from .replay import restart_loops

            restart_loops(trainer, self.replay_start)

    def process_dataloader(self, dataloader: object) -> object:
        trainer = self.lightning_module.trainer if self.lightning_module is not None else None
        if trainer is None or trainer.state.stage != RunningStage.TRAINING:
            return dataloader
        records = self.replay_source.read_steps() if self.replay_source is not None else None
        dataloader, self._batch_order = make_deterministic(
            dataloader, self.seed, records, epoch=lambda: trainer.current_epoch)
        return dataloader

    # --- training lifecycle ------------------------------------------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()
        trainer = self.lightning_module.trainer
        if self.replay_source is not None:
            from .replay import ReplaySession

            if self.mode == "fixed":
                raise ValueError(
                    "replaying a fixed-point run is not needed: its integer steps are identical "
                    "everywhere; check it with `lightning-zk verify RUN` (zk proofs)"
                )
            self.session = ReplaySession.open(self, trainer, self._batch_order)
        elif self.mode == "fixed":
            if not self.lightning_module.automatic_optimization:
                raise ValueError("fixed-point mode needs automatic optimization")
            self.session = FixedPointSession.open(self, trainer, self._batch_order)
        else:
            self.session = TrainingSession.open(self, trainer, self._batch_order)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self.session is not None:
            self.session.begin_batch(batch, batch_idx)

    @contextmanager
    def _intercepted(self) -> Generator[None, None, None]:
        """Run a scope of the open step (training, backward, update, validation) under the mode."""
        session = self.session
        if session is None or not session.in_step:
            yield
            return
        with session.mode.active():
            yield

    def training_step(self, *args: Any, **kwargs: Any):
        if self._fixed_step_open():  # under the session's fixed-point tracer (optimizer_step)
            return super().training_step(*args, **kwargs)
        with self._intercepted():
            return super().training_step(*args, **kwargs)

    def validation_step(self, *args: Any, **kwargs: Any):
        # Validation during fit belongs to the open step: its metrics can steer the run.
        with self._intercepted():
            return super().validation_step(*args, **kwargs)

    def backward(self, closure_loss, optimizer, *args: Any, **kwargs: Any):
        if self._fixed_step_open():  # the user's backward, in exact fixed point
            return super().backward(closure_loss, optimizer, *args, **kwargs)
        with self._intercepted():
            return super().backward(closure_loss, optimizer, *args, **kwargs)

    def optimizer_step(self, optimizer, closure, model=None, **kwargs: Any):
        if self._fixed_step_open():
            try:
                with self.session.start_trace():  # training_step, backward, SGD: intercepted
                    super().optimizer_step(optimizer, closure, model, **kwargs)
            except BaseException:
                self.session.abandon_trace()
                raise
            self.session.finish_step()
            return None
        with self._intercepted():
            return super().optimizer_step(optimizer, closure, model, **kwargs)

    def _fixed_step_open(self) -> bool:
        return self.mode == "fixed" and self.session is not None and self.session.in_step

    def on_train_end(self) -> None:
        if self.session is not None:
            self.session.close()
        super().on_train_end()

    def on_exception(self, exception: BaseException) -> None:
        if self.session is not None:
            self.session.abort()
        super().on_exception(exception)

    def teardown(self) -> None:
        trainer = getattr(self.lightning_module, "_trainer", None)
        fitted = self.mode == "rounded" and self._fitting()
        StepBoundary.remove(trainer)
        self._flags.restore()
        if self.session is not None:  # normally released by close/abort already
            self.session.release()
        super().teardown()
        if fitted and self.lightning_module is not None:
            # Give the user the committed model: float32 holds every grid value exactly.
            self.lightning_module.to(dtype=self.spec.committed_dtype)

    # --- checkpoints carry the run's identity ------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options=None) -> None:
        session = self.session
        if session is not None:
            checkpoint["lightning_zk"] = session.checkpoint_marker()
        if self.mode == "rounded":
            checkpoint = committed_precision(checkpoint, self.spec)
        if session is None or not session.step_open:
            super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)
            return
        # Saved inside an open step: written once the step is committed (kill safety, see
        # TrainingSession.after_commit), with the tensors as they are now.
        frozen = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().clone())
        save = super().save_checkpoint
        session.after_commit(lambda: save(frozen, filepath, storage_options=storage_options))

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        self._resume_marker = checkpoint.get("lightning_zk")
        return checkpoint

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        strategy_registry.register(
            cls.strategy_name,
            cls,
            description="Verifiable training: rounded precision, rounding log, run directory",
        )


if VerifiableStrategy.strategy_name not in StrategyRegistry:
    VerifiableStrategy.register_strategies(StrategyRegistry)
