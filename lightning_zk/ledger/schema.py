"""The one schema of ``manifest.json`` and of every ``steps.jsonl`` record, checked at read time.

Whoever reads a run (trainer resuming, auditor, verifier, referee) gets values that were checked
for type, range and consistency here, so no field can crash a constructor deep inside or be
silently accepted: ``epoch=1e30``, ``log_bytes=1e400``, ``strategy.seed=-1``,
``strategy=null`` and a ``log_file`` naming another file are :class:`SchemaError`\\ s that name the
file, the line/step and the field. Writers check too (a bug writes nothing invalid).

Parsing is strict as well (:func:`parse_json`): no ``NaN``/``Infinity``, no duplicate keys (two
parsers must not read two different values), nesting too deep for a parser is an error, not a
``RecursionError``.

How to add a field
------------------
Fields are declared once, below, as data: :data:`MANIFEST` (the manifest's top level, with
:data:`STRATEGY`, :data:`TRAINER_SETTINGS`, :data:`LEDGER` ... as its sections), and
:data:`STEP_RECORD` with :data:`RECORD_EXTRA` for a record's ``extra``. To add one:

1. add ``"name": Spec`` to the section's ``Obj`` (``Int(lo, hi)``, ``Float(lo, hi)``, ``Hex(n)``,
   ``Enum(...)``, ``Maybe(spec)`` for ``null``, ``List``/``Map``/``Obj`` for containers,
   ``Json()`` for a free-form value); list it in ``optional`` when older runs lack it;
2. for a rule between fields, add ``(field, function)`` to the ``rules`` of its ``Obj``: the
   function gets the whole object and returns a problem (``str``) or ``None``;
3. a step record field is also a field of :class:`~lightning_zk.ledger.rundir.StepRecord`
   (``tests/ledger/test_schema.py`` checks that the two agree).

A section that identifies the run's computation (what a replay, a resume and a dispute must
share) is also listed in :data:`IDENTITY_PARTS` (and, when only some of its fields are identity,
in :data:`IDENTITY_FIELDS`): the ``fingerprint`` rule hashes exactly those, and so does the
training session (``tests/ledger/test_schema.py`` checks that a new run's fingerprint holds).

Unknown keys are refused in the sections a reader relies on (the top level, ``strategy``,
``model``, ``data.order``, ``lr_schedulers``, ``trainer``, ``ledger``, a record); free-form
sections (``hyperparameters``, ``model.hyperparameters``, ``hardware``, a record's ``extra``, an
optimizer's ``param_groups``) accept extra keys of any JSON value (bounded depth).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..rounding.log import HEADER_SIZE, MAX_BODY_BYTES
from .errors import SchemaError
from .state import STATE_DIGEST_FORMATS

U63 = 2**63 - 1
U64 = 2**64 - 1
#: Deepest nesting of a free-form value (and of any JSON document a reader parses).
MAX_DEPTH = 64


class _Bad(Exception):
    """A field failed its spec (converted to :class:`SchemaError` with the file and step)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field, self.problem = field, problem


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else json.dumps(value)[:60]
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# --- specs -----------------------------------------------------------------------------------
class Spec:
    """One field's rule. ``check`` raises on a bad value; ``describe`` says what is expected."""

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, value: Any, path: str) -> None:
        raise NotImplementedError

    def fail(self, value: Any, path: str) -> _Bad:
        return _Bad(path, f"expected {self.describe()}, got {_show(value)}")


class Int(Spec):
    def __init__(self, lo: int = 0, hi: int = U63) -> None:
        self.lo, self.hi = lo, hi

    def describe(self) -> str:
        if self.lo == self.hi:
            return f"the integer {self.lo}"
        hi = "2**63 - 1" if self.hi == U63 else "2**64 - 1" if self.hi == U64 else str(self.hi)
        return f"an integer in [{self.lo}, {hi}]"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not int or not self.lo <= value <= self.hi:
            raise self.fail(value, path)


