"""Small finished runs for the corruption and hostile-run tests (rounded from the CLI, fixed)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import yaml

from lightning_zk import CommitCallback, ProofCallback, VerifiableStrategy
from lightning_zk.cli import main
from tests.fixed_mode.models import make_regressor, regression_loader
from tests.models import trainer_kwargs

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "configs" / "digits_mlp.yaml"
ROUNDED_STEPS, FIXED_STEPS, EVERY = 6, 3, 2


@contextmanager
def in_project():
    """Class paths such as ``examples.digits_mlp.DigitsMLP`` resolve from the project root."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(cwd)


def small_config(path: Path, run_dir: Path) -> Path:
    """The digits example, shrunk: 6 steps, 32 hidden units, a checkpoint every 2 steps."""
    config = yaml.safe_load(CONFIG.read_text())
    config["trainer"].update(max_steps=ROUNDED_STEPS, default_root_dir=str(path.parent),
                             enable_progress_bar=False, enable_model_summary=False)
    config["trainer"]["strategy"]["init_args"]["run_dir"] = str(run_dir)
    config["trainer"]["callbacks"][0]["init_args"]["checkpoint_every_n_steps"] = EVERY
    config["model"]["init_args"]["hidden"] = 32
    config["data"]["init_args"]["batch_size"] = 32
    path.write_text(yaml.safe_dump(config))
    return path


def rounded_run(workdir: Path) -> tuple[Path, Path]:
    """A finished rounded run launched from the CLI (with RUN/config.yaml), and its audit run."""
    run, audit = workdir / "run", workdir / "audit"
    with in_project():
        assert main(["fit", "--config", str(small_config(workdir / "config.yaml", run))]) == 0
        assert main(["audit", str(run), "--out", str(audit)]) == 0
    return run, audit


def fixed_run(workdir: Path) -> Path:
    """A finished fixed-point run: ledger, checkpoints, one proof per step, sealed chain, tapes."""
    run = workdir / "fixed"
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run, mode="fixed"),
                        max_steps=FIXED_STEPS, callbacks=[CommitCallback(EVERY), ProofCallback()],
                        **trainer_kwargs())
    trainer.fit(make_regressor(), train_dataloaders=regression_loader(n=8, batch_size=4))
    return run
