"""An untrusted run is data, never code: no import may come from inside a run directory.

``lightning-zk audit`` and ``dispute`` rebuild model and data from class paths in a config
(``RUN/config.yaml`` unless the auditor passes ``--config``). A trainer could ship a Python module
in the run directory and name it there (``evil.DigitsDataModule`` when the auditor works from the
run directory, ``runs.received.evil.DigitsDataModule`` from the auditor's project). While a
:class:`RunCodeGuard` is active:

- every ``sys.path`` entry that lies inside a guarded directory is removed (the current directory
  too, when the auditor works from inside the run);
- a finder in front of ``sys.meta_path`` looks up where each import would come from and refuses
  (:class:`UntrustedCodeError`) any module or package whose file or search location lies inside a
  guarded directory, whatever put it on the path;
- :func:`resolve_class` resolves a class path only against code the auditor installed, and says
  from which file it comes, so the audit can print what it will build before building it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import inspect
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType


class UntrustedCodeError(ValueError):
    """A class or module the config names lies inside an untrusted run directory."""


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


class _Finder(importlib.abc.MetaPathFinder):
    """Refuses imports whose spec lies inside the guard's directories (module doc)."""

    def __init__(self, guard: RunCodeGuard) -> None:
        self.guard = guard
        self.busy = False

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 - importlib protocol
        if self.busy:
            return None
        self.busy = True
        try:
            for finder in sys.meta_path:
                if finder is self or isinstance(finder, _Finder):
                    continue
                find = getattr(finder, "find_spec", None)
                spec = find(fullname, path, target) if find is not None else None
                if spec is not None:
                    self.guard.check_spec(fullname, spec)
                    break
        finally:
            self.busy = False
        return None  # let the regular machinery import it (it finds the same spec)


class RunCodeGuard:
    """Context manager: while active, nothing is imported from inside ``roots``.

    Example::

        with RunCodeGuard(["runs/received"]):
            model, data = load_model_and_data("runs/received/config.yaml")
    """

    def __init__(self, roots: Iterable[str | os.PathLike[str]]) -> None:
        self.roots = [_real(os.fspath(r)) for r in roots]
        self.refused: list[str] = []
        self.scrubbed: list[str] = []
        self._finder = _Finder(self)
        self._saved_path: list[str] | None = None

    def inside(self, path: str | os.PathLike[str] | None) -> str | None:
        """The guarded directory that holds ``path`` (before or after resolving links), if any."""
        if not path or not self.roots:
            return None
        text = os.fspath(path)
        for candidate in {os.path.abspath(text), _real(text)}:
            for root in self.roots:
                if candidate == root or candidate.startswith(root + os.sep):
                    return root
        return None

    def check_spec(self, name: str, spec: importlib.machinery.ModuleSpec) -> None:
        locations = [spec.origin if spec.has_location else None,
                     *(spec.submodule_search_locations or [])]
        for location in locations:
            root = self.inside(location)
            if root is not None:
                message = (f"refusing to import {name!r} from {location}: it lies inside the "
                           f"untrusted run directory {root}; a run is data, never code. HINT: "
                           "install the model/data code yourself and pass --config with class "
                           "paths that resolve to it")
                self.refused.append(message)
                raise UntrustedCodeError(message)

    def check_module(self, module: ModuleType) -> None:
        """An already imported module must not come from a guarded directory either."""
        for location in (getattr(module, "__file__", None), *getattr(module, "__path__", [])):
            root = self.inside(location)
            if root is not None:
                raise UntrustedCodeError(
                    f"module {module.__name__!r} was loaded from {location}, inside the untrusted "
                    f"run directory {root}")

    def raise_if_refused(self) -> None:
        """Re-raise a refusal that some library caught and turned into another error."""
        if self.refused:
            raise UntrustedCodeError(self.refused[0])

    def __enter__(self) -> RunCodeGuard:
        self._saved_path = list(sys.path)
        kept = []
        for entry in sys.path:
            if self.inside(entry or os.getcwd()) is not None:
                self.scrubbed.append(entry or os.getcwd())
            else:
                kept.append(entry)
        sys.path[:] = kept
        sys.meta_path.insert(0, self._finder)
        importlib.invalidate_caches()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        if self._saved_path is not None:
            sys.path[:] = self._saved_path
        importlib.invalidate_caches()


@dataclass(frozen=True)
class ClassSource:
    """A class the audit will build: which config field names it, and the file it comes from."""

    field: str
    class_path: str
    file: str

    def __str__(self) -> str:
        return f"{self.field}: {self.class_path}  (from {self.file})"


def _where_scrubbed(guard: RunCodeGuard, module: str) -> str | None:
    top = module.split(".")[0]
    spec = importlib.machinery.PathFinder.find_spec(top, guard.scrubbed) if guard.scrubbed else None
    return spec.origin if spec is not None else None


def resolve_class(field: str, class_path: str, guard: RunCodeGuard) -> ClassSource:
    """Import ``module.Class`` under ``guard`` and say where it comes from."""
    module_name, _, name = class_path.rpartition(".")
    if not module_name or not all(part.isidentifier() for part in class_path.split(".")):
        raise UntrustedCodeError(f"config field {field}: class_path {class_path!r:.200} is not a "
                                 "full import path (package.module.Class)")
    try:
        module = importlib.import_module(module_name)
    except UntrustedCodeError:
        raise
    except ImportError as err:
        guard.raise_if_refused()
        hidden = _where_scrubbed(guard, module_name)
        if hidden is not None:
            raise UntrustedCodeError(
                f"config field {field}: {class_path!r} is found only inside the untrusted run "
                f"directory ({hidden}); a run is data, never code. HINT: install the model/data "
                "code yourself and pass --config") from err
        raise UntrustedCodeError(f"config field {field}: cannot import {module_name!r} for "
                                 f"{class_path!r}: {err}") from err
    guard.check_module(module)
    obj = getattr(module, name, None)
    if not inspect.isclass(obj):
        raise UntrustedCodeError(f"config field {field}: {class_path!r} is not a class")
    defining = sys.modules.get(obj.__module__)
    if defining is not None:
        guard.check_module(defining)
    try:
        file = inspect.getsourcefile(obj) or inspect.getfile(obj)
    except TypeError:
        file = "built-in"
    if guard.inside(file):
        raise UntrustedCodeError(f"config field {field}: {class_path!r} is defined in {file}, "
                                 "inside the untrusted run directory")
    return ClassSource(field, class_path, file)


def class_paths(section: object, field: str) -> list[tuple[str, str]]:
    """Every ``(field, class_path)`` named in a config section, nested ones included."""
    found: list[tuple[str, str]] = []
    stack: list[tuple[object, str]] = [(section, field)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("class_path"), str):
                found.append((f"{where}.class_path", value["class_path"]))
            stack.extend((v, f"{where}.{k}") for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, str) and where == field:
            found.append((field, value))  # shorthand: ``model: package.module.Class``
    return sorted(found)


def resolve_all(sections: dict[str, object], guard: RunCodeGuard) -> Sequence[ClassSource]:
    """Resolve every class path of the config's sections (module doc)."""
    return [resolve_class(where, path, guard)
            for name, section in sections.items() for where, path in class_paths(section, name)]


__all__ = ["ClassSource", "RunCodeGuard", "UntrustedCodeError", "class_paths", "resolve_all",
           "resolve_class"]
