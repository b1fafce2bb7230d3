"""The Coinbase feed: the connection, the id accounting and the gap filler, composed.

It writes match frames to the raw log as received, live frames behind any pending
backfill, and progress marks from the heartbeats while it is caught up (see
:mod:`streaming.feeds.coinbase`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import orjson

from marketdata.parsing import FORMAT_COINBASE_WS, iso_utc_ms
from marketdata.rawmessage import ProgressMark, RawMessage
from marketdata.settings import Settings
from redisstore.conn import connect_settings
from streaming.feeds.binance.config import Stop, wall_ms
from streaming.feeds.coinbase.config import (
    DEFAULT_REST_URL,
    DEFAULT_WS_URL,
    EXCHANGE,
    MATCH_TYPES,
    CoinbaseFeedConfig,
    CoinbaseStats,
    CoinbaseTuning,
    normalize_product,
)
from streaming.feeds.coinbase.connection import Connection
from streaming.feeds.coinbase.ids import CoinbaseResumePoints, ProductIds
from streaming.feeds.coinbase.rest import GapFiller
from streaming.heartbeat import HeartbeatWriter
from streaming.rawlog import RawLogWriter

log = logging.getLogger("streaming.feeds.coinbase")


def trade_id_of(obj: dict[str, Any], key: str) -> int | None:
    """A frame's non-negative integer id under ``key``, or ``None``."""
    value = obj.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class CoinbaseFeed:
    """The feed: one event loop running the socket, the REST filler and the writer.

    Use :func:`run_coinbase_feed`; this class exists for its pieces to be testable.
    """

    def __init__(
        self,
        config: CoinbaseFeedConfig,
        writer: RawLogWriter,
        stop_event: threading.Event,
        *,
        stats: CoinbaseStats | None = None,
        now_ms: Callable[[], int] = wall_ms,
        resume: CoinbaseResumePoints | None = None,
    ) -> None:
        self.config = config
        self.tuning = config.tuning
        self.writer = writer
        self.stats = stats if stats is not None else CoinbaseStats()
        self._stop_event = stop_event
        self._now_ms = now_ms
        self._resume_store = resume
        self.ids = ProductIds(config.products, self.tuning, self.stats)
        self._buf: list[RawMessage] = []
        #: While a backfill is pending: the trades filled from REST and the live frames
        #: held back, each with its trade time, trade id and a counter (written merged,
        #: in trade-time order, when the backfill completes).
        self._filled: list[tuple[int, int, int, RawMessage]] = []
        self._held: list[tuple[int, int, int, RawMessage]] = []
        self._kept_n = 0
        #: The trade time and id of the latest live match (a held non-match frame
        #: keeps its place after it).
        self._live: tuple[int, int] = (0, 0)
        self._overflowing = False
        #: Per product, its latest heartbeat: (``last_trade_id``, ``time`` in ms).
        self._beats: dict[str, tuple[int, int]] = {}
        #: Per product, the time of the latest heartbeat whose trades are all written.
        self._reached: dict[str, int] = {}
        #: Event time of the last progress mark (they never go back).
        self._mark_ms = 0
        self._mark_due = 0.0
        self._closing = False
        # One writer thread: batches reach Redis in order, the loop never blocks on it.
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="coinbase-rawlog")
        # Created inside the loop (run()).
        self.stop: Stop
        self.filler: GapFiller
        self.connection: Connection
        self._flush_now: asyncio.Event

    # -- life cycle ---------------------------------------------------------------

    async def run(self) -> int:
        """Run until the stop event is set; returns the exit status."""
        self.stop = Stop(self._stop_event)
        self._flush_now = asyncio.Event()
        self.connection = Connection(
            self.config, self.stats, self.stop, self._on_frame, self._now_ms, self._on_lost
        )
        self.filler = GapFiller(
            self.config, self.stats, self.ids, self._emit_filled, self.stop, self._now_ms
        )
        watcher = asyncio.create_task(self.stop.watch(), name="stop-watcher")
        flusher = asyncio.create_task(self._flusher(), name="flusher")
        filler = asyncio.create_task(self.filler.run(), name="filler")
        reporter = asyncio.create_task(self._reporter(), name="reporter")
        if self._resume_store is not None:
            loop = asyncio.get_running_loop()
            points = await loop.run_in_executor(
                self._write_pool, self._resume_store.load, self.config.products
            )
            self.ids.take_up_positions(points)
            if points:
                log.info(
                    "coinbase feed: resuming after %s",
                    ", ".join(f"{p} id {i}" for p, i in sorted(points.items())),
                )
        log.info(
            "coinbase feed: %d products (%s) from %s as exchange %s",
            len(self.config.products),
            ",".join(self.config.products),
            self.config.ws_url,
            self.config.exchange,
        )
        reader = asyncio.create_task(self.connection.run(), name="connection")
        try:
            # A background task ending early has failed (Redis gone for good, a bug):
            # the run ends with its exception rather than stalling.
            await asyncio.wait(
                {reader, flusher, filler, reporter}, return_when=asyncio.FIRST_COMPLETED
            )
            self.stop.event.set()
            await reader
        finally:
            self.stop.event.set()
            for task in (reader, filler, reporter, watcher):
                task.cancel()
            await asyncio.gather(reader, filler, reporter, watcher, return_exceptions=True)
            self.ids.log_open_gaps()
            if self._held or self._filled:
                log.warning(
                    "coinbase feed: stopping with a backfill pending: writing the %d trades "
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
                log.info("coinbase feed stopped: %s", self.stats.summary())
            for task in (filler, reporter):
                if not task.cancelled() and task.exception() is not None:
                    raise cast(BaseException, task.exception())
        return 1 if self.stats.unwritten else 0

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(self.tuning.stats_every_s)
            log.info("coinbase feed: %s", self.stats.summary())

    # -- frames -------------------------------------------------------------------

    async def _on_frame(self, frame: bytes, recv_ms: int) -> None:
        self.stats.frames += 1
        try:
            obj = orjson.loads(frame)
        except orjson.JSONDecodeError:
            obj = None
        kind = obj.get("type") if isinstance(obj, dict) else None
        product: str | None = None
        if isinstance(obj, dict) and isinstance(obj.get("product_id"), str):
            product = normalize_product(obj["product_id"])
        if kind == "heartbeat":
            assert isinstance(obj, dict)
            self._on_heartbeat(obj, product)
            return
        if kind == "subscriptions":
            log.info("coinbase feed: subscribed: %s", frame[:500].decode("utf-8", "replace"))
            return
        if kind == "error":
            self.stats.errors += 1
            log.error("coinbase feed: error frame: %s", frame[:500].decode("utf-8", "replace"))
            return
        if kind in MATCH_TYPES and product in self.ids:
            assert isinstance(obj, dict) and product is not None
            tid = trade_id_of(obj, "trade_id")
            when = iso_utc_ms(obj.get("time"))
            if when is not None:
                self._live = (when, tid or 0)
            if tid is not None:
                new, gap = self.ids.accept(product, tid)
                if gap:
                    self.filler.gap.set()
                if not new:
                    return
        else:
            self.stats.other += 1
        # Anything else (other types, malformed frames) is written as received: the
        # candles flow sends it to the DLQ with a reason instead of it vanishing here.
        await self._emit_live(
            RawMessage(
                payload=frame,
                exchange=self.config.exchange,
                recv_ms=recv_ms,
                fmt=FORMAT_COINBASE_WS,
                symbol=product,
            )
        )

    def _on_heartbeat(self, obj: dict[str, Any], product: str | None) -> None:
        """A product's heartbeat: a gap when it is ahead, and the product's progress."""
        self.stats.heartbeats += 1
        last = trade_id_of(obj, "last_trade_id")
        when = iso_utc_ms(obj.get("time"))
        if product not in self.ids or last is None or when is None:
            log.warning("coinbase feed: unusable heartbeat %s", orjson.dumps(obj)[:300])
            return
        assert product is not None
        if self.ids.heartbeat(product, last):
            self.filler.gap.set()
        self._beats[product] = (last, when)

    async def _emit_live(self, msg: RawMessage) -> None:
        """Queue a live message: held while a backfill is pending (see :meth:`_keep_back`)."""
        if self._keep_back():
            self._kept_n += 1
            self._held.append((*self._live, self._kept_n, msg))
            self.stats.held += 1
            return
        await self._emit(msg)

    async def _emit_filled(self, msg: RawMessage, trade_ms: int, tid: int) -> None:
        """Queue a trade filled from REST (kept back while the backfill is pending).

        It is written in trade-time order with the rest of that backfill and the live
        frames held behind it: the venue has one clock for every product.
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
            log.warning(
                "coinbase feed: %d live frames and %d filled trades kept behind a backfill "
                "(hold_max): writing them, and what follows, before it is complete; the "
                "rest of the backfill may be late",
                len(self._held),
                len(self._filled),
            )
        self._release()
        return False

    def _on_lost(self) -> None:
        """The socket was lost: what was missed is unknown until the next heartbeats."""
        self.ids.lose_connection()

    def _release(self) -> None:
        """Queue what was kept back, merged in trade-time order.

        The filled trades and the held live frames, by trade time, then trade id,
        then the order kept. So a backfill goes before every live trade newer than
        it, and a second gap's backfill, opened while the first was pending, goes among
        the held frames of its time, not before them all. A product's live frames keep
        their order (their times do not decrease).
        """
        if not self.ids.pending():
            self._overflowing = False
        if self._filled or self._held:
            kept = sorted(self._filled + self._held, key=lambda f: f[:3])
            self._buf.extend(f[3] for f in kept)
            self._filled.clear()
            self._held.clear()
            self._flush_now.set()

    def _caught_up(self) -> bool:
        """Connected, no backfill pending, nothing held."""
        return (
            self.connection.connected
            and not self.ids.pending()
            and not self._held
            and not self._filled
        )

    def _progress_mark(self) -> ProgressMark | None:
        """The progress mark due now, if caught up (``None`` otherwise).

        Its event time is one every product has reached: the smallest, over the
        products, of the time of each one's latest heartbeat whose ``last_trade_id``
        is written (the venue has one clock for all its products). None before every
        product has had one; at most our clock + 1 s; never below the previous mark.
        """
        mono = time.monotonic()
        if mono < self._mark_due or not self._caught_up():
            return None
        self._mark_due = mono + self.tuning.mark_every_s
        for product, (last, when) in self._beats.items():
            top = self.ids.trackers[product].watermark
            if top is None or last <= top:
                self._reached[product] = max(self._reached.get(product, 0), when)
        if len(self._reached) < len(self.config.products):
            return None
        now = self._now_ms()
        self._mark_ms = max(self._mark_ms, min(min(self._reached.values()), now + 1000))
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
                    "coinbase feed: stopped while Redis was unavailable; %d messages unwritten",
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


def run_coinbase_feed(
    settings: Settings,
    products: list[str],
    *,
    ws_url: str | None = None,
    rest_url: str | None = None,
    stop_event: threading.Event | None = None,
    tuning: CoinbaseTuning | None = None,
    stats: CoinbaseStats | None = None,
    heartbeat_name: str | None = "feed",
    now_ms: Callable[[], int] = wall_ms,
    resume: bool = True,
    exchange: str | None = None,
) -> int:
    """Stream live Coinbase Exchange trades into the raw log until stopped (blocking).

    Args:
        settings: where the raw log is (``redis_url``, ``raw_shards``).
        products: product ids like ``["BTC-USD", "ETH-USD"]`` (case-insensitive).
        ws_url: the websocket feed (default ``wss://ws-feed.exchange.coinbase.com``).
        rest_url: REST base URL for filling gaps (default
            ``https://api.exchange.coinbase.com``).
        stop_event: set it to stop; buffered messages are written first.
        tuning: timing and size knobs (see :class:`CoinbaseTuning`).
        stats: counters to fill in (pass one to read them while or after it runs).
        heartbeat_name: flow name of the heartbeat hash (``None``: no heartbeat).
        now_ms: the wall clock (UTC ms) stamped as ``recv_ms``.
        resume: fetch the trades missed since the previous run from REST;
            ``False`` starts from the live stream alone.
        exchange: the exchange name of what is written (default ``coinbase``).

    Returns:
        ``0`` after a clean stop; ``1`` when messages were left unwritten because
        Redis was unavailable at the stop.

    Raises:
        ValueError: bad products or URLs.
        RedisUnavailableError: no Redis at ``settings.redis_url``.

    """
    prods = []
    for raw in products:
        product = normalize_product(raw)
        if product is None:
            msg = f"bad product {raw!r}: use Coinbase product ids like BTC-USD"
            raise ValueError(msg)
        prods.append(product)
    config = CoinbaseFeedConfig(
        tuple(dict.fromkeys(prods)),
        ws_url or DEFAULT_WS_URL,
        rest_url or DEFAULT_REST_URL,
        tuning or CoinbaseTuning(),
        exchange or EXCHANGE,
    )
    if settings.known_symbols is not None:
        unknown = sorted(set(config.products) - settings.known_symbols)
        if unknown:
            log.warning(
                "coinbase feed: %s not in CRYPTOPIPE_SYMBOLS; the candles flow will reject them",
                ",".join(unknown),
            )
    stop = stop_event if stop_event is not None else threading.Event()
    client = connect_settings(settings, writer=True)
    heartbeat = HeartbeatWriter(client, heartbeat_name) if heartbeat_name else None
    writer = RawLogWriter(client, settings.raw_shards, heartbeat, should_stop=stop.is_set)
    points = CoinbaseResumePoints(client, config.ws_url) if resume else None
    feed = CoinbaseFeed(config, writer, stop, stats=stats, now_ms=now_ms, resume=points)
    try:
        with writer:
            return asyncio.run(feed.run())
    finally:
        client.close()
