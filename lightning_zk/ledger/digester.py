"""Digest committed states in order, inline or on a background thread (bounded, errors surfaced).

Hashing the state of a large model (weights and optimizer state: 1.2 GB for 100 M parameters with
Adam) is the main cost of committing a step. :class:`StateDigester` lets the training thread hand
over a *snapshot* — a copy of the state at the step boundary, taken before the next step mutates
anything (the optimizer updates in place) — and go on training while a worker thread hashes it
(SHA-256 and BLAKE3 release the GIL while they hash large buffers).

Guarantees:

- **Order.** :meth:`StateDigester.ready` and :meth:`StateDigester.drain` return the digests in
  submission order; the caller writes a step record only after it has its digest, so what reaches
  the disk is always a prefix of the run: a kill while snapshots are queued loses (uncommitted)
  queued steps, never order or consistency.
- **Bounded memory.** At most ``max_in_flight`` snapshots are queued or being hashed;
  :meth:`StateDigester.submit` blocks until there is room (backpressure on the training loop).
- **Errors are never swallowed.** An exception in the worker is raised on the caller's thread by
  the next :meth:`~StateDigester.submit`, :meth:`~StateDigester.ready` or
  :meth:`~StateDigester.drain`, as :class:`DigestWorkerError` (the original is its ``__cause__``);
  the digester then stays broken: nothing submitted after it is ever returned.
- **Same digests.** The worker runs :meth:`StateSnapshot.digest` on the snapshot, exactly what
  inline mode runs on the training thread.

No Lightning here (layer ``ledger``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .state import StateSnapshot

__all__ = ["DigestWorkerError", "StateDigester"]


class DigestWorkerError(RuntimeError):
    """Digesting a queued state failed in the background worker (``__cause__`` says why)."""


class _Job:
    __slots__ = ("token", "state", "digest", "error", "done")

    def __init__(self, token: Any, state: StateSnapshot) -> None:
        self.token, self.state = token, state
        self.digest: str | None = None
        self.error: BaseException | None = None
        self.done = False


class StateDigester:
    """Computes :meth:`StateSnapshot.digest` of submitted snapshots, in order.

    Args:
        background: hash on a worker thread (``False``: at once, on the caller's thread).
        max_in_flight: snapshots queued or being hashed at most (``submit`` waits for room).
        digest: the function applied to each snapshot (tests inject failures here).

    Example::

        digester = StateDigester(background=True)
        digester.submit(snap, token=step)
        for step, snap, digest in digester.ready():   # completed, in order; never blocks
            ...
        for step, snap, digest in digester.drain():   # waits for everything submitted
            ...
        digester.close()
    """

    def __init__(self, background: bool = True, max_in_flight: int = 2,
                 digest: Callable[[StateSnapshot], str] | None = None) -> None:
        if not isinstance(max_in_flight, int) or isinstance(max_in_flight, bool) or max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight!r}: expected a positive int")
        self.background = bool(background)
        self.max_in_flight = max_in_flight
        self._digest = digest or (lambda state: state.digest())
        self._jobs: deque[_Job] = deque()  # submitted, not yet returned (in order)
        self._todo: deque[_Job] = deque()  # not yet picked up by the worker
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    # --- the worker ------------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="lightning-zk-digest",
                                            daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._todo and not self._closed:
                    self._cond.wait()
                if not self._todo:  # closed and nothing left
                    return
                job = self._todo.popleft()
            try:
                digest, error = self._digest(job.state), None
            except BaseException as err:  # surfaced on the training thread, never dropped
                digest, error = None, err
            with self._cond:
                job.digest, job.error, job.done = digest, error, True
                self._cond.notify_all()

    # --- the caller's side -----------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Snapshots submitted and not yet returned by :meth:`ready` or :meth:`drain`."""
        return len(self._jobs)

    def last_token(self) -> Any:
        """The token of the job submitted last and not yet returned (``IndexError`` if none)."""
        return self._jobs[-1].token

    def submit(self, state: StateSnapshot, token: Any = None) -> None:
        """Queue ``state`` (waits while ``max_in_flight`` are pending and none is finished).

        The caller must not modify ``state`` until it is returned.
        """
        if self._closed:
            raise RuntimeError("StateDigester.submit after close()")
        self._raise_failed()
        job = _Job(token, state)
        if not self.background:
            try:
                job.digest = self._digest(state)
            except Exception as err:
                self._error = err
                raise DigestWorkerError(f"digesting the state of {token!r} failed: {err}") from err
            job.done = True
            self._jobs.append(job)
            return
        self._start()
        with self._cond:
            # backpressure: room means fewer than max_in_flight jobs not yet finished
            while (sum(not j.done for j in self._jobs) >= self.max_in_flight
                   and self._error is None and self._first_error() is None):
                self._cond.wait()
            self._jobs.append(job)
            self._todo.append(job)
            self._cond.notify_all()
        self._raise_failed()

    def ready(self) -> list[tuple[Any, StateSnapshot, str]]:
        """The finished jobs at the head of the queue, in order (never waits)."""
        return self._collect(wait=False)

    def drain(self) -> list[tuple[Any, StateSnapshot, str]]:
        """Every submitted job, in order (waits for the worker)."""
        return self._collect(wait=True)

    def _collect(self, wait: bool) -> list[tuple[Any, StateSnapshot, str]]:
        out = []
        with self._cond:
            while self._jobs:
                job = self._jobs[0]
                if not job.done:
                    if not wait:
                        break
                    self._cond.wait()
                    continue
                if job.error is not None:
                    self._error = job.error
                    break
                self._jobs.popleft()
                out.append((job.token, job.state, job.digest))
        if self._error is not None and not out:
            self._raise_failed()
        return out

    def _first_error(self) -> BaseException | None:
        for job in self._jobs:
            if job.done and job.error is not None:
                return job.error
        return None

    def _raise_failed(self) -> None:
        error = self._error
        if error is None:
            with self._cond:
                head = self._jobs[0] if self._jobs else None
                if head is not None and head.done and head.error is not None:
                    error = self._error = head.error
        if error is not None:
            raise DigestWorkerError(
                f"the background state digest failed ({type(error).__name__}: {error}); the "
                "steps queued after the last committed one were not committed"
            ) from error

    def discard(self) -> None:
        """Forget every pending job (an aborted run commits none of them); stops the worker."""
        with self._cond:
            self._todo.clear()
            self._jobs.clear()
        self.close()

    def close(self) -> None:
        """Stop the worker after the jobs it holds (idempotent); :meth:`drain` first to keep them."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
