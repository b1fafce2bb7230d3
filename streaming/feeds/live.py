"""The live writing loop the venue feeds share (Binance, Coinbase): one :class:`LiveWriter`.

A live venue feed is its connection, its id accounting and its REST gap filler,
composed with a :class:`LiveWriter` that runs them and writes what they deliver to the
raw log. The venue's ``feed.py`` keeps what is the venue's: decoding its frames, its
ids and gaps, the time of its progress marks, its connection and filler wiring. The
writer does the rest, the same for every venue:

- **Life cycle** (:meth:`LiveWriter.run`): the stop watcher, the flusher, the gap
  filler, the periodic summary and the connection as tasks; a task ending early ends
  the run (Redis gone for good, a bug) with its exception. At the stop, what is kept
  back is written, then the buffer; what could not be written (Redis unavailable at
  the stop) is counted as ``unwritten`` and makes the exit status 1.
- **Backfill before live.** While a backfill is pending (``ids.pending()``), the live
  frames (:meth:`LiveWriter.emit_live`) and the trades filled from REST
  (:meth:`LiveWriter.emit_filled`) are kept back, each with its trade time and trade
  id. When the backfill completes they are written **merged** by (trade time, trade
  id, order kept). The venue has one clock for all its symbols, so: a held live frame
  newer than a filled trade never goes before it (the backfill is not late), and a
  held frame older than filled trades does not go after them (which happened when a
  second gap's backfill, opened while the first was pending, went out first with
  it). A symbol's live frames keep their order (their times and ids do not
  decrease); a frame that is not a trade takes the time and id of the latest live
  trade (:attr:`LiveWriter.latest`), so it keeps its place after it. At most
  ``hold_max`` messages are kept back; beyond that they are written anyway, with one
  warning (the rest of that backfill may be late).
- **Back-pressure.** While ``max_buffer`` messages wait for Redis the feed stops
  reading (the socket's flow control then pushes back on the venue).
- **Writing** (one writer thread, batches in order): chunks of at least
  ``flush_max``; a progress mark only with a batch that takes the whole buffer (then
  it covers everything received) and only while caught up (connected, nothing
  pending or held); the resume positions recorded after the batch that completes
  them (never while anything is kept back).

docs/feeds.md, "The live writing loop", says the same for operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, cast

from marketdata.rawmessage import ProgressMark, RawMessage
from streaming.feeds.binance.config import FeedStats, Stop
from streaming.rawlog import RawLogWriter

T = TypeVar("T")
#: A task the writer runs: a coroutine function of no arguments.
Task = Callable[[], Coroutine[Any, Any, None]]


class LiveTuning(Protocol):
    """The knobs the writer reads of a venue's tuning (``FeedTuning``, ``CoinbaseTuning``)."""

    @property
    def flush_interval_s(self) -> float:
        """Buffered messages are written at least this often."""
        ...

    @property
    def flush_max(self) -> int:
        """Buffered messages are also written as soon as this many wait."""
        ...

    @property
    def max_buffer(self) -> int:
        """Reading pauses while this many messages wait for Redis."""
        ...

    @property
    def hold_max(self) -> int:
        """At most this many messages are kept back behind a backfill."""
        ...

    @property
    def mark_every_s(self) -> float:
        """While caught up, a progress mark is written this often."""
        ...

    @property
    def stats_every_s(self) -> float:
        """Period of the INFO summary line."""
        ...


class LiveIds(Protocol):
    """What the writer needs of a venue's id accounting."""

    #: Positions recorded in the resume store.
    saved: dict[str, int]

    def pending(self) -> bool:
        """Whether a backfill is pending (a gap open, or a symbol unsure)."""
        ...

    def moved(self) -> dict[str, int] | None:
        """The positions reached that are not recorded yet."""
        ...

    def log_open_gaps(self) -> None:
        """Log the gaps still open (at the stop)."""
        ...


class PositionStore(Protocol):
    """Where the resume positions are recorded."""

    def save(self, marks: Mapping[str, int]) -> bool:
        """Record ``marks``; whether it succeeded."""
        ...


