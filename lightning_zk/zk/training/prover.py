"""Prover of a training proof unit (T >= 1 consecutive SGD steps) and of the chain seal.

Transcript order (the verifier in :mod:`.verifier` mirrors it line by line):
statement -> commitments Wit, R (Wit's full mask), v16, vQ -> carried claim on B_in -> one zk
sumcheck per relation (challenges drawn inside each builder after everything before was
absorbed) -> logUp range proofs of v16 (s bits) and vQ (Q bits) -> the claim reduction of every
Wit claim (:mod:`..reduction`) -> one opening per commitment (Wit and R at one point each, v16,
vQ, B_in, batch). B_out is *not* opened here: its claim is pending until the next unit (or the seal)
opens B_out exactly once, so hiding commitments are never opened twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...fixed.tape import WitnessTape, tensor_names
from ..backend import get_backend, to_numpy
from ..errors import ParameterError
from ..extension import Fp2, e_const, e_from_base, e_scale
from ..field import from_signed
from ..ligero import Ligero, LigeroConfig, LigeroState
from ..lookup import prove_range
from ..multilinear import eq_eval, eq_table
from ..randomness import as_rng
from ..reduction import prove_reduction
from ..sumcheck import prove_sumcheck
from ..transcript import Transcript
from .batch import SEED_BYTES, commit_batch, count_batch_claims, seeded_rng
from .common import SEAL_DOMAIN, UNIT_DOMAIN, ChainError, slot_of
from .layout import Arch, Layout, build_layout, code_int, theta_names
from .placement import Free, opening_point, place, place_mask
from .proof import PendingClaim, SealProof, UnitProof
from .relations import (
    Committed,
    PubBlocks,
    PubEmbed,
    PubEq,
    PubPad,
    PubSmall,
    relation_builders,
)
from .statement import TrainingStatement
from .witness import check_witness, range_tables, theta_table, wit_table

__all__ = ["ChainLink", "prove_unit", "prove_step", "prove_epoch", "prove_seal", "resume_link"]


@dataclass
class ChainLink:
    """Prover-side state handed from one unit to the next (kept in memory, never saved)."""

    statement: TrainingStatement
    b_out_state: LigeroState
    b_out_table: Any
    pending: PendingClaim
    params: dict[str, np.ndarray]
    # seed of this unit's batch commitment (its opening for the data owner: keep it private)
    batch_seed: bytes = b""
    # seed of the B_out commitment's randomness: with ``params`` it rebuilds this link after a
    # restart (:func:`resume_link`); as secret as the weights
    b_out_seed: bytes = b""


def _pad_table(f: PubPad, n: int, xp: Any) -> Any:
    out = np.zeros(1 << n, dtype=np.uint64)
    for code, axes in f.items:
        block = np.ones([1 << f.tau, *[1 << b for b, _ in axes]], dtype=np.uint64)
        block[(slice(None), *[slice(0, size) for _, size in axes])] = 0
        out[code_int(code) :: 1 << len(code)] = block.reshape(-1)
    return e_from_base(xp.asarray(out))


def _public_table(f: PubEq | PubSmall | PubBlocks | PubPad | PubEmbed, n: int, xp: Any) -> Any:
    if isinstance(f, PubEq):
        return place(eq_table(list(f.point), xp), [Free(i) for i in f.vars], n)
    if isinstance(f, PubSmall):
        vals = xp.asarray([[v.c0 for v in f.values], [v.c1 for v in f.values]], dtype=xp.uint64)
        return place(vals, [Free(i) for i in f.vars], n)
    if isinstance(f, PubPad):
        return _pad_table(f, n, xp)
    if isinstance(f, PubEmbed):
        out = e_const(0, 1 << n, xp)
        r = list(f.point)
        for code, m, packed in f.items:
            block = e_scale(eq_table(r[:m], xp), eq_eval(r[m:], list(packed)))
            out[:, code_int(code) :: 1 << len(code)] = block
        return out
    out = xp.zeros(1 << n, dtype=xp.uint64)
    for code, w in f.items:
        out[code_int(code) :: 1 << len(code)] += np.uint64(w)
    return e_from_base(out)


def _check_tapes(tapes: Sequence[WitnessTape], prev: ChainLink | None) -> None:
    if not tapes:
        raise ParameterError("prove_unit: need at least one witness tape")
    first = tapes[0]
    for u, tp in enumerate(tapes):
        tp.validate()
        same = (tp.dims, tp.batch_size, tp.frac_bits, tp.value_bits, tp.lr, tp.mse_const)
        if same != (
            first.dims,
            first.batch_size,
            first.frac_bits,
            first.value_bits,
            first.lr,
            first.mse_const,
        ):
            raise ParameterError(f"prove_unit: tape {u} (step {tp.step}) has other parameters")
        if tp.step != first.step + u:
            raise ParameterError(
                f"prove_unit: tapes must be consecutive steps; got step {tp.step} at position {u}"
            )
    if prev is not None:
        want = prev.statement.step_start + prev.statement.num_steps
        if first.step != want or tuple(prev.statement.dims) != first.dims:
            raise ParameterError(
                f"prove_unit: unit starts at step {first.step}, the chain expects step {want}"
            )


def prove_unit(
    tapes: Sequence[WitnessTape],
    prev: ChainLink | None = None,
    *,
    backend: str = "auto",
    rng: Any = None,
    strict: bool = True,
    security_bits: int = 100,
    blowup: int = 4,
    run_id: str = "",
    ledger_leaves: Sequence[bytes] = (),
) -> tuple[UnitProof, TrainingStatement, ChainLink]:
    """Prove the consecutive steps in ``tapes`` (a unit); ``prev`` continues a chain.

    Args:
        tapes: witness tapes of consecutive steps (1 for a step proof, an epoch for FAC4DNN
            aggregation; stacked to T = max(2, next power of two) instances).
        prev: the previous unit's :class:`ChainLink` (None starts a chain: B_in is committed
            here from the first tape's weights).
        backend: ``"auto"``, ``"numpy"`` or ``"cupy"`` for the commitments and sumchecks.
        rng: prover randomness (None: OS CSPRNG; an int only for tests).
        strict: check every relation in integers first (WitnessError); ``False`` only for
            soundness tests that feed a cheating witness to the verifier.
        security_bits, blowup: commitment parameters (a verifier accepts them only if its own
            policy allows; continuing a chain requires the chain's parameters).
        run_id, ledger_leaves: the run binding of the statement: the run's identifier and the
            ledger leaf hash of each step in ``tapes`` (``""``/``()``: unbound, which
            ``lightning_zk.audit.proofs.verify_run`` never accepts for a run).
    Returns:
        (proof, public statement, link for the next unit / the seal); ``link.batch_seed`` is
        the secret seed of ``statement.batch`` (see :func:`.batch.check_batch`).
    """
    _check_tapes(tapes, prev)
    if prev is not None and (security_bits, blowup) != (
        prev.statement.security_bits, prev.statement.blowup
    ):
        raise ParameterError(
            f"prove_unit: the chain is proved with security_bits={prev.statement.security_bits}, "
            f"blowup={prev.statement.blowup}; got {security_bits}, {blowup}"
        )
    if strict:
        check_witness(tapes, prev.params if prev is not None else None)
    xp = get_backend(backend).xp
    rng = as_rng(rng)
    pcs = Ligero(LigeroConfig(security_bits, blowup))
    first, last = tapes[0], tapes[-1]
    L = first.num_layers
    arch = Arch(first.dims, first.batch_size, max(2, 1 << (len(tapes) - 1).bit_length()))
    layout = build_layout(arch, tensor_names(L))
    before = {k: first.tensors[k] for k in theta_names(L)}
    after = {k: last.tensors[k + "n"] for k in theta_names(L)}

    def commit(table: np.ndarray, points: int) -> tuple[Any, Any, Any]:
        field = xp.asarray(_field(table))
        com, st = pcs.commit(field, num_points=points, rng=rng)
        return com, st, field

    if prev is None:
        b_in_com, b_in_state, b_in_tab = commit(theta_table(layout, before), 2)
    else:
        b_in_com, b_in_state = prev.statement.weights_out, prev.b_out_state
        b_in_tab = prev.b_out_table
    b_out_seed = rng.bytes(SEED_BYTES)  # B_out from its own seed, so a chain can be resumed
    b_out_com, b_out_state, b_out_tab = _commit_b_out(pcs, layout, after, b_out_seed, xp)
    batch_seed = rng.bytes(SEED_BYTES)  # the batch commitment's own randomness (see .batch)
    batch_com, batch_state, batch_tab = commit_batch(
        pcs, layout, [tp.tensors["x"] for tp in tapes], [tp.tensors["y"] for tp in tapes],
        batch_seed, xp,
    )
    stmt = TrainingStatement(
        first.dims,
        first.batch_size,
        first.frac_bits,
        first.value_bits,
        first.lr,
        first.mse_const,
        first.step,
        len(tapes),
        prev is None,
        b_in_com,
        b_out_com,
        batch_com,
        security_bits,
        blowup,
        run_id,
        tuple(ledger_leaves),
    )
    wit_int = wit_table(layout, tapes)
    v16_int, vq_int = range_tables(layout, wit_int, first.frac_bits, first.value_bits)
    tr = Transcript(UNIT_DOMAIN)
    stmt.absorb(tr)  # the full public statement first
    wit_com, wit_state, wit_tab = commit(wit_int, 1)  # one point: see ..reduction
    wit_mask_tab = rng.field(1 << (layout.wit_vars - 1), xp)  # R, Wit's full mask
    wit_mask_com, wit_mask_state = pcs.commit(wit_mask_tab, num_points=1, rng=rng)
    v16_com, v16_state, v16_tab = commit(v16_int, 2)
    vq_com, vq_state, vq_tab = commit(vq_int, 2)
    wit_com.absorb_into(tr, "unit.wit")
    wit_mask_com.absorb_into(tr, "unit.wit_mask")
    v16_com.absorb_into(tr, "unit.v16")
    vq_com.absorb_into(tr, "unit.vq")
    if prev is None:
        c_point = tr.challenge_ext_list("chain.initial", layout.b_vars)
        c_value = pcs.masked_evaluate(b_in_state, c_point, 0)
    else:
        c_point, c_value = list(prev.pending.point), prev.pending.value
    tr.absorb_ext("chain.carried_point", c_point)
    tr.absorb_ext("chain.carried_value", c_value)

    data = {"wit": wit_tab, "v16": v16_tab, "vq": vq_tab, "bin": b_in_tab, "bout": b_out_tab}
    data["batch"] = batch_tab
    states = {
        "wit": wit_state,
        "v16": v16_state,
        "vq": vq_state,
        "bin": b_in_state,
        "bout": b_out_state,
        "batch": batch_state,
    }
    claims: dict[str, dict[int, tuple[list[Fp2], Fp2]]] = {k: {} for k in data}
    sumchecks = []
    next_wit = 0
    for build in relation_builders(layout, stmt):
        rel = build(tr)
        n = rel.num_vars
        tables, masks, placed = [], [], {}
        for k, f in enumerate(rel.factors):
            if not isinstance(f, Committed):
                tables.append(_public_table(f, n, xp))
                masks.append(None)
                continue
            if f.mask_index is None:
                j, next_wit = next_wit, next_wit + 1
            else:
                j = f.mask_index
            full = _full_assign(layout, f)
            slot = slot_of(layout, f)
            sub = data[f.com][slot.code_int :: 1 << len(slot.code)]
            tables.append(place(sub, f.assign, n))
            if f.com == "wit":  # masked by R placed like Wit's variables 2..n (..reduction)
                r_sub = wit_mask_tab[slot.code_int :: 1 << len(slot.code)]
                masks.append(place_mask(r_sub, f.assign[1:], n))
            else:
                st = states[f.com]
                mu = pcs.mask_table(st, j)
                masks.append(place_mask(mu, full[len(full) - st.params.col_vars :], n))
            placed[k] = (f.com, j, full)
        proof, claim = prove_sumcheck(
            rel.spec(), tables, tr, claimed_sum=rel.claimed, masks=masks, pcs=pcs, rng=rng
        )
        sumchecks.append(proof)
        for k, (com, j, full) in placed.items():
            claims[com][j] = (opening_point(full, claim.point), claim.evaluations[k])

    ranges = []
    for name, tab, state, bits in (
        ("v16", v16_tab, v16_state, first.frac_bits),
        ("vq", vq_tab, vq_state, first.value_bits),
    ):
        mask = pcs.round1_mask(state, 1)
        rp, rc = prove_range(
            tr, to_numpy(tab), bits=bits, value_mask=mask, pcs=pcs, rng=rng, strict=strict
        )
        ranges.append(rp)
        claims[name][1] = (rc.point, rc.value)
    wit_claims = [claims["wit"][j] for j in range(next_wit)]
    reduction, red = prove_reduction(
        tr,
        [p for p, _ in wit_claims],
        [v for _, v in wit_claims],
        wit_tab,
        wit_mask_tab,
        wit_state,
        wit_mask_state,
        pcs,
        rng,
    )
    proof = UnitProof(
        wit_com,
        wit_mask_com,
        v16_com,
        vq_com,
        c_point,
        c_value,
        sumchecks,
        *ranges,
        reduction,
        pcs.open(wit_state, [red.point], tr),
        pcs.open(wit_mask_state, [red.point[:-1]], tr),
        pcs.open(v16_state, [claims["v16"][0][0], claims["v16"][1][0]], tr),
        pcs.open(vq_state, [claims["vq"][0][0], claims["vq"][1][0]], tr),
        pcs.open(b_in_state, [c_point, claims["bin"][1][0]], tr),
        pcs.open(batch_state, [claims["batch"][j][0] for j in range(count_batch_claims(layout))], tr),
    )
    pend = PendingClaim(tuple(claims["bout"][0][0]), claims["bout"][0][1])
    link = ChainLink(stmt, b_out_state, b_out_tab, pend, after, batch_seed, b_out_seed)
    return proof, stmt, link


def resume_link(
    statement: TrainingStatement,
    pending: PendingClaim,
    params: dict[str, np.ndarray],
    b_out_seed: bytes,
    *,
    backend: str = "auto",
) -> ChainLink:
    """Rebuild the link after the unit ``statement`` (e.g. in a new process after a crash).

    Args:
        statement: the last proved unit's public statement.
        pending: its pending claim on B_out (what :func:`.verifier.verify_unit` returns).
        params: the integer weights after the unit (``W1``, ``b1``, ...).
        b_out_seed: ``link.b_out_seed`` of that unit.
    Raises:
        ChainError: the weights and seed do not recommit to ``statement.weights_out``.
    """
    layout = build_layout(statement.arch, tensor_names(len(statement.dims) - 1))
    missing = [k for k in theta_names(layout.arch.num_layers) if k not in params]
    if missing:
        raise ParameterError(f"resume_link: weights {missing} missing")
    pcs = Ligero(LigeroConfig(statement.security_bits, statement.blowup))
    com, state, table = _commit_b_out(pcs, layout, params, b_out_seed, get_backend(backend).xp)
    if com != statement.weights_out:
        raise ChainError(
            "resumed weights recommit to the unit's B_out",
            expected=statement.weights_out.root.hex(),
            got=com.root.hex(),
        )
    return ChainLink(statement, state, table, pending, dict(params), b"", bytes(b_out_seed))


def _commit_b_out(
    pcs: Ligero, layout: Layout, params: dict[str, np.ndarray], seed: bytes, xp: Any
) -> tuple[Any, LigeroState, Any]:
    """B_out = (Theta after the unit, 0), from its own seed so a restart can recommit it."""
    table = xp.asarray(_field(theta_table(layout, params)))
    com, state = pcs.commit(table, num_points=2, rng=seeded_rng(seed))
    return com, state, table


def _field(table: np.ndarray) -> np.ndarray:
    """Signed int64 table -> field elements (x -> x mod p; |x| < 2^62 always holds here)."""
    return from_signed(np.asarray(table, dtype=np.int64))


def _full_assign(layout: Layout, f: Committed) -> tuple:
    full = f.assign + tuple(slot_of(layout, f).code)
    if not isinstance(full[0], Free) or full[0].index != 0:
        raise ParameterError(
            f"factor {f.slot}: a committed polynomial's first variable must be sumcheck "
            "variable 0 (its masked opening needs it)"
        )
    return full


def prove_step(
    tape: WitnessTape, prev: ChainLink | None = None, **kw: Any
) -> tuple[UnitProof, TrainingStatement, ChainLink]:
    """One step as its own unit (stacked with one zero instance)."""
    return prove_unit([tape], prev, **kw)


def prove_epoch(
    tapes: Sequence[WitnessTape], prev: ChainLink | None = None, **kw: Any
) -> tuple[UnitProof, TrainingStatement, ChainLink]:
    """FAC4DNN aggregation: all steps of an epoch in one unit (one sumcheck per relation)."""
    return prove_unit(tapes, prev, **kw)


def prove_seal(link: ChainLink) -> SealProof:
    """Open the last unit's B_out once, at its pending point (and a transcript-chosen point),
    under the commitment parameters of the chain (those of the last unit's statement)."""
    pcs = Ligero(link.statement.pcs_config)
    tr = Transcript(SEAL_DOMAIN)
    link.statement.absorb(tr)
    tr.absorb_ext("seal.pending_point", list(link.pending.point))
    tr.absorb_ext("seal.pending_value", link.pending.value)
    dummy = tr.challenge_ext_list("seal.dummy", link.b_out_state.params.num_vars)
    dval = pcs.masked_evaluate(link.b_out_state, dummy, 1)
    tr.absorb_ext("seal.dummy_value", dval)
    opening = pcs.open(link.b_out_state, [list(link.pending.point), dummy], tr)
    return SealProof(list(link.pending.point), link.pending.value, dval, opening)
