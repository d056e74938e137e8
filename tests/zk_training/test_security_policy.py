"""The verifier, not the proof, chooses the soundness level.

A trainer that edits its weights between step 0 and step 1 needs one false opening of the
boundary commitment B (weights after step 0 = weights before step 1). Under statements that ask
for 1-bit openings, grinding a few hundred transcripts finds one: the forged chain below passes a
verifier that takes its parameters from the statement, and is rejected by every verifier of this
package, which applies its own policy (at least 100 bits).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lightning_zk.fixed import FixedPointMLP, tensor_names
from lightning_zk.zk import ParameterError, VerificationError
from lightning_zk.zk.backend import P
from lightning_zk.zk.extension import Fp2
from lightning_zk.zk.ligero import Ligero, LigeroConfig, _combine_rows, _encode, _inner
from lightning_zk.zk.policy import SecurityPolicyError, VerifierPolicy
from lightning_zk.zk.training import build_layout, prove_seal, prove_step, verify_chain, verify_unit
from lightning_zk.zk.training import prover as prover_mod
from lightning_zk.zk.training.layout import theta_names
from lightning_zk.zk.training.witness import theta_table

DIMS = (4, 8, 3)


class _TrustsTheStatement(VerifierPolicy):
    """The old behaviour: whatever the statement asks for is what gets checked."""

    def __post_init__(self) -> None:
        pass

    def ligero_config(self, security_bits, blowup, *, what="statement"):
        return LigeroConfig(security_bits, blowup)


def _kernel(rows: list[list[int]], width: int) -> list[list[int]]:
    """A basis of {d : rows . d = 0} over F_p (Gaussian elimination, small sizes only)."""
    m = [r[:] for r in rows]
    pivots, r = [], 0
    for c in range(width):
        pivot = next((i for i in range(r, len(m)) if m[i][c] % P), None)
        if pivot is None:
            continue
        m[r], m[pivot] = m[pivot], m[r]
        inv = pow(m[r][c], P - 2, P)
        m[r] = [v * inv % P for v in m[r]]
        for i in range(len(m)):
            if i != r and m[i][c]:
                f = m[i][c]
                m[i] = [(a - f * b) % P for a, b in zip(m[i], m[r], strict=True)]
        pivots.append(c)
        r += 1
    basis = []
    for free in (c for c in range(width) if c not in pivots):
        d = [0] * width
        d[free] = 1
        for i, c in enumerate(pivots):
            d[c] = (-m[i][free]) % P
        basis.append(d)
    return basis


class _ForgingLigero(Ligero):
    """Opens one commitment at point ``j`` to the value of *another* table, by grinding.

    The forged combined row v' = v + delta keeps <v'[:k], b_j> equal to the false value and
    Enc(delta) zero on a fixed set Z of code positions; the forger retries (each try changes v'
    and so the column challenges) until every opened column lies in Z.
    """

    def __init__(self, config, target: bytes, fake_table: np.ndarray, j: int) -> None:
        super().__init__(config)
        self.target, self.fake, self.j = target, fake_table, j
        self.tries = 0

    def _open(self, state, queries, tr):
        if state.commitment.root != self.target:
            return super()._open(state, queries, tr)
        p, j = state.params, self.j
        coeffs = [self._coeffs(p, a, lam, i) for i, (a, _, lam) in enumerate(queries)]
        rows = [_combine_rows(state.msg, c) for c in coeffs]
        values = [_inner(v[:, : p.k], b) for v, (_, b, _) in zip(rows, queries, strict=True)]
        fake_msg = state.msg.copy()
        fake_msg[: p.m_data, : p.k] = self._data_rows([self.fake], p, np)
        false_value = _inner(_combine_rows(fake_msg, coeffs[j])[:, : p.k], queries[j][1])
        # Enc(e_i) for every message position: G (msg_len, code_len)
        g = _encode(np.eye(p.msg_len, dtype=np.uint64), p.code_len)
        zeros = list(range(p.msg_len - 2))  # Z: Enc(delta) vanishes here
        d0, d1 = _kernel([[int(g[i, c]) for i in range(p.msg_len)] for c in zeros], p.msg_len)[:2]
        b = queries[j][1]
        c0, c1 = (_inner(np.array([d[: p.k], [0] * p.k], dtype=np.uint64), b) for d in (d0, d1))
        rng = np.random.default_rng(0)
        saved = tr._state
        while True:
            self.tries += 1
            tr._state = saved
            s1 = Fp2(int(rng.integers(0, 2**62)), int(rng.integers(0, 2**62)))
            s0 = (false_value - values[j] - s1 * c1) / c0
            delta = np.array(
                [[((s0 * x + s1 * y).c0) for x, y in zip(d0, d1, strict=True)],
                 [((s0 * x + s1 * y).c1) for x, y in zip(d0, d1, strict=True)]], dtype=np.uint64)
            forged = [r if i != j else _add(r, delta) for i, r in enumerate(rows)]
            sent = [v if i != j else false_value for i, v in enumerate(values)]
            state.commitment.absorb_into(tr, "pcs.commitment")
            tr.absorb_ext("pcs.values", sent)
            gamma = tr.challenge_ext_list("pcs.gamma", p.num_rows)
            gm = np.array([[x.c0 for x in gamma], [x.c1 for x in gamma]], dtype=np.uint64)
            combined = np.stack([_combine_rows(state.msg, gm), *forged])
            tr.absorb_ext_array("pcs.combined", combined.transpose(1, 0, 2))
            idx = sorted(set(tr.challenge_indices("pcs.columns", p.num_queries, p.code_len)))
            if set(idx) <= set(zeros):
                break
            assert self.tries < 200_000, "grinding did not converge"
        tr._state = saved  # replay the successful try through the honest code path
        self._prover_values = lambda _v: sent
        self._prover_combined = lambda _c: combined
        try:
            return super()._open(state, queries, tr)
        finally:  # honest again for every other opening
            del self._prover_values, self._prover_combined


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from lightning_zk.zk import field as F

    return F.add(a, b)


@pytest.fixture(scope="module")
def forged_chain():
    """Unit 0 honest; before step 1 the trainer adds 5 to one weight; unit 1 claims it didn't."""
    rng = np.random.default_rng(4)
    ws = [rng.normal(size=(DIMS[i + 1], DIMS[i])) * 0.5 for i in range(2)]
    bs = [rng.normal(size=DIMS[i + 1]) * 0.1 for i in range(2)]
    mlp = FixedPointMLP.from_float(ws, bs, lr=0.25)
    tape0 = mlp.step_float(rng.normal(size=(3, 4)), rng.normal(size=(3, 3)))
    mlp.weights[0][0, 0] += 5  # the edit
    tape1 = mlp.step_float(rng.normal(size=(3, 4)), rng.normal(size=(3, 3)))
    p0, s0, link0 = prove_step(tape0, backend="numpy", rng=1, security_bits=1)
    layout = build_layout(s0.arch, tensor_names(2))
    edited = {k: tape1.tensors[k] for k in theta_names(2)}
    fake = prover_mod._field(theta_table(layout, edited))
    forger = _ForgingLigero(LigeroConfig(1, 4), s0.weights_out.root, fake, j=1)
    link = dataclasses.replace(link0, b_out_table=fake, params=edited)
    real_ligero = prover_mod.Ligero
    prover_mod.Ligero = lambda config: (forger if config == LigeroConfig(1, 4) else real_ligero(config))
    try:
        p1, s1, link1 = prove_step(tape1, link, backend="numpy", rng=2, security_bits=1)
        seal = prove_seal(link1)
    finally:
        prover_mod.Ligero = real_ligero
    assert forger.tries >= 1
    assert not np.array_equal(tape0.tensors["W1n"], tape1.tensors["W1"])
    return [s0, s1], [p0, p1], seal


