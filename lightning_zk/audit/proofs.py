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
a crash) continues the chain instead of re-proving it. A sealed chain is final. Every statement is
bound to its run: the manifest's ``run_id`` and the ledger leaf of each step it proves, and it
carries the commitment parameters the manifest declares (``fixed.proof``).

:func:`verify_run` checks, under the *verifier's* :class:`~lightning_zk.zk.policy.VerifierPolicy`
(at least 100 bits): every proof; the chain (consecutive steps, each unit's input weights = the
previous unit's output weights, the seal); every unit file's name against its statement's steps;
every statement field against the manifest (run id, dims, scale, bound, learning rate, batch size,
proof parameters) and against the step records and the Merkle ledger (the leaf of every proven
step); that the proven steps are exactly the run's committed steps; and the ledger itself, which a
run that committed one must present. :func:`check_run_batches` is the data owner's check that each
unit's public batch commitment commits to *their* data (it needs the private seeds of
``batch-openings.json``).
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
from ..fixed.engine import loss_constant
from ..fixed.format import quantize
from ..fixed.softmax import onehot_targets
from ..ledger import safeio
from ..ledger.claims import check_run_claims
from ..ledger.errors import RunDirectoryError
from ..ledger.hiding import SCHEME
from ..ledger.merkle import LedgerError, leaf_bytes, leaf_hash
from ..ledger.rundir import PRIVATE_DIR, RunDirectory, StepRecord
from ..zk.errors import ParameterError, ProofFormatError, VerificationError
from ..zk.policy import VerifierPolicy
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
TAPE_DIR = PRIVATE_DIR  # private, never published
BATCH_OPENINGS_FILE = "batch-openings.json"
CHAIN_DIR = "chain"  # under tapes/: private state that continues a chain after its last unit
BATCH_OPENINGS_FORMAT = "lightning-zk/batch-openings"
MAX_PROOF_BYTES = 1 << 30  # largest proof file a verifier reads
MAX_TAPE_BYTES = 1 << 34  # largest witness tape the prover reads
_UNIT_RE = re.compile(r"^unit-(\d{8,})-(\d{8,})\.lzkt$")
_STATEMENT_RE = re.compile(r"^unit-(\d{8,})-(\d{8,})\.json$")
_TEMP_RE = re.compile(r"^\..+\.tmp$")  # an atomic write that a kill interrupted (lightning_zk.atomic)


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
    from ..zk.training.statement import MAX_STATEMENT_BYTES

    run = run or RunDirectory(path.parent.parent)
    statement = path.with_suffix(".json")
    data = _read_public(run, statement, MAX_STATEMENT_BYTES)
    try:
        stmt = TrainingStatement.from_bytes(data)
    except (ParameterError, RecursionError, OverflowError) as err:
        raise ProofRunError(f"{statement}: {err}") from err
    try:
        proof = decode_training_proof(_read_public(run, path, MAX_PROOF_BYTES), UnitProof)
    except ProofFormatError as err:
        raise ProofRunError(f"{path}: {err}") from err
    return stmt, proof


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
        manifest = self.run.read_manifest()
        self.run_id = str(manifest.get("run_id") or "")
        declared = dict((manifest.get("fixed") or {}).get("proof") or {})
        for key, value in declared.items():  # the run declares its proof parameters
            if prove_kwargs.setdefault(key, value) != value:
                raise ProofRunError(
                    f"{self.run.path} declares proof parameter {key}={value} in its manifest; "
                    f"got {key}={prove_kwargs[key]}")
        self.prove_kwargs = prove_kwargs
        self._records: list[StepRecord] = []
        self.link = None
        self.next_step: int | None = None
        self.sealed = False
        (self.run.path / PROOF_DIR).mkdir(parents=True, exist_ok=True)
        self._resume()

    def _resume(self) -> None:
        units = _unit_files(self.run)
        for name in _publication_residue(self.run, units):  # a kill while publishing a unit
            (self.run.path / PROOF_DIR / name).unlink(missing_ok=True)
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
        first = tapes[0].step if tapes else 0
        proof, stmt, link = prove_unit(list(tapes), self.link, backend=self.backend,
                                       run_id=self.run_id,
                                       ledger_leaves=self._leaves(first, len(tapes)),
                                       graphs=self._graphs(first, len(tapes)),
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

    def _committed(self, first: int, count: int) -> list[StepRecord]:
        """The committed records of steps first..first+count-1 (read again only when needed)."""
        if len(self._records) < first + count:
            self._records = self.run.read_steps()
        if len(self._records) < first + count:
            raise ProofRunError(f"steps {first}..{first + count - 1} are not all committed in "
                                f"{self.run.path} (it commits {len(self._records)} steps)")
        return self._records[first:first + count]

    def _leaves(self, first: int, count: int) -> list[bytes]:
        """The ledger leaf hashes of steps first..first+count-1 (from their committed records)."""
        try:
            return [leaf_hash(leaf_bytes(r)) for r in self._committed(first, count)]
        except LedgerError as err:
            raise ProofRunError(f"cannot bind the proof to the run's ledger: {err}") from err

    def _graphs(self, first: int, count: int) -> list[bytes]:
        """The traced-graph digests the records of steps first..first+count-1 commit."""
        out = []
        for record in self._committed(first, count):
            digest = (record.extra or {}).get("graph_sha256")
            if not isinstance(digest, str) or len(digest) != 64:
                raise ProofRunError(f"step {record.step}'s record has no traced-graph digest "
                                    "(a run written before graphs were committed: train again)")
            out.append(bytes.fromhex(digest))
        return out

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
    """Step groups to prove: one per step, or one per epoch (FAC4DNN aggregation; an epoch in
    which a scheduler changed the learning rate is several units, one per rate)."""
    if aggregate not in ("step", "epoch"):
        raise ValueError(f"aggregate={aggregate!r}: use 'step' or 'epoch'")
    records = run.read_steps()
    if aggregate == "step":
        return [[r.step] for r in records]
    return epoch_units(records, [r.step for r in records])


def epoch_units(records: Sequence[StepRecord], steps: Sequence[int]) -> list[list[int]]:
    """``steps`` (consecutive) in units of one epoch each, split where an LR scheduler changed
    the rate inside an epoch: a unit's statement carries one learning rate."""
    units: list[list[int]] = []
    for step in steps:
        r = records[step]
        last = records[units[-1][-1]] if units else None
        if last is not None and (last.epoch, step_lr(last, -1)) == (r.epoch, step_lr(r, -1)):
            units[-1].append(step)
        else:
            units.append([step])
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
    security_bits: int | None = None  # the level the openings were checked at
    policy_bits: int = 100  # the verifier's minimum
    problems: list[str] = field(default_factory=list)


def _read_chain(run: RunDirectory) -> tuple[list[TrainingStatement], list[UnitProof], SealProof | None]:
    """The units in step order and the seal; every file of ``proofs/`` must be one of them,
    and every unit's file name must name its statement's steps."""
    proof_dir = run.path / PROOF_DIR
    if not proof_dir.is_dir() or proof_dir.is_symlink():
        raise ProofRunError(f"{run.path} has no proofs/ directory: nothing to verify")
    units = _unit_files(run)
    expected = {SEAL_FILE} | {p.name for _, _, p in units} | {
        p.with_suffix(".json").name for _, _, p in units}
    residue = set(_publication_residue(run, units))
    stray = sorted(p.name for p in proof_dir.iterdir() if p.name not in expected | residue)
    if stray:
        raise ProofRunError(f"{proof_dir} holds files that are not proof units or the seal: "
                            f"{', '.join(stray[:5])}")
    statements, proofs = [], []
    for first, last, path in units:
        stmt, proof = _read_unit(path, run)
        if (first, last) != (stmt.step_start, stmt.step_start + stmt.num_steps - 1):
            raise ProofRunError(
                f"{path.name} names steps {first}..{last}, its statement proves steps "
                f"{stmt.step_start}..{stmt.step_start + stmt.num_steps - 1}")
        statements.append(stmt)
        proofs.append(proof)
    seal_path = proof_dir / SEAL_FILE
    seal = None
    if os.path.lexists(seal_path):
        try:
            seal = decode_training_proof(_read_public(run, seal_path, MAX_PROOF_BYTES), SealProof)
        except ProofFormatError as err:
            raise ProofRunError(f"{seal_path}: {err}") from err
    return statements, proofs, seal


def _publication_residue(run: RunDirectory, units: list[tuple[int, int, Path]]) -> list[str]:
    """What a kill while publishing the next unit leaves in ``proofs/`` (not a unit yet):
    atomic-write temporaries, and that unit's statement without its proof (a unit is published
    by the rename of its ``.lzkt``, written after the statement). A resuming prover removes it."""
    proof_dir = run.path / PROOF_DIR
    nxt = units[-1][1] + 1 if units else 0
    out = []
    for path in proof_dir.iterdir():
        m = _STATEMENT_RE.match(path.name)
        if _TEMP_RE.match(path.name) or (
            m and int(m.group(1)) == nxt and not path.with_suffix(".lzkt").exists()
        ):
            out.append(path.name)
    return out


def _declared(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a fixed-point run's manifest declares about its proofs (or ProofRunError)."""
    config = manifest.get("strategy")
    if not isinstance(config, dict) or config.get("mode") != "fixed":
        raise ProofRunError("the run was not trained in fixed-point mode")
    fixed = manifest.get("fixed")
    need = ("dims", "frac_bits", "value_bits", "lr", "batch_size", "proof", "digests")
    missing = [k for k in need if not isinstance(fixed, dict) or fixed.get(k) is None]
    if missing:
        raise ProofRunError(f"the manifest's fixed section lacks {missing} (a run written by an "
                            "older lightning-zk: train it again)")
    digests = fixed["digests"]
    if not isinstance(digests, dict) or digests.get("scheme") != SCHEME:
        raise ProofRunError(f"the run's records do not use hidden digests ({SCHEME}): they "
                            "would reveal its private data")
    if not isinstance(manifest.get("run_id"), str) or not manifest["run_id"]:
        raise ProofRunError("the manifest has no run_id")
    return fixed


def _check_against_run(manifest: Mapping[str, Any], records: Sequence[StepRecord],
                       statements: Sequence[TrainingStatement], report: ProofReport) -> None:
    """Every statement field against the manifest, the records and (through them) the ledger."""
    try:
        fixed = _declared(manifest)
    except ProofRunError as err:
        report.problems.append(str(err))
        return
    proof = fixed["proof"] if isinstance(fixed["proof"], dict) else {}
    templates: dict[tuple, set[str]] = {}  # the provable graph digests, per buffers-or-not
    for stmt in statements:
        unit = f"the unit of steps {stmt.step_start}..{stmt.step_start + stmt.num_steps - 1}"
        want = {
            "run_id": manifest["run_id"], "dims": list(fixed["dims"]),
            "frac_bits": fixed["frac_bits"], "value_bits": fixed["value_bits"],
            "lr": _committed_lr(records, stmt, fixed["lr"]), "batch_size": fixed["batch_size"],
            "loss": fixed.get("loss", "mse"),  # runs before the field trained MSE
            "mse_const": _mse_const(fixed), "security_bits": proof.get("security_bits"),
            "blowup": proof.get("blowup"),
            # SGD's momentum and weight decay (a run written before them trained plain SGD)
            "momentum": fixed.get("momentum", 0), "weight_decay": fixed.get("weight_decay", 0),
            # a first Conv2d's shape (an MLP run's manifest has none)
            "conv": list(fixed.get("conv") or []),
        }
        got = {k: getattr(stmt, k) for k in want}
        got["dims"] = list(stmt.dims)
        got["conv"] = list(stmt.conv)
        for key in want:
            if got[key] != want[key]:
                report.problems.append(f"{unit}: statement field {key} is {got[key]!r:.80}, the "
                                       f"run's manifest (and records) say {want[key]!r:.80}")
        steps = range(stmt.step_start, stmt.step_start + stmt.num_steps)
        if steps.stop > len(records):
            report.problems.append(f"{unit}: the run commits only {len(records)} steps")
            continue
        try:
            leaves = [leaf_hash(leaf_bytes(records[s])) for s in steps]
        except LedgerError as err:
            report.problems.append(f"{unit}: {err}")
            continue
        for s, (have, leaf) in enumerate(zip(stmt.ledger_leaves, leaves, strict=False)):
            if have != leaf:
                report.problems.append(
                    f"{unit}: statement field ledger_leaves[{s}] is {have.hex()[:16]}…, the "
                    f"ledger leaf of step {steps.start + s} is {leaf.hex()[:16]}…")
                break
        if len(stmt.ledger_leaves) != len(leaves):
            report.problems.append(f"{unit}: the statement binds {len(stmt.ledger_leaves)} "
                                   f"ledger leaves for {len(leaves)} steps")
        _check_graphs(stmt, records, unit, report, templates)


def step_lr(record: StepRecord, declared: int) -> object:
    """The learning rate a fixed-point step record commits: the run's declared one, or the rate
    an LR scheduler set for that step (``extra.lr``, written only when it differs)."""
    return (record.extra or {}).get("lr", declared)


def _committed_lr(records: Sequence[StepRecord], stmt: TrainingStatement, declared: int) -> object:
    """The one learning rate the unit's records commit (what its statement must carry); the
    list of them when they are several or not integers (never equal to a statement's: reported)."""
    steps = range(stmt.step_start, min(stmt.step_start + stmt.num_steps, len(records)))
    rates = [step_lr(records[s], declared) for s in steps]
    if rates and all(type(r) is int for r in rates) and len(set(rates)) == 1:
        return rates[0]
    return rates


def _check_graphs(stmt: TrainingStatement, records: Sequence[StepRecord], unit: str,
                  report: ProofReport, templates: dict[tuple, set[str]]) -> None:
    """Each step's traced graph: the statement's digest is the record's, the graph a record
    shows hashes to it, and it is a graph the proved relations stand for, derived here from the
    statement's own constants (``lightning_zk.fixed.template``): the proof is of the user's
    ``training_step`` as traced, or the run is refused."""
    from ..fixed.format import FixedPointConfig
    from ..fixed.intercept import graph_digest  # (torch: only when a run is checked)
    from ..fixed.template import provable_digests

    steps = range(stmt.step_start, stmt.step_start + stmt.num_steps)
    if len(stmt.graphs) != len(steps):
        report.problems.append(f"{unit}: the statement binds {len(stmt.graphs)} graph digests "
                               f"for {len(steps)} steps")
        return
    for s, have in zip(steps, stmt.graphs, strict=True):
        extra = records[s].extra or {}
        committed = extra.get("graph_sha256")
        if committed != have.hex():
            report.problems.append(f"{unit}: statement field graphs[{s - steps.start}] is "
                                   f"{have.hex()[:16]}…, step {s}'s record commits "
                                   f"{str(committed)[:16]}…")
            return
        if "graph" in extra and graph_digest(extra["graph"]) != committed:
            report.problems.append(f"step {s}: the graph its record shows does not hash to the "
                                   "graph digest it commits")
            return
        key = (bool(stmt.momentum) and s > 0, stmt.input_ops, stmt.lr)  # (the rest: manifest's)
        if key not in templates:
            templates[key] = provable_digests(
                stmt.dims, stmt.batch_size, FixedPointConfig(stmt.frac_bits, stmt.value_bits),
                lr=stmt.lr, momentum=stmt.momentum, weight_decay=stmt.weight_decay,
                loss=stmt.loss, buffers=key[0], conv=stmt.conv, input_ops=stmt.input_ops)
        if committed not in templates[key]:
            report.problems.append(
                f"step {s}: its traced graph {committed[:16]}… is not the step the proof's "
                f"relations stand for (the template for the statement's dims, loss, input "
                "ops and SGD constants): the proof does not speak of this training_step")
            return


def _mse_const(fixed: Mapping[str, Any]) -> int | None:
    try:
        return loss_constant(str(fixed.get("loss", "mse")), int(fixed["batch_size"]),
                             int(fixed["dims"][-1]), int(fixed["frac_bits"]))
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def verify_run(run_dir: str | Path, policy: VerifierPolicy | None = None) -> ProofReport:
    """Check a fixed-point run's proofs, chain, binding, coverage and ledger (module doc).

    Args:
        policy: the verifier's own security policy (default: at least 100 bits per opening).
    Returns:
        a :class:`ProofReport`; ``ok`` only when every check passed. Nothing is written.
    """
    policy = policy or VerifierPolicy()
    run = RunDirectory(run_dir)
    manifest = run.read_manifest()
    records = run.read_steps()
    report = ProofReport(ok=False, steps_committed=len(records), policy_bits=policy.security_bits)
    try:
        statements, proofs, seal = _read_chain(run)
        report.units = len(proofs)
        report.steps_proven = verify_chain(statements, proofs, seal, policy=policy)
        report.security_bits = statements[0].security_bits
    except (ChainError, VerificationError, ProofFormatError, ProofRunError, ValueError) as err:
        report.problems.append(f"proofs: {err}")
        return report
    _check_against_run(manifest, records, statements, report)
    first = statements[0].step_start if statements else None
    if first != 0 or report.steps_proven != len(records):
        report.problems.append(
            f"the proofs cover steps {first}..{(first or 0) + report.steps_proven - 1}, the run "
            f"commits steps 0..{len(records) - 1}")
    try:  # a finished run, all its records, and the ledger it published (if any) present;
        # checkpoints are the trainer's private files (a public bundle has none)
        claims = check_run_claims(run, manifest, records, checkpoints=False)
        report.ledger = "verified" if claims.ledger_root is not None else "absent"
    except (RunDirectoryError, LedgerError) as err:
        report.ledger = "FAILED" if isinstance(err, LedgerError) else report.ledger
        report.problems.append(f"run: {err}")
    report.ok = not report.problems
    return report


def _onehot(y: np.ndarray, stmt: TrainingStatement, unit: str) -> np.ndarray:
    labels = y.astype(np.int64)
    if y.ndim != 1 or not np.array_equal(labels, y):
        raise BatchCheckError(f"{unit} trains with cross-entropy: give its targets as the "
                              "integer class labels (B,)")
    try:
        return onehot_targets(labels, stmt.dims[-1], stmt.frac_bits)
    except ValueError as err:
        raise BatchCheckError(f"{unit}: {err}") from err


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
            if stmt.loss == "xent":  # class labels enter as Yhot = 2^s onehot, as in training
                ys.append(_onehot(y, stmt, path.stem))
            else:
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

