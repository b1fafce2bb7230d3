"""Graceful stop on SIGINT/SIGTERM for long-running commands."""

from __future__ import annotations

import signal
import threading
from types import FrameType


def stop_event_on_signals() -> threading.Event:
    """An event set by the first SIGINT or SIGTERM; a second SIGINT interrupts at once."""
    event = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        event.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
    return event
