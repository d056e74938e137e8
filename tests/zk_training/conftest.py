"""Shared honest proofs for a tiny MLP 4-8-3, batch 3 (exercises batch and output padding)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from lightning_zk.fixed import FixedPointMLP
from lightning_zk.zk import ParameterError, VerificationError
from lightning_zk.zk.training import prove_epoch, prove_seal, prove_step, verify_unit

DIMS = (4, 8, 3)
BATCH = 3


def make_tapes(steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(DIMS[i + 1], DIMS[i])) * 0.5 for i in range(2)]
    bs = [rng.normal(size=DIMS[i + 1]) * 0.1 for i in range(2)]
    mlp = FixedPointMLP.from_float(ws, bs, lr=0.25)
    return [
        mlp.step_float(rng.normal(size=(BATCH, DIMS[0])), rng.normal(size=(BATCH, DIMS[-1])))
        for _ in range(steps)
    ]


def assert_cheat_rejected(tapes, prev=None, check: str | None = None) -> None:
    """A cheating prover: prove without the strict witness check (one tape: a step unit, a list:
    an epoch unit); the verifier must reject. Without ``check`` the prover giving up counts as a
    rejection too; with it, the proof must be made and rejected naming ``check``."""
    prove = prove_epoch if isinstance(tapes, list) else prove_step
    try:
        proof, stmt, _ = prove(tapes, prev, backend="numpy", rng=5, strict=False)
    except (ParameterError, ValueError):
        if check is not None:
            raise
        return  # the prover itself could not go on: also a rejection
    with pytest.raises(VerificationError) as info:
        verify_unit(proof, stmt)
    assert check is None or check in str(info.value), str(info.value)


@dataclass
class Run:
    tapes: list
    step_proofs: list  # (proof, statement) per single-step unit, chained
    step_seal: object
    epoch_proof: object
    epoch_statement: object
    epoch_seal: object
    step_seeds: list  # batch-commitment seed of each step unit (ChainLink.batch_seed)
    epoch_seed: bytes


def step_chain(tapes, rng: int):
    """One step proof per tape, chained (seeded rng, rng + 1, ...): the units, the seal and
    each unit's batch seed."""
    units, seeds, link = [], [], None
    for i, tape in enumerate(tapes):
        proof, stmt, link = prove_step(tape, link, backend="numpy", rng=rng + i)
        units.append((proof, stmt))
        seeds.append(link.batch_seed)
    return units, prove_seal(link), seeds


@pytest.fixture(scope="session")
def run() -> Run:
    tapes = make_tapes(3)
    units, seal, seeds = step_chain(tapes, 100)
    eproof, estmt, elink = prove_epoch(tapes, None, backend="numpy", rng=7)
    return Run(tapes, units, seal, eproof, estmt, prove_seal(elink), seeds, elink.batch_seed)
