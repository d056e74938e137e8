"""The one schema of manifest.json and steps.jsonl: every field checked at read time."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest

from lightning_zk.ledger import schema
from lightning_zk.ledger.errors import SchemaError
from lightning_zk.ledger.rundir import RunDirectory, StepRecord
from tests.models import train


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("schema") / "run"
    train("mlp", run_dir, steps=3)
    return run_dir


@pytest.fixture
def run(source, tmp_path):
    return RunDirectory(shutil.copytree(source, tmp_path / "run"))


def _edit_manifest(run, text_edit):
    run.manifest_path.write_text(text_edit(run.manifest_path.read_text()))


def _set(obj, dotted, value):
    *parents, last = dotted.split(".")
    for key in parents:
        obj = obj[key]
    obj[last] = value


# the metadata edits of issue 15 (and more), each refused naming its field
MANIFEST_EDITS = [
    ("strategy", None), ("strategy.seed", -1), ("strategy.seed", 2**64), ("strategy.seed", 1.5),
    ("strategy.seed", None), ("strategy.mantissa_bits", 0), ("strategy.mantissa_bits", 99),
    ("strategy.mantissa_bits", None), ("strategy.compute_dtype", "float16"),
    ("strategy.threshold_policy.tau", 0.7), ("strategy.threshold_policy.tau", "x"),
    ("strategy.thresholds.base", None), ("strategy.thresholds.per_kind", {"reduction": -1}),
    ("strategy.mode", "magic"), ("steps_committed", -1), ("steps_committed", 2**70),
    ("steps_committed", True), ("final_state_digest", "zz"), ("initial_state.file", "../x"),
    ("initial_state.file", "/etc/passwd"), ("run_id", 5), ("model.parameters", -3),
    ("trainer.settings.gradient_clip_val", -1.0),
    ("trainer.settings.gradient_clip_algorithm", "max"), ("format_version", 1.0),
    ("data.order.batch_size", 0), ("optimizers", {}), ("fingerprint", "0" * 64),
    ("surprise", 1),
    # the sections of issue 13: the Trainer settings a replay applies, schedulers, model, order
    ("trainer.settings.accumulate_grad_batches", 0), ("trainer.settings.limit_train_batches", "all"),
    ("trainer.settings.val_check_interval", True), ("trainer.settings.surprise", 1),
    ("trainer.settings.validation", None), ("trainer.stopping.max_steps", "10"),
    ("trainer.stopping.max_epochs", 1.5), ("trainer.stopping.surprise", 1), ("trainer.callbacks", "x"),
    ("trainer.surprise", {}), ("lr_schedulers", {}), ("lr_schedulers", [{"class": "StepLR"}]),
    ("model.structure", []), ("model.automatic_optimization", "yes"), ("model.hyperparameters", 1),
    ("model.surprise", 1), ("model_class", 5), ("data.order.kind", "random"),
    ("data.order.sampler", "MySampler"), ("data.order.surprise", 1),
]


@pytest.mark.parametrize("field,value", MANIFEST_EDITS, ids=[f"{f}={v!r}" for f, v in MANIFEST_EDITS])
def test_manifest_edit_is_refused(run, field, value):
    manifest = json.loads(run.manifest_path.read_text())
    _set(manifest, field, value)
    run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SchemaError) as info:
        run.read_manifest()
    assert info.value.file.endswith("manifest.json")
    top = field.split(".")[0]
    assert top in info.value.field or info.value.field in field, str(info.value)


@pytest.mark.parametrize("raw", ['"steps_committed": 1e400', '"steps_committed": NaN',
                                 '"steps_committed": Infinity'])
def test_manifest_non_finite_numbers_are_refused(run, raw):
    _edit_manifest(run, lambda t: t.replace('"steps_committed": 3', raw))
    with pytest.raises(SchemaError, match="steps_committed|not valid JSON"):
        run.read_manifest()


def test_ledger_section_is_checked(tmp_path):
    import lightning as L

    from lightning_zk import CommitCallback, VerifiableStrategy
    from tests.models import loader, make_model, trainer_kwargs

    L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=2,
              callbacks=[CommitCallback()], **trainer_kwargs()).fit(make_model("mlp"),
                                                                   train_dataloaders=loader("mlp"))
    run = RunDirectory(tmp_path / "run")
    good = run.manifest_path.read_text()
    for field, value in [("ledger.size", -1), ("ledger.size", 3), ("ledger.size", 1e400),
                         ("ledger.root", "00"), ("ledger.file", "../ledger.sqlite"),
                         ("ledger.algorithm", "md5"), ("ledger.checkpoint_every_n_steps", 0)]:
        manifest = json.loads(good)
        _set(manifest, field, value)
        run.manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(SchemaError, match="ledger"):
            run.read_manifest()


RECORD_EDITS = [
    ("epoch", 1e30), ("epoch", -1), ("log_bytes", 1e400), ("log_bytes", 2**40), ("log_bytes", 3),
    ("log_file", "../../../../etc/passwd"), ("log_file", "/etc/hostname"),
    ("log_file", "rounding/step-00000009.rlog"), ("step", "0"), ("batch_idx", None),
    ("batch_indices", [1, -2]), ("batch_indices", [2**64]), ("batch_digest", "xyz"),
    ("state_digest", "A" * 64), ("logged_elements", -1), ("extra", []),
    ("extra", {"tape": "/etc/passwd", "tape_sha256": "0" * 64}), ("extra", {"tape": "tapes/step-00000000.npz"}),
    ("extra", {"loss": "high"}), ("unknown", 1),
    ("updates", [-1]), ("updates", [2048]), ("updates", "0"), ("global_step", -1), ("global_step", 1.5),
]


@pytest.mark.parametrize("field,value", RECORD_EDITS, ids=[f"{f}={v!r:.30}" for f, v in RECORD_EDITS])
def test_record_edit_is_refused(run, field, value):
    lines = run.steps_path.read_text().splitlines()
    record = json.loads(lines[0])
    record[field] = "HUGE" if value == 1e400 else value
    lines[0] = json.dumps(record).replace('"HUGE"', "1e400")  # a literal that parses to inf
    run.steps_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SchemaError) as info:
        run.read_steps()
    assert info.value.line == 1 and re.split(r"[.\[]", info.value.field)[0] == field, str(info.value)


def test_record_raw_text_is_parsed_strictly(run):
    lines = run.steps_path.read_text().splitlines()
    for bad in ['{"step": 0, "step": 0}', lines[0].replace('"epoch":0', '"epoch":NaN'),
                "[" * 100_000 + "]" * 100_000]:
        run.steps_path.write_text("\n".join([bad, *lines[1:]]) + "\n")
        with pytest.raises(SchemaError, match="line 1"):
            run.read_steps()
    run.steps_path.write_bytes(lines[0].encode().replace(b'"batch_digest":"', b'"batch_digest":"\xff') + b"\n")
    with pytest.raises(SchemaError, match="not valid JSON"):
        run.read_steps()


def test_free_form_sections_accept_extra_keys(run):
    manifest = json.loads(run.manifest_path.read_text())
    manifest["hyperparameters"]["module"]["anything"] = {"nested": [1, 2.5, None]}
    manifest["hyperparameters"]["trainer"] = {"new_setting": "ok"}  # as runs before issue 13 wrote
    manifest["hardware"]["gpu"] = "imaginary"
    run.manifest_path.write_text(json.dumps(manifest))
    run.read_manifest()
    lines = run.steps_path.read_text().splitlines()
    record = json.loads(lines[0])
    record["extra"]["my_metric"] = {"a": 1}
    lines[0] = json.dumps(record)
    run.steps_path.write_text("\n".join(lines) + "\n")
    assert run.read_steps()[0].extra["my_metric"] == {"a": 1}


def test_free_form_depth_is_bounded(run):
    manifest = json.loads(run.manifest_path.read_text())
    deep: object = 1
    for _ in range(schema.MAX_DEPTH + 2):
        deep = [deep]
    manifest["hyperparameters"]["module"]["deep"] = deep
    run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SchemaError, match="nested deeper"):
        run.read_manifest()


def test_identity_is_what_the_fingerprint_hashes(run):
    """A new run's fingerprint is the hash of exactly the identity parts; the latest stopping
    settings and the informational callbacks are not identity (a resume may change them)."""
    manifest = json.loads(run.manifest_path.read_text())
    assert set(schema.IDENTITY_PARTS) <= set(manifest)
    assert manifest["fingerprint"] == schema.run_fingerprint(schema.identity(manifest))
    manifest["trainer"]["stopping"]["max_steps"] = 1000
    manifest["trainer"]["callbacks"].append("Anything")
    run.manifest_path.write_text(json.dumps(manifest))
    run.read_manifest()
    manifest["trainer"]["settings"]["accumulate_grad_batches"] = 2
    run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SchemaError, match="fingerprint"):
        run.read_manifest()


def test_trainer_settings_match_the_schema():
    """The schema declares exactly the settings the session records and the replay applies."""
    from lightning_zk.strategies.manifest import SHAPING_SETTINGS, STOPPING_SETTINGS

    trainer = schema.TRAINER.fields
    assert set(trainer["settings"].fields) == {*SHAPING_SETTINGS, "validation"}
    assert set(trainer["stopping"].fields) == {*STOPPING_SETTINGS, "max_time"}


def test_record_fields_match_the_schema():
    """StepRecord and schema.STEP_RECORD declare the same fields (one place to extend)."""
    assert [f.name for f in dataclasses.fields(StepRecord)] == list(schema.STEP_RECORD.fields)


def test_writers_check_too(tmp_path):
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(SchemaError, match="being written"):
        run.write_manifest({"format_version": 1})
