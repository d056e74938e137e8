"""One writer per run directory: an exclusive OS lock on ``RUN/.lock``, held for the life of a run.

Why ``flock``: the kernel releases it when the holder's process ends, however it ends (SIGKILL
included), so a killed trainer never leaves a stale lock and a restart needs no manual cleanup.
A second writer — another trainer, ``lightning-zk prove``, a replay committing into the same
directory — is refused at once with an error naming the holder (pid, host, start time), before
it writes anything. Readers (``ledger``, ``audit``, ``verify``) never take the lock.

The lock file is never deleted: removing it while held would let a second process lock a new
inode. Locks are advisory and local: on network file systems without ``flock`` support keep one
trainer per directory by other means.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from .errors import RunDirectoryError, RunLockedError

LOCK_FILE = ".lock"
_MAX_HOLDER_BYTES = 4096


class RunLock:
    """The writer lock of one run directory.

    Example::

        with RunLock("runs/digits", purpose="training"):
            ...  # the only writer of runs/digits
    """

    def __init__(self, run_dir: str | os.PathLike[str], purpose: str = "training") -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.purpose = purpose
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (creating the run directory if needed) or raise :class:`RunLockedError`."""
        if self._fd is not None:
            return self
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise RunDirectoryError(f"run_dir {self.path.parent} exists and is not a directory")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) |
                         getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as err:
            raise RunDirectoryError(
                f"run_dir {self.path.parent} is not writable: cannot create its lock file "
                f"({err.strerror or err}). HINT: pass a writable run_dir or fix its permissions."
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise RunLockedError(
                f"run_dir {self.path.parent} is in use by another writer ({holder}); a run "
                "directory has one writer. HINT: wait for that process to end, or choose "
                "another run_dir."
            ) from None
        self._fd = fd
        self._write_holder()
        return self

    def _write_holder(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        data = (json.dumps(info, sort_keys=True) + "\n").encode("utf-8")
        # overwrite, then cut: a reader never sees an empty file once a holder has written
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
        os.fsync(self._fd)

    def release(self) -> None:
        """Give the lock back (the OS does it anyway when the process ends).

        The holder's description stays: it is only read by a writer that failed to lock, that is
        while a (new) holder has written its own.
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int, wait_s: float = 2.0) -> dict[str, object] | None:
    """The holder's description; it writes it right after locking, so wait a moment for it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = json.loads(os.pread(fd, _MAX_HOLDER_BYTES, 0).decode("utf-8"))
            if isinstance(info, dict):
                return info
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def _describe(info: dict[str, object] | None) -> str:
    if not info:
        return "holder not recorded yet"
    return (f"{info.get('purpose', 'a writer')} by pid {info.get('pid')} on host "
            f"{info.get('host')}, started {info.get('started')}")


__all__ = ["LOCK_FILE", "RunLock", "RunLockedError"]