class Float(Spec):
    """A finite number (ints allowed) in ``[lo, hi]``."""

    def __init__(self, lo: float = -math.inf, hi: float = math.inf) -> None:
        self.lo, self.hi = lo, hi

    def describe(self) -> str:
        return f"a finite number in [{self.lo}, {self.hi}]"

    def check(self, value: Any, path: str) -> None:
        if type(value) not in (int, float) or not math.isfinite(value) or \
                not self.lo <= value <= self.hi:
            raise self.fail(value, path)


class Bool(Spec):
    def describe(self) -> str:
        return "true or false"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not bool:
            raise self.fail(value, path)


class Str(Spec):
    def __init__(self, max_len: int = 4096, pattern: str | None = None, what: str = "a string") -> None:
        self.max_len, self.what = max_len, what
        self.pattern = re.compile(pattern) if pattern else None

    def describe(self) -> str:
        return f"{self.what} of at most {self.max_len} characters"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not str or len(value) > self.max_len or \
                (self.pattern is not None and not self.pattern.fullmatch(value)):
            raise self.fail(value, path)


class Hex(Str):
    """``nbytes`` bytes as lowercase hex (a SHA-256 digest is ``Hex(32)``)."""

    def __init__(self, nbytes: int) -> None:
        super().__init__(2 * nbytes, f"[0-9a-f]{{{2 * nbytes}}}", f"{2 * nbytes} lowercase hex digits")

    def describe(self) -> str:
        return self.what


class Enum(Spec):
    def __init__(self, *values: Any) -> None:
        self.values = values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)

    def check(self, value: Any, path: str) -> None:
        if not any(type(value) is type(v) and value == v for v in self.values):
            raise self.fail(value, path)


class DigestFormat(Enum):
    """A state digest format this version computes (:data:`~.state.STATE_DIGEST_FORMATS`)."""

    def __init__(self) -> None:
        super().__init__(*STATE_DIGEST_FORMATS)

    def fail(self, value: Any, path: str) -> _Bad:
        return _Bad(path, f"unknown state digest format {_show(value)}: this lightning-zk computes "
                          f"{self.describe()}. HINT: use the lightning-zk version that wrote the run")


