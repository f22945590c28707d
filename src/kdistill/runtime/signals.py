"""Preemption signals: SIGTERM (schedulers, ``kill``), SIGINT (Ctrl-C) and SIGUSR1 (SLURM's warning signal) ask
training to stop after the current step; the trainer then writes ``last.pt`` and exits with the resume command."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequests:
    """While active (``with StopRequests() as stop``), the stop signals set ``stop.signal_number`` instead of
    killing the process; a second SIGINT still interrupts at once. Outside the main thread it does nothing."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if number == signal.SIGINT and self.signal_number == signal.SIGINT:
            raise KeyboardInterrupt  # pressed twice: the user wants out now
        self.signal_number = number

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]  # what signal.signal returned before
        self._previous = {}


def signal_name(number: int) -> str:
    return signal.Signals(number).name
