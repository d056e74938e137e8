"""Zero-knowledge proofs in a run directory: prove units of steps, verify a run's whole chain.

Layout (fixed-point runs)::

    RUN/tapes/step-XXXXXXXX.npz                 witness tape of each step (private!)
    RUN/proofs/unit-FFFFFFFF-LLLLLLLL.lzkt      proof of steps F..L (one step, or an epoch)
    RUN/proofs/unit-FFFFFFFF-LLLLLLLL.json      its public statement
    RUN/proofs/seal.lzkt                        closes the chain (opens the last output weights)
    RUN/tapes/batch-openings.json               per unit, the secret seed of its batch
                                                commitment (private, like the tapes!)
    RUN/tapes/chain/unit-FFFFFFFF-LLLLLLLL.npz  state that continues the chain after the last
                                                unit: weights and commitment seed (private!)

A chain is proved in order by a :class:`ChainProver`; before each unit is published, the private state
that continues the chain after it goes to ``RUN/tapes/chain/`` (the seed of the unit's output-weights
commitment and the weights), so a ``ProofCallback`` on a resumed training run (or a new prover after
a crash) continues the chain instead of re-proving it. A sealed chain is final. :func:`verify_run` checks every proof, the chain (consecutive
steps, each unit's input weights = the previous unit's output weights, the seal), that the proven
steps are exactly the run's committed steps with the run's public constants, and the Merkle ledger
when there is one. :func:`check_run_batches` is the data owner's check that each unit's public
batch commitment commits to *their* data (it needs the private seeds of ``batch-openings.json``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_json
from ..fixed import WitnessTape
from ..fixed.format import quantize
from ..ledger import safeio
from ..ledger.claims import check_run_claims
from ..ledger.errors import RunDirectoryError
from ..ledger.merkle import LedgerError
from ..ledger.rundir import RunDirectory
from ..zk.errors import ProofFormatError, VerificationError
from ..zk.training import (
    ChainError,
    SealProof,
    TrainingStatement,
    UnitProof,
    decode_training_proof,
    encode_training_proof,
    prove_seal,
    prove_unit,
    resume_link,
    verify_chain,
    verify_unit,
)
from ..zk.training.batch import BatchCheckError, check_batch  # noqa: F401 - re-exported

PROOF_DIR = "proofs"
SEAL_FILE = "seal.lzkt"
TAPE_DIR = "tapes"  # = strategies.fixed.TAPE_DIR: private, never published
BATCH_OPENINGS_FILE = "batch-openings.json"
CHAIN_DIR = "chain"  # under tapes/: private state that continues a chain after its last unit
BATCH_OPENINGS_FORMAT = "lightning-zk/batch-openings"
MAX_PROOF_BYTES = 1 << 30  # largest proof file a verifier reads
MAX_TAPE_BYTES = 1 << 34  # largest witness tape the prover reads
_UNIT_RE = re.compile(r"^unit-(\d{8,})-(\d{8,})\.lzkt$")


class ProofRunError(RuntimeError):
    """A run whose proofs cannot be produced or read (missing tapes, malformed files)."""


def unit_path(run: RunDirectory, first: int, last: int) -> Path:
    return run.path / PROOF_DIR / f"unit-{first:08d}-{last:08d}.lzkt"


def batch_openings_path(run_dir: str | Path) -> Path:
    """``RUN/tapes/batch-openings.json``: the private seeds of the units' batch commitments."""
    return Path(run_dir) / TAPE_DIR / BATCH_OPENINGS_FILE


