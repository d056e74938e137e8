"""Prover of a training proof unit (T >= 1 consecutive SGD steps) and of the chain seal.

Transcript order (the verifier in :mod:`.verifier` mirrors it line by line): statement ->
commitments Wit (with the range limbs), M (with the multiplicities), the sumcheck mask bank ->
carried claim on B_in -> one zk sumcheck per relation (challenges drawn inside each builder after
everything before was absorbed) -> beta, the range inverses h and table side q, the range
sumcheck (:mod:`.ranges`) -> the reduction of every Wit claim (:mod:`.claims`) -> one batched
opening per commitment (bank, Wit, M, h, q, B_in, batch). B_out is *not* opened here: its claim is
pending until the next unit (or the seal) opens B_out exactly once, so hiding commitments are
never opened twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...fixed.tape import WitnessTape
from ..backend import get_backend
from ..errors import ParameterError
from ..extension import Fp2
from ..field import from_signed
from ..ligero import Ligero, LigeroConfig, LigeroState, Query
from ..multilinear import eq_table
from ..randomness import as_rng
from ..sumcheck import MaskBank, prove_sumcheck
from ..transcript import Transcript
from .batch import SEED_BYTES, commit_batch, seeded_rng
from .claims import WitClaim, prove_claims
from .common import SEAL_DOMAIN, UNIT_DOMAIN, ChainError, UnitShape, slot_of
from .layout import Layout
from .masking import expand_mask
from .placement import Free, opening_point, place
from .proof import PendingClaim, SealProof, UnitProof
from .ranges import (
    range_challenges,
    range_columns,
    range_index,
    range_inverses,
    range_spec,
    range_tables,
)
from .relations import Committed, PubEq, PubPadBox, PubSmall, relation_builders
from .statement import TrainingStatement
from .witness import check_witness, theta_table, wit_table

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


def _pad_box_table(f: PubPadBox, n: int) -> np.ndarray:
    """1 - [inside the tensor's true box], over n variables (broadcast elsewhere)."""
    box = np.zeros((2,) * n, dtype=bool) if n else np.zeros((), dtype=bool)
    for pos, sizes in enumerate(f.sizes):
        inside = np.ones((2,) * n, dtype=bool) if n else np.ones((), dtype=bool)
        parts = [(start, bits, size) for (start, bits), size in zip(f.axes, sizes, strict=True)]
        for start, bits, size in parts:
            inside = inside & _axis(np.arange(1 << bits) < size, start, bits, n)
        if f.layer is not None:
            start, bits = f.layer
            inside = inside & _axis(np.arange(1 << bits) == pos, start, bits, n)
        box = box | inside
    return (~box).reshape(-1).astype(np.uint64)


def _axis(ind: np.ndarray, start: int, bits: int, n: int) -> np.ndarray:
    shape = [1] * n
    shape[start : start + bits] = [2] * bits
    return ind.reshape((2,) * bits).reshape(shape)


def _public_table(f: PubEq | PubSmall | PubPadBox, n: int, xp: Any) -> Any:
    if isinstance(f, PubEq):
        return place(eq_table(list(f.point), xp), [Free(i) for i in f.vars], n)
    if isinstance(f, PubSmall):
        vals = xp.asarray([[v.c0 for v in f.values], [v.c1 for v in f.values]], dtype=xp.uint64)
        return place(vals, [Free(i) for i in f.vars], n)
    if isinstance(f, PubPadBox):
        return xp.asarray(_pad_box_table(f, n))  # base: lifted by the sumcheck's first fold
    raise TypeError(f"not a public factor: {f!r}")


def _check_tapes(tapes: Sequence[WitnessTape], prev: ChainLink | None) -> None:
    if not tapes:
        raise ParameterError("prove_unit: need at least one witness tape")
    first = tapes[0]
    for u, tp in enumerate(tapes):
        tp.validate()
        same = (tp.dims, tp.batch_size, tp.frac_bits, tp.value_bits, tp.lr, tp.mse_const,
                tp.momentum, tp.weight_decay, tp.loss, tp.conv, tp.input_ops)
        if same != (
            first.dims,
            first.batch_size,
            first.frac_bits,
            first.value_bits,
            first.lr,
            first.mse_const,
            first.momentum,
            first.weight_decay,
            first.loss,
            first.conv,
            first.input_ops,
        ):
            raise ParameterError(f"prove_unit: tape {u} (step {tp.step}) has other parameters")
        if tp.step != first.step + u:
            raise ParameterError(
                f"prove_unit: tapes must be consecutive steps; got step {tp.step} at position {u}"
            )
    if first.conv is not None and not first.conv.provable:
        raise ParameterError(
            f"prove_unit: the conv's output is {first.conv.out_height}x{first.conv.out_width}; "
            "the relations need its height and width to be powers of two")
    if prev is not None:
        want = prev.statement.step_start + prev.statement.num_steps
        if first.step != want or tuple(prev.statement.dims) != first.dims:
            raise ParameterError(
                f"prove_unit: unit starts at step {first.step}, the chain expects step {want}"
            )


def _conv_tuple(tape: WitnessTape) -> tuple[int, ...]:
    """The statement's encoding of a tape's conv layer (() without one)."""
    return tape.conv.as_tuple() if tape.conv is not None else ()


def _lam(point: Sequence[Fp2]) -> Fp2:
    """The mask factor of a hiding sumcheck's claims: r_1 (1 - r_1) of its hiding variable."""
    return point[0] * (1 - point[0])


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
    graphs: Sequence[bytes] = (),
) -> tuple[UnitProof, TrainingStatement, ChainLink]:
    """Prove the consecutive steps in ``tapes`` (a unit); ``prev`` continues a chain.

    Args:
        tapes: witness tapes of consecutive steps (1 for a step proof, an epoch for FAC4DNN
            aggregation; stacked to T = the next power of two instances, 1 for one step).
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
        graphs: the SHA-256 digest of each step's traced op graph (the step records'
            ``graph_sha256``), which ``verify_run`` checks against the template it derives
            from the statement itself.
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
    draft = UnitShape(TrainingStatement(  # the shapes only need the public constants
        first.dims, first.batch_size, first.frac_bits, first.value_bits, first.lr,
        first.mse_const, first.step, len(tapes), prev is None, *_DUMMY_COMS,
        security_bits, blowup, momentum=first.momentum, weight_decay=first.weight_decay,
        loss=first.loss, conv=_conv_tuple(first), input_ops=first.input_ops))
    layout = draft.layout
    state = [k for k, _ in layout.theta_leaves()]  # weights, biases (and momentum buffers)
    before = {k: first.tensors[k] for k in state}
    after = {k: last.tensors[k + "n"] for k in state}

    if prev is None:
        b_in_tab = xp.asarray(_field(theta_table(layout, before)))
        b_in_com, b_in_state = pcs.commit(b_in_tab, num_points=2, rng=rng,
                                          support=draft.theta_support)
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
        first.dims, first.batch_size, first.frac_bits, first.value_bits, first.lr,
        first.mse_const, first.step, len(tapes), prev is None, b_in_com, b_out_com, batch_com,
        security_bits, blowup, run_id, tuple(ledger_leaves), first.momentum, first.weight_decay,
        first.loss, tuple(graphs), _conv_tuple(first), first.input_ops,
    )
    shape = UnitShape(stmt)
    ml, wr, n = shape.masks, shape.ranges, layout.wit_vars
    tr = Transcript(UNIT_DOMAIN)
    stmt.absorb(tr)  # the full public statement first

    # commitments made before any challenge: Wit with its range limbs, M with the multiplicities
    wit_int = wit_table(layout, tapes)
    wit = xp.asarray(_field(wit_int))
    cols, mult = range_columns(wr, wit_int, strict)
    del wit_int
    mtable = rng.field(1 << ml.num_vars)
    wit_com, wit_state = pcs.commit_tables([wit, *cols], num_points=1 + wr.columns, rng=rng,
                                           support=shape.wit_support)
    mask_com, mask_state = pcs.commit_tables([mtable, mult], num_points=2, rng=rng)
    bank = MaskBank(shape.specs, pcs, rng)
    wit_com.absorb_into(tr, "unit.wit")
    mask_com.absorb_into(tr, "unit.mask")
    bank.commitment.absorb_into(tr, "unit.bank")

    # the claim carried over from the previous unit on B_in (its B_out)
    if prev is None:
        c_point = tr.challenge_ext_list("chain.initial", layout.b_vars)
        c_lam = _lam(c_point)
        c_value = pcs.masked_evaluate(b_in_state, c_point, 0, c_lam)
    else:
        c_point, c_lam, c_value = list(prev.pending.point), prev.pending.lam, prev.pending.value
    tr.absorb_ext("chain.carried_point", c_point)
    tr.absorb_ext("chain.carried", [c_lam, c_value])

    data = {"wit": wit, "bin": b_in_tab, "bout": b_out_tab, "batch": batch_tab}
    states = {"bin": b_in_state, "bout": b_out_state, "batch": batch_state}
    wit_claims: list[WitClaim] = []
    other: dict[str, dict[int, tuple[list[Fp2], Fp2, Fp2]]] = {k: {} for k in states}
    sumchecks = []
    builders = relation_builders(layout, stmt)
    for row, build in enumerate(builders):
        rel = build(tr)
        tables, masks = _relation_tables(rel, layout, ml, mtable, data, states, pcs, xp)
        proof, claim = prove_sumcheck(rel.spec(), tables, tr, claimed_sum=rel.claimed,
                                      masks=masks, pcs=pcs, rng=rng, bank=(bank, row),
                                      consume=True)
        sumchecks.append(proof)
        lam, real = _lam(claim.point), claim.point[1:]
        for k, f in enumerate(rel.factors):
            if not isinstance(f, Committed):
                continue
            full = f.assign + tuple(slot_of(layout, f).code)
            pt, value = opening_point(full, real), claim.evaluations[k]
            if f.com == "wit":
                wit_claims.append(WitClaim(tuple(pt), lam, value))
            else:
                other[f.com][f.mask_index] = (pt, lam, value)

    # the range check of every witness value (inverses and table side after beta)
    beta = tr.challenge_ext("range.beta")  # soundness: (N_A + 2^b)/p^2
    hs, q = range_inverses(wr, cols, mult, beta)
    inv_com, inv_state = pcs.commit_tables(hs, num_points=wr.columns, rng=rng,
                                           support=shape.wit_support)
    q_com, q_state = pcs.commit(q, num_points=1, rng=rng)
    inv_com.absorb_into(tr, "unit.inv")
    q_com.absorb_into(tr, "unit.q")
    ch = range_challenges(tr, wr, beta)
    ix = range_index(wr)
    b = wr.limb_bits
    # the masks of committed tables: one period, the commitment's mu over its column variables
    masks = [None] * ix["count"]
    for c in range(wr.columns):
        masks[ix["h"][c]] = pcs.mask_table(inv_state, c)
        masks[ix["A"][c]] = pcs.mask_table(wit_state, 1 + c)
    masks[ix["wit"]] = xp.asarray(expand_mask(ml, mtable, (), n))
    masks[ix["q"]] = pcs.mask_table(q_state, 0)
    masks[ix["m"]] = pcs.mask_table(mask_state, 1)
    tables = range_tables(wr, hs, cols, wit, q, mult, ch)
    del hs, cols  # the sumcheck takes the tables over: each is freed once folded
    rproof, rclaim = prove_sumcheck(range_spec(wr, ch), tables, tr, claimed_sum=0, masks=masks,
                                    pcs=pcs, rng=rng, bank=(bank, len(builders)), consume=True)
    sumchecks.append(rproof)
    r_lam, pw, pt = _lam(rclaim.point), rclaim.point[1 : 1 + n], rclaim.point[1 : 1 + b]
    wit_claims.append(WitClaim(tuple(pw), r_lam, rclaim.evaluations[ix["wit"]]))

    # every claim on Wit reduced to one opening of Wit and one of M
    red, red_point = prove_claims(tr, wit_claims, wit, mtable, ml, wit_state, mask_state, pcs,
                                  rng, (bank, len(builders) + 1))
    sumchecks.append(red)
    d_lam, dw, dm = _lam(red_point), red_point[1 : 1 + n], red_point[1 : 1 + ml.num_vars]

    # one batched opening per commitment
    bank_open = bank.open(pcs, tr)
    wit_open = pcs.open_queries(
        wit_state, [Query(tuple(dw), d_lam, 0)]
        + [Query(tuple(pw), r_lam, 1 + c) for c in range(wr.columns)], tr)
    mask_open = pcs.open_queries(mask_state, [Query(tuple(dm), d_lam, 0),
                                              Query(tuple(pt), r_lam, 1)], tr)
    inv_open = pcs.open_queries(inv_state, [Query(tuple(pw), r_lam, c)
                                            for c in range(wr.columns)], tr)
    q_open = pcs.open_queries(q_state, [Query(tuple(pt), r_lam, 0)], tr)
    bp, blam, _ = other["bin"][1]
    b_in_open = pcs.open_queries(b_in_state, [Query(tuple(c_point), c_lam),
                                              Query(tuple(bp), blam)], tr)
    batch_open = pcs.open_queries(
        batch_state, [Query(tuple(p), lam) for p, lam, _ in
                      (other["batch"][j] for j in range(len(other["batch"])))], tr)
    proof = UnitProof(
        wit_com, mask_com, bank.commitment, inv_com, q_com, c_point, c_lam, c_value, sumchecks,
        wit_open, mask_open, bank_open, inv_open, q_open, b_in_open, batch_open,
    )
    op, olam, oval = other["bout"][0]
    pend = PendingClaim(tuple(op), oval, olam)
    link = ChainLink(stmt, b_out_state, b_out_tab, pend, after, batch_seed, b_out_seed)
    return proof, stmt, link


def _relation_tables(rel, layout: Layout, ml, mtable, data, states, pcs: Ligero, xp: Any):
    """A relation's factor tables and their masks (committed factors only) on its variables."""
    n = rel.num_vars
    tables, masks = [], []
    for f in rel.factors:
        if not isinstance(f, Committed):
            tables.append(_public_table(f, n, xp))
            masks.append(None)
            continue
        slot = slot_of(layout, f)
        full = f.assign + tuple(slot.code)
        sub = data[f.com][slot.code_int :: 1 << len(slot.code)]
        tables.append(place(sub, f.assign, n))
        if f.com == "wit":
            masks.append(place(expand_mask(ml, mtable, slot.code, slot.elem_vars), f.assign, n))
        else:
            st = states[f.com]
            mu = pcs.mask_table(st, f.mask_index)
            masks.append(place(mu, full[len(full) - st.params.col_vars :], n))
    return tables, masks


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
    layout = UnitShape(statement).layout
    missing = [k for k, _ in layout.theta_leaves() if k not in params]
    if missing:
        raise ParameterError(f"resume_link: weights {missing} missing")
    pcs = Ligero(statement.pcs_config)
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
    """B_out = Theta after the unit, from its own seed so a restart can recommit it."""
    table = xp.asarray(_field(theta_table(layout, params)))
    com, state = pcs.commit(table, num_points=2, rng=seeded_rng(seed),
                            support=layout.theta_support())
    return com, state, table


def _field(table: np.ndarray) -> np.ndarray:
    """Signed int64 table -> field elements (x -> x mod p; |x| < 2^62 always holds here)."""
    return from_signed(np.asarray(table, dtype=np.int64))


def prove_step(
    tape: WitnessTape, prev: ChainLink | None = None, **kw: Any
) -> tuple[UnitProof, TrainingStatement, ChainLink]:
    """One step as its own unit (T = 1: no zero instance)."""
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
    tr.absorb_ext("seal.pending", [link.pending.lam, link.pending.value])
    dummy = tr.challenge_ext_list("seal.dummy", link.b_out_state.params.num_vars)
    dval = pcs.masked_evaluate(link.b_out_state, dummy, 1)
    tr.absorb_ext("seal.dummy_value", dval)
    opening = pcs.open_queries(link.b_out_state, [
        Query(tuple(link.pending.point), link.pending.lam), Query(tuple(dummy), None)], tr)
    return SealProof(list(link.pending.point), link.pending.lam, link.pending.value, dval,
                     opening)


def _dummy_commitments():
    from ..pcs import Commitment

    return (Commitment(bytes(32), 1, False, 1),) * 3


_DUMMY_COMS = _dummy_commitments()
