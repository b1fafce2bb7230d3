"""Graceful stop on SIGINT/SIGTERM for long-running commands."""

from __future__ import annotations

import threading

from streaming.signals import stop_on_signals


def stop_event_on_signals() -> threading.Event:
    """An event set by the first SIGINT or SIGTERM; a second SIGINT interrupts at once."""
    return stop_on_signals(threading.Event())