def test_forged_chain_passes_a_verifier_that_trusts_the_statement(forged_chain):
    statements, proofs, seal = forged_chain
    assert verify_chain(statements, proofs, seal, policy=_TrustsTheStatement()) == 2


def test_forged_chain_rejected_by_the_verifiers_policy(forged_chain):
    statements, proofs, seal = forged_chain
    with pytest.raises(SecurityPolicyError, match="security_bits") as info:
        verify_chain(statements, proofs, seal)
    assert (info.value.expected, info.value.got) == (100, 1)
    with pytest.raises(SecurityPolicyError):
        verify_unit(proofs[1], statements[1])


def test_forged_opening_fails_when_checked_at_100_bits(forged_chain):
    """Claiming 100 bits in the statement does not help the forger: the verifier derives 100-bit
    parameters itself and the 1-bit opening no longer fits them."""
    statements, proofs, seal = forged_chain
    raised = [dataclasses.replace(s, security_bits=100) for s in statements]
    with pytest.raises(VerificationError):
        verify_chain(raised, proofs, seal)


def test_policy_is_the_verifiers_and_only_goes_up():
    with pytest.raises(ParameterError, match="never lower"):
        VerifierPolicy(security_bits=99)
    with pytest.raises(ParameterError):
        VerifierPolicy(security_bits=True)
    with pytest.raises(ParameterError, match="blowups"):
        VerifierPolicy(blowups=(3,))
    strict = VerifierPolicy(security_bits=120, blowups=(4,))
    with pytest.raises(SecurityPolicyError, match="120"):
        strict.ligero_config(100, 4)
    with pytest.raises(SecurityPolicyError, match="blowup"):
        strict.ligero_config(120, 8)
    assert strict.ligero_config(120, 4) == LigeroConfig(120, 4)
    with pytest.raises(SecurityPolicyError, match="120"):
        strict.ligero_config(121, 4)


def test_higher_security_statement_verifies_under_a_stricter_policy(forged_chain):
    from .conftest import make_tapes

    tape = make_tapes(1, seed=5)[0]
    proof, stmt, link = prove_step(tape, backend="numpy", rng=3, security_bits=110)
    assert verify_unit(proof, stmt, policy=VerifierPolicy(security_bits=110))
    assert verify_chain([stmt], [proof], prove_seal(link), policy=VerifierPolicy(110)) == 1
    with pytest.raises(SecurityPolicyError):
        verify_unit(proof, stmt, policy=VerifierPolicy(security_bits=111))


def test_a_chain_keeps_its_parameters_and_the_seal_uses_them():
    from .conftest import make_tapes

    t0, t1 = make_tapes(2, seed=6)
    p0, s0, link = prove_step(t0, backend="numpy", rng=1)
    with pytest.raises(ParameterError, match="security_bits=100"):
        prove_step(t1, link, backend="numpy", rng=2, security_bits=110)
    seal = prove_seal(link)  # under the chain's 100 bits: t columns of the 100-bit parameters
    t = Ligero(LigeroConfig(100, 4)).params(s0.weights_out.num_vars, False, 2).num_queries
    assert 0 < len(seal.opening.columns) <= t
    assert verify_chain([s0], [p0], seal) == 1


def test_unreachable_security_is_a_clear_error_not_a_hang():
    """K/p^2 caps an opening of a 2^n-entry commitment near 128 - n/2 bits over F_p2."""
    with pytest.raises(ParameterError, match="not reachable"):
        Ligero(LigeroConfig(120, 4)).params(30, False, 1)
    assert Ligero(LigeroConfig(110, 4)).params(30, False, 1).soundness >= 110
