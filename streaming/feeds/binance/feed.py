"""The Binance feed: the connection, the id accounting and the gap filler, composed.

It writes what they deliver to the raw log, live frames behind any pending backfill,
and progress marks while it is caught up (see :mod:`streaming.feeds.binance`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, cast

import orjson

from marketdata.parsing import FORMAT_WS, normalize_symbol
from marketdata.rawmessage import ProgressMark, RawMessage
from marketdata.settings import Settings
from redisstore.conn import connect_settings
from streaming.feeds.binance.config import (
    TRADES,
    BinanceFeedConfig,
    FeedStats,
    FeedTuning,
    Stop,
    TradeStream,
    wall_ms,
)
from streaming.feeds.binance.connection import Conn, Connections
from streaming.feeds.binance.ids import ResumePoints, TradeIds
from streaming.feeds.binance.rest import GapFiller
from streaming.heartbeat import HeartbeatWriter
from streaming.rawlog import RawLogWriter

log = logging.getLogger("streaming.feeds.binance")


def frame_event(obj: Any) -> tuple[dict[str, Any] | None, Any]:
    """The event object of a frame (inside ``data``/``event`` when wrapped) and its type."""
    if not isinstance(obj, dict):
        return None, None
    for key in ("data", "event"):
        inner = obj.get(key)
        if isinstance(inner, dict) and "e" not in obj:
            return inner, inner.get("e")
    return obj, obj.get("e")


class BinanceFeed:
    """The feed: one event loop running the socket, the REST filler and the writer.

    Use :func:`run_binance_feed`; this class exists for its pieces to be testable.
    """

    def __init__(
        self,
        config: BinanceFeedConfig,
        writer: RawLogWriter,
        stop_event: threading.Event,
        *,
        stats: FeedStats | None = None,
        now_ms: Callable[[], int] = wall_ms,
        resume: ResumePoints | None = None,
    ) -> None:
        self.config = config
        self.tuning = config.tuning
        self.writer = writer
        self.stats = stats if stats is not None else FeedStats()
        self._stop_event = stop_event
        self._now_ms = now_ms
        self._resume_store = resume
        self.ids = TradeIds(config.symbols, self.tuning, self.stats, stream=config.stream)
        self._unit = f"{config.stream.noun}s"
        self._buf: list[RawMessage] = []
        #: While a backfill is pending: the trades filled from REST (with their trade
        #: time and order), and the live frames held back (written after them).
        self._filled: list[tuple[int, int, RawMessage]] = []
        self._held: list[RawMessage] = []
        self._overflowing = False
        #: The latest socket trade's (event time ``E``, receive time): the offset of
        #: Binance's clock to ours, as seen by us.
        self._latest: tuple[int, int] | None = None
        #: Event time of the last progress mark (they never go back).
        self._mark_ms = 0
        self._mark_due = 0.0
        self._closing = False
        # One writer thread: batches reach Redis in order, the loop never blocks on it.
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="binance-rawlog")
        # Created inside the loop (run()).
        self.stop: Stop
        self.filler: GapFiller
        self.connections: Connections
        self._flush_now: asyncio.Event

    # -- life cycle ---------------------------------------------------------------

    async def run(self) -> int:
        """Run until the stop event is set; returns the exit status."""
        self.stop = Stop(self._stop_event)
        self._flush_now = asyncio.Event()
        connections = Connections(
            self.config, self.stats, self.stop, self._on_frame, self._now_ms, self._on_lost
        )
        self.connections = connections
        self.filler = GapFiller(
            self.config,
            self.stats,
            self.ids,
            self._emit_filled,
            self.stop,
            self._now_ms,
            lambda: connections.connected,
            self._emit_live,
        )
        watcher = asyncio.create_task(self.stop.watch(), name="stop-watcher")
        flusher = asyncio.create_task(self._flusher(), name="flusher")
        filler = asyncio.create_task(self.filler.run(), name="filler")
        reporter = asyncio.create_task(self._reporter(), name="reporter")
        if self._resume_store is not None:
            loop = asyncio.get_running_loop()
            points = await loop.run_in_executor(
                self._write_pool, self._resume_store.load, self.config.symbols
            )
            self.ids.take_up_positions(points)
            if points:
                self.filler.gap.set()  # probe them once connected
                log.info(
                    "binance feed: resuming after %s",
                    ", ".join(f"{s} id {i}" for s, i in sorted(points.items())),
                )
        log.info(
            "binance feed: %d symbols (%s) from %s as exchange %s",
            len(self.config.symbols),
            ",".join(self.config.symbols),
            self.config.stream_url,
            self.config.exchange,
        )
        supervisor = asyncio.create_task(connections.run(), name="supervisor")
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
                log.warning(
                    "binance feed: stopping with a backfill pending: writing the %d trades "
                    "filled so far, then %d held live frames",
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
                log.info("binance feed stopped: %s", self.stats.summary(self._unit))
            for task in (filler, reporter):
                if not task.cancelled() and task.exception() is not None:
                    raise cast(BaseException, task.exception())
        return 1 if self.stats.unwritten else 0

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(self.tuning.stats_every_s)
            log.info("binance feed: %s", self.stats.summary(self._unit))

    # -- messages -----------------------------------------------------------------

    async def _on_frame(self, frame: bytes, recv_ms: int, conn: Conn) -> None:
        self.stats.frames += 1
        try:
            obj = orjson.loads(frame)
        except orjson.JSONDecodeError:
            obj = None
        event, kind = frame_event(obj)
        symbol: str | None = None
        if kind == "serverShutdown":
            self.stats.server_shutdowns += 1
            log.info("binance feed: serverShutdown on connection %d", conn.number)
            conn.shutdown.set()
            return
        if event is not None and isinstance(event.get("s"), str):
            symbol = normalize_symbol(event["s"])
        if kind == self.config.stream.event and symbol in self.ids:
            assert symbol is not None
            assert event is not None
            tid = event.get(self.config.stream.id_key)
            if isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0:
                new, gap = self.ids.accept(symbol, tid)
                if gap:
                    self.filler.gap.set()
                if not new:
                    return
            e_ms = event.get("E")
            if isinstance(e_ms, int) and not isinstance(e_ms, bool):
                self._latest = (e_ms, recv_ms)
        # Anything else (other events, malformed frames) is written as received: the
        # candles flow sends it to the DLQ with a reason instead of it vanishing here.
        await self._emit_live(
            RawMessage(
                payload=frame,
                exchange=self.config.exchange,
                recv_ms=recv_ms,
                fmt=FORMAT_WS,
                symbol=symbol,
            )
        )

    async def _emit_live(self, msg: RawMessage) -> None:
        """Queue a live message: held while a backfill is pending (see :meth:`_keep_back`)."""
        if self._keep_back():
            self._held.append(msg)
            self.stats.held += 1
            return
        await self._emit(msg)

    async def _emit_filled(self, msg: RawMessage, trade_ms: int) -> None:
        """Queue a trade filled from REST (kept back while the backfill is pending).

        It is written in trade-time order with the rest of that backfill: the venue
        has one clock for every symbol, so one symbol's newer backfill written first
        would make another's late. The trade that completes the backfill releases it.
        """
        self._filled.append((trade_ms, len(self._filled), msg))
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
            log.warning(
                "binance feed: %d live frames and %d filled trades kept behind a backfill "
                "(hold_max): writing them, and what follows, before it is complete; the "
                "rest of the backfill may be late",
                len(self._held),
                len(self._filled),
            )
        self._release()
        return False

    def _on_lost(self) -> None:
        """The socket was lost: what was missed is unknown until probed or seen."""
        self.ids.lose_connection()
        self.filler.gap.set()

    def _release(self) -> None:
        """Queue what was kept back.

        The filled trades in trade-time order, then the held live frames in the order
        received.
        """
        if not self.ids.pending():
            self._overflowing = False
        if self._filled:
            self._filled.sort(key=lambda f: (f[0], f[1]))
            self._buf.extend(m for _, _, m in self._filled)
            self._filled.clear()
            self._flush_now.set()
        if self._held:
            self._buf.extend(self._held)
            self._held.clear()
            self._flush_now.set()

    def _caught_up(self) -> bool:
        """Connected, no backfill pending, nothing held."""
        return (
            self.connections.connected
            and not self.ids.pending()
            and not self._held
            and not self._filled
        )

    def _progress_mark(self) -> ProgressMark | None:
        """The progress mark due now, if caught up (``None`` otherwise).

        Its event time: Binance's time now as the latest socket trade tells it (its
        ``E`` plus the time since we received it; our clock before any trade), at
        most our clock + 1 s, never below the previous mark's.
        """
        mono = time.monotonic()
        if mono < self._mark_due or not self._caught_up():
            return None
        self._mark_due = mono + self.tuning.mark_every_s
        now = self._now_ms()
        est = now if self._latest is None else self._latest[0] + now - self._latest[1]
        self._mark_ms = max(self._mark_ms, min(est, now + 1000))
        return ProgressMark(self.config.exchange, self._mark_ms, now)

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
        loop = asyncio.get_running_loop()
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
                await loop.run_in_executor(self._write_pool, self._write, batch, positions, mark)
            except InterruptedError:
                # Stopped while Redis was unavailable: what is left cannot be written.
                lost = len(batch) + len(self._buf)
                self._buf.clear()
                self.stats.unwritten += lost
                log.error(
                    "binance feed: stopped while Redis was unavailable; %d messages unwritten",
                    lost,
                )
                return
            self.stats.written += len(batch)
            if mark is not None:
                self.stats.marks += 1

    def _positions(self) -> dict[str, int] | None:
        """Positions that moved since recorded (``None``: none, or no resume store)."""
        return None if self._resume_store is None else self.ids.moved()

    def _write(
        self,
        batch: list[RawMessage],
        positions: dict[str, int] | None,
        mark: ProgressMark | None,
    ) -> None:
        """Write a batch and its mark, then record the positions it completes (writer thread)."""
        self.writer.write(batch, marks=() if mark is None else (mark,))
        if positions and self._resume_store is not None and self._resume_store.save(positions):
            self.ids.saved.update(positions)


def run_binance_feed(
    settings: Settings,
    symbols: list[str],
    *,
    ws_url: str | None = None,
    rest_url: str | None = None,
    stop_event: threading.Event | None = None,
    api_key: str | None = None,
    max_connection_age_s: float | None = None,
    tuning: FeedTuning | None = None,
    stats: FeedStats | None = None,
    heartbeat_name: str | None = "feed",
    now_ms: Callable[[], int] = wall_ms,
    resume: bool = True,
    stream: TradeStream = TRADES,
    exchange: str | None = None,
) -> int:
    """Stream live Binance trades into the raw log until stopped (blocking).

    Args:
        settings: where the raw log is (``redis_url``, ``raw_shards``).
        symbols: symbols like ``["BTCUSDT", "ETHUSDT"]`` (case-insensitive).
        ws_url: websocket base URL; ``/stream?streams=...`` is appended (default: the
            stream's market's, e.g. ``wss://fstream.binance.com/market`` for USD-M).
        rest_url: REST base URL for filling gaps (the stream's endpoint is appended;
            default: the market's).
        stop_event: set it to stop; buffered messages are written first.
        api_key: ``X-MBX-APIKEY`` for REST; default: env ``BINANCE_API_KEY``, if set.
        max_connection_age_s: shorthand for ``tuning.max_connection_age_s``.
        tuning: timing and size knobs (see :class:`FeedTuning`).
        stats: counters to fill in (pass one to read them while or after it runs).
        heartbeat_name: flow name of the heartbeat hash (``None``: no heartbeat).
        now_ms: the wall clock (UTC ms) stamped as ``recv_ms``.
        resume: fetch the trades missed since the previous run from REST (see
            *Resuming*); ``False`` starts from the live stream alone.
        stream: ``@trade`` (default) or ``@aggTrade`` of spot or USD-M
            (:func:`~streaming.feeds.binance.config.trade_stream`).
        exchange: the exchange name of what is written (default: the market's,
            ``binance`` or ``binance-um``).

    Returns:
        ``0`` after a clean stop; ``1`` when messages were left unwritten because
        Redis was unavailable at the stop.

    Raises:
        ValueError: bad symbols or URLs.
        RedisUnavailableError: no Redis at ``settings.redis_url``.

    """
    syms = []
    for raw in symbols:
        sym = normalize_symbol(raw)
        if sym is None:
            msg = f"bad symbol {raw!r}: use letters and digits like BTCUSDT"
            raise ValueError(msg)
        syms.append(sym)
    tuning = tuning or FeedTuning()
    if max_connection_age_s is not None:
        tuning = replace(tuning, max_connection_age_s=max_connection_age_s)
    if api_key is None:
        api_key = os.environ.get("BINANCE_API_KEY", "").strip() or None
    market = stream.market
    config = BinanceFeedConfig(
        tuple(dict.fromkeys(syms)),
        ws_url or market.ws_url,
        rest_url or market.rest_url,
        api_key,
        tuning,
        stream,
        exchange or market.exchange,
    )
    if settings.known_symbols is not None:
        unknown = sorted(set(config.symbols) - settings.known_symbols)
        if unknown:
            log.warning(
                "binance feed: %s not in CRYPTOPIPE_SYMBOLS; the candles flow will reject them",
                ",".join(unknown),
            )
    stop = stop_event if stop_event is not None else threading.Event()
    client = connect_settings(settings, writer=True)
    heartbeat = HeartbeatWriter(client, heartbeat_name) if heartbeat_name else None
    writer = RawLogWriter(client, settings.raw_shards, heartbeat, should_stop=stop.is_set)
    points = ResumePoints(client, config.ws_url, stream.event) if resume else None
    feed = BinanceFeed(config, writer, stop, stats=stats, now_ms=now_ms, resume=points)
    try:
        with writer:
            return asyncio.run(feed.run())
    finally:
        client.close()
