"""Rebuild a run's model and data from its LightningCLI config (``RUN/config.yaml``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule


class ConfigError(ValueError):
    """A config that cannot rebuild the run's model and data."""


def load_model_and_data(config_path: str | Path) -> tuple[LightningModule, LightningDataModule | None]:
    """Instantiate the ``model`` and ``data`` sections of a LightningCLI config.

    Only those two sections are used: the trainer section (with the trainer's strategy and run
    directory) is the trainer's business, and the replay takes its arithmetic from the manifest.
    """
    path = Path(config_path)
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
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    parser.add_subclass_arguments(LightningDataModule, "data", required=False)
    sections: dict[str, Any] = {"model": raw["model"]}
    if raw.get("data") is not None:
        sections["data"] = raw["data"]
    try:
        cfg = parser.parse_object(sections)
        objects = parser.instantiate_classes(cfg)
    except Exception as err:  # jsonargparse raises several types; name the file either way
        raise ConfigError(f"config {path}: cannot build model/data: {err}") from err
    return objects.model, objects.get("data")
