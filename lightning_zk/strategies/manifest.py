"""What ``manifest.json`` says about a run: software, hardware, configuration, fingerprints.

The *identity* of a run (strategy, model, data, optimizers, LR schedulers, the Trainer settings
that shape the computation: :data:`lightning_zk.ledger.schema.IDENTITY_PARTS`) is what a replay, a
resume and a dispute must share; its hash is the run's ``fingerprint``. Everything is compared
field by field with :func:`differences`, so an error names the exact field that differs.
"""

from __future__ import annotations

import enum
import json
import platform
import re
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


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# What LightningCLI adds to hparams about how it built the model (an import path, not the model).
_INSTANTIATION_KEYS = frozenset({"_class_path", "_instantiator"})


def json_safe(value: Any, depth: int = 0) -> Any:
    """A JSON-serialisable rendering of hyperparameters that does not depend on the process.

    Classes and functions become their qualified names without the module (``__main__.Net`` and
    ``train.Net`` are the same class run two ways); other objects their repr without addresses.
    """
    if isinstance(value, enum.Enum):  # before str: Lightning's enums are str subclasses
        return json_safe(value.value, depth)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 6:
        return _ADDRESS.sub("", repr(value))
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return f"<{getattr(value, '__qualname__', type(value).__qualname__)}>"
    return _ADDRESS.sub("", repr(value))


def model_fingerprint(model: torch.nn.Module) -> dict[str, object]:
    """What determines the model's computation: what a replay's model must match.

    The class by name (not import path), the module tree (each submodule's path, class name and
    ``extra_repr``: layer sizes, dropout rates, ...), every state entry's shape and dtype, the
    hyperparameters saved with ``save_hyperparameters`` and the optimization mode.
    """
    entries = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}
    structure = {name or ".": f"{type(m).__qualname__}({_ADDRESS.sub('', m.extra_repr())})"
                 for name, m in model.named_modules()}
    return {
        "class": type(model).__qualname__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "state_entries": entries,
        "structure": structure,
        "hyperparameters": json_safe({k: v for k, v in (getattr(model, "hparams", {}) or {}).items()
                                      if k not in _INSTANTIATION_KEYS}),
        "automatic_optimization": bool(getattr(model, "automatic_optimization", True)),
    }


def import_path(obj: object) -> str:
    """``module.qualname`` of ``obj``'s class (recorded for people; not part of the identity)."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def optimizer_summary(optimizers) -> list[dict[str, object]]:
    out = []
    for opt in optimizers:
        groups = [
            {k: json_safe(v) for k, v in g.items() if k != "params"} | {"num_params": len(g["params"])}
            for g in opt.param_groups
        ]
        out.append({"class": type(opt).__qualname__, "param_groups": groups})
    return out


def scheduler_summary(configs) -> list[dict[str, object]]:
    """The LR schedulers as Lightning steps them: class, interval, frequency, monitor."""
    return [
        {"class": type(c.scheduler).__qualname__, "interval": c.interval, "frequency": c.frequency,
         "monitor": c.monitor, "reduce_on_plateau": bool(c.reduce_on_plateau), "strict": c.strict}
        for c in configs
    ]


# Trainer settings that shape the committed computation: part of the run's identity, recorded in
# ``manifest["trainer"]["settings"]`` and applied by the replay (docs/verifiable_strategy.md).
SHAPING_SETTINGS = (
    "limit_train_batches", "limit_val_batches", "val_check_interval", "check_val_every_n_epoch",
    "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
    "reload_dataloaders_every_n_epochs", "overfit_batches",
)
# Settings that only decide where training stops: recorded in ``manifest["trainer"]["stopping"]``
# and applied by the replay, but a resume may change them (to train longer).
STOPPING_SETTINGS = ("max_epochs", "min_epochs", "max_steps", "min_steps")


def trainer_section(trainer) -> dict[str, object]:
    """``manifest["trainer"]``: every Trainer setting that shapes the run, in one place.

    ``settings`` (identity): the shaping settings, plus ``validation`` (whether validation runs
    during fit: it can steer the run, e.g. through ``ReduceLROnPlateau``). ``stopping``: the
    stopping settings and ``max_time``. ``callbacks``: the class names of the Trainer's callbacks
    (for people: a callback that changes the computation must be given to the replay too).
    """
    settings = {name: json_safe(getattr(trainer, name, None)) for name in SHAPING_SETTINGS}
    settings["validation"] = bool(trainer.enable_validation)
    stopping: dict[str, object] = {name: json_safe(getattr(trainer, name, None)) for name in STOPPING_SETTINGS}
    timer = next((c for c in trainer.callbacks if type(c).__name__ == "Timer"), None)
    stopping["max_time"] = str(timer._duration) if timer is not None and timer._duration else None
    return {
        "settings": settings,
        "stopping": stopping,
        "callbacks": sorted(type(c).__qualname__ for c in trainer.callbacks
                            if type(c).__module__.split(".")[0] != "lightning_zk"
                            or type(c).__name__ in ("CommitCallback", "ProofCallback")),
    }


def same_setting(a: object, b: object) -> bool:
    """Equal with the same type: Lightning reads ``1`` (batches) and ``1.0`` (epochs) differently."""
    return type(a) is type(b) and a == b


def differences(committed: Any, replayed: Any, path: str = "", limit: int = 5) -> list[str]:
    """The fields in which ``replayed`` differs from ``committed``, as ``path: committed X, replay Y``."""
    out: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                if key not in a:
                    out.append(f"{where}.{key}: not in the committed run, replay {_short(b[key])}")
                elif key not in b:
                    out.append(f"{where}.{key}: committed {_short(a[key])}, missing in the replay")
                else:
                    walk(a[key], b[key], f"{where}.{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and any(
            isinstance(x, (dict, list)) and not _is_record(x) for x in a
        ):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{where}[{i}]")
        elif not same_setting(a, b):
            out.append(f"{where}: committed {_short(a)}, replay {_short(b)}")

    walk(committed, replayed, path)
    return [line.lstrip(".") for line in out]


def _is_record(value: Any) -> bool:
    """A short list of plain values (a shape with its dtype): compared and shown as one value."""
    return isinstance(value, list) and all(not isinstance(v, dict) for v in value)


def _short(value: Any, width: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def fingerprint(parts: dict[str, object]) -> str:
    """The run fingerprint of the identity sections (:func:`lightning_zk.ledger.schema.run_fingerprint`)."""
    return run_fingerprint(parts)


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
