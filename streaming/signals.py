"""Graceful stop on SIGTERM/SIGINT, for every long-running process of ours."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType


def stop_on_signals(
    event: threading.Event, on_first: Callable[[int], None] | None = None
) -> threading.Event:
    """Make the first SIGTERM or SIGINT set ``event``; a second SIGINT interrupts at once.

    ``on_first`` is called with the signal number when the first one arrives. Only
    the main thread can install handlers; elsewhere this does nothing. Returns
    ``event``.
    """

    def handler(signum: int, _frame: FrameType | None) -> None:
        if event.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        if on_first is not None:
            on_first(signum)
        event.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
    return event
