"""Canonical training state: flatten model + optimizer state, hash it, save and restore it.

The state committed after a step is every tensor of the model's ``state_dict`` and of each
optimizer's state, under flat names::

    model/<state_dict key>
    optim/<i>/state/<param index>/<key>
    optim/<i>/group/<g>/<hyperparameter>      (numeric hyperparameters as float64 scalars)
    sched/<i>/<key>[/<key or index>...]       (LR scheduler state_dict: ints as int64, floats as
                                               float64, number lists as 1-d tensors)
    grad/<parameter name>                     (only where gradients are live at the step boundary)

plus a JSON ``meta`` (non-numeric optimizer and scheduler settings, original dtypes). Runs without
schedulers or live gradients have no such entries, and their digests are what they always were. Floating tensors in the
compute dtype are stored in the committed dtype (float32): values are on the committed grid, so
this is exact, and the digest does not depend on the compute dtype.

Digest: a hash over a domain tag, then for each name in sorted order: name, dtype, shape and the
little-endian bytes, all length-prefixed; then the canonical JSON of ``meta``. The hash and the tag
are the run's *digest format*, declared in its manifest (``state_digest_format``):

- ``lightning-zk/state/v1``: SHA-256, tag ``b"lightning-zk/state/v1"`` (every run written before
  formats were declared; a manifest without the field means this one);
- ``lightning-zk/state/v2-blake3``: BLAKE3 (a tree hash: SIMD over 1 KiB chunks), tag
  ``b"lightning-zk/state/v2-blake3"``, the same serialisation; about twice as fast as SHA-256 on a
  CPU with SHA extensions. The default for new runs.

Safetensors files hold the same tensors and meta (and, for formats other than v1, the format's
name next to the digest); nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write_bytes

STATE_DIGEST_V1 = "lightning-zk/state/v1"  # SHA-256
STATE_DIGEST_V2 = "lightning-zk/state/v2-blake3"  # BLAKE3
STATE_DIGEST_FORMATS = (STATE_DIGEST_V1, STATE_DIGEST_V2)
#: The format of new runs (measured: ``benchmarks/commit.py``).
DEFAULT_STATE_DIGEST = STATE_DIGEST_V2
BATCH_DIGEST_TAG = b"lightning-zk/batch/v1"
_META_KEY = "lightning_zk"


class StateError(ValueError):
    """A state file or a model/optimizer that does not match the committed state."""


class UnknownDigestFormatError(StateError):
    """A state digest format this lightning-zk does not know (a newer run, or a damaged file)."""


def check_digest_format(digest_format: object) -> str:
    """``digest_format`` if it is one of :data:`STATE_DIGEST_FORMATS`, else
    :class:`UnknownDigestFormatError`."""
    if digest_format not in STATE_DIGEST_FORMATS:
        raise UnknownDigestFormatError(
            f"unknown state digest format {digest_format!r:.80}: this lightning-zk computes "
            f"{', '.join(STATE_DIGEST_FORMATS)}. HINT: use the lightning-zk version that wrote "
            "the run."
        )
    return digest_format  # type: ignore[return-value]


def _new_hash(digest_format: str, total_bytes: int = 0):
    check_digest_format(digest_format)
    tag = digest_format.encode("ascii")
    if digest_format == STATE_DIGEST_V1:
        return hashlib.sha256(tag)
    try:
        from blake3 import blake3
    except ImportError as err:  # a declared dependency; a broken install says so
        raise UnknownDigestFormatError(
            f"state digest format {digest_format} needs the blake3 package: pip install blake3"
        ) from err
    # BLAKE3 is a tree hash: a large update is split over threads with the same result (6.0 GB/s
    # on this project's 2 cores against 3.0 GB/s on one). ``AUTO`` uses the shared thread pool
    # (an explicit ``max_threads=n`` builds a new pool per hasher, 0.2-0.8 ms per digest); threads
    # still cost microseconds per update, so only a large state uses them, and small pieces are
    # gathered into one update (_Stream).
    if total_bytes >= _THREADED_STATE_BYTES and _hash_threads() > 1:
        return blake3(tag, max_threads=blake3.AUTO)
    return blake3(tag)


_THREADED_STATE_BYTES = 64 << 20
_SMALL_PIECE = 64 << 10  # pieces below this are gathered into one update


def _hash_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


class _Stream:
    """Feeds a hash with length-prefixed pieces; small ones gathered into one ``update`` (the
    hashed byte stream, hence the digest, is the same as feeding each piece at once)."""

    def __init__(self, h) -> None:
        self.h, self.small = h, bytearray()

    def update(self, data) -> None:
        if len(data) < _SMALL_PIECE:
            self.small += memoryview(data)  # (a numpy array would broadcast "+=")
            return
        if self.small:
            self.h.update(self.small)
            self.small = bytearray()
        self.h.update(data)

    def hexdigest(self) -> str:
        if self.small:
            self.h.update(self.small)
            self.small = bytearray()
        return self.h.hexdigest()


@dataclass
class StateSnapshot:
    """Flat tensors (CPU, committed dtypes) and JSON metadata of one training state."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, object]
    digest_format: str = STATE_DIGEST_V1
    #: Names of the tensors that are the model's and the optimizers' own memory (taken with
    #: ``snapshot(live=True)``): valid only until they are next updated in place; never reused
    #: as buffers, never kept as they are (:meth:`materialized`).
    shared: frozenset[str] = frozenset()

    @property
    def live(self) -> bool:
        """Does any tensor share memory with the model or the optimizers?"""
        return bool(self.shared)

    def digest(self) -> str:
        """The digest in this snapshot's format (:data:`STATE_DIGEST_FORMATS`)."""
        return state_digest(self.tensors, self.meta, self.digest_format)

    def materialized(self) -> StateSnapshot:
        """A snapshot no later in-place update can change: itself, or a live one with its shared
        tensors copied (the others are its own already)."""
        if not self.live:
            return self
        return StateSnapshot({name: t.clone(memory_format=torch.contiguous_format)
                              if name in self.shared else t for name, t in self.tensors.items()},
                             self.meta, self.digest_format)


