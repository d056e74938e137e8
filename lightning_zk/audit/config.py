"""Rebuild a run's model and data from a LightningCLI config (``RUN/config.yaml`` or the auditor's).

The config of a received run is untrusted input: it is read with a size bound from inside the run
directory (never through a symlink that leaves it, never from a FIFO), must be UTF-8 YAML of
bounded nesting, and its class paths resolve only against code the auditor installed
(:mod:`.untrusted`): a module inside the run directory is refused, not imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule

from ..ledger import safeio
from ..ledger.errors import RunDirectoryError
from .untrusted import ClassSource, RunCodeGuard, UntrustedCodeError, resolve_all


class ConfigError(ValueError):
    """A config that cannot rebuild the run's model and data."""


def _read(path: Path, untrusted: Sequence[Path]) -> bytes:
    """The config's bytes; resolved inside the run directory when it lies in one."""
    for root in untrusted:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        if rel != ".." and not rel.startswith(".." + os.sep):
            path = safeio.inside(root, rel, "the run's config")
            break
    if safeio.regular_size(path, "config", safeio.MAX_CONFIG_BYTES, missing_ok=True) is None:
        raise ConfigError(
            f"config {path} does not exist. HINT: runs launched with `lightning-zk fit` keep "
            "RUN/config.yaml; otherwise pass --config with the model and data sections."
        )
    return safeio.read_regular(path, "config", safeio.MAX_CONFIG_BYTES)


def read_config(config_path: str | Path, untrusted: Iterable[str | Path] = ()) -> dict[str, Any]:
    """The ``model`` (and optional ``data``) sections of a config, checked for their shape.

    Raises:
        ConfigError: unreadable, not UTF-8, not YAML, nested too deeply, or without a model
            section whose class paths are full import paths.
    """
    path = Path(config_path)
    try:
        data = _read(path, [Path(u) for u in untrusted])
        raw = yaml.safe_load(data.decode("utf-8")) or {}
    except RunDirectoryError as err:
        raise ConfigError(f"config {path}: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {path} is not UTF-8 text: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from err
    except RecursionError:
        raise ConfigError(f"config {path} is nested too deeply to parse") from None
    if not isinstance(raw, dict) or "model" not in raw:
        raise ConfigError(f"config {path} has no `model` section")
    sections: dict[str, Any] = {"model": raw["model"]}
    if raw.get("data") is not None:
        sections["data"] = raw["data"]
    for name, section in sections.items():
        # jsonargparse would read a string that is not a class path as a file to load
        if isinstance(section, str) and (os.sep in section or section.endswith((".yaml", ".yml"))):
            raise ConfigError(f"config {path}: section `{name}` names a file ({section!r:.100}); "
                              "a config may not make the auditor read other files")
        if isinstance(section, dict) and isinstance(section.get("init_args"), str):
            raise ConfigError(f"config {path}: field {name}.init_args names a file; a config may "
                              "not make the auditor read other files")
        if not isinstance(section, (str, dict)):
            raise ConfigError(f"config {path}: section `{name}` is neither a class path nor a "
                              "mapping with class_path/init_args")
    return sections


def load_model_and_data(
    config_path: str | Path,
    untrusted: Iterable[str | Path] = (),
    announce: Callable[[Sequence[ClassSource]], None] | None = None,
) -> tuple[LightningModule, LightningDataModule | None]:
    """Instantiate the ``model`` and ``data`` sections of a LightningCLI config.

    Only those two sections are used: the trainer section (with the trainer's strategy and run
    directory) is the trainer's business, and the replay takes its arithmetic from the manifest.

    Args:
        config_path: the config file.
        untrusted: run directories no code may come from (the received run).
        announce: called with the classes that will be built and their files, before any of them
            is instantiated (the CLI prints them).

    Raises:
        ConfigError: see :func:`read_config`, or the classes cannot be built from it.
        UntrustedCodeError: a class path resolves to a module inside an untrusted directory.
    """
    roots = [Path(u) for u in untrusted]
    sections = read_config(config_path, roots)
    cwd = os.getcwd()
    if cwd not in sys.path:  # class paths like examples.digits_mlp.DigitsMLP (the guard
        sys.path.insert(0, cwd)  # drops it again when the auditor works inside the run)
    with RunCodeGuard(roots) as guard:
        sources = resolve_all(sections, guard)
        if announce is not None:
            announce(sources)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_subclass_arguments(LightningModule, "model", required=True)
        parser.add_subclass_arguments(LightningDataModule, "data", required=False)
        try:
            cfg = parser.parse_object(sections)
            objects = parser.instantiate_classes(cfg)
        except UntrustedCodeError:
            raise
        except Exception as err:  # jsonargparse raises several types; name the file either way
            guard.raise_if_refused()
            raise ConfigError(f"config {config_path}: cannot build model/data: {err}") from err
        guard.raise_if_refused()
    return objects.model, objects.get("data")


__all__ = ["ConfigError", "load_model_and_data", "read_config"]