def read_batch_openings(path: str | Path) -> dict[str, dict[str, Any]]:
    """Unit name (``unit-FFFFFFFF-LLLLLLLL``) -> {first, last, seed (hex), batch (root hex)}."""
    path = Path(path)
    if not os.path.lexists(path):
        return {}
    try:
        data = json.loads(safeio.read_regular(path, "batch openings", safeio.MAX_JSON_BYTES))
        if data.get("format") != BATCH_OPENINGS_FORMAT or data.get("version") != 1:
            raise ValueError("not a lightning-zk batch-openings file (version 1)")
        units = dict(data["units"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError,
            RunDirectoryError) as err:
        raise ProofRunError(f"cannot read batch openings {path}: {err}") from err
    return units


def _write_batch_openings(path: Path, units: dict[str, dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"format": BATCH_OPENINGS_FORMAT, "version": 1, "units": units})


def chain_state_path(run_dir: str | Path, unit: str) -> Path:
    """``RUN/tapes/chain/UNIT.npz``: the prover state that continues the chain after ``unit``."""
    return Path(run_dir) / TAPE_DIR / CHAIN_DIR / f"{unit}.npz"


def _save_chain_state(path: Path, link: Any) -> None:
    arrays = {f"param_{k}": np.asarray(v, dtype=np.int64) for k, v in link.params.items()}
    buf = io.BytesIO()
    np.savez(buf, b_out_seed=np.frombuffer(link.b_out_seed, dtype=np.uint8), **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def _load_chain_state(path: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            seed = z["b_out_seed"].astype(np.uint8).tobytes()
            params = {k[len("param_"):]: z[k] for k in z.files if k.startswith("param_")}
    except (OSError, ValueError, KeyError) as err:
        raise ProofRunError(f"cannot read the chain state {path}: {err}") from err
    return seed, params


def _unit_files(run: RunDirectory) -> list[tuple[int, int, Path]]:
    proof_dir = run.path / PROOF_DIR
    if not proof_dir.is_dir():
        return []
    found = [(int(m.group(1)), int(m.group(2)), p) for p in proof_dir.iterdir()
             if (m := _UNIT_RE.match(p.name))]
    return sorted(found)


def _read_public(run: RunDirectory, path: Path, limit: int) -> bytes:
    """A file of ``RUN/proofs/`` (resolved inside the run, regular, at most ``limit`` bytes)."""
    name = path.relative_to(run.path).as_posix()
    try:
        return safeio.read_regular(run.file(name, "a proof file"), name, limit)
    except RunDirectoryError as err:
        raise ProofRunError(f"cannot read {path}: {err}") from err


def _read_unit(path: Path, run: RunDirectory | None = None) -> tuple[TrainingStatement, UnitProof]:
    """A published unit's statement and proof (never unpickled)."""
    run = run or RunDirectory(path.parent.parent)
    data = _read_public(run, path.with_suffix(".json"), safeio.MAX_JSON_BYTES)
    try:
        stmt = TrainingStatement.from_bytes(data)
    except (RecursionError, OverflowError) as err:
        raise ProofRunError(f"{path.with_suffix('.json')}: not a usable statement ({err})") from err
    return stmt, decode_training_proof(_read_public(run, path, MAX_PROOF_BYTES), UnitProof)


def chain_progress(run_dir: str | Path) -> tuple[int, bool]:
    """(first step the run's proof chain does not cover yet, whether the chain is sealed)."""
    run = RunDirectory(run_dir)
    units = _unit_files(run)
    sealed = (run.path / PROOF_DIR / SEAL_FILE).is_file()
    return (units[-1][1] + 1 if units else 0), sealed


class ChainProver:
    """Proves consecutive units of one chain and writes them (atomically) under ``RUN/proofs/``.

    A chain is resumable: before a unit is published, the state that continues the chain after
    it (the seed of its output-weights commitment and the integer weights) is saved privately in
    ``RUN/tapes/chain/``, so a new ``ChainProver`` on a run whose chain is not sealed continues
    after the last published unit (a crashed or restarted training run keeps its proofs). A
    sealed chain cannot be extended: the seal opened its last weights commitment.
    Each unit's batch-commitment seed is kept privately in ``RUN/tapes/batch-openings.json``.
    """

    def __init__(self, run_dir: str | Path, backend: str = "auto", **prove_kwargs: Any) -> None:
        self.run = RunDirectory(run_dir)
        self.backend = backend
        self.prove_kwargs = prove_kwargs
        self.link = None
        self.next_step: int | None = None
        self.sealed = False
        (self.run.path / PROOF_DIR).mkdir(parents=True, exist_ok=True)
        self._resume()

    def _resume(self) -> None:
        units = _unit_files(self.run)
        if not units:
            return
        first, last, path = units[-1]
        self.next_step = last + 1
        if (self.run.path / PROOF_DIR / SEAL_FILE).is_file():
            self.sealed = True
            return
        hint = "re-prove the run with `lightning-zk prove RUN`"
        state = chain_state_path(self.run.path, path.stem)
        if not state.is_file():
            raise ProofRunError(f"cannot continue the chain after {path.name}: its private chain "
                                f"state {state} is missing; {hint}")
        try:
            stmt, proof = _read_unit(path, self.run)
            pending = verify_unit(proof, stmt)
            seed, params = _load_chain_state(state)
            self.link = resume_link(stmt, pending, params, seed, backend=self.backend)
        except (OSError, ValueError, VerificationError, ProofFormatError) as err:
            raise ProofRunError(f"cannot continue the chain after {path.name}: {err}; {hint}") from err

    def prove(self, tapes: Sequence[WitnessTape]) -> Path:
        """Prove one unit (the consecutive steps of ``tapes``) and write proof + statement."""
        if self.sealed:
            raise ProofRunError(
                f"the proof chain of {self.run.path} is sealed at step {self.next_step - 1}: new "
                "steps cannot extend it (the seal opened its last weights commitment). Re-prove "
                "the whole run with `lightning-zk prove RUN` once training ends.")
        if self.next_step is not None and tapes and tapes[0].step != self.next_step:
            raise ProofRunError(f"the chain continues at step {self.next_step}; got a unit "
                                f"starting at step {tapes[0].step}")
        proof, stmt, link = prove_unit(list(tapes), self.link, backend=self.backend,
                                       **self.prove_kwargs)
        first, last = stmt.step_start, stmt.step_start + stmt.num_steps - 1
        path = unit_path(self.run, first, last)
        # private state first: a published unit always has what continues the chain after it
        _save_chain_state(chain_state_path(self.run.path, path.stem), link)
        self._save_batch_seed(path.stem, stmt, link.batch_seed)
        atomic_write_bytes(path.with_suffix(".json"), stmt.to_bytes())
        atomic_write_bytes(path, encode_training_proof(proof))
        self.link, self.next_step = link, last + 1
        self._drop_chain_states(keep=path.stem)
        return path

    def _drop_chain_states(self, keep: str | None) -> None:
        folder = self.run.path / TAPE_DIR / CHAIN_DIR
        for old in folder.glob("unit-*.npz") if folder.is_dir() else ():
            if old.stem != keep:
                old.unlink(missing_ok=True)

    def _save_batch_seed(self, unit: str, stmt: TrainingStatement, seed: bytes) -> None:
        where = batch_openings_path(self.run.path)
        units = read_batch_openings(where)
        units[unit] = {"first": stmt.step_start, "last": stmt.step_start + stmt.num_steps - 1,
                       "seed": seed.hex(), "batch": stmt.batch.root.hex()}
        _write_batch_openings(where, units)

    def seal(self) -> Path | None:
        """Close the chain (no-op when nothing was proved); it cannot be continued afterwards."""
        if self.link is None:
            return None
        path = self.run.path / PROOF_DIR / SEAL_FILE
        atomic_write_bytes(path, encode_training_proof(prove_seal(self.link)))
        self.sealed = True
        self._drop_chain_states(keep=None)
        return path


def load_tapes(run: RunDirectory, steps: Sequence[int]) -> list[WitnessTape]:
    records = run.read_steps()
    tapes = []
    for step in steps:
        extra = records[step].extra if step < len(records) else {}
        if "tape" not in extra:
            raise ProofRunError(
                f"step {step} of {run.path} has no witness tape (train with "
                "VerifiableStrategy(mode='fixed', save_tapes=True))"
            )
        tapes.append(_load_tape(run, step, extra))
    return tapes


def _load_tape(run: RunDirectory, step: int, extra: Mapping[str, Any]) -> WitnessTape:
    """The tape a record names, read inside the run and checked against the record's digest."""
    what = f"witness tape of step {step}"
    try:
        path = run.file(extra["tape"], what)
        data = safeio.read_regular(path, what, MAX_TAPE_BYTES)
    except RunDirectoryError as err:
        raise ProofRunError(str(err)) from err
    if hashlib.sha256(data).hexdigest() != extra.get("tape_sha256"):
        raise ProofRunError(f"{path} is not the tape step {step} committed (its sha256 differs "
                            "from the record's tape_sha256)")
    return WitnessTape.load(io.BytesIO(data), source=str(path))


def plan_units(run: RunDirectory, aggregate: str) -> list[list[int]]:
    """Step groups to prove: one per step, or one per epoch (FAC4DNN aggregation)."""
    if aggregate not in ("step", "epoch"):
        raise ValueError(f"aggregate={aggregate!r}: use 'step' or 'epoch'")
    records = run.read_steps()
    if aggregate == "step":
        return [[r.step] for r in records]
    units: list[list[int]] = []
    for r in records:
        if units and records[units[-1][-1]].epoch == r.epoch:
            units[-1].append(r.step)
        else:
            units.append([r.step])
    return units


def prove_run(run_dir: str | Path, aggregate: str = "step", backend: str = "auto",
              on_unit: Callable[[list[int]], None] | None = None, **prove_kwargs: Any) -> int:
    """Prove every committed step of a fixed-point run from its tapes (replaces old proofs)."""
    run = RunDirectory(run_dir)
    units = plan_units(run, aggregate)
    if not units:
        raise ProofRunError(f"{run.path} commits no steps: nothing to prove")
    with run.lock("proving"):
        return _prove_all(run, units, backend, on_unit, prove_kwargs)


def _prove_all(run: RunDirectory, units: list[list[int]], backend: str,
               on_unit: Callable[[list[int]], None] | None, prove_kwargs: dict[str, Any]) -> int:
    proof_dir = run.path / PROOF_DIR
    if proof_dir.exists():
        for old in proof_dir.iterdir():
            if old.suffix in (".lzkt", ".json"):
                old.unlink()
    batch_openings_path(run.path).unlink(missing_ok=True)  # their seeds go with them
    for state in (run.path / TAPE_DIR / CHAIN_DIR).glob("unit-*.npz"):
        state.unlink()
    prover = ChainProver(run.path, backend=backend, **prove_kwargs)
    for steps in units:
        prover.prove(load_tapes(run, steps))
        if on_unit is not None:
            on_unit(steps)
    prover.seal()
    return len(units)


@dataclass
class ProofReport:
    ok: bool
    units: int = 0
    steps_proven: int = 0
    steps_committed: int = 0
    ledger: str = "absent"
    problems: list[str] = field(default_factory=list)


def _read_chain(run: RunDirectory) -> tuple[list[TrainingStatement], list[UnitProof], SealProof | None]:
    proof_dir = run.path / PROOF_DIR
    if not proof_dir.is_dir():
        raise ProofRunError(f"{run.path} has no proofs/ directory: nothing to verify")
    statements, proofs = [], []
    for _, _, path in _unit_files(run):
        stmt, proof = _read_unit(path, run)
        statements.append(stmt)
        proofs.append(proof)
    seal_path = proof_dir / SEAL_FILE
    seal = decode_training_proof(_read_public(run, seal_path, MAX_PROOF_BYTES), SealProof) \
        if os.path.lexists(seal_path) else None
    return statements, proofs, seal


def _check_against_run(run: RunDirectory, statements: Sequence[TrainingStatement],
                       report: ProofReport) -> None:
    manifest = run.read_manifest()
    config = manifest.get("strategy") or {}
    if config.get("mode") != "fixed":
        report.problems.append("the run was not trained in fixed-point mode")
        return
    fixed = manifest.get("fixed") or {}
    for stmt in statements:
        public = {"dims": list(stmt.dims), "frac_bits": stmt.frac_bits,
                  "value_bits": stmt.value_bits, "lr": stmt.lr}
        committed = {k: fixed.get(k) for k in public}
        if public != committed:
            report.problems.append(
                f"the unit at step {stmt.step_start} proves constants {public}, the run commits "
                f"{committed}")
            break


def verify_run(run_dir: str | Path) -> ProofReport:
    """Check a fixed-point run's proofs, chain, coverage and ledger (see the module doc)."""
    run = RunDirectory(run_dir)
    records = run.read_steps()
    report = ProofReport(ok=False, steps_committed=len(records))
    manifest = run.read_manifest()
    try:
        statements, proofs, seal = _read_chain(run)
        report.units = len(proofs)
        report.steps_proven = verify_chain(statements, proofs, seal)
    except (ChainError, VerificationError, ProofFormatError, ProofRunError, ValueError) as err:
        report.problems.append(f"proofs: {err}")
        return report
    _check_against_run(run, statements, report)
    first = statements[0].step_start if statements else None
    if first != 0 or report.steps_proven != len(records):
        report.problems.append(
            f"the proofs cover steps {first}..{(first or 0) + report.steps_proven - 1}, the run "
            f"commits steps 0..{len(records) - 1}")
    try:  # a finished run, all its records, and the ledger it published (if any) present
        claims = check_run_claims(run, manifest, records)
        report.ledger = "verified" if claims.ledger_root is not None else "absent"
    except (RunDirectoryError, LedgerError) as err:
        report.ledger = "FAILED" if isinstance(err, LedgerError) else report.ledger
        report.problems.append(f"run: {err}")
    report.ok = not report.problems
    return report


def _as_float(a: Any) -> Any:
    if hasattr(a, "detach"):  # a torch tensor (no torch import here)
        a = a.detach().to("cpu").double().numpy()
    return a


def check_run_batches(run_dir: str | Path, batches: Mapping[int, tuple[Any, Any]],
                      openings: str | Path | None = None) -> list[tuple[int, int]]:
    """Data owner's check: the run's proofs were made on *these* batches.

    Args:
        run_dir: the run directory (its public ``proofs/`` statements are read).
        batches: step -> (x, y) as the data loader yields them (float arrays or CPU tensors;
            quantised here with the statement's frac_bits exactly as fixed-point training does).
        openings: the private seeds file (default ``RUN/tapes/batch-openings.json``; the trainer
            hands it to the data owner).
    Returns:
        the (first, last) steps of every unit checked: every unit whose steps are all in
        ``batches`` (a unit with only some of its steps given is an error).
    Raises:
        BatchCheckError: a unit's public batch commitment is not the commitment of these
            batches under its seed (other data, another seed, or a seed file of another run).
        ProofRunError: no statements, no seed for a unit, or nothing to check.
    """
    run = RunDirectory(run_dir)
    seeds = read_batch_openings(openings if openings is not None else batch_openings_path(run.path))
    proof_dir = run.path / PROOF_DIR
    units = sorted(p for p in proof_dir.glob("unit-*.json")) if proof_dir.is_dir() else []
    checked = []
    for path in units:
        stmt = TrainingStatement.from_bytes(_read_public(run, path, safeio.MAX_JSON_BYTES))
        steps = range(stmt.step_start, stmt.step_start + stmt.num_steps)
        given = [s in batches for s in steps]
        if not any(given):
            continue
        if not all(given):
            raise ProofRunError(f"{path.stem} proves steps {steps.start}..{steps.stop - 1}: give "
                                "the batches of all of them")
        entry = seeds.get(path.stem)
        if entry is None:
            raise ProofRunError(f"no batch seed for {path.stem} in the batch openings")
        xs, ys = [], []
        for s in steps:
            x, y = (np.asarray(_as_float(a), dtype=np.float64) for a in batches[s])
            xs.append(quantize(x, stmt.frac_bits))
            ys.append(quantize(y[:, None] if y.ndim == 1 else y, stmt.frac_bits))
        try:
            seed = bytes.fromhex(str(entry["seed"]))
        except (KeyError, ValueError) as err:
            raise ProofRunError(f"malformed batch seed for {path.stem}: {err}") from err
        check_batch(stmt, xs, ys, seed)
        checked.append((steps.start, steps.stop - 1))
    if not checked:
        raise ProofRunError(f"{run.path}: no proof unit covers the given steps {sorted(batches)}")
    return checked