class LiveWriter:
    """Runs a live feed's tasks and writes what they deliver (see the module docstring).

    Args:
        name: the log prefix, e.g. ``binance feed``.
        log: the venue's logger.
        writer: the raw log.
        tuning: the venue's tuning (:class:`LiveTuning`).
        stats: the run's counters (``held``, ``hold_overflows``, ``written``,
            ``unwritten``, ``marks`` are counted here).
        ids: the venue's id accounting (:class:`LiveIds`).
        stop_event: set from outside to stop.
        exchange: the exchange name of the progress marks.
        now_ms: the wall clock (UTC ms).
        resume: where positions are recorded (``None``: not recorded).
        mark_time: the venue's rule for a progress mark's event time, given our clock
            now (``None``: no mark yet); the writer keeps it at most our clock + 1 s
            and never below the previous mark.
        unit: what the summary's trade count counts (e.g. ``aggregate trades``).

    """

    def __init__(
        self,
        name: str,
        log: logging.Logger,
        writer: RawLogWriter,
        tuning: LiveTuning,
        stats: FeedStats,
        ids: LiveIds,
        stop_event: threading.Event,
        *,
        exchange: str,
        now_ms: Callable[[], int],
        resume: PositionStore | None,
        mark_time: Callable[[int], int | None],
        unit: str = "trades",
    ) -> None:
        self.name = name
        self.log = log
        self.writer = writer
        self.tuning = tuning
        self.stats = stats
        self.ids = ids
        self.exchange = exchange
        self._stop_event = stop_event
        self._now_ms = now_ms
        self._resume = resume
        self._mark_time = mark_time
        self._unit = unit
        self._buf: list[RawMessage] = []
        #: While a backfill is pending: the trades filled from REST and the live frames
        #: held back, each as (trade time, trade id, order kept, message).
        self._filled: list[tuple[int, int, int, RawMessage]] = []
        self._held: list[tuple[int, int, int, RawMessage]] = []
        self._kept_n = 0
        #: The trade time and id of the latest live trade, set by the venue as frames
        #: arrive: the place of a held frame given none of its own.
        self.latest: tuple[int, int] = (0, 0)
        self._overflowing = False
        #: Event time of the last progress mark (they never go back).
        self._mark_ms = 0
        self._mark_due = 0.0
        self._closing = False
        self._connected: Callable[[], bool] = lambda: False
        # One writer thread: batches reach Redis in order, the loop never blocks on it.
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name.split()[0]}-rawlog")
        # Created inside the loop (begin()).
        self.stop: Stop
        self._flush_now: asyncio.Event

    # -- life cycle ---------------------------------------------------------------

    def begin(self) -> Stop:
        """The run's stop (call first inside the event loop; the venue's parts take it)."""
        self.stop = Stop(self._stop_event)
        self._flush_now = asyncio.Event()
        return self.stop

    async def in_writer_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the writer thread (after the writes queued before)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._write_pool, fn, *args)

    async def run(
        self, connect: Task, fill: Task, connected: Callable[[], bool], prepare: Task
    ) -> int:
        """Run until the stop event is set; returns the exit status.

        Args:
            connect: the connection(s), run once ``prepare`` is done.
            fill: the REST gap filler.
            connected: whether a connection is open now (marks need one).
            prepare: what comes before connecting (taking up resume positions, the
                start log line); the writer and the filler already run.

        """
        self._connected = connected
        watcher = asyncio.create_task(self.stop.watch(), name="stop-watcher")
        flusher = asyncio.create_task(self._flusher(), name="flusher")
        filler = asyncio.create_task(fill(), name="filler")
        reporter = asyncio.create_task(self._reporter(), name="reporter")
        await prepare()
        supervisor = asyncio.create_task(connect(), name="connection")
        try:
            # A background task ending early has failed (Redis gone for good, a bug):
            # the run ends with its exception rather than stalling.
            await asyncio.wait(
                {supervisor, flusher, filler, reporter}, return_when=asyncio.FIRST_COMPLETED
            )
            self.stop.event.set()
            await supervisor
        finally:
            self.stop.event.set()
            for task in (supervisor, filler, reporter, watcher):
                task.cancel()
            await asyncio.gather(supervisor, filler, reporter, watcher, return_exceptions=True)
            self.ids.log_open_gaps()
            if self._held or self._filled:
                self.log.warning(
                    "%s: stopping with a backfill pending: writing the %d trades filled "
                    "so far and %d held live frames",
                    self.name,
                    len(self._filled),
                    len(self._held),
                )
                self._release()
            self._closing = True
            self._flush_now.set()
            try:
                await flusher
            finally:
                self._write_pool.shutdown()
                self.stats.unwritten += len(self._buf)
                self.log.info("%s stopped: %s", self.name, self.stats.summary(self._unit))
            for task in (filler, reporter):
                if not task.cancelled() and task.exception() is not None:
                    raise cast(BaseException, task.exception())
        return 1 if self.stats.unwritten else 0

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(self.tuning.stats_every_s)
            self.log.info("%s: %s", self.name, self.stats.summary(self._unit))

    # -- messages -----------------------------------------------------------------

    async def emit_live(self, msg: RawMessage, at: tuple[int, int] | None = None) -> None:
        """Queue a live message: held while a backfill is pending (see :meth:`_keep_back`).

        ``at``: its trade time and id, when it is not the latest live trade's
        (:attr:`latest`), e.g. a trade asked of REST that goes where live frames go.
        """
        if self._keep_back():
            self._kept_n += 1
            self._held.append((*(self.latest if at is None else at), self._kept_n, msg))
            self.stats.held += 1
            return
        await self._emit(msg)

    async def emit_filled(self, msg: RawMessage, trade_ms: int, tid: int) -> None:
        """Queue a trade filled from REST (kept back while the backfill is pending).

        It is written in trade-time order with the rest of that backfill and the live
        frames held behind it: the venue has one clock for every symbol.
        """
        self._kept_n += 1
        self._filled.append((trade_ms, tid, self._kept_n, msg))
        if not self._keep_back():
            await self._emit_wait()

    def _keep_back(self) -> bool:
        """Whether to keep a message back now (when not, what was kept is queued).

        Messages are kept back while a backfill is pending, up to ``hold_max``; beyond
        it, everything kept is queued and what follows of that backfill goes straight
        through (one warning), so memory stays bounded.
        """
        if self.ids.pending() and not self._overflowing:
            if len(self._held) + len(self._filled) < self.tuning.hold_max:
                return True
            self._overflowing = True
            self.stats.hold_overflows += 1
            self.log.warning(
                "%s: %d live frames and %d filled trades kept behind a backfill "
                "(hold_max): writing them, and what follows, before it is complete; the "
                "rest of the backfill may be late",
                self.name,
                len(self._held),
                len(self._filled),
            )
        self._release()
        return False

    def _release(self) -> None:
        """Queue what was kept back, merged by trade time, then trade id, then order kept."""
        if not self.ids.pending():
            self._overflowing = False
        if self._filled or self._held:
            kept = sorted(self._filled + self._held, key=lambda f: f[:3])
            self._buf.extend(f[3] for f in kept)
            self._filled.clear()
            self._held.clear()
            self._flush_now.set()

    def caught_up(self) -> bool:
        """Connected, no backfill pending, nothing held."""
        return self._connected() and not self.ids.pending() and not self._held and not self._filled

    def _progress_mark(self) -> ProgressMark | None:
        """The progress mark due now, if caught up and the venue has a time for it."""
        mono = time.monotonic()
        if mono < self._mark_due or not self.caught_up():
            return None
        self._mark_due = mono + self.tuning.mark_every_s
        now = self._now_ms()
        at = self._mark_time(now)
        if at is None:
            return None
        self._mark_ms = max(self._mark_ms, min(at, now + 1000))
        return ProgressMark(self.exchange, self._mark_ms, now)

    async def _emit(self, msg: RawMessage) -> None:
        self._buf.append(msg)
        await self._emit_wait()

    async def _emit_wait(self) -> None:
        if len(self._buf) >= self.tuning.flush_max:
            self._flush_now.set()
        # Redis is away: stop reading (the socket's flow control then pushes back).
        while len(self._buf) >= self.tuning.max_buffer and not self.stop.stopped():
            await asyncio.sleep(0.05)

    # -- writing ------------------------------------------------------------------

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self.tuning.flush_interval_s)
            self._flush_now.clear()
            if (self._held or self._filled) and not self.ids.pending():
                self._release()  # the backfill is done: the held frames follow it
            await self._flush()
            if self._closing:
                await self._flush()
                return

    async def _flush(self) -> None:
        chunk = max(self.tuning.flush_max, 5000)
        while True:
            # Taking the whole buffer: everything accounted for so far is in this batch
            # or written before (unless held), so the positions reached can be recorded
            # after it, and a progress mark written with it covers everything received.
            whole = len(self._buf) <= chunk
            mark = self._progress_mark() if whole and not self._closing else None
            if not self._buf and mark is None:
                return
            kept = self._held or self._filled
            positions = self._positions() if whole and not kept else None
            batch = self._buf[:chunk]
            del self._buf[:chunk]
            try:
                await self.in_writer_thread(self._write, batch, positions, mark)
            except InterruptedError:
                # Stopped while Redis was unavailable: what is left cannot be written.
                lost = len(batch) + len(self._buf)
                self._buf.clear()
                self.stats.unwritten += lost
                self.log.error(
                    "%s: stopped while Redis was unavailable; %d messages unwritten",
                    self.name,
                    lost,
                )
                return
            self.stats.written += len(batch)
            if mark is not None:
                self.stats.marks += 1

    def _positions(self) -> dict[str, int] | None:
        """Positions that moved since recorded (``None``: none, or no resume store)."""
        return None if self._resume is None else self.ids.moved()

    def _write(
        self,
        batch: list[RawMessage],
        positions: dict[str, int] | None,
        mark: ProgressMark | None,
    ) -> None:
        """Write a batch and its mark, then record the positions it completes (writer thread)."""
        self.writer.write(batch, marks=() if mark is None else (mark,))
        if positions and self._resume is not None and self._resume.save(positions):
            self.ids.saved.update(positions)
