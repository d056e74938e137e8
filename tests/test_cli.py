"""The lightning-zk command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_zk import RunDirectory
from lightning_zk.cli import main
from tests.audit._runs import in_project

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "digits_mlp.yaml"


def test_fit_from_yaml_writes_run_with_config(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    run_dir = tmp_path / "run"
    code = main(["fit", "--config", str(CONFIG), "--trainer.max_steps", "3",
                 "--trainer.strategy.init_args.run_dir", str(run_dir),
                 "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                 "--trainer.enable_model_summary", "false"])
    assert code == 0
    run = RunDirectory(run_dir)
    assert len(run.read_steps()) == 3
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["class_path"] == "examples.digits_mlp.DigitsMLP"
    assert config["trainer"]["strategy"]["init_args"]["seed"] == 0


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "lightning_zk.cli", "--help"], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "fit" in out.stdout


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


# --- every subcommand fails with one line; --debug adds the traceback ---------------------------
@pytest.mark.parametrize("command", ["audit", "ledger", "verify", "prove"])
def test_bad_run_is_one_line(command, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "run" / "config.yaml").write_text(CONFIG.read_text())
    args = [command, str(tmp_path / "run")] + (["--verify"] if command == "ledger" else [])
    with in_project():
        code = main(args)
    err = capsys.readouterr().err
    assert code in (1, 2) and "Traceback" not in err and "internal error" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"lightning-zk {command}:"), err


def test_unexpected_error_is_one_line_and_debug_shows_it(monkeypatch, capsys):
    from lightning_zk.commands import verify

    def boom(*args):
        raise KeyError("surprise")

    monkeypatch.setattr("lightning_zk.audit.proofs.verify_run", boom)
    assert main(["verify", "somewhere"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error, KeyError: 'surprise'" in err and "--debug" in err
    assert verify.main(["somewhere", "--debug"]) == 3
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_fit_refusal_is_one_line(tmp_path, capsys):
    from lightning_zk.ledger.lock import RunLock

    with RunLock(tmp_path / "run"), in_project():
        code = main(["fit", "--config", str(CONFIG), "--trainer.max_steps", "1",
                     "--trainer.strategy.init_args.run_dir", str(tmp_path / "run"),
                     "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "lightning-zk fit: RunLockedError: run_dir" in err and "Traceback" not in err


def test_fit_output_is_what_matters(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    run_dir = tmp_path / "run"
    assert main(["fit", "--config", str(CONFIG), "--trainer.max_steps", "2",
                 "--trainer.strategy.init_args.run_dir", str(run_dir),
                 "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                 "--trainer.enable_model_summary", "false"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert f"2 steps committed to {run_dir}" in text and f"lightning-zk audit {run_dir}" in text
    for noise in ("GPU available", "TPU available", "Tip:", "LightningCLI's args parameter", "LeafSpec"):
        assert noise not in text, noise