class Maybe(Spec):
    """``null`` or ``spec``."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def describe(self) -> str:
        return f"null or {self.spec.describe()}"

    def check(self, value: Any, path: str) -> None:
        if value is not None:
            self.spec.check(value, path)


class List(Spec):
    def __init__(self, item: Spec, min_len: int = 0, max_len: int = 1 << 24) -> None:
        self.item, self.min_len, self.max_len = item, min_len, max_len

    def describe(self) -> str:
        return f"a list of {self.min_len}..{self.max_len} items"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not list or not self.min_len <= len(value) <= self.max_len:
            raise self.fail(value, path)
        for i, item in enumerate(value):
            self.item.check(item, _join(path, i))


class Tuple(Spec):
    """A list of fixed length whose items have their own specs."""

    def __init__(self, *items: Spec) -> None:
        self.items = items

    def describe(self) -> str:
        return f"a list of {len(self.items)} items"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not list or len(value) != len(self.items):
            raise self.fail(value, path)
        for i, (spec, item) in enumerate(zip(self.items, value, strict=True)):
            spec.check(item, _join(path, i))


class Map(Spec):
    """An object with string keys (at most ``max_len``) whose values all follow ``value``."""

    def __init__(self, value: Spec, max_len: int = 1 << 20) -> None:
        self.value, self.max_len = value, max_len

    def describe(self) -> str:
        return "an object"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not dict or len(value) > self.max_len:
            raise self.fail(value, path)
        for key, item in value.items():
            self.value.check(item, _join(path, key))


class Json(Spec):
    """Any JSON value (free-form): only its depth is bounded; ``object_only`` for a section."""

    def __init__(self, object_only: bool = False) -> None:
        self.object_only = object_only

    def describe(self) -> str:
        return "an object" if self.object_only else "a JSON value"

    def check(self, value: Any, path: str) -> None:
        if self.object_only and type(value) is not dict:
            raise self.fail(value, path)
        stack = [(value, path, 0)]
        while stack:
            item, where, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise _Bad(where, f"nested deeper than {MAX_DEPTH} levels")
            if type(item) is dict:
                stack.extend((v, _join(where, k), depth + 1) for k, v in item.items())
            elif type(item) is list:
                stack.extend((v, _join(where, i), depth + 1) for i, v in enumerate(item))
            elif type(item) is float and not math.isfinite(item):
                raise _Bad(where, f"expected a finite number, got {item!r}")
            elif item is not None and type(item) not in (str, int, float, bool):
                raise _Bad(where, f"expected a JSON value, got {type(item).__name__}")


Rule = Callable[[Mapping[str, Any]], "str | None"]


class Obj(Spec):
    """An object with declared ``fields``; others refused unless ``extra`` says how to check them.

    ``rules`` are ``(field, function)`` pairs run after the fields: the function returns a problem
    or ``None`` (consistency between fields).
    """

    def __init__(self, fields: Mapping[str, Spec], optional: Sequence[str] = (),
                 extra: Spec | None = None, rules: Sequence[tuple[str, Rule]] = ()) -> None:
        self.fields, self.optional, self.extra, self.rules = dict(fields), set(optional), extra, rules

    def describe(self) -> str:
        return "an object"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not dict:
            raise self.fail(value, path)
        for name, spec in self.fields.items():
            if name in value:
                spec.check(value[name], _join(path, name))
            elif name not in self.optional:
                raise _Bad(_join(path, name), "is missing")
        for name in value.keys() - self.fields.keys():
            if self.extra is None:
                raise _Bad(_join(path, name), "is not a field of this format (unknown key)")
            self.extra.check(value[name], _join(path, name))
        for name, rule in self.rules:
            problem = rule(value)
            if problem:
                raise _Bad(_join(path, name), problem)


class Tagged(Spec):
    """An object whose ``tag`` field selects which ``Obj`` it must satisfy."""

    def __init__(self, tag: str, variants: Mapping[str, Obj]) -> None:
        self.tag, self.variants = tag, dict(variants)

    def describe(self) -> str:
        return f"an object with {self.tag!r} one of {sorted(self.variants)}"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not dict:
            raise self.fail(value, path)
        variant = self.variants.get(value.get(self.tag)) if type(value.get(self.tag)) is str else None
        if variant is None:
            raise _Bad(_join(path, self.tag), f"expected one of {sorted(self.variants)}, got "
                                              f"{_show(value.get(self.tag))}")
        variant.check(value, path)


# --- the declarations ------------------------------------------------------------------------
DIGEST = Hex(32)
SEED = Int(0, U63)
TAU = Float(0.0, 0.5)
COUNT = Int(0, U63)
NAME = Str(1024)

THRESHOLD_POLICY = Obj({"tau": Maybe(TAU), "per_kind": Map(TAU, 64), "per_op": Map(TAU, 4096),
                        "calibration": Maybe(Json(object_only=True))})
STRATEGY = Tagged("mode", {
    "rounded": Obj({
        "mode": Enum("rounded"), "compute_dtype": Enum("float64", "float32"),
        "mantissa_bits": Int(1, 23), "seed": SEED, "threshold_policy": THRESHOLD_POLICY,
        "thresholds": Obj({"base": TAU, "per_kind": Map(TAU, 64), "per_op": Map(TAU, 4096)}),
        # data-parallel runs (VerifiableDDPStrategy): shards per step, whatever the world size
        "shards": Int(1, 1 << 16),
        # ... whose module has BatchNorm running statistics: batch statistics per shard, running
        # statistics from shard 0 (lightning_zk.strategies.batchnorm); absent: no such layer
        "batch_norm": Enum("per_shard"),
    }, optional=("shards", "batch_norm"), rules=[("mantissa_bits", lambda s: "float32 compute needs mantissa_bits < 23 (guard bits)"
               if s["compute_dtype"] == "float32" and s["mantissa_bits"] == 23 else None)]),
    "fixed": Obj({"mode": Enum("fixed"), "frac_bits": Int(1, 30), "value_bits": Int(2, 40),
                  "seed": SEED},
                 rules=[("value_bits", lambda s: "must exceed frac_bits"
                         if s["value_bits"] <= s["frac_bits"] else None)]),
})
FIXED = Obj({"dims": List(Int(1, 1 << 24), 2, 64), "frac_bits": Int(1, 30),
             "value_bits": Int(2, 40), "lr": Int(-(1 << 62), 1 << 62),
             # SGD's momentum and weight decay (fixed-point constants; absent in older runs: 0)
             "momentum": Int(0, 1 << 30), "weight_decay": Int(0, 1 << 30),
             # what every proof statement of the run must carry (docs/proving_runs.md)
             "batch_size": Int(1, 1 << 24),
             # the loss whose gradient the steps take (absent in runs before it: "mse")
             "loss": Enum("mse", "xent"),
             # a first Conv2d's public shape [C, H, W, F, k, stride, padding], and the kernel
             # of an average pooling after it as an 8th entry (absent: none)
             "conv": List(Int(0, 1 << 24), 7, 8),
             "proof": Obj({"security_bits": Int(1, 128), "blowup": Int(1, 16)}),
             # the records' state and batch digests are keyed (lightning_zk.ledger.hiding)
             "digests": Obj({"scheme": Enum("hmac-sha256/v1"), "key_commitment": DIGEST})},
            optional=("batch_size", "loss", "proof", "digests", "momentum", "weight_decay",
                      "conv"))
#: ``hyperparameters.trainer`` of runs written before the ``trainer`` section (read, not written).
TRAINER_SETTINGS = Obj({
    "max_epochs": Maybe(Int(-1, U63)), "max_steps": Int(-1, U63),
    "accumulate_grad_batches": Int(1, U63), "gradient_clip_val": Maybe(Float(0.0)),
    "gradient_clip_algorithm": Maybe(Enum("norm", "value")), "default_root_dir": Maybe(Str(4096)),
}, optional=("max_epochs", "max_steps", "accumulate_grad_batches", "gradient_clip_val",
             "gradient_clip_algorithm", "default_root_dir"), extra=Json())
LEDGER = Obj({
    "file": Enum("ledger.sqlite"), "leaf_format": Enum("lightning-zk/leaf/v1"),
    "algorithm": Enum("sha256"), "size": COUNT, "root": DIGEST,
    "checkpoint_every_n_steps": Maybe(Int(1, U63)), "save_last": Bool(),
}, optional=("save_last",))
#: ``manifest["trainer"]`` (``lightning_zk.strategies.manifest.trainer_section``). ``settings``
#: shape the computation (identity; the replay applies them), ``stopping`` only decides where
#: training stops (the replay applies it; a resume may change it), ``callbacks`` is for people.
NUMBER = Float(0.0)  # Lightning reads an int (batches) and a float (a fraction) differently
TRAINER = Obj({
    "settings": Obj({
        "limit_train_batches": NUMBER, "limit_val_batches": NUMBER, "val_check_interval": NUMBER,
        "check_val_every_n_epoch": Maybe(Int(1, U63)), "accumulate_grad_batches": Int(1, U63),
        "gradient_clip_val": Maybe(Float(0.0)), "gradient_clip_algorithm": Maybe(Enum("norm", "value")),
        "reload_dataloaders_every_n_epochs": Int(0, U63), "overfit_batches": NUMBER,
        "validation": Bool(),
    }),
    "stopping": Obj({"max_epochs": Maybe(Int(-1, U63)), "min_epochs": Maybe(Int(-1, U63)),
                     "max_steps": Int(-1, U63), "min_steps": Maybe(Int(-1, U63)),
                     "max_time": Maybe(Str(64))}),
    "callbacks": List(NAME, 0, 4096),
})
LR_SCHEDULERS = List(Obj({
    "class": NAME, "interval": Enum("step", "epoch"), "frequency": Int(1, U63),
    "monitor": Maybe(NAME), "reduce_on_plateau": Bool(), "strict": Bool(),
}), 0, 1024)
MODEL = Obj({
    "class": NAME, "parameters": COUNT,
    "state_entries": Map(Tuple(List(Int(0, U63), 0, 64), Str(64))),
    # each submodule's path -> class name and extra_repr (layer sizes, dropout rates, ...)
    "structure": Map(Str(1 << 16)),
    "hyperparameters": Json(object_only=True),  # save_hyperparameters(), free-form
    "automatic_optimization": Bool(),
}, optional=("structure", "hyperparameters", "automatic_optimization"))


def _order_kind(order: Mapping[str, Any]) -> str | None:
    kind = order.get("kind", "seeded")
    needs = {"seeded": ("shuffle",), "recorded": ("sampler", "batch_sampler")}[kind]
    foreign = {"seeded": ("sampler", "batch_sampler"), "recorded": ("shuffle",)}[kind]
    missing = [k for k in needs if k not in order]
    if missing:
        return f"a {kind} order needs {', '.join(missing)}"
    if any(k in order for k in foreign):
        return f"a {kind} order has no {' or '.join(foreign)}"
    if kind == "seeded" and order["batch_size"] is None:
        return "a seeded order has a batch_size"
    return None


#: How the training batches were drawn: ``seeded`` (the strategy's own sampler, a pure function of
#: the seed and the epoch) or ``recorded`` (the user's sampler; the records hold the indices).
DATA_ORDER = Obj({"kind": Enum("seeded", "recorded"), "batch_size": Maybe(Int(1, U63)),
                  "drop_last": Bool(), "length": COUNT, "shuffle": Bool(), "sampler": NAME,
                  "batch_sampler": Maybe(NAME)},
                 optional=("kind", "shuffle", "sampler", "batch_sampler"),
                 rules=[("kind", _order_kind)])


def _fixed_matches_strategy(m: Mapping[str, Any]) -> str | None:
    fixed = m["strategy"]["mode"] == "fixed"
    if fixed != ("fixed" in m):
        return ("a fixed-point run must have a 'fixed' section" if fixed else
                "only a fixed-point run has a 'fixed' section")
    if fixed and any(m["fixed"][k] != m["strategy"][k] for k in ("frac_bits", "value_bits")):
        return "frac_bits/value_bits differ from the strategy's"
    return None


#: The manifest sections that identify a run's computation; ``fingerprint`` hashes exactly these
#: (a new section that shapes the computation is added here, and to the session's identity).
IDENTITY_PARTS = ("strategy", "model", "data", "optimizers", "lr_schedulers", "trainer")
#: Sections of which only some fields are identity: the rest may change (``trainer.stopping``
#: when a resume trains longer) or is informational (``trainer.callbacks``).
IDENTITY_FIELDS = {"trainer": ("settings",)}
#: Identity sections that runs written before they were recorded lack (hashed only when present).
LATER_IDENTITY_PARTS = ("lr_schedulers", "trainer")


def identity(sections: Mapping[str, Any]) -> dict[str, Any]:
    """The identity of a run (its manifest, or a session's identity parts): what is hashed."""
    parts = {k: sections[k] for k in IDENTITY_PARTS if k in sections}
    for name, fields in IDENTITY_FIELDS.items():
        if isinstance(parts.get(name), Mapping):
            parts[name] = {f: parts[name][f] for f in fields if f in parts[name]}
    return parts


def run_fingerprint(parts: Mapping[str, Any]) -> str:
    """SHA-256 over a domain tag and the canonical JSON of the identity sections (:func:`identity`)."""
    unknown = set(parts) - set(IDENTITY_PARTS)
    missing = set(IDENTITY_PARTS) - set(LATER_IDENTITY_PARTS) - set(parts)
    if unknown or missing:
        raise ValueError(f"a run's identity has the sections {sorted(IDENTITY_PARTS)}, got "
                         f"{sorted(parts)}: declare new ones in IDENTITY_PARTS")
    data = json.dumps(identity(parts), sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(b"lightning-zk/run-fingerprint/v1" + data).hexdigest()


def _fingerprint(m: Mapping[str, Any]) -> str | None:
    actual = run_fingerprint(identity(m))
    return None if m["fingerprint"] == actual else (
        f"is not the hash of the run's {', '.join(identity(m))} sections ({actual[:16]}…)")


def _ledger_size(m: Mapping[str, Any]) -> str | None:
    ledger = m.get("ledger")
    if ledger is not None and ledger["size"] != m["steps_committed"]:
        return f"publishes {ledger['size']} leaves, but steps_committed is {m['steps_committed']}"
    return None


def _initial_file(m: Mapping[str, Any]) -> str | None:
    if "file" not in m["initial_state"] and m["strategy"]["mode"] != "fixed":
        return "names no state file (only a zero-knowledge run's public bundle may omit it)"
    return None


def _empty_run_final(m: Mapping[str, Any]) -> str | None:
    final = m["final_state_digest"]
    if final is not None and m["steps_committed"] == 0 and final != m["initial_state"]["digest"]:
        return "a run of 0 steps must end in its initial state"
    return None


MANIFEST = Obj({
    "format_version": Int(1, 1),
    "run_id": Hex(16),
    "fingerprint": DIGEST,
    "created": Str(64),
    "updated": Str(64),
    "versions": Map(Maybe(Str(256)), 256),
    "lightning_zk_version": Str(256),
    "hardware": Json(object_only=True),
    "strategy": STRATEGY,
    "fixed": FIXED,
    "model": MODEL,
    "model_class": NAME,  # the module's import path, for people (not identity: it may differ)
    "data": Obj({"dataset_class": Maybe(NAME), "order": Maybe(DATA_ORDER)}),
    "optimizers": List(Obj({"class": NAME, "param_groups": List(Json(object_only=True))}), 0, 1024),
    "lr_schedulers": LR_SCHEDULERS,
    "trainer": TRAINER,
    "hyperparameters": Obj({"module": Json(object_only=True), "trainer": TRAINER_SETTINGS},
                           optional=("module", "trainer"), extra=Json()),
    # a zero-knowledge run's public bundle names no state file (the weights are private)
    "initial_state": Obj({"file": Enum("checkpoints/step-00000000.safetensors"), "digest": DIGEST},
                         optional=("file",)),
    "steps_committed": COUNT,
    "final_state_digest": Maybe(DIGEST),
    # how every state digest of the run is computed (lightning_zk.ledger.state); absent: v1
    "state_digest_format": DigestFormat(),
    # zlib level of the run's rounding logs (lightning_zk.rounding.log); absent: 6
    "log_zlib_level": Int(1, 9),
    "ledger": Maybe(LEDGER),
    # an auditor's own run (replay with audit_dir)
    "role": Enum("audit"),
    "audited_run": Str(4096),
    "audit_result": Obj({"ok": Bool(), "first_mismatch_step": Maybe(COUNT)}),
}, optional=("updated", "lightning_zk_version", "fixed", "ledger", "role", "audited_run",
             "state_digest_format", "log_zlib_level",
             "audit_result", "created", "versions", "hardware", "model_class",
             *LATER_IDENTITY_PARTS),
   rules=[("fingerprint", _fingerprint), ("fixed", _fixed_matches_strategy),
          ("ledger.size", _ledger_size),
          ("initial_state.file", _initial_file),
          ("final_state_digest", _empty_run_final)])


def log_file_name(step: int) -> str:
    """The only name a step's rounding log may have (relative to the run directory)."""
    return f"rounding/step-{step:08d}.rlog"


def tape_file_name(step: int) -> str:
    """The only name a step's witness tape may have (relative to the run directory)."""
    return f"tapes/step-{step:08d}.npz"


def _canonical(field: str, name: Callable[[int], str], where: Callable[[Mapping], Any]) -> Rule:
    def rule(record: Mapping[str, Any]) -> str | None:
        value = where(record).get(field)
        expected = name(record["step"])
        if value is not None and value != expected:
            return f"must be {expected!r} for step {record['step']}, got {_show(value)}"
        return None
    return rule


def _tape_pair(record: Mapping[str, Any]) -> str | None:
    extra = record["extra"]
    if ("tape" in extra) != ("tape_sha256" in extra):
        return "tape and tape_sha256 come together"
    return None


RECORD_EXTRA = Obj({"loss": Maybe(Float()), "tape": Str(64), "tape_sha256": DIGEST},
                   optional=("loss", "tape", "tape_sha256"), extra=Json())
STEP_RECORD = Obj({
    "step": COUNT,
    "epoch": COUNT,
    "batch_idx": COUNT,
    "batch_indices": Maybe(List(Int(0, U64))),
    "batch_digest": DIGEST,
    "state_digest": DIGEST,
    "log_file": Str(64),
    "log_sha256": DIGEST,
    "log_bytes": Int(HEADER_SIZE, HEADER_SIZE + MAX_BODY_BYTES),
    "logged_elements": COUNT,
    "rounded_elements": COUNT,
    # the optimizer (by index) of each update inside the step, in order; none on a batch that
    # only accumulated gradients
    "updates": Maybe(List(Int(0, 1023))),
    "global_step": Maybe(COUNT),  # Trainer.global_step when the step's batch started
    "extra": RECORD_EXTRA,
}, optional=("updates", "global_step", "extra"), rules=[
    ("log_file", _canonical("log_file", log_file_name, lambda r: r)),
    ("extra.tape", _canonical("tape", tape_file_name, lambda r: r.get("extra", {}))),
    ("extra.tape_sha256", lambda r: _tape_pair(r) if "extra" in r else None),
])


# --- entry points ----------------------------------------------------------------------------
def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON (only finite numbers are)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json(data: bytes | str, file: str, line: int | None = None) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, bounded nesting.

    Raises :class:`SchemaError` (field ``<document>``) naming the file and line.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except RecursionError:
        problem = "is nested too deeply to parse"
    except (UnicodeDecodeError, ValueError) as err:
        problem = f"is not valid JSON: {err}"
    raise SchemaError(file, "<document>", problem, line=line)


def check(spec: Spec, value: Any, file: str, step: int | None = None,
          line: int | None = None) -> None:
    """Check ``value`` against ``spec``; :class:`SchemaError` names file, line, step and field."""
    try:
        spec.check(value, "")
    except _Bad as bad:
        raise SchemaError(file, bad.field or "<document>", bad.problem, step=step, line=line) from None
    except RecursionError:
        raise SchemaError(file, "<document>", "is nested too deeply", step=step, line=line) from None


def check_manifest(manifest: Any, file: str = "manifest.json") -> None:
    """Every manifest field: type, range, and the rules between fields."""
    check(MANIFEST, manifest, file)


def check_record(record: Any, file: str = "steps.jsonl", line: int | None = None) -> None:
    """Every field of one step record: type, range, canonical file names."""
    step = record.get("step") if isinstance(record, dict) and type(record.get("step")) is int else None
    check(STEP_RECORD, record, file, step=step, line=line)


__all__ = [
    "IDENTITY_FIELDS", "IDENTITY_PARTS", "LATER_IDENTITY_PARTS", "identity", "run_fingerprint", "Bool",
    "DATA_ORDER", "Enum", "Float", "Hex", "Int", "Json", "LEDGER", "LR_SCHEDULERS", "List", "MANIFEST",
    "MAX_DEPTH", "MODEL", "Map", "Maybe", "Obj", "RECORD_EXTRA", "STEP_RECORD", "STRATEGY", "Spec", "Str",
    "TRAINER", "TRAINER_SETTINGS", "Tagged", "Tuple", "check", "check_manifest", "check_record",
    "log_file_name", "parse_json", "tape_file_name",
]