def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _le_bytes(t: torch.Tensor):
    """The tensor's little-endian bytes as a buffer (no copy for a contiguous CPU tensor)."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    # Tensors are little-endian on every platform torch supports; view as bytes without copying
    # (hash functions read the buffer directly; ``len`` of a uint8 array is its byte count).
    return t.reshape(-1).view(torch.uint8).numpy()


def _feed(h, data) -> None:
    h.update(struct.pack("<Q", len(data)))
    h.update(data)


def tensor_record(h, name: str, t: torch.Tensor) -> None:
    """Hash one named tensor: name, dtype, shape, bytes (each length-prefixed)."""
    _feed(h, name.encode("utf-8"))
    _feed(h, str(t.dtype).removeprefix("torch.").encode("ascii"))
    _feed(h, struct.pack(f"<{t.dim()}Q", *t.shape))
    _feed(h, _le_bytes(t))


def state_digest(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, object],
                 digest_format: str = STATE_DIGEST_V1) -> str:
    """The digest (hex) of a state in ``digest_format`` (module doc); an unknown format is an
    :class:`UnknownDigestFormatError`."""
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    h = _Stream(_new_hash(digest_format, total))
    _feed(h, struct.pack("<Q", len(tensors)))
    for name in sorted(tensors):
        tensor_record(h, name, tensors[name])
    _feed(h, _canonical_json(meta))
    return h.hexdigest()


def batch_digest(batch: object) -> str:
    """Digest of a collated batch: its tensors in pytree order with their paths, and other leaves."""
    h = hashlib.sha256(BATCH_DIGEST_TAG)
    leaves, spec = torch.utils._pytree.tree_flatten(batch)
    _feed(h, str(spec).encode("utf-8"))
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            tensor_record(h, str(i), leaf)
        else:
            _feed(h, repr(leaf).encode("utf-8"))
    return h.hexdigest()


def _committed_dtype(t: torch.Tensor, compute_dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if t.dtype == compute_dtype and compute_dtype != torch.float32 else t.dtype


def _shareable(t: torch.Tensor, compute_dtype: torch.dtype) -> bool:
    """Is ``t`` committed as it is (a CPU tensor in its committed dtype), so a live snapshot
    can hash its own memory?"""
    return t.device.type == "cpu" and _committed_dtype(t, compute_dtype) == t.dtype


def _committed(t: torch.Tensor, compute_dtype: torch.dtype,
               reuse: torch.Tensor | None = None, live: bool = False) -> torch.Tensor:
    """A CPU copy of ``t`` in its committed dtype; with ``live``, ``t`` itself (detached) where
    no conversion is needed (:func:`_shareable`).

    With ``reuse`` (a CPU tensor of the same dtype and shape from an earlier snapshot) the values
    are copied into it: a fresh allocation of a large tensor costs page faults that take several
    times longer than the copy itself.
    """
    t = t.detach()
    if live and _shareable(t, compute_dtype):
        return t
    dtype = _committed_dtype(t, compute_dtype)
    if (reuse is not None and reuse.dtype == dtype and reuse.shape == t.shape
            and reuse.device.type == "cpu" and reuse.is_contiguous()):
        return reuse.copy_(t)
    if t.device.type != "cpu" or dtype != t.dtype:
        return t.to("cpu", dtype).contiguous()
    return t.clone(memory_format=torch.contiguous_format)


def _json_safe(value: object) -> bool:
    return value is None or isinstance(value, (bool, str))


def _flatten(prefix: str, value: object, tensors: dict, settings: dict, compute_dtype: torch.dtype) -> None:
    """A scheduler's state_dict as named leaves: numbers and number lists become tensors."""
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            _flatten(f"{prefix}/{key}", value[key], tensors, settings, compute_dtype)
    elif isinstance(value, torch.Tensor):
        tensors[prefix] = _committed(value, compute_dtype)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        settings[prefix] = value
    elif isinstance(value, int):
        tensors[prefix] = torch.tensor(value, dtype=torch.int64)
    elif isinstance(value, float):
        tensors[prefix] = torch.tensor(value, dtype=torch.float64)
    elif isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        ints = all(isinstance(v, int) for v in value)
        tensors[prefix] = torch.tensor(list(value), dtype=torch.int64 if ints else torch.float64)
    elif isinstance(value, (list, tuple)):
        settings[f"{prefix}/#"] = len(value)
        for j, item in enumerate(value):
            _flatten(f"{prefix}/{j}", item, tensors, settings, compute_dtype)
    else:
        settings[prefix] = f"<{type(value).__qualname__}>"


