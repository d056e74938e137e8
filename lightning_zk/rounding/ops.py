"""Which ATen ops must be rounded, which are exact, and which draw random numbers.

Safe by default: every floating-point op that is not known to be exact on all hardware is rounded
to the committed grid and its near-midpoint elements are logged. The allow-lists below only save
work; an op missing from them costs time, never correctness.

- ``EXACT``: data movement, selection and comparisons: bit-identical everywhere, never rounded.
- ``IEEE``: single correctly-rounded IEEE operations (add, mul, div, sqrt, ...): bit-identical on
  every IEEE-754 device in the compute dtype, so their rounding needs no log (τ = 0).
- ``RANDOM``: drawn from the device-independent generator instead (see :mod:`.rng`).
- everything else: rounded; the threshold kind says which τ applies (``reduction``,
  ``transcendental``, ``fused`` or ``other``).
"""

from __future__ import annotations

from enum import Enum

import torch


class OpClass(str, Enum):
    EXACT = "exact"
    IEEE = "ieee"
    RANDOM = "random"
    REDUCTION = "reduction"
    TRANSCENDENTAL = "transcendental"
    FUSED = "fused"
    OTHER = "other"


_EXACT = {
    # movement, views, copies, creation
    "view", "_unsafe_view", "reshape", "_reshape_alias", "as_strided", "alias", "detach", "t",
    "transpose", "permute", "expand", "squeeze", "unsqueeze", "select", "slice", "narrow",
    "split", "split_with_sizes", "chunk", "unbind", "unfold", "flatten", "clone", "copy",
    "_to_copy", "to", "contiguous", "lift_fresh", "lift_fresh_copy", "empty", "empty_like",
    "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like", "new_zeros",
    "ones", "ones_like", "new_ones", "full", "full_like", "new_full", "fill", "zero", "arange",
    "scalar_tensor", "_local_scalar_dense", "cat", "stack", "repeat", "flip", "roll", "tril",
    "triu", "diagonal", "diag_embed", "constant_pad_nd", "select_backward", "slice_backward",
    "expand_copy", "view_copy", "permute_copy", "t_copy", "transpose_copy", "unsqueeze_copy",
    "squeeze_copy", "_unsafe_index", "index", "index_select", "gather", "take", "masked_select",
    "embedding", "one_hot", "nonzero", "where", "masked_fill", "set_", "resize_", "_pin_memory",
    "max_pool2d_with_indices", "max_pool1d_with_indices", "max_pool3d_with_indices",
    "max", "min", "amax", "amin", "aminmax", "argmax", "argmin", "sort", "topk", "kthvalue",
    "maximum", "minimum", "clamp", "clamp_min", "clamp_max", "relu", "threshold",
    "threshold_backward", "hardtanh", "hardtanh_backward", "abs", "neg", "sign", "sgn",
    "floor", "ceil", "trunc", "round", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
    "logical_or", "logical_not", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_not",
    "isnan", "isinf", "isfinite", "signbit", "any", "all", "is_nonzero", "equal",
    "_has_compatible_shallow_copy_type", "sym_size", "sym_stride", "sym_numel",
    "_assert_async", "_functional_assert_async", "count_nonzero", "bincount",
    "record_stream", "_foreach_zero", "_foreach_copy", "_foreach_neg", "_foreach_abs",
    "_foreach_maximum", "_foreach_minimum", "_foreach_clamp_min", "_foreach_clamp_max",
}

# Single IEEE-754 operations: correctly rounded in the compute dtype on every conforming device.
_IEEE = {
    "add", "sub", "rsub", "mul", "div", "sqrt", "reciprocal", "leaky_relu",
    "leaky_relu_backward", "square", "true_divide", "_foreach_add", "_foreach_sub",
    "_foreach_mul", "_foreach_div", "_foreach_sqrt", "_foreach_reciprocal",
}

_TRANSCENDENTAL = {
    "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "tanh", "tanh_backward", "sigmoid",
    "sigmoid_backward", "logit", "erf", "erfc", "erfinv", "gelu", "gelu_backward", "silu",
    "silu_backward", "mish", "mish_backward", "softplus", "softplus_backward", "elu",
    "elu_backward", "selu", "celu", "sin", "cos", "tan", "asin", "acos", "atan", "atan2",
    "sinh", "cosh", "asinh", "acosh", "atanh", "pow", "rsqrt", "log_sigmoid_forward",
    "log_sigmoid_backward", "hardswish", "hardswish_backward", "hardsigmoid",
    "hardsigmoid_backward", "lgamma", "digamma", "_foreach_exp", "_foreach_log",
    "_foreach_pow", "_foreach_tanh", "_foreach_sigmoid",
}

_FUSED = {
    "addcmul", "addcdiv", "lerp", "_foreach_addcmul", "_foreach_addcdiv", "_foreach_lerp",
    "_fused_adam", "_fused_adamw", "_fused_sgd", "_fused_adagrad", "_foreach_norm",
}

_REDUCTION = {
    "mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot", "matmul",
    "linear", "convolution", "convolution_backward", "_convolution", "cudnn_convolution",
    "sum", "mean", "nansum", "prod", "cumsum", "cumprod", "var", "std", "var_mean",
    "std_mean", "norm", "linalg_vector_norm", "_softmax", "_log_softmax", "_safe_softmax",
    "_softmax_backward_data", "_log_softmax_backward_data", "native_layer_norm",
    "native_layer_norm_backward", "native_batch_norm", "native_batch_norm_backward",
    "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional", "native_group_norm", "native_group_norm_backward",
    "embedding_dense_backward", "index_add", "scatter_add", "index_put", "_index_put_impl",
    "scatter_reduce", "nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward",
    "nll_loss2d_backward", "mse_loss", "mse_loss_backward", "l1_loss", "smooth_l1_loss",
    "smooth_l1_loss_backward", "binary_cross_entropy", "binary_cross_entropy_backward",
    "binary_cross_entropy_with_logits", "avg_pool2d", "avg_pool2d_backward",
    "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "_adaptive_avg_pool2d_backward",
    "max_pool2d_with_indices_backward", "logsumexp",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_cudnn_attention_backward",
}

RANDOM_OPS = {
    "bernoulli", "bernoulli_", "native_dropout", "rand", "rand_like", "randn", "randn_like",
    "uniform", "uniform_", "normal", "normal_", "randint", "randint_like", "random", "random_",
    "randperm", "exponential", "exponential_", "multinomial", "poisson", "rrelu_with_noise",
    "geometric_", "cauchy_", "log_normal_", "_standard_gamma", "_sample_dirichlet",
    "binomial", "_fused_dropout",
}


def base_name(func: torch._ops.OpOverload) -> str:
    """``aten.add_.Tensor`` → ``add``: the op's name without overload and in-place suffix."""
    name = func._schema.name.split("::")[-1]
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name


def classify(func: torch._ops.OpOverload, kwargs: dict) -> OpClass:
    """The class of one op call; ``add`` with a non-unit ``alpha`` counts as fused (FMA on GPU)."""
    name = base_name(func)
    if name in RANDOM_OPS or name + "_" in RANDOM_OPS:
        return OpClass.RANDOM
    if name in _EXACT:
        return OpClass.EXACT
    if name in _IEEE:
        alpha = kwargs.get("alpha", 1)
        return OpClass.IEEE if alpha == 1 else OpClass.FUSED
    if name in _REDUCTION:
        return OpClass.REDUCTION
    if name in _TRANSCENDENTAL:
        return OpClass.TRANSCENDENTAL
    if name in _FUSED:
        return OpClass.FUSED
    return OpClass.OTHER
