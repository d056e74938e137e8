"""Pin the framework switches that change results: TF32, cuDNN autotuning, nondeterministic kernels."""

from __future__ import annotations

import os

import torch


class DeterministicFlags:
    """Set the deterministic switches for the run and put the user's settings back afterwards."""

    def __init__(self) -> None:
        self._saved: dict[str, object] | None = None

    def enable(self) -> None:
        if self._saved is not None:
            return
        self._saved = {
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        }
        # warn_only: kernels without a deterministic variant still run; their results are rounded
        # and logged like any reduction, so the replay stays exact.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        torch.use_deterministic_algorithms(bool(saved["deterministic"]), warn_only=bool(saved["warn_only"]))
        torch.backends.cudnn.deterministic = bool(saved["cudnn_deterministic"])
        torch.backends.cudnn.benchmark = bool(saved["cudnn_benchmark"])
        torch.backends.cudnn.allow_tf32 = bool(saved["cudnn_tf32"])
        torch.backends.cuda.matmul.allow_tf32 = bool(saved["matmul_tf32"])
        if saved["cublas_workspace"] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = str(saved["cublas_workspace"])
