"""What ``manifest.json`` says about a run: software, hardware, configuration, fingerprints."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import torch

from ..ledger.schema import run_fingerprint

_PACKAGES = ("lightning-zk", "torch", "lightning", "numpy", "pymerkle", "safetensors", "torchmetrics")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_capability=f"{props.major}.{props.minor}",
                    cuda=torch.version.cuda)
    return info


def json_safe(value: Any, depth: int = 0) -> Any:
    """A JSON-serialisable rendering of hyperparameters (unknown objects become their repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 6:
        return repr(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, torch.dtype):
        return str(value)
    return repr(value)


def model_fingerprint(model: torch.nn.Module) -> dict[str, object]:
    """Class and the names/shapes of every state entry: what a replay's model must match."""
    entries = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "state_entries": entries,
    }


def optimizer_summary(optimizers) -> list[dict[str, object]]:
    out = []
    for opt in optimizers:
        groups = [
            {k: json_safe(v) for k, v in g.items() if k != "params"} | {"num_params": len(g["params"])}
            for g in opt.param_groups
        ]
        out.append({"class": type(opt).__qualname__, "param_groups": groups})
    return out


def trainer_summary(trainer) -> dict[str, object]:
    return {
        "max_epochs": trainer.max_epochs,
        "max_steps": trainer.max_steps,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "gradient_clip_val": json_safe(trainer.gradient_clip_val),
        "gradient_clip_algorithm": json_safe(trainer.gradient_clip_algorithm),
        "default_root_dir": str(trainer.default_root_dir),
    }


def fingerprint(parts: dict[str, object]) -> str:
    """The run fingerprint of the identity sections (:func:`lightning_zk.ledger.schema.run_fingerprint`)."""
    return run_fingerprint(parts)


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
