"""Reading files of an untrusted run directory: stay inside it, read only bounded regular files.

A run directory comes from someone the reader need not trust. Every path read from it — the fixed
names (``manifest.json``, ``steps.jsonl``, ``ledger.sqlite``) as much as the names written inside
records and the manifest — goes through :func:`inside`, and every read through
:func:`read_regular` / :func:`iter_lines`:

- the name must be a relative POSIX path without ``..`` (no absolute paths, no drive letters,
  no NUL bytes); after resolving symlinks it must still lie inside the run directory;
- the file must be a regular file (never a FIFO, which would block, a device such as
  ``/dev/zero``, a socket or a directory); it is opened with ``O_NONBLOCK | O_NOFOLLOW`` and
  checked again on the open descriptor;
- its size is checked against the largest size its format allows *before* reading, and the
  read itself is bounded (a file that grows meanwhile is an error, not an allocation).

Every failure is an :class:`~lightning_zk.ledger.errors.UnsafePathError` (or a
:class:`~lightning_zk.ledger.errors.RunDirectoryError` for a missing file) naming the file.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from .errors import RunDirectoryError, UnsafePathError

MiB = 1024 * 1024
#: Largest ``manifest.json`` (model fingerprints of large models, calibration provenance).
MAX_MANIFEST_BYTES = 16 * MiB
#: Largest line of ``steps.jsonl`` (a record with the dataset indices of a large batch).
MAX_RECORD_LINE_BYTES = 16 * MiB
#: Largest ``config.yaml``.
MAX_CONFIG_BYTES = 4 * MiB
#: Largest safetensors state file (weights + optimizer state) a reader accepts.
MAX_CHECKPOINT_BYTES = 64 * 1024 * MiB
#: Largest JSON side file (proof statements, proof files of the inclusion/consistency kind).
MAX_JSON_BYTES = 16 * MiB

_DRIVE = re.compile(r"^[A-Za-z]:")
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | \
    getattr(os, "O_CLOEXEC", 0)


class MissingFileError(RunDirectoryError):
    """A file the run directory should hold does not exist."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def inside(root: str | os.PathLike[str], name: object, what: str) -> Path:
    """``root / name`` with symlinks resolved, refused unless it stays inside ``root``.

    ``name`` comes from a record or manifest (or is a fixed file name); ``what`` says which field
    named it, for the error message. The file need not exist.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise UnsafePathError(f"{what}: expected a relative path, got {type(name).__name__} "
                              f"{name!r:.80}")
    text = os.fspath(name)
    if not isinstance(text, str) or not text or "\x00" in text or "\\" in text:
        raise UnsafePathError(f"{what}: {text!r:.80} is not a relative POSIX path")
    rel = PurePosixPath(text)
    if rel.is_absolute() or _DRIVE.match(text):
        raise UnsafePathError(f"{what}: {text!r:.80} is an absolute path; a run names its files "
                              "relative to the run directory")
    if ".." in rel.parts:
        raise UnsafePathError(f"{what}: {text!r:.80} contains '..' and could leave the run "
                              "directory")
    base = os.path.realpath(os.fspath(root))
    target = os.path.realpath(os.path.join(base, *rel.parts))
    if os.path.commonpath([base, target]) != base:
        raise UnsafePathError(f"{what}: {text!r:.80} resolves to {target}, outside the run "
                              f"directory {base} (a symlink leaves it)")
    return Path(target)


def regular_size(path: Path, what: str, max_bytes: int, missing_ok: bool = False) -> int | None:
    """Size of the regular file ``path`` (resolved by :func:`inside`), at most ``max_bytes``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise MissingFileError(f"{path} is missing ({what})") from None
    except OSError as err:
        raise UnsafePathError(f"{path} cannot be examined ({what}): {err.strerror or err}") from err
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path} is {_kind(st.st_mode)}, not a regular file ({what})")
    if st.st_size > max_bytes:
        raise UnsafePathError(f"{path} is {st.st_size} bytes, more than the {max_bytes} bytes its "
                              f"format allows ({what})")
    return st.st_size


def _open(path: Path, what: str) -> int:
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise MissingFileError(f"{path} is missing ({what})") from None
    except OSError as err:
        raise UnsafePathError(f"{path} cannot be opened ({what}): {err.strerror or err}") from err
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path} is {_kind(st.st_mode)}, not a regular file ({what})")
    return fd


def read_regular(path: Path, what: str, max_bytes: int) -> bytes:
    """All bytes of the regular file ``path``; an error if it holds more than ``max_bytes``."""
    regular_size(path, what, max_bytes)
    fd = _open(path, what)
    try:
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(max_bytes + 1 - total, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as err:
        raise UnsafePathError(f"{path} cannot be read ({what}): {err.strerror or err}") from err
    finally:
        os.close(fd)
    if total > max_bytes:
        raise UnsafePathError(f"{path} holds more than the {max_bytes} bytes its format allows "
                              f"({what})")
    return b"".join(chunks)


def iter_lines(path: Path, what: str, max_line: int) -> Iterator[tuple[bytes, bool]]:
    """(line without its newline, whether it ended with a newline), each at most ``max_line``.

    Streams the file, so a long log of small lines is never read whole; a line longer than
    ``max_line`` raises before it is allocated in full.
    """
    regular_size(path, what, 1 << 62)
    fd = _open(path, what)
    with os.fdopen(fd, "rb", closefd=True) as handle:
        number = 0
        while True:
            try:
                line = handle.readline(max_line + 2)
            except OSError as err:
                raise UnsafePathError(f"{path} cannot be read ({what}): {err.strerror or err}") from err
            if not line:
                return
            number += 1
            complete = line.endswith(b"\n")
            body = line[:-1] if complete else line
            if len(body) > max_line:
                raise UnsafePathError(f"{path} line {number} is longer than the {max_line} bytes "
                                      f"a record may take ({what})")
            yield body, complete


__all__ = [
    "MAX_CHECKPOINT_BYTES", "MAX_CONFIG_BYTES", "MAX_JSON_BYTES", "MAX_MANIFEST_BYTES",
    "MAX_RECORD_LINE_BYTES", "MissingFileError", "inside", "iter_lines", "read_regular",
    "regular_size",
]
