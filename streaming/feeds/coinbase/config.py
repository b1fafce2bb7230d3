"""The Coinbase feed's configuration and counters (:mod:`streaming.feeds.coinbase`)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from streaming.feeds.binance.config import REST_SOURCE, REST_SOURCE_KEY, FeedStats

DEFAULT_WS_URL = "wss://ws-feed.exchange.coinbase.com"
DEFAULT_REST_URL = "https://api.exchange.coinbase.com"
EXCHANGE = "coinbase"
USER_AGENT = "realtime-crypto-pipeline/coinbase-feed"
#: The match frames' types: ``last_match`` is the one match sent right after subscribing.
MATCH_TYPES = ("match", "last_match")
#: A product id: base and quote currency, upper case, one hyphen (``BTC-USD``).
PRODUCT_RE = re.compile(r"[A-Z0-9]{1,20}-[A-Z0-9]{1,20}")


def normalize_product(raw: str) -> str | None:
    """A product id upper-cased (``btc-usd`` -> ``BTC-USD``), or ``None`` when it is not one."""
    product = raw.strip().upper()
    return product if PRODUCT_RE.fullmatch(product) else None


def rest_match_payload(product: str, row: Mapping[str, Any]) -> bytes:
    """A REST trade row as a synthesized ``match`` frame marked ``"source":"rest"``.

    The row's values are copied as given (decimal strings stay strings, ``side`` is
    the maker's side on both); ``product_id`` is the product asked for, the row having
    none. The frame has no ``sequence`` nor order ids (REST rows have none; the
    parser reads neither).
    """
    frame: dict[str, Any] = {"type": "match"}
    frame["trade_id"] = row.get("trade_id")
    frame["product_id"] = product
    for key in ("price", "size", "side", "time"):
        frame[key] = row.get(key)
    frame[REST_SOURCE_KEY] = REST_SOURCE
    return orjson.dumps(frame)


@dataclass(frozen=True)
class CoinbaseTuning:
    """Timing and size knobs of the Coinbase feed (defaults suit production).

    Attributes:
        backoff_base_s: first reconnect delay bound (full jitter: uniform in [0, bound]).
        backoff_cap_s: largest reconnect / REST retry delay bound.
        flush_interval_s: buffered messages are written at least this often.
        flush_max: ...or as soon as this many are buffered.
        max_buffer: reading pauses while this many messages wait for Redis.
        gap_grace_s: wait this long after a gap opens before asking REST (a match
            frame still on its way fills it).
        rest_limit: ``limit`` of a trades request (Coinbase's maximum: 1000).
        rest_per_s: at most this many REST requests a second (Coinbase allows 10 a
            second per IP on public endpoints, bursts of 15; the feed stays below,
            leaving room for other clients on the same address).
        rest_timeout_s: timeout of one REST request.
        fill_max_attempts: failed REST attempts (errors, 5xx, pages without the ids)
            before the missing ids are given up; 429 waits do not count.
        rate_limit_default_s: wait after a 429 without ``Retry-After``.
        open_timeout_s: websocket handshake timeout.
        ping_interval_s: the client's own keepalive pings (``None``: off).
        ping_timeout_s: a connection whose pong is this late is dropped.
        silence_s: a connection that delivers nothing this long is replaced
            (heartbeats come every second per product).
        stats_every_s: period of the INFO summary line.
        resume_max_ids: on resuming, at most this many trades per product missed
            since the last run are fetched from REST (the newest ones).
        mark_every_s: while caught up, a progress mark is written this often.
        hold_max: at most this many messages are held back while a backfill is
            pending; beyond it they are written anyway (a warning).

    """

    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0
    flush_interval_s: float = 0.05
    flush_max: int = 500
    max_buffer: int = 200_000
    gap_grace_s: float = 0.5
    rest_limit: int = 1000
    rest_per_s: float = 5.0
    rest_timeout_s: float = 10.0
    fill_max_attempts: int = 8
    rate_limit_default_s: float = 1.0
    open_timeout_s: float = 10.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    silence_s: float = 10.0
    stats_every_s: float = 60.0
    resume_max_ids: int = 100_000
    mark_every_s: float = 0.5
    hold_max: int = 50_000

    def __post_init__(self) -> None:
        if not 1 <= self.rest_limit <= 1000:
            msg = f"rest_limit={self.rest_limit}: Coinbase accepts 1..1000"
            raise ValueError(msg)
        if not 0 < self.rest_per_s <= 10:
            msg = f"rest_per_s={self.rest_per_s}: Coinbase allows at most 10 a second"
            raise ValueError(msg)
        if min(self.flush_interval_s, self.stats_every_s, self.silence_s) <= 0:
            msg = "flush_interval_s, stats_every_s and silence_s must be positive"
            raise ValueError(msg)
        if not 0 < self.mark_every_s <= 1:
            msg = f"mark_every_s={self.mark_every_s}: marks must come at least once a second"
            raise ValueError(msg)
        if self.resume_max_ids < 0 or self.hold_max < 0:
            msg = "resume_max_ids and hold_max must not be negative"
            raise ValueError(msg)
        if self.flush_max < 1 or self.max_buffer < self.flush_max:
            msg = "flush_max must be >= 1 and max_buffer >= flush_max"
            raise ValueError(msg)


@dataclass
class CoinbaseStats(FeedStats):
    """The Binance feed's counters, and Coinbase's own.

    Of :class:`FeedStats`, ``rolls``, ``server_shutdowns`` and ``probes`` stay 0 here.

    Attributes:
        heartbeats: ``heartbeat`` frames received.
        errors: ``error`` frames received (logged).
        other: frames of other types, written as received (the candles flow rejects
            them as ``unsupported_event``).

    """

    heartbeats: int = 0
    errors: int = 0
    other: int = 0

    def summary(self, unit: str = "trades") -> str:
        """One line for the log."""
        return (
            f"{super().summary(unit)}, {self.heartbeats} heartbeats, {self.errors} errors, "
            f"{self.other} other frames"
        )


@dataclass(frozen=True)
class CoinbaseFeedConfig:
    """What to subscribe to and where.

    Attributes:
        products: upper-case product ids, e.g. ``("BTC-USD", "ETH-USD")``.
        ws_url: the websocket feed's URL (connected to as given).
        rest_url: REST base URL (``/products/<id>/trades`` is appended).
        tuning: timing and size knobs.
        exchange: the exchange name written with every message and mark.

    """

    products: tuple[str, ...]
    ws_url: str = DEFAULT_WS_URL
    rest_url: str = DEFAULT_REST_URL
    tuning: CoinbaseTuning = field(default_factory=CoinbaseTuning)
    exchange: str = EXCHANGE

    def __post_init__(self) -> None:
        if not self.products:
            msg = "no products: pass --products, e.g. BTC-USD,ETH-USD"
            raise ValueError(msg)
        for product in self.products:
            if normalize_product(product) != product:
                msg = f"bad product {product!r}: use Coinbase product ids like BTC-USD"
                raise ValueError(msg)
        if urllib.parse.urlsplit(self.ws_url).scheme not in ("ws", "wss"):
            msg = f"bad websocket URL {self.ws_url!r}: use wss://host[:port]"
            raise ValueError(msg)
        if urllib.parse.urlsplit(self.rest_url).scheme not in ("http", "https"):
            msg = f"bad REST URL {self.rest_url!r}: use https://host[:port]"
            raise ValueError(msg)

    def subscribe_message(self) -> bytes:
        """The ``subscribe`` request: every product's ``matches`` and ``heartbeat`` channels."""
        return orjson.dumps(
            {
                "type": "subscribe",
                "product_ids": list(self.products),
                "channels": ["matches", "heartbeat"],
            }
        )

    def trades_url(self, product: str, after: int | None, limit: int) -> str:
        """The REST URL of ``limit`` trades of ``product`` older than trade id ``after``.

        Coinbase pages newest first; ``after`` (exclusive) asks for older trades.
        Without it: the ``limit`` most recent trades.
        """
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = after
        path = f"/products/{urllib.parse.quote(product)}/trades"
        return f"{self.rest_url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
