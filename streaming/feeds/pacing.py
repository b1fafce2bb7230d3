"""Pacing and batching for feeds: recorded timing at a speed factor, or as fast as possible."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import TextIO

from marketdata.rawmessage import RawMessage
from streaming.rawlog import RawLogWriter


def parse_speed(text: str) -> float | None:
    """``max`` -> ``None`` (no pacing); a positive number -> that factor of real time."""
    if text.strip().lower() == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        speed = -1.0
    if not speed > 0 or speed == float("inf"):
        msg = f"bad --speed {text!r}: use 'max' or a positive factor of real time, e.g. 1 or 10"
        raise ValueError(msg)
    return speed


class Progress:
    """A one-line progress display on a terminal (silent when not a TTY)."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        stream: TextIO | None = None,
        every_s: float = 0.5,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.every_s = every_s
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, count: int, done: int | None = None, *, force: bool = False) -> None:
        """Show ``count`` messages so far; ``done`` of ``total`` units (e.g. bytes)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        pct = ""
        if self.total and done is not None:
            pct = f" {min(100.0, 100.0 * done / self.total):5.1f}%"
        self.stream.write(f"\r{self.label}:{pct} {count:,} msgs, {count / elapsed:,.0f} msg/s   ")
        self.stream.flush()

    def finish(self, count: int) -> None:
        """Final line."""
        if self.enabled:
            self.update(count, self.total, force=True)
            self.stream.write("\n")
            self.stream.flush()


class PacedWriter:
    """Writes timed messages to the raw log, keeping their spacing at ``speed``.

    Messages are grouped into pipelines of up to ``batch_size`` (or whatever is due
    within ``max_delay_s``), so ``--speed max`` runs at pipeline speed and real-time
    replay adds at most ``max_delay_s`` of delay.
    """

    def __init__(
        self,
        writer: RawLogWriter,
        speed: float | None,
        *,
        batch_size: int = 2_000,
        max_delay_s: float = 0.02,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.writer = writer
        self.speed = speed
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self.sleep = sleep
        self.clock = clock
        self.should_stop = should_stop

    def run(
        self,
        items: Iterable[tuple[int, RawMessage]],
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Write ``(timeline_ms, message)`` pairs in order; returns how many were written."""
        batch: list[RawMessage] = []
        t0: int | None = None
        w0 = self.clock()
        written = 0
        last_flush = w0

        def flush() -> None:
            nonlocal written, last_flush
            if batch:
                self.writer.write(batch)
                written += len(batch)
                batch.clear()
                if on_batch is not None:
                    on_batch(written)
            last_flush = self.clock()

        for timeline_ms, msg in items:
            if self.speed is not None:
                if t0 is None:
                    t0 = timeline_ms
                due = w0 + (timeline_ms - t0) / 1000.0 / self.speed
                wait = due - self.clock()
                if wait > 0:
                    flush()
                    if self.should_stop():
                        break
                    self.sleep(wait)
                elif self.clock() - last_flush >= self.max_delay_s:
                    flush()
            batch.append(msg)
            if len(batch) >= self.batch_size:
                flush()
                if self.should_stop():
                    break
        flush()
        return written
