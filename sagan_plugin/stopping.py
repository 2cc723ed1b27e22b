"""Stopping training cleanly: SIGTERM (schedulers, torchrun) and Ctrl-C end a run at the end of
a step, with a checkpoint of that step, so that running the same command again resumes exactly.

The signal handler only records the request; the trainer looks at it after each step, all
ranks agreeing (one small all-reduce), so that every process of a torchrun launch stops after
the same step. A second Ctrl-C stops at once, without a checkpoint. A study's worker processes
also stop their runs when the study's main process is stopped (`follow_study`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report

_study_signal: Any = None  # in a study's worker: a shared int, the signal that stopped the study


def follow_study(shared_signal: Any) -> None:
    """In a study's worker process: its runs also stop after their step, saved, once the study's
    main process stores the signal that stopped it in `shared_signal` (a SIGTERM or Ctrl-C may
    reach the main process alone: `kill PID`, `docker stop`)."""
    global _study_signal
    _study_signal = shared_signal


class Terminated(BaseException):
    """SIGTERM in a process that is not training, raised where Ctrl-C raises KeyboardInterrupt."""

    exit_code = EXIT_CODES[signal.SIGTERM]


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While entered, the first SIGTERM raises Terminated in the main thread instead of ending
    the process at once, so that it can stop what it started; later ones are ignored (the runs
    it stops are saving; SIGKILL ends it at once)."""
    def terminated(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Interrupted(Exception):
    """Training stopped on a signal after saving the checkpoint of `step`."""

    def __init__(self, signum: int, step: int, where: str) -> None:
        self.signum, self.step, self.where = signum, step, where
        self.exit_code = EXIT_CODES.get(signum, 128 + signum)
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}: its "
                         f"checkpoint is in {where}; run the same command again to resume")

    def __reduce__(self) -> tuple[type, tuple[int, int, str]]:
        """Pickled by its arguments: a study's worker process hands it to the main one."""
        return Interrupted, (self.signum, self.step, self.where)


class StopRequests:
    """While entered, SIGINT and SIGTERM set `signum` instead of ending the process.

    `worker_init` is for the DataLoader: a Ctrl-C or SIGTERM sent to the whole process group
    (a terminal, Slurm) reaches its workers too, and they must serve the step being finished.
    They ignore SIGINT, and SIGTERM until training is over (multiprocessing ends them with a
    SIGTERM at exit).
    """

    def __init__(self) -> None:
        self._signum: int | None = None
        self._previous: dict[int, object] = {}
        self._over = multiprocessing.Value("b", 0, lock=False)  # shared with the workers

    @property
    def signum(self) -> int | None:
        """The signal that asked this run to stop: sent to its process, or to its study."""
        if self._signum is None and _study_signal is not None and _study_signal.value:
            return _study_signal.value
        return self._signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self._signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self._signum = signum

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # signals reach it alone
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._over.value = 1
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def worker_init(self, worker_id: int) -> None:
        over = self._over
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0) if over.value else None)
