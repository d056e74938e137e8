"""Rebuild a run's model and data from its LightningCLI config (``RUN/config.yaml``)."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer


class ConfigError(ValueError):
    """A config that cannot rebuild the run's model and data."""


def _read(path: Path) -> dict[str, Any]:
    """The config's YAML, checked to have a ``model`` section; class paths resolve from the cwd."""
    if not path.is_file():
        raise ConfigError(
            f"config {path} does not exist. HINT: runs launched with `lightning-zk fit` keep "
            "RUN/config.yaml; otherwise pass --config with the model and data sections."
        )
    try:
        raw = yaml.safe_load(path.read_text("utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict) or "model" not in raw:
        raise ConfigError(f"config {path} has no `model` section")
    if os.getcwd() not in sys.path:  # class paths like examples.digits_mlp.DigitsMLP
        sys.path.insert(0, os.getcwd())
    return raw


def load_model_and_data(config_path: str | Path) -> tuple[LightningModule, LightningDataModule | None]:
    """The ``model`` and ``data`` a LightningCLI config builds (see :func:`load_run_config`)."""
    config = load_run_config(config_path)
    return config.model, config.datamodule


@dataclass
class RunConfig:
    """What a LightningCLI config builds for a replay: exactly what ``lightning-zk fit`` built."""

    model: LightningModule
    datamodule: LightningDataModule | None
    trainer_settings: dict[str, Any] = field(default_factory=dict)  # the config's own, not None


class _NoTrainer(Trainer):
    """Stands in for the Trainer (never set up): the replay builds its own from the manifest."""

    def __init__(self, callbacks: Any = None) -> None:  # noqa: D107 - deliberately no super()
        del callbacks


# The config sections LightningCLI builds objects from before it builds the Trainer.
_SECTIONS = ("seed_everything", "model", "data", "optimizer", "lr_scheduler")


def load_run_config(config_path: str | Path) -> RunConfig:
    """Build model and data as ``lightning-zk fit`` did from ``config_path``.

    The same LightningCLI machinery in the same order: ``seed_everything`` first (data built from
    the global RNG then matches), model and data from their sections, the ``optimizer`` and
    ``lr_scheduler`` sections attached to the model. The ``trainer`` section is not built (no
    loggers or callbacks start); its settings that shape the computation are returned, for the
    replay to check against the run's manifest.
    """
    from lightning.pytorch.cli import LightningCLI

    from ..strategies.manifest import SHAPING_SETTINGS, STOPPING_SETTINGS

    path = Path(config_path)
    raw = _read(path)
    sections = {k: raw[k] for k in _SECTIONS if raw.get(k) is not None}
    sections.setdefault("seed_everything", False)
    try:
        with warnings.catch_warnings():  # the arguments are the config's, on purpose
            warnings.filterwarnings("ignore", ".*LightningCLI's args parameter is intended.*")
            cli = LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
                               subclass_mode_data=True, save_config_callback=None,
                               trainer_class=_NoTrainer, seed_everything_default=False, args=sections,
                               run=False)
    except (Exception, SystemExit) as err:  # jsonargparse reports through several types
        raise ConfigError(f"config {path}: cannot build model/data: {err}") from err
    trainer = raw.get("trainer") if isinstance(raw.get("trainer"), dict) else {}
    settings = {k: v for k, v in trainer.items() if k in (*SHAPING_SETTINGS, *STOPPING_SETTINGS)
                and v is not None}
    return RunConfig(cli.model, cli.datamodule, settings)
