"""Fixed-point training: format, exact integer MLP engine, witness tape, integer reference.

NumPy only (no torch, no Lightning); torch conversion lives in :mod:`.torch_bridge`.
See ``docs/fixed_point.md``.
"""

from .conv import ConvSpec, im2col
from .engine import FixedPointMLP, mse_constant
from .exact import ExactOverflowError, exact_matmul, plan_limbs
from .format import (
    FixedPointConfig,
    FixedPointError,
    check_bound,
    dequantize,
    fixed_constant,
    optimizer_constant,
    quantize,
    rescale,
)
from .reference import ref_rescale, ref_sgd_update, reference_sgd_step, reference_step
from .tape import TapeFormatError, WitnessTape, tensor_names

__all__ = [
    "ConvSpec",
    "im2col",
    "FixedPointMLP",
    "mse_constant",
    "ExactOverflowError",
    "exact_matmul",
    "plan_limbs",
    "FixedPointConfig",
    "FixedPointError",
    "check_bound",
    "dequantize",
    "fixed_constant",
    "optimizer_constant",
    "quantize",
    "rescale",
    "ref_rescale",
    "reference_step",
    "reference_sgd_step",
    "ref_sgd_update",
    "TapeFormatError",
    "WitnessTape",
    "tensor_names",
]
