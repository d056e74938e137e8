"""Rebuild a run's model and data from a LightningCLI config (``RUN/config.yaml`` or the auditor's).

Built as ``lightning-zk fit`` built them: the same LightningCLI machinery in the same order
(``seed_everything`` first, so data drawn from the global RNG match; model and data from their
sections; the ``optimizer`` and ``lr_scheduler`` sections attached to the model). The ``trainer``
section is not built (no loggers or callbacks start); its settings that shape the computation are
returned for the replay to check against the run's manifest.

The config of a received run is untrusted input: it is read with a size bound from inside the run
directory (never through a symlink that leaves it, never from a FIFO), must be UTF-8 YAML of
bounded nesting, and every class path it names (model, data, optimizer, LR scheduler, nested
ones) resolves only against code the auditor installed (:mod:`.untrusted`): a module inside the
run directory is refused, not imported, also while LightningCLI builds the objects.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from ..ledger import safeio
from ..ledger.errors import RunDirectoryError
from .untrusted import ClassSource, RunCodeGuard, UntrustedCodeError, resolve_all


class ConfigError(ValueError):
    """A config that cannot rebuild the run's model and data."""


#: The config sections LightningCLI builds objects from before it builds the Trainer.
SECTIONS = ("seed_everything", "model", "data", "optimizer", "lr_scheduler")
#: Those that name classes (``class_path``/``init_args``, or a class path as shorthand).
CLASS_SECTIONS = ("model", "data", "optimizer", "lr_scheduler")


@dataclass
class RunConfig:
    """What a LightningCLI config builds for a replay: exactly what ``lightning-zk fit`` built."""

    model: LightningModule
    datamodule: LightningDataModule | None
    trainer_settings: dict[str, Any] = field(default_factory=dict)  # the config's own, not None
    sources: Sequence[ClassSource] = ()  # the classes built, and the files they come from


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


def _load(path: Path, untrusted: Sequence[Path]) -> dict[str, Any]:
    try:
        data = _read(path, untrusted)
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
    return raw


def read_config(config_path: str | Path, untrusted: Iterable[str | Path] = ()) -> dict[str, Any]:
    """The sections a replay builds from (:data:`SECTIONS`), checked for their shape.

    Raises:
        ConfigError: unreadable, not UTF-8, not YAML, nested too deeply, without a model
            section, or a section that names a file or is not a class path / mapping.
    """
    path = Path(config_path)
    return _sections(path, _load(path, [Path(u) for u in untrusted]))


def _sections(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    sections = {k: raw[k] for k in SECTIONS if raw.get(k) is not None}
    seed = sections.setdefault("seed_everything", False)
    if type(seed) is not bool and (type(seed) is not int or not 0 <= seed < 2**32):
        raise ConfigError(f"config {path}: seed_everything is {seed!r:.100}; expected true, false "
                          "or an integer in [0, 2**32)")
    for name in CLASS_SECTIONS:
        section = sections.get(name)
        if section is None:
            continue
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


def _trainer_settings(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """The config's own Trainer settings that shape or stop the run (compared, never built)."""
    from ..strategies.manifest import SHAPING_SETTINGS, STOPPING_SETTINGS

    trainer = raw.get("trainer") if isinstance(raw.get("trainer"), dict) else {}
    settings = {k: v for k, v in trainer.items()
                if k in (*SHAPING_SETTINGS, *STOPPING_SETTINGS) and v is not None}
    for name, value in settings.items():
        if type(value) not in (bool, int, float, str) or isinstance(value, str) and len(value) > 64:
            raise ConfigError(f"config {path}: trainer.{name} is {value!r:.100}; expected a number, "
                              "a boolean or a short string")
    return settings


class _NoTrainer(Trainer):
    """Stands in for the Trainer (never set up): the replay builds its own from the manifest."""

    def __init__(self, callbacks: Any = None) -> None:  # noqa: D107 - deliberately no super()
        del callbacks


def load_run_config(
    config_path: str | Path,
    untrusted: Iterable[str | Path] = (),
    announce: Callable[[Sequence[ClassSource]], None] | None = None,
) -> RunConfig:
    """Build model and data as ``lightning-zk fit`` did from ``config_path`` (module doc).

    Args:
        config_path: the config file.
        untrusted: run directories no code may come from (the received run).
        announce: called with the classes that will be built and their files, before any of them
            is instantiated (the CLI prints them).

    Raises:
        ConfigError: see :func:`read_config`, or the classes cannot be built from it.
        UntrustedCodeError: a class path resolves to a module inside an untrusted directory.
    """
    from lightning.pytorch.cli import LightningCLI

    path = Path(config_path)
    roots = [Path(u) for u in untrusted]
    raw = _load(path, roots)  # read once: the sections and the settings come from one text
    sections, settings = _sections(path, raw), _trainer_settings(path, raw)
    cwd = os.getcwd()
    if cwd not in sys.path:  # class paths like examples.digits_mlp.DigitsMLP (the guard
        sys.path.insert(0, cwd)  # drops it again when the auditor works inside the run)
    with RunCodeGuard(roots) as guard:
        sources = resolve_all({k: v for k, v in sections.items() if k in CLASS_SECTIONS}, guard)
        if announce is not None:
            announce(sources)
        try:
            with warnings.catch_warnings():  # the arguments are the config's, on purpose
                warnings.filterwarnings("ignore", ".*LightningCLI's args parameter is intended.*")
                cli = LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
                                   subclass_mode_data=True, save_config_callback=None,
                                   trainer_class=_NoTrainer, seed_everything_default=False,
                                   args=sections, run=False)
        except UntrustedCodeError:
            raise
        except (Exception, SystemExit) as err:  # jsonargparse reports through several types
            guard.raise_if_refused()
            raise ConfigError(f"config {path}: cannot build model/data: {err}") from err
        guard.raise_if_refused()
    return RunConfig(cli.model, cli.datamodule, settings, sources)


def load_model_and_data(
    config_path: str | Path,
    untrusted: Iterable[str | Path] = (),
    announce: Callable[[Sequence[ClassSource]], None] | None = None,
) -> tuple[LightningModule, LightningDataModule | None]:
    """The ``model`` and ``data`` a LightningCLI config builds (see :func:`load_run_config`)."""
    config = load_run_config(config_path, untrusted, announce)
    return config.model, config.datamodule


__all__ = ["CLASS_SECTIONS", "ConfigError", "RunConfig", "SECTIONS", "load_model_and_data",
           "load_run_config", "read_config"]
