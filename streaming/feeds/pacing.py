"""Pacing and batching for feeds: recorded timing at a speed factor, or as fast as possible."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import TextIO

from marketdata.rawmessage import ProgressMark, RawMessage
from streaming.rawlog import PayloadChunk, RawLogWriter

#: How often (wall seconds) a feed writes its progress marks while it is alive: twice
#: a second, so that a quiet venue's windows close within lateness + 1 s with margin.
MARK_EVERY_S = 0.5


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


class MarkClock:
    """When a feed's progress marks are due, and their event time (see :class:`PacedWriter`).

    Marks of every venue, at least every ``mark_every_s`` of wall time (or when
    forced), at the largest timeline time reached so far; never lower than the last.
    """

    def __init__(
        self,
        venues: tuple[str, ...],
        mark_every_s: float,
        clock: Callable[[], float],
        recv_ms: Callable[[], int],
    ) -> None:
        self.venues = venues
        self.mark_every_s = mark_every_s
        self.clock = clock
        self.recv_ms = recv_ms
        #: The event time of the last marks written (``None``: none yet).
        self.marked: int | None = None
        self.last = clock()

    def due(
        self, reached: int | None, *, force: bool = False, now: float | None = None
    ) -> list[ProgressMark]:
        """The marks to write now (after what reached ``reached``), or none."""
        now = self.clock() if now is None else now
        if (
            not self.venues
            or reached is None
            or not (force or now - self.last >= self.mark_every_s)
        ):
            return []
        self.marked = reached if self.marked is None else max(self.marked, reached)
        stamp = self.recv_ms()
        self.last = now
        return [ProgressMark(v, self.marked, stamp) for v in self.venues]


def write_chunks(
    writer: RawLogWriter,
    chunks: Iterable[tuple[PayloadChunk, int | None]],
    *,
    venues: tuple[str, ...] = (),
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int], None] | None = None,
    mark_every_s: float = MARK_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
    recv_ms: Callable[[], int] = lambda: int(time.time() * 1000),
) -> int:
    """Write ``(chunk, reached)`` pairs as fast as Redis takes them; how many messages.

    ``reached`` is the largest timeline time among the chunk's messages (``None``:
    none). Progress marks as :class:`PacedWriter` writes them at ``--speed max``: after
    a chunk when due, and once at the end. Stops after a chunk when ``should_stop``.
    """
    marks = MarkClock(venues, mark_every_s, clock, recv_ms)
    written = 0
    top: int | None = None
    for chunk, reached in chunks:
        if reached is not None:
            top = reached if top is None else max(top, reached)
        writer.write_chunk(chunk, marks.due(top))
        written += len(chunk.payloads)
        if on_batch is not None:
            on_batch(written)
        if should_stop():
            break
    last = marks.due(top, force=True)
    if last:
        writer.write_chunk(PayloadChunk([], "", 0), last)
    writer.flush()
    return written


class PacedWriter:
    """Writes timed messages to the raw log, keeping their spacing at ``speed``.

    Messages are grouped into pipelines of up to ``batch_size`` (or whatever is due
    within ``max_delay_s``), so ``--speed max`` runs at pipeline speed and real-time
    replay adds at most ``max_delay_s`` of delay.

    **Progress marks.** For each of ``venues``, at least every ``mark_every_s`` of
    wall time while it runs (also while it waits for the next message, quiet
    markets included) and once at the end, it writes a
    :class:`~marketdata.rawmessage.ProgressMark` after the messages it covers. Its
    event time is where the feed is on its timeline: the largest timeline time
    written so far or, while it waits, the time its pacing has reached (short of
    the next message's): the feeds put every message at or after its event time on
    the timeline (the simulator's arrival time, a recording's trade time), so
    everything of the venue up to it is delivered. A mark is stamped with the
    feed's ``recv_ms`` clock.
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
        venues: tuple[str, ...] = (),
        mark_every_s: float = MARK_EVERY_S,
        recv_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.writer = writer
        self.speed = speed
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self.sleep = sleep
        self.clock = clock
        self.should_stop = should_stop
        self.venues = venues
        self.mark_every_s = mark_every_s
        self.recv_ms = recv_ms
        self._marks = MarkClock(venues, mark_every_s, clock, recv_ms)

    @property
    def marked(self) -> int | None:
        """The event time of the last marks written (``None``: none yet)."""
        return self._marks.marked

    def run(
        self,
        items: Iterable[tuple[int, RawMessage]],
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Write ``(timeline_ms, message)`` pairs in order; returns how many were written."""
        self._batch: list[RawMessage] = []
        self._on_batch = on_batch
        self._w0 = self._last_flush = self._marks.last = self.clock()
        self._t0: int | None = None
        self._reached: int | None = None  # the largest timeline time written or waited to
        self._written = 0
        for timeline_ms, msg in items:
            if self.speed is not None:
                if self._t0 is None:
                    self._t0 = timeline_ms
                due = self._w0 + (timeline_ms - self._t0) / 1000.0 / self.speed
                if due - self.clock() > 0:
                    if not self._wait_until(due, timeline_ms):
                        break
                elif self.clock() - self._last_flush >= self.max_delay_s:
                    self._flush()
            self._batch.append(msg)
            self._reached = (
                timeline_ms if self._reached is None else max(self._reached, timeline_ms)
            )
            if len(self._batch) >= self.batch_size:
                self._flush()
                if self.should_stop():
                    break
        self._flush(force_marks=True)
        return self._written

    def _flush(self, *, force_marks: bool = False) -> None:
        """Write the batch, then the marks when they are due (or ``force_marks``)."""
        now = self.clock()
        marks = self._marks.due(self._reached, force=force_marks, now=now)
        if self._batch or marks:
            self.writer.write(self._batch, marks)
            self._written += len(self._batch)
            self._batch.clear()
            if self._on_batch is not None:
                self._on_batch(self._written)
        self._last_flush = now

    def _wait_until(self, due: float, next_ms: int) -> bool:
        """Sleep until ``due``, writing marks every ``mark_every_s``; False: stop."""
        self._flush()
        while True:
            if self.should_stop():
                return False
            wait = due - self.clock()
            if wait <= 0:
                return True
            if self.venues:
                wait = min(wait, max(0.0, self._marks.last + self.mark_every_s - self.clock()))
            self.sleep(wait)
            if self.venues and self._t0 is not None and self.speed is not None:
                # Where the pacing is now on the timeline, short of the next message.
                pos = self._t0 + int((self.clock() - self._w0) * 1000 * self.speed)
                pos = min(pos, next_ms - 1)
                self._reached = pos if self._reached is None else max(self._reached, pos)
                self._flush()
