"""The Coinbase feed: the connection, the id accounting and the gap filler, composed.

It writes match frames to the raw log as received through the live writing loop
(:mod:`streaming.feeds.live`): live frames behind any pending backfill, merged with it
by trade time, and progress marks from the heartbeats while it is caught up (see
:mod:`streaming.feeds.coinbase`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import orjson

from marketdata.parsing import FORMAT_COINBASE_WS, iso_utc_ms
from marketdata.rawmessage import RawMessage
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
from streaming.feeds.live import LiveWriter
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

    What is Coinbase's is here: decoding frames, the ids and heartbeats, the progress
    marks' time; holding live frames behind a backfill and writing are the shared
    :class:`~streaming.feeds.live.LiveWriter`'s. Use :func:`run_coinbase_feed`; this
    class exists for its pieces to be testable.
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
        self.stats = stats if stats is not None else CoinbaseStats()
        self._now_ms = now_ms
        self._resume_store = resume
        self.ids = ProductIds(config.products, self.tuning, self.stats)
        self.live = LiveWriter(
            "coinbase feed",
            log,
            writer,
            self.tuning,
            self.stats,
            self.ids,
            stop_event,
            exchange=config.exchange,
            now_ms=now_ms,
            resume=resume,
            mark_time=self._mark_time,
        )
        #: Per product, its latest heartbeat: (``last_trade_id``, ``time`` in ms).
        self._beats: dict[str, tuple[int, int]] = {}
        #: Per product, the time of the latest heartbeat whose trades are all written.
        self._reached: dict[str, int] = {}
        # Created inside the loop (run()).
        self.stop: Stop
        self.filler: GapFiller
        self.connection: Connection

    # -- life cycle ---------------------------------------------------------------

    async def run(self) -> int:
        """Run until the stop event is set; returns the exit status."""
        self.stop = self.live.begin()
        connection = Connection(
            self.config, self.stats, self.stop, self._on_frame, self._now_ms, self._on_lost
        )
        self.connection = connection
        self.filler = GapFiller(
            self.config, self.stats, self.ids, self.live.emit_filled, self.stop, self._now_ms
        )
        return await self.live.run(
            connection.run, self.filler.run, lambda: connection.connected, self._prepare
        )

    async def _prepare(self) -> None:
        """Take up the previous run's positions; log the start."""
        if self._resume_store is not None:
            points = await self.live.in_writer_thread(self._resume_store.load, self.config.products)
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
                self.live.latest = (when, tid or 0)
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
        await self.live.emit_live(
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

    def _on_lost(self) -> None:
        """The socket was lost: what was missed is unknown until the next heartbeats."""
        self.ids.lose_connection()

    def _mark_time(self, now: int) -> int | None:
        """A progress mark's event time: one every product has reached.

        The smallest, over the products, of the time of each one's latest heartbeat
        whose ``last_trade_id`` is written (the venue has one clock for all its
        products). None before every product has had one; the writer keeps it at
        most our clock + 1 s and never below the previous mark.
        """
        for product, (last, when) in self._beats.items():
            top = self.ids.trackers[product].watermark
            if top is None or last <= top:
                self._reached[product] = max(self._reached.get(product, 0), when)
        if len(self._reached) < len(self.config.products):
            return None
        return min(self._reached.values())


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
