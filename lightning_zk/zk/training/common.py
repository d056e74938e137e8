"""Pieces shared by the training prover and verifier (domain separators, errors, shapes)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ...fixed.tape import tensor_names
from ..errors import VerificationError
from ..extension import Fp2
from ..ligero import ColumnSupport
from ..sumcheck import SumcheckSpec
from ..transcript import Transcript
from .claims import claims_spec
from .layout import Layout, TensorSlot, build_layout
from .masking import MaskLayout, mask_layout
from .ranges import WitRange, range_challenges, range_spec, wit_range
from .relations import Committed, relation_builders
from .statement import TrainingStatement

__all__ = ["UNIT_DOMAIN", "SEAL_DOMAIN", "ChainError", "slot_of", "UnitShape"]

UNIT_DOMAIN = b"lightning-zk/training/unit/v2"
SEAL_DOMAIN = b"lightning-zk/training/seal/v2"
_SHAPES_DOMAIN = b"lightning-zk/training/shapes"


class ChainError(VerificationError):
    """Proof units do not form a chain (missing/reordered step, other commitments, no seal)."""


_IDENTITY = TensorSlot((), ())


def slot_of(layout: Layout, f: Committed) -> TensorSlot:
    """Where factor ``f``'s tensor sits in its commitment (identity for whole tables)."""
    if f.slot == "ALL":
        return _IDENTITY
    if f.com in ("bin", "bout"):
        return layout.theta[f.slot]
    if f.com == "batch":
        from .batch import batch_layout

        return batch_layout(layout.arch)[f.slot]
    return layout.slot(f.slot)


@dataclass
class UnitShape:
    """Everything public about a unit's proof that follows from its statement (prover and
    verifier derive it alike): layout, mask and range layouts, commitment shapes, the specs of
    every sumcheck (which fix the mask bank)."""

    stmt: TrainingStatement

    @cached_property
    def layout(self) -> Layout:
        st = self.stmt  # SGD momentum / weight decay add their tensors (and Theta's buffers)
        names = tensor_names(len(st.dims) - 1, st.momentum != 0, st.weight_decay != 0, st.loss,
                             bool(st.conv), st.input_scale is not None, len(st.conv) == 8)
        return build_layout(st.arch, names)

    @cached_property
    def masks(self) -> MaskLayout:
        return mask_layout(self.layout)

    @cached_property
    def ranges(self) -> WitRange:
        return wit_range(self.layout, self.stmt.frac_bits, self.stmt.value_bits)

    @cached_property
    def wit_support(self) -> ColumnSupport:
        return self.layout.wit_support()

    @cached_property
    def theta_support(self) -> ColumnSupport:
        return self.layout.theta_support()

    @property
    def wit_shapes(self) -> tuple[tuple[int, bool], ...]:
        """Wit and the range limb columns (one commitment)."""
        n = self.layout.wit_vars
        return ((n, False),) * (1 + self.ranges.columns)

    @property
    def mask_shapes(self) -> tuple[tuple[int, bool], ...]:
        """The block mask M and the range multiplicities (one commitment)."""
        return ((self.masks.num_vars, False), (self.ranges.limb_bits, False))

    @property
    def inv_shapes(self) -> tuple[tuple[int, bool], ...]:
        return ((self.layout.wit_vars, True),) * self.ranges.columns

    @cached_property
    def specs(self) -> list[SumcheckSpec]:
        """Every sumcheck of the unit in transcript order: relations, range check, reduction.

        Their shapes (variables, degrees, masked tables) do not depend on challenges, so a
        throwaway transcript builds them; the coefficients are not used.
        """
        tr = Transcript(_SHAPES_DOMAIN)
        out = [build(tr).spec() for build in relation_builders(self.layout, self.stmt)]
        out.append(range_spec(self.ranges, range_challenges(tr, self.ranges, Fp2(1, 1))))
        out.append(claims_spec(self.layout.wit_vars, self.masks.num_vars))
        return out
