"""The Binance feed: the connection, the id accounting and the gap filler, composed.

It writes what they deliver to the raw log through the live writing loop
(:mod:`streaming.feeds.live`): live frames behind any pending backfill, merged with it
by trade time, and progress marks while it is caught up (see
:mod:`streaming.feeds.binance`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from marketdata.parsing import FORMAT_WS, normalize_symbol
from marketdata.rawmessage import RawMessage
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
from streaming.feeds.binance.ids import TradeIds
from streaming.feeds.binance.rest import GapFiller
from streaming.feeds.ids import ResumePoints
from streaming.feeds.live import LiveWriter
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

    What is Binance's is here: decoding frames, the ids, the progress marks' time;
    holding live frames behind a backfill and writing are the shared
    :class:`~streaming.feeds.live.LiveWriter`'s. Use :func:`run_binance_feed`; this
    class exists for its pieces to be testable.
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
        self.stats = stats if stats is not None else FeedStats()
        self._now_ms = now_ms
        self._resume_store = resume
        self.ids = TradeIds(config.symbols, self.tuning, self.stats, stream=config.stream)
        self.live = LiveWriter(
            "binance feed",
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
            unit=f"{config.stream.noun}s",
        )
        #: The latest socket trade's (event time ``E``, receive time): the offset of
        #: Binance's clock to ours, as seen by us.
        self._latest: tuple[int, int] | None = None
        # Created inside the loop (run()).
        self.stop: Stop
        self.filler: GapFiller
        self.connections: Connections

    # -- life cycle ---------------------------------------------------------------

    async def run(self) -> int:
        """Run until the stop event is set; returns the exit status."""
        self.stop = self.live.begin()
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
            self._emit_probed,
        )
        return await self.live.run(
            connections.run, self.filler.run, lambda: connections.connected, self._prepare
        )

    async def _prepare(self) -> None:
        """Take up the previous run's positions (probed once connected); log the start."""
        if self._resume_store is not None:
            points = await self.live.in_writer_thread(self._resume_store.load, self.config.symbols)
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
            if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
                tid = None
            when = event.get("T")
            if isinstance(when, int) and not isinstance(when, bool):
                self.live.latest = (when, tid or 0)
            if tid is not None:
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
        await self.live.emit_live(
            RawMessage(
                payload=frame,
                exchange=self.config.exchange,
                recv_ms=recv_ms,
                fmt=FORMAT_WS,
                symbol=symbol,
            )
        )

    def _trade_key(self, msg: RawMessage) -> tuple[int, int] | None:
        """The trade time ``T`` and id of a trade frame synthesized from REST."""
        event, _ = frame_event(orjson.loads(msg.payload))
        if event is None:
            return None
        when, tid = event.get("T"), event.get(self.config.stream.id_key)
        if isinstance(when, int) and isinstance(tid, int):
            return when, tid
        return None

    async def _emit_filled(self, msg: RawMessage, trade_ms: int) -> None:
        """A trade filled from REST: kept with its time and id (see LiveWriter)."""
        key = self._trade_key(msg)
        await self.live.emit_filled(msg, trade_ms, 0 if key is None else key[1])

    async def _emit_probed(self, msg: RawMessage) -> None:
        """A symbol's newest trade asked of REST: it goes where live frames go, at its time."""
        await self.live.emit_live(msg, self._trade_key(msg))

    def _on_lost(self) -> None:
        """The socket was lost: what was missed is unknown until probed or seen."""
        self.ids.lose_connection()
        self.filler.gap.set()

    def _mark_time(self, now: int) -> int:
        """A progress mark's event time: Binance's time now, as the latest trade tells it.

        The latest socket trade's ``E`` plus the time since we received it (our clock
        before any trade); the writer keeps it at most our clock + 1 s, never below
        the previous mark's.
        """
        return now if self._latest is None else self._latest[0] + now - self._latest[1]


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
        if sym is None or "-" in sym:  # Binance's symbols have no hyphens
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
