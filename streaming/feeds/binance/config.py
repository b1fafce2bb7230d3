"""The Binance feed's configuration, counters and stop (:mod:`streaming.feeds.binance`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from marketdata.parsing import normalize_symbol

DEFAULT_WS_URL = "wss://stream.binance.com:9443"
DEFAULT_REST_URL = "https://api.binance.com"
#: USD-M futures (``--market um``). Their websocket routes streams by path: regular
#: market data such as ``@aggTrade`` is served under ``/market`` (Binance retired
#: its unrouted legacy URLs on 2026-04-23).
UM_WS_URL = "wss://fstream.binance.com/market"
UM_REST_URL = "https://fapi.binance.com"
#: Envelope key and value marking a trade filled from the REST API.
REST_SOURCE_KEY = "source"
REST_SOURCE = "rest"
#: Binance cuts every connection at 24 h; roll ten minutes before.
DEFAULT_MAX_CONNECTION_AGE_S = 23 * 3600 + 50 * 60
EXCHANGE = "binance"
HISTORICAL_TRADES = "/api/v3/historicalTrades"
USER_AGENT = "realtime-crypto-pipeline/binance-feed"


@dataclass(frozen=True)
class Market:
    """One of Binance's markets: where it is, the name it is written under, its limits.

    Attributes:
        name: the ``--market`` value (``spot``, ``um``).
        ws_url: default websocket base URL.
        rest_url: default REST base URL.
        exchange: default exchange name of its trades (a market is an exchange of its
            own: its own trade ids and its own clock).
        max_streams: streams one websocket connection may carry.
        weight_limit: REST request weight one IP may use a minute.

    """

    name: str
    ws_url: str
    rest_url: str
    exchange: str
    max_streams: int
    weight_limit: int


SPOT = Market("spot", DEFAULT_WS_URL, DEFAULT_REST_URL, EXCHANGE, 1024, 6000)
#: USD-M futures: they publish trades only as aggregate trades.
UM = Market("um", UM_WS_URL, UM_REST_URL, "binance-um", 200, 2400)
#: --market -> market
MARKETS = {m.name: m for m in (SPOT, UM)}


@dataclass(frozen=True)
class TradeStream:
    """Which of Binance's trade streams the feed follows, and how it reads them.

    Attributes:
        event: the websocket event and stream name (``trade`` or ``aggTrade``).
        id_key: the frame's key of the id the feed tracks for gaps and resuming,
            contiguous per symbol (``t`` the trade id, ``a`` the aggregate id).
        rest_path: the REST endpoint of past trades (``fromId`` is that same id;
            without it, the most recent ones).
        rest_id: the REST row's key of that id.
        rest_time: the REST row's key of the trade time.
        market: the market it belongs to (URLs, exchange name, limits).
        takes_api_key: whether the optional ``X-MBX-APIKEY`` goes with its REST
            requests (``historicalTrades``'s; the ``aggTrades`` endpoints are public
            and get none, so a spot key is never sent to USD-M).
        noun: what one of its ids stands for, in log lines.
        dumps: the name of Binance's daily dumps of the same rows (the remedy for
            what the feed cannot fetch).

    """

    event: str
    id_key: str
    rest_path: str
    rest_id: str
    rest_time: str
    market: Market = SPOT
    takes_api_key: bool = False
    noun: str = "trade"
    dumps: str = "trade"

    def rest_payload(self, symbol: str, row: Mapping[str, Any]) -> bytes:
        """A REST row as a synthesized combined-stream frame of this stream.

        The values are copied as given (decimal strings stay strings); ``E`` (event
        time) is the trade time, the row having none; the envelope carries
        ``"source":"rest"`` so a reader can tell it from a received frame. An
        ``aggTrades`` row keeps its keys (``a p q f l T m``, and ``M`` when the row
        has it: spot rows do, USD-M rows do not), as the websocket sends them.
        """
        if self.event == "trade":
            data = {
                "e": "trade",
                "E": row.get("time"),
                "s": symbol,
                "t": row.get("id"),
                "p": row.get("price"),
                "q": row.get("qty"),
                "T": row.get("time"),
                "m": row.get("isBuyerMaker"),
                "M": row.get("isBestMatch"),
            }
        else:
            data = {"e": "aggTrade", "E": row.get("T"), "s": symbol}
            data.update({k: row.get(k) for k in ("a", "p", "q", "f", "l", "T", "m")})
            if "M" in row:
                data["M"] = row.get("M")
        envelope = {
            "stream": f"{symbol.lower()}@{self.event}",
            "data": data,
            REST_SOURCE_KEY: REST_SOURCE,
        }
        return orjson.dumps(envelope)


#: Spot trades: ``@trade`` frames, ``GET /api/v3/historicalTrades``.
TRADES = TradeStream("trade", "t", HISTORICAL_TRADES, "id", "time", SPOT, takes_api_key=True)
#: Spot aggregate trades: ``@aggTrade`` frames, ``GET /api/v3/aggTrades`` (no API key).
SPOT_AGG_TRADES = TradeStream(
    "aggTrade", "a", "/api/v3/aggTrades", "a", "T", SPOT, noun="aggregate trade", dumps="aggTrades"
)
#: USD-M futures aggregate trades: ``@aggTrade`` frames, ``GET /fapi/v1/aggTrades``.
UM_AGG_TRADES = TradeStream(
    "aggTrade", "a", "/fapi/v1/aggTrades", "a", "T", UM, noun="aggregate trade", dumps="aggTrades"
)


def trade_stream(market: str, event: str) -> TradeStream:
    """The stream of ``market`` (``spot``/``um``) and ``event`` (``trade``/``aggTrade``).

    Raises:
        ValueError: USD-M futures have no public ``@trade`` stream, or unknown names.

    """
    if market == "spot" and event in ("trade", "aggTrade"):
        return TRADES if event == "trade" else SPOT_AGG_TRADES
    if market == "um" and event == "aggTrade":
        return UM_AGG_TRADES
    if market == "um" and event == "trade":
        msg = (
            "--market um --stream trade: USD-M futures publish trades only as aggregate "
            "trades; use --stream aggTrade (each counts as its last - first + 1 trades)"
        )
        raise ValueError(msg)
    msg = f"unknown market {market!r} or stream {event!r}: use spot|um and trade|aggTrade"
    raise ValueError(msg)


def wall_ms() -> int:
    """The wall clock, UTC ms (stamped as a message's receive time)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class FeedTuning:
    """Timing and size knobs of the Binance feed (defaults suit production).

    Attributes:
        max_connection_age_s: roll the connection after this long (Binance cuts at 24 h).
        roll_overlap_s: during a roll, the longest both connections stay open.
        backoff_base_s: first reconnect delay bound (full jitter: uniform in [0, bound]).
        backoff_cap_s: largest reconnect / REST retry delay bound.
        flush_interval_s: buffered messages are written at least this often.
        flush_max: ...or as soon as this many are buffered.
        max_buffer: reading pauses while this many messages wait for Redis.
        gap_grace_s: wait this long after a gap opens before asking REST.
        rest_limit: ``limit`` of a historicalTrades request (Binance's maximum: 1000).
        rest_timeout_s: timeout of one REST request.
        fill_max_attempts: failed REST attempts (errors, 5xx, empty answers) before
            the missing ids are given up; 429/418 waits do not count.
        rate_limit_default_s: wait after a 429 without ``Retry-After``.
        ban_default_s: wait after a 418 without ``Retry-After``.
        used_weight_pause: pause REST until the next minute when Binance reports this
            much request weight used in the current minute; ``None``: five sixths of
            the market's limit (5000 of spot's 6000, 2000 of USD-M's 2400).
        open_timeout_s: websocket handshake timeout.
        ping_interval_s: the client's own keepalive pings (``None``: off).
        ping_timeout_s: a connection whose pong is this late is dropped.
        stats_every_s: period of the INFO summary line.
        resume_max_ids: on resuming, at most this many trades per symbol missed
            since the last run are fetched from REST (the newest ones).
        mark_every_s: while caught up, a progress mark is written this often (at
            most; Binance's marks must come at least once a second).
        hold_max: at most this many live frames are held back while a backfill is
            pending; beyond it they are written anyway (a warning), so the backfill
            may be late.

    """

    max_connection_age_s: float = DEFAULT_MAX_CONNECTION_AGE_S
    roll_overlap_s: float = 5.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0
    flush_interval_s: float = 0.05
    flush_max: int = 500
    max_buffer: int = 200_000
    gap_grace_s: float = 0.5
    rest_limit: int = 1000
    rest_timeout_s: float = 10.0
    fill_max_attempts: int = 8
    rate_limit_default_s: float = 5.0
    ban_default_s: float = 120.0
    used_weight_pause: int | None = None
    open_timeout_s: float = 10.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    stats_every_s: float = 60.0
    resume_max_ids: int = 100_000
    mark_every_s: float = 0.5
    hold_max: int = 50_000

    def __post_init__(self) -> None:
        if self.max_connection_age_s <= 0:
            msg = f"max_connection_age_s={self.max_connection_age_s}: must be positive"
            raise ValueError(msg)
        if not 1 <= self.rest_limit <= 1000:
            msg = f"rest_limit={self.rest_limit}: Binance accepts 1..1000"
            raise ValueError(msg)
        if min(self.flush_interval_s, self.stats_every_s, self.roll_overlap_s) <= 0:
            msg = "flush_interval_s, stats_every_s and roll_overlap_s must be positive"
            raise ValueError(msg)
        if self.resume_max_ids < 0:
            msg = f"resume_max_ids={self.resume_max_ids}: must not be negative"
            raise ValueError(msg)
        if not 0 < self.mark_every_s <= 1:
            msg = f"mark_every_s={self.mark_every_s}: marks must come at least once a second"
            raise ValueError(msg)
        if self.used_weight_pause is not None and self.used_weight_pause < 1:
            msg = f"used_weight_pause={self.used_weight_pause}: must be positive"
            raise ValueError(msg)
        if self.hold_max < 0:
            msg = f"hold_max={self.hold_max}: must not be negative"
            raise ValueError(msg)
        if self.flush_max < 1 or self.max_buffer < self.flush_max:
            msg = "flush_max must be >= 1 and max_buffer >= flush_max"
            raise ValueError(msg)


@dataclass
class FeedStats:
    """Counters of one run; readable while it runs (for display) and after.

    Attributes:
        connections: websocket connections opened.
        reconnects: connections that ended unexpectedly and were replaced.
        rolls: connections replaced on purpose (max age or ``serverShutdown``).
        server_shutdowns: ``serverShutdown`` events received.
        frames: websocket frames received.
        trades: distinct trades written (socket and REST; aggregate trades when
            following ``@aggTrade``, as are the other counts of trades and ids).
        duplicates: trades dropped because their id was already written.
        gaps: gaps opened in the id sequences.
        gap_ids: ids missing from those gaps when they opened.
        filled: trades written from the REST API.
        lost: ids given up on (REST failed, or did not have them).
        rest_requests: REST requests sent.
        rate_limited: REST or handshake answers 429/418.
        written: raw-log entries written.
        unwritten: buffered messages that could not be written before stopping.
        resumed: symbols whose ids continued from the previous run's position.
        probes: REST requests for a symbol's newest trade (after a resume or a
            reconnect, for a symbol the socket has not shown a trade of since).
        held: live frames held back behind a pending backfill (then written).
        hold_overflows: times the hold bound was hit (live written before the backfill).
        marks: progress marks written.

    """

    connections: int = 0
    reconnects: int = 0
    rolls: int = 0
    server_shutdowns: int = 0
    frames: int = 0
    trades: int = 0
    duplicates: int = 0
    gaps: int = 0
    gap_ids: int = 0
    filled: int = 0
    lost: int = 0
    rest_requests: int = 0
    rate_limited: int = 0
    written: int = 0
    unwritten: int = 0
    resumed: int = 0
    probes: int = 0
    held: int = 0
    hold_overflows: int = 0
    marks: int = 0

    def summary(self, unit: str = "trades") -> str:
        """One line for the log (``unit``: what ``trades`` counts, e.g. aggregate trades)."""
        return (
            f"{self.trades} {unit} ({self.filled} from REST), {self.duplicates} duplicates, "
            f"{self.gaps} gaps ({self.gap_ids} ids, {self.lost} lost), "
            f"{self.connections} connections ({self.reconnects} reconnects, {self.rolls} rolls), "
            f"{self.rest_requests} REST requests ({self.rate_limited} rate-limited), "
            f"{self.written} written ({self.held} held behind backfills), "
            f"{self.marks} progress marks"
        )


@dataclass(frozen=True)
class BinanceFeedConfig:
    """What to subscribe to and where.

    Attributes:
        symbols: upper-case symbols, e.g. ``("BTCUSDT", "ETHUSDT")``.
        ws_url: websocket base URL (``/stream`` is appended).
        rest_url: REST base URL.
        api_key: optional ``X-MBX-APIKEY`` header value (never logged).
        tuning: timing and size knobs.
        stream: which trade stream (``@trade`` or ``@aggTrade``, spot or USD-M).
        exchange: the exchange name written with every message and mark.

    """

    symbols: tuple[str, ...]
    ws_url: str = DEFAULT_WS_URL
    rest_url: str = DEFAULT_REST_URL
    api_key: str | None = field(default=None, repr=False)
    tuning: FeedTuning = field(default_factory=FeedTuning)
    stream: TradeStream = TRADES
    exchange: str = EXCHANGE

    def __post_init__(self) -> None:
        if not self.symbols:
            msg = "no symbols: pass --symbols, e.g. BTCUSDT,ETHUSDT"
            raise ValueError(msg)
        most = self.stream.market.max_streams
        if len(self.symbols) > most:
            msg = (
                f"{len(self.symbols)} symbols: Binance allows {most} streams a connection "
                f"on market {self.stream.market.name}"
            )
            raise ValueError(msg)
        for sym in self.symbols:
            if normalize_symbol(sym) != sym or "-" in sym:
                msg = f"bad symbol {sym!r}: use upper-case letters and digits like BTCUSDT"
                raise ValueError(msg)
        if urllib.parse.urlsplit(self.ws_url).scheme not in ("ws", "wss"):
            msg = f"bad websocket URL {self.ws_url!r}: use wss://host[:port]"
            raise ValueError(msg)
        if urllib.parse.urlsplit(self.rest_url).scheme not in ("http", "https"):
            msg = f"bad REST URL {self.rest_url!r}: use https://host[:port]"
            raise ValueError(msg)

    @property
    def stream_url(self) -> str:
        """The combined-stream URL of every symbol's ``@trade`` (or ``@aggTrade``) stream."""
        base = self.ws_url.rstrip("/")
        for suffix in ("/stream", "/ws"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        streams = "/".join(f"{s.lower()}@{self.stream.event}" for s in self.symbols)
        return f"{base}/stream?streams={streams}"

    def past_trades_url(self, symbol: str, from_id: int | None, limit: int) -> str:
        """The REST URL of ``limit`` trades of ``symbol`` from id ``from_id`` (inclusive).

        Without ``from_id``: the ``limit`` most recent trades. The endpoint is the
        stream's: ``historicalTrades``, or ``aggTrades`` (spot or USD-M) whose rows and
        ``fromId`` are aggregate trades and their ids.
        """
        params: dict[str, str | int] = {"symbol": symbol}
        if from_id is not None:
            params["fromId"] = from_id
        params["limit"] = limit
        query = urllib.parse.urlencode(params)
        return f"{self.rest_url.rstrip('/')}{self.stream.rest_path}?{query}"


class Stop:
    """The feed's stop: a thread-safe event from outside, mirrored in the event loop.

    Every part of the feed (connections, gap filler, writer) sleeps through
    :meth:`sleep`, which wakes at once on a stop.
    """

    def __init__(self, external: threading.Event) -> None:
        self.external = external
        self.event = asyncio.Event()

    def stopped(self) -> bool:
        """Whether a stop was requested."""
        return self.event.is_set() or self.external.is_set()

    async def watch(self) -> None:
        """Mirror the outside event into the loop (a task of the feed's run)."""
        while not self.external.is_set():
            await asyncio.sleep(0.05)
        self.event.set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; returns whether stop was requested."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), seconds)
        return self.stopped()
