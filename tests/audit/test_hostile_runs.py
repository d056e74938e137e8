"""Hostile run directories: code shipped inside the run is never run; paths never leave the run.

Every planted module writes a marker file when it is imported, so "refused" means "never
executed", not merely "reported".
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from lightning_zk.audit.untrusted import RunCodeGuard, UntrustedCodeError, resolve_all
from lightning_zk.cli import main
from tests.audit._runs import ROOT, in_project, rounded_run

EVIL = '''
from pathlib import Path
Path({marker!r}).write_text("executed")
from examples.digits_mlp import DigitsDataModule as _Base


class DigitsDataModule(_Base):
    pass
'''


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    return rounded_run(tmp_path_factory.mktemp("hostile"))[0]


def _plant(run: Path, class_path: str, files: dict[str, str], marker: Path) -> None:
    """Ship modules inside ``run`` and name ``class_path`` as the data class of its config."""
    for name, text in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text.format(marker=str(marker)) if "{marker" in text else text)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["class_path"] = class_path
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def _audit(capsys, *args, cwd: Path = ROOT) -> tuple[int, str]:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(["audit", *map(str, args)])
    finally:
        os.chdir(old)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_audit_says_what_it_builds_and_from_where(honest, tmp_path, capsys):
    code, text = _audit(capsys, honest, "--report", tmp_path / "r.json")
    assert code == 0, text
    assert "model.class_path: examples.digits_mlp.DigitsMLP" in text
    assert f"(from {ROOT / 'examples' / 'digits_mlp.py'})" in text
    assert "the trainer claims 6 steps" in text


def test_module_inside_the_run_directory_as_cwd(honest, tmp_path, capsys):
    """The auditor works from inside the received run: cwd is on sys.path."""
    run, marker = Path(shutil.copytree(honest, tmp_path / "run")), tmp_path / "marker"
    _plant(run, "evil.DigitsDataModule", {"evil.py": EVIL}, marker)
    code, text = _audit(capsys, run, "--report", tmp_path / "r.json", cwd=run)
    assert code == 2 and "UntrustedCodeError" in text and "evil" in text, text
    assert not marker.exists()


def test_package_inside_the_auditors_project(honest, tmp_path, capsys):
    """``runs.received.evil``: the run lies under the auditor's project, its __init__ too."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "examples", project / "examples")
    (project / "runs").mkdir()
    (project / "runs" / "__init__.py").write_text("")
    run, marker = Path(shutil.copytree(honest, project / "runs" / "received")), tmp_path / "marker"
    _plant(run, "runs.received.evil.DigitsDataModule",
           {"__init__.py": EVIL.split("from examples")[0], "evil.py": EVIL}, marker)
    saved = list(sys.path)
    try:
        code, text = _audit(capsys, run, "--report", tmp_path / "r.json", cwd=project)
    finally:
        sys.path[:] = saved
        for name in [m for m in sys.modules if m == "runs" or m.startswith("runs.")]:
            del sys.modules[name]
    assert code == 2 and "inside the untrusted run directory" in text, text
    assert not marker.exists()


def test_run_directory_put_on_sys_path(honest, tmp_path, capsys):
    run, marker = Path(shutil.copytree(honest, tmp_path / "run")), tmp_path / "marker"
    _plant(run, "evilpkg.mod.DigitsDataModule",
           {"evilpkg/__init__.py": EVIL.split("from examples")[0], "evilpkg/mod.py": EVIL}, marker)
    sys.path.insert(0, str(run))  # e.g. PYTHONPATH=RUN
    try:
        code, text = _audit(capsys, run, "--report", tmp_path / "r.json")
    finally:
        sys.path.remove(str(run))
    assert code == 2 and "UntrustedCodeError" in text, text
    assert not marker.exists()


def test_auditor_config_replaces_the_runs(honest, tmp_path, capsys):
    run, marker = Path(shutil.copytree(honest, tmp_path / "run")), tmp_path / "marker"
    shutil.copy(honest / "config.yaml", tmp_path / "mine.yaml")
    _plant(run, "evil.DigitsDataModule", {"evil.py": EVIL}, marker)
    code, text = _audit(capsys, run, "--config", tmp_path / "mine.yaml", "--report", tmp_path / "r.json",
                        cwd=ROOT)
    assert code == 0 and "OK" in text, text
    assert not marker.exists()


EVIL_CLASSES = {
    "optimizer": "import torch\n\n\nclass EvilSGD(torch.optim.SGD):\n    pass\n",
    "lr_scheduler": "import torch\n\n\nclass EvilStepLR(torch.optim.lr_scheduler.StepLR):\n    pass\n",
}
EVIL_SECTIONS = {
    "optimizer": {"class_path": "evil_opt.EvilSGD", "init_args": {"lr": 0.05}},
    "lr_scheduler": {"class_path": "evil_opt.EvilStepLR", "init_args": {"step_size": 2}},
}


@pytest.mark.parametrize("section", ["optimizer", "lr_scheduler"])
def test_optimizer_and_scheduler_sections_are_guarded_too(honest, tmp_path, capsys, section):
    """LightningCLI builds the optimizer and LR scheduler sections as `fit` did: their class paths
    never import code shipped in the run either."""
    run, marker = Path(shutil.copytree(honest, tmp_path / "run")), tmp_path / "marker"
    head = EVIL.split("from examples")[0].format(marker=str(marker))
    (run / "evil_opt.py").write_text(head + EVIL_CLASSES[section])
    config = yaml.safe_load((run / "config.yaml").read_text())
    if section == "lr_scheduler":
        config["optimizer"] = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}
    config[section] = EVIL_SECTIONS[section]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, text = _audit(capsys, run, "--report", tmp_path / "r.json", cwd=run)
    assert code == 2 and "UntrustedCodeError" in text and "evil_opt" in text, text
    assert not marker.exists()