def _unflatten(prefix: str, template: object, snap: StateSnapshot) -> object:
    """Inverse of :func:`_flatten`, typed by the live state_dict ``template``."""
    if prefix in snap.tensors:
        stored = snap.tensors[prefix]
        if isinstance(template, torch.Tensor):
            return stored.to(dtype=template.dtype)
        if isinstance(template, (list, tuple)):  # int64 → int, float64 → float, as stored
            return type(template)(stored.tolist())
        return stored.item() if stored.dim() == 0 else stored.tolist()
    if isinstance(template, dict):
        return {k: _unflatten(f"{prefix}/{k}", v, snap) for k, v in template.items()}
    settings: Mapping[str, object] = snap.meta.get("settings", {})  # type: ignore[assignment]
    if isinstance(template, (list, tuple)) and f"{prefix}/#" in settings:
        return type(template)(_unflatten(f"{prefix}/{j}", v, snap) for j, v in enumerate(template))
    if prefix in settings and _json_safe(settings[prefix]):
        return settings[prefix]
    return template


def snapshot(
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    compute_dtype: torch.dtype = torch.float64,
    schedulers: Sequence[object] = (),
    grads: bool = False,
    digest_format: str = STATE_DIGEST_V1,
    reuse: StateSnapshot | None = None,
    live: bool = False,
) -> StateSnapshot:
    """The canonical state of ``model``, ``optimizers``, LR ``schedulers`` (see module doc).

    With ``grads``, every parameter gradient that is set is part of the state (``grad/<name>``).
    The snapshot is a copy: later in-place updates of the model or optimizer do not change it.
    With ``reuse`` (an earlier snapshot nobody uses any more), its tensors are overwritten where
    name, dtype and shape match, instead of allocating new ones (never those ``reuse`` shares with
    the model). With ``live``, CPU tensors already in their committed dtype are not copied at all
    (:attr:`StateSnapshot.shared`): for a digest taken before anything trains on (copying 1.2 GB of
    state costs about half as much as hashing it); the others are converted as always.
    """
    check_digest_format(digest_format)
    old = {name: t for name, t in reuse.tensors.items() if name not in reuse.shared} \
        if reuse is not None else {}
    tensors: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    settings: dict[str, object] = {}
    shared: set[str] = set()

    def put(name: str, value: torch.Tensor) -> None:
        tensors[name] = _committed(value, compute_dtype, old.get(name), live)
        dtypes[name] = str(value.dtype).removeprefix("torch.")
        if live and _shareable(value, compute_dtype):
            shared.add(name)

    for key, value in model.state_dict().items():
        put(f"model/{key}", value)
    if grads:
        for name, param in model.named_parameters():
            if param.grad is not None:
                put(f"grad/{name}", param.grad)
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        for pid, pstate in sd["state"].items():
            for key, value in pstate.items():
                if not isinstance(value, torch.Tensor):
                    value = torch.tensor(value, dtype=torch.float64)
                put(f"optim/{i}/state/{pid}/{key}", value)
        for g, group in enumerate(sd["param_groups"]):
            for key, value in group.items():
                if key == "params":
                    settings[f"optim/{i}/group/{g}/params"] = list(value)
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    tensors[f"optim/{i}/group/{g}/{key}"] = torch.tensor(float(value), dtype=torch.float64)
                elif isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
                    tensors[f"optim/{i}/group/{g}/{key}"] = torch.tensor([float(v) for v in value], dtype=torch.float64)
                elif _json_safe(value):
                    settings[f"optim/{i}/group/{g}/{key}"] = value
                else:
                    settings[f"optim/{i}/group/{g}/{key}"] = repr(value)
        settings[f"optim/{i}/class"] = type(opt).__qualname__
    meta: dict[str, object] = {"dtypes": dtypes, "settings": settings, "num_optimizers": len(optimizers)}
    if schedulers:
        for i, scheduler in enumerate(schedulers):
            settings[f"sched/{i}/class"] = type(scheduler).__qualname__
            _flatten(f"sched/{i}", scheduler.state_dict(), tensors, settings, compute_dtype)  # type: ignore[attr-defined]
        meta["num_schedulers"] = len(schedulers)
    return StateSnapshot(tensors=tensors, meta=meta, digest_format=digest_format,
                         shared=frozenset(shared))


