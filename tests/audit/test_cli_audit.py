"""`lightning-zk audit` end to end: from a CLI-launched run, OK / mismatch / bad input."""

from __future__ import annotations

import json
from pathlib import Path

from lightning_zk import RunDirectory
from lightning_zk.cli import main
from tests.forge import rewrite_records

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "configs" / "digits_mlp.yaml"


def _fit(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    assert main(["fit", "--config", str(CONFIG), "--trainer.max_steps", "6",
                 "--trainer.strategy.init_args.run_dir", str(run), "--trainer.default_root_dir",
                 str(tmp_path), "--trainer.enable_progress_bar", "false",
                 "--trainer.enable_model_summary", "false"]) == 0
    return run


def test_audit_ok_writes_report_and_audit_run(tmp_path, monkeypatch, capsys):
    run = _fit(tmp_path, monkeypatch)
    assert main(["audit", str(run), "--out", str(tmp_path / "audit")]) == 0
    report = json.loads((tmp_path / "audit" / "audit_report.json").read_text())
    assert report["ok"] and report["steps_checked"] == 6
    assert len(RunDirectory(tmp_path / "audit").read_steps()) == 6
    assert "OK" in capsys.readouterr().out


def test_audit_mismatch_exit_status(tmp_path, monkeypatch):
    run = _fit(tmp_path, monkeypatch)
    rewrite_records(run, lambda records: records[4].update(state_digest="f" * 64))
    assert main(["audit", str(run), "--report", str(tmp_path / "r.json")]) == 1
    assert json.loads((tmp_path / "r.json").read_text())["first_mismatch_step"] == 4


def test_audit_without_config(tmp_path, monkeypatch, capsys):
    run = _fit(tmp_path, monkeypatch)
    (run / "config.yaml").unlink()
    assert main(["audit", str(run)]) == 2
    assert "config.yaml does not exist" in capsys.readouterr().err


def test_audit_of_a_non_run(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text((CONFIG).read_text())
    assert main(["audit", str(tmp_path), "--config", str(CONFIG)]) == 2
    assert "not a lightning-zk run directory" in capsys.readouterr().err