@pytest.mark.parametrize("seed", ["/etc/passwd", [1], 2**40, -1])
def test_config_seed_must_be_a_seed(honest, tmp_path, capsys, seed):
    run = Path(shutil.copytree(honest, tmp_path / "run"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["seed_everything"] = seed
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, text = _audit(capsys, run, "--report", tmp_path / "r.json")
    assert code == 2 and "ConfigError" in text and "seed_everything" in text, text


def test_nested_class_paths_are_resolved_under_the_guard(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "nested_evil.py").write_text(EVIL.format(marker=str(marker)))
    sections = {"model": {"class_path": "examples.digits_mlp.DigitsMLP",
                          "init_args": {"head": {"class_path": "nested_evil.DigitsDataModule"}}}}
    sys.path.insert(0, str(tmp_path))
    try:
        with in_project(), RunCodeGuard([tmp_path]) as guard, \
                pytest.raises(UntrustedCodeError, match="nested_evil"):
            resolve_all(sections, guard)
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model", "optimizer", "lr_scheduler"])
@pytest.mark.parametrize("section", ["/etc/passwd", "../other/config.yaml", 5])
def test_config_sections_that_name_files(honest, tmp_path, capsys, section, name):
    run = Path(shutil.copytree(honest, tmp_path / "run"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config[name] = section
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, text = _audit(capsys, run, "--report", tmp_path / "r.json")
    assert code == 2 and "ConfigError" in text, text


def _edit_record(run: Path, step: int, **fields) -> None:
    lines = (run / "steps.jsonl").read_text().splitlines()
    record = json.loads(lines[step])
    record.update(fields)
    lines[step] = json.dumps(record)
    (run / "steps.jsonl").write_text("\n".join(lines) + "\n")


ESCAPES = {
    "log_file ../": lambda run, out: _edit_record(run, 5, log_file="../../../../etc/passwd"),
    "log_file absolute": lambda run, out: _edit_record(run, 5, log_file="/etc/hostname"),
    "log_file /dev/zero": lambda run, out: _edit_record(run, 5, log_file="/dev/zero"),
    "log symlink out": lambda run, out: _swap(run / "rounding/step-00000005.rlog", out, "symlink"),
    "log symlink /dev/zero": lambda run, out: _swap(run / "rounding/step-00000005.rlog", "/dev/zero",
                                                   "symlink"),
    "log FIFO": lambda run, out: _swap(run / "rounding/step-00000005.rlog", out, "fifo"),
    "rounding dir symlink out": lambda run, out: _swap(run / "rounding", out, "symlink"),
    "checkpoints dir symlink out": lambda run, out: _swap(run / "checkpoints", out, "symlink"),
    "initial state ../": lambda run, out: _edit_manifest(run, initial_state={
        "file": "../outside.safetensors", "digest": json.loads(
            (run / "manifest.json").read_text())["initial_state"]["digest"]}),
    "manifest symlink out": lambda run, out: _swap(run / "manifest.json", out, "symlink"),
    "config symlink /dev/zero": lambda run, out: _swap(run / "config.yaml", "/dev/zero", "symlink"),
    "config FIFO": lambda run, out: _swap(run / "config.yaml", out, "fifo"),
    "ledger symlink out": lambda run, out: _swap(run / "ledger.sqlite", out, "symlink"),
}


def _edit_manifest(run: Path, **fields) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(fields)
    (run / "manifest.json").write_text(json.dumps(manifest))


def _swap(path: Path, outside: Path | str, how: str) -> None:
    """Replace ``path`` by a symlink to an identical copy outside the run (or to ``outside``)."""
    if isinstance(outside, Path):
        target = outside / path.name
        shutil.copytree(path, target) if path.is_dir() else shutil.copy(path, target)
    else:
        target = Path(outside)
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(target)


@pytest.mark.parametrize("name", list(ESCAPES))
def test_paths_never_leave_the_run(honest, tmp_path, capsys, name):
    run, outside = Path(shutil.copytree(honest, tmp_path / "run")), tmp_path / "outside"
    outside.mkdir()
    ESCAPES[name](run, outside)
    code, text = _audit(capsys, run, "--report", tmp_path / "r.json")
    assert code == 2, text
    assert "Traceback" not in text and "internal error" not in text, text
    assert any(word in text for word in ("SchemaError", "UnsafePathError", "ConfigError",
                                         "LedgerFileError", "RunClaimError", "AuditInputError")), text


def test_debug_shows_the_traceback(honest, tmp_path, capsys):
    run = Path(shutil.copytree(honest, tmp_path / "run"))
    _edit_manifest(run, strategy=None)
    code, text = _audit(capsys, run, "--report", tmp_path / "r.json")
    assert code == 2 and "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("lightning-zk audit:")]
    assert len(errors) == 1 and "SchemaError" in errors[0] and "'strategy'" in errors[0], text
    code, text = _audit(capsys, run, "--report", tmp_path / "r.json", "--debug")
    assert code == 2 and "Traceback (most recent call last)" in text