def save_snapshot(path: Path, snap: StateSnapshot) -> str:
    """Write ``snap`` as safetensors (atomically); returns its digest, also stored in the file."""
    digest = snap.digest()
    stored: dict[str, object] = {"meta": snap.meta, "digest": digest}
    if snap.digest_format != STATE_DIGEST_V1:  # v1 files stay as they always were
        stored["digest_format"] = snap.digest_format
    meta = {_META_KEY: json.dumps(stored, sort_keys=True)}
    # (a live snapshot holds the model's own tensors: tied weights are one tensor under two
    # names, which safetensors refuses; its copy holds them apart)
    tensors = {k: v.contiguous() for k, v in snap.materialized().tensors.items()}
    tmp = Path(path).with_name(f".{Path(path).name}.partial")
    save_file(tensors, str(tmp), metadata=meta)
    data = tmp.read_bytes()
    tmp.unlink()
    atomic_write_bytes(Path(path), data)
    return digest


_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


def _read_header(path: Path) -> dict:
    """The safetensors header, after checking that the file is exactly header + tensor data.

    Read before the tensors, so a header that claims more (or less) than the file holds, or
    bytes appended after the data, are errors and never allocations.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header_len = struct.unpack("<Q", handle.read(8))[0]
        if not 2 <= header_len <= min(_MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"header length {header_len} does not fit the {size}-byte file")
        header = json.loads(handle.read(header_len))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    data_end = max(ends, default=0)
    if not isinstance(data_end, int) or 8 + header_len + data_end != size:
        raise ValueError(f"the file is {size} bytes, its header describes "
                         f"{8 + header_len + data_end!r} (truncated or with bytes appended)")
    return header


def load_snapshot(path: Path) -> StateSnapshot:
    """Read a safetensors state file and check it against its recorded digest."""
    path = Path(path)
    if not path.is_file():
        raise StateError(f"state file {path} does not exist")
    try:
        header = _read_header(path)
        tensors = load_file(str(path))
        stored = json.loads(header["__metadata__"][_META_KEY])
        meta, digest = stored["meta"], stored["digest"]
        digest_format = check_digest_format(stored.get("digest_format", STATE_DIGEST_V1))
    except UnknownDigestFormatError as err:
        raise UnknownDigestFormatError(f"state file {path}: {err}") from err
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, IndexError, struct.error,
            RecursionError) as err:
        raise StateError(f"state file {path} is not a valid lightning-zk safetensors file: {err}") from err
    snap = StateSnapshot(tensors=dict(tensors), meta=meta, digest_format=digest_format)
    actual = snap.digest()
    if actual != digest:
        raise StateError(
            f"state file {path} is corrupted: its tensors hash to {actual[:16]}…, but the file "
            f"records {digest[:16]}…"
        )
    return snap


def restore(
    snap: StateSnapshot,
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    schedulers: Sequence[object] = (),
) -> None:
    """Load ``snap`` into ``model``, ``optimizers`` and ``schedulers``, keeping each tensor's dtype.

    Gradients are set from the ``grad/`` entries; parameters without one get no gradient.
    """
    current = model.state_dict()
    wanted = {k.removeprefix("model/") for k in snap.tensors if k.startswith("model/")}
    if set(current) != wanted:
        missing = sorted(wanted - set(current))[:5]
        extra = sorted(set(current) - wanted)[:5]
        raise StateError(
            f"model does not match the committed state: committed-only entries {missing}, "
            f"model-only entries {extra}"
        )
    new_sd = {}
    for key, value in current.items():
        stored = snap.tensors[f"model/{key}"]
        if tuple(stored.shape) != tuple(value.shape):
            raise StateError(
                f"model entry {key!r} has shape {tuple(value.shape)}, committed state has "
                f"{tuple(stored.shape)}"
            )
        new_sd[key] = stored.to(dtype=value.dtype)
    model.load_state_dict(new_sd)
    for name, param in model.named_parameters():
        stored = snap.tensors.get(f"grad/{name}")
        param.grad = None if stored is None else stored.to(dtype=param.dtype, device=param.device)
    _restore_optimizers(snap, optimizers)
    _restore_schedulers(snap, schedulers)


def _restore_schedulers(snap: StateSnapshot, schedulers: Sequence[object]) -> None:
    count = int(snap.meta.get("num_schedulers", 0))  # type: ignore[arg-type]
    if schedulers and count != len(schedulers):
        raise StateError(f"committed state has {count} LR schedulers, the run configures {len(schedulers)}")
    for i, scheduler in enumerate(schedulers):
        template = scheduler.state_dict()  # type: ignore[attr-defined]
        scheduler.load_state_dict(_unflatten(f"sched/{i}", template, snap))  # type: ignore[attr-defined]


def _restore_optimizers(snap: StateSnapshot, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    count = int(snap.meta.get("num_optimizers", 0))  # type: ignore[arg-type]
    if optimizers and count != len(optimizers):
        raise StateError(f"committed state has {count} optimizers, the run configures {len(optimizers)}")
    dtypes: Mapping[str, str] = snap.meta["dtypes"]  # type: ignore[assignment]
    settings: Mapping[str, object] = snap.meta["settings"]  # type: ignore[assignment]
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        state: dict[int, dict[str, object]] = {}
        prefix = f"optim/{i}/state/"
        for name, value in snap.tensors.items():
            if not name.startswith(prefix):
                continue
            pid, key = name[len(prefix):].split("/", 1)
            dtype = getattr(torch, dtypes[name])
            state.setdefault(int(pid), {})[key] = value.to(dtype=dtype)
        for g, group in enumerate(sd["param_groups"]):
            for key in list(group):
                tname = f"optim/{i}/group/{g}/{key}"
                if tname in snap.tensors:
                    value = snap.tensors[tname]
                    group[key] = type(group[key])(value.item()) if value.dim() == 0 else tuple(value.tolist())
                elif f"optim/{i}/group/{g}/{key}" in settings and key != "params":
                    stored = settings[f"optim/{i}/group/{g}/{key}"]
                    if _json_safe(stored):
                        group[key] = stored
        sd["state"] = state
        # load_state_dict casts floating state to each parameter's dtype and device.
        opt.load_state_dict(sd)


def named_state_tensors(
    model: torch.nn.Module, optimizers: Iterable[torch.optim.Optimizer], grads: bool = False
) -> list[tuple[str, torch.Tensor]]:
    """Live tensors of model and optimizer state (for in-place rounding after a step)."""
    named = [(f"model/{k}", v) for k, v in model.state_dict(keep_vars=True).items()]
    if grads:
        named += [(f"grad/{k}", p.grad) for k, p in model.named_parameters() if p.grad is not None]
    for i, opt in enumerate(optimizers):
        index = {id(p): j for j, p in enumerate(p for g in opt.param_groups for p in g["params"])}
        for param, pstate in opt.state.items():
            for key, value in pstate.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    named.append((f"optim/{i}/state/{index.get(id(param), -1)}/{key}", value))
    return named


def run_digest_format(manifest: Mapping[str, object]) -> str:
    """The state digest format a run's manifest declares (``lightning-zk/state/v1`` when it
    declares none: every run written before formats were declared)."""
    return check_digest_format(manifest.get("state_digest_format", STATE_DIGEST_V1))
