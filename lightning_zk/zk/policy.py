"""The verifier's security policy: what a verifier accepts, decided by the verifier alone.

A proof's statement says which commitment parameters the prover used (``security_bits``,
``blowup``), because the verifier must derive the same code parameters to check the openings.
It must never *lower* what the verifier checks: with ``security_bits = 1`` a prover grinds a few
hundred hashes for a false Ligero opening. So every verifier entry point takes a
:class:`VerifierPolicy` (default: at least 100 bits, any supported blowup) and derives its
:class:`~lightning_zk.zk.ligero.LigeroConfig` through :meth:`VerifierPolicy.ligero_config`,
which rejects a statement asking for less with :class:`SecurityPolicyError` naming the
parameter and both values. The code parameters themselves (rows, columns, code length, number of
opened columns t) are then computed on the verifier side by
:func:`~lightning_zk.zk.ligero.derive_params`, never read from the proof.

What the number means: every Ligero opening the verifier checks has soundness error at most
2^-security_bits (docs/zk_core.md); a proof unit adds seven such openings and sumcheck
terms of order 2^-120 each (docs/zk_training.md gives the union bound per unit).

Example::

    >>> from lightning_zk.zk.policy import VerifierPolicy
    >>> VerifierPolicy().ligero_config(100, 4)
    LigeroConfig(security_bits=100, blowup=4)
    >>> VerifierPolicy(security_bits=120).ligero_config(100, 4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    lightning_zk.zk.policy.SecurityPolicyError: ... expected=120 got=100; ...
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ParameterError, VerificationError
from .ligero import LigeroConfig

__all__ = ["MIN_SECURITY_BITS", "SUPPORTED_BLOWUPS", "SecurityPolicyError", "VerifierPolicy"]

MIN_SECURITY_BITS = 100  # no verifier of this package accepts less
MAX_SECURITY_BITS = 120  # F_p2 (p^2 ~ 2^128): sumchecks give ~2^-120 and Ligero's K/p^2 term
# caps openings at 128 - log2(K) bits, so more is not meaningful
SUPPORTED_BLOWUPS = (2, 4, 8, 16)


class SecurityPolicyError(VerificationError):
    """A statement asks for commitment parameters below the verifier's policy."""


@dataclass(frozen=True)
class VerifierPolicy:
    """The minimum security and the blowups a verifier accepts.

    Args:
        security_bits: minimum soundness of every commitment opening, in bits; at least
            ``MIN_SECURITY_BITS`` (100), at most ``MAX_SECURITY_BITS`` (120). Statements asking for more are checked at
            their (higher) level; statements asking for less are rejected.
        blowups: the Reed-Solomon blowups (inverse rates) accepted.

    Raises:
        ParameterError: a minimum below 100 bits or above 120, or an unsupported blowup.
    """

    security_bits: int = MIN_SECURITY_BITS
    blowups: tuple[int, ...] = SUPPORTED_BLOWUPS

    def __post_init__(self) -> None:
        bits = self.security_bits
        if not isinstance(bits, int) or isinstance(bits, bool):
            raise ParameterError(f"VerifierPolicy(security_bits={bits!r}): expected an int")
        if not MIN_SECURITY_BITS <= bits <= MAX_SECURITY_BITS:
            raise ParameterError(
                f"VerifierPolicy(security_bits={bits}): must be in [{MIN_SECURITY_BITS}, "
                f"{MAX_SECURITY_BITS}]; a verifier may raise the minimum, never lower it"
            )
        blowups = tuple(self.blowups)
        if not blowups or any(b not in SUPPORTED_BLOWUPS for b in blowups):
            raise ParameterError(
                f"VerifierPolicy(blowups={self.blowups!r}): choose among {SUPPORTED_BLOWUPS}"
            )
        object.__setattr__(self, "blowups", blowups)

    def ligero_config(self, security_bits: int, blowup: int, *, what: str = "statement") -> LigeroConfig:
        """The commitment configuration to verify ``what`` with, if the policy accepts it.

        Raises:
            SecurityPolicyError: ``security_bits`` below the policy's minimum (or above 120),
                or a blowup the policy does not accept; the error names the parameter and
                both values.
        """
        if not isinstance(security_bits, int) or security_bits < self.security_bits:
            raise SecurityPolicyError(
                "security_bits >= the verifier's minimum",
                expected=self.security_bits,
                got=security_bits,
                detail=f"the {what} asks for {security_bits}-bit commitment openings, this "
                f"verifier requires at least {self.security_bits} bits",
            )
        if security_bits > MAX_SECURITY_BITS:
            raise SecurityPolicyError(
                f"security_bits <= {MAX_SECURITY_BITS}", expected=MAX_SECURITY_BITS,
                got=security_bits, detail=f"in the {what}",
            )
        if blowup not in self.blowups:
            raise SecurityPolicyError(
                "blowup accepted by the verifier",
                expected=self.blowups,
                got=blowup,
                detail=f"in the {what}",
            )
        return LigeroConfig(security_bits, blowup)
