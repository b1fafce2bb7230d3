"""``cryptopipe feed binance``: Binance's live trade streams into the raw log.

One combined-stream websocket (``/stream?streams=btcusdt@trade/ethusdt@trade``)
carries every symbol. Each frame is written to the raw log exactly as received (the
whole ``{"stream": ..., "data": {...}}`` envelope; the parser accepts it), with
exchange ``binance``, ``recv_ms`` = wall clock (UTC ms) at receipt and the trade's
symbol for sharding. Writes are pipelined: a batch every ``flush_interval_s`` or
every ``flush_max`` messages, whichever comes first.

Keeping the log complete and duplicate-free:

* **Ids.** Binance trade ids are contiguous per symbol. The feed tracks, per symbol,
  the ids it has written: a watermark (every id up to it is accounted for) and the
  disjoint ranges above it, so memory grows with the number of open gaps, not with
  the number of trades. A trade whose id is already accounted for is dropped as a
  duplicate (a frame sent twice, or the overlap of two connections).
* **Gaps.** An id more than one above the highest seen opens a gap (a trade the
  socket skipped, or the trades missed while reconnecting). After a short grace
  (``gap_grace_s``: an overlapping connection may still deliver them) the missing ids
  are fetched from ``GET /api/v3/historicalTrades?symbol=X&fromId=N&limit=...``
  (with header ``X-MBX-APIKEY`` when ``BINANCE_API_KEY`` is set) and written too.
  Gaps are only seen between trades, and across restarts (below).
* **Resuming.** After each write that leaves nothing buffered, the feed records per
  symbol the id up to which every trade is written (or given up on) in the Redis
  hash ``md:feed:binance:resume:<websocket host:port>`` (one per venue: testnet ids
  are not mainnet's). The next run starts each symbol's ids there: the first trade
  it receives opens a gap over the trades of the downtime, filled from REST like any
  other. A first trade at or below the recorded id cannot come from the same id
  sequence (the socket sends only new trades): the position is ignored, with a
  warning. At most ``resume_max_ids`` of them per symbol are fetched (the
  newest); older ones are given up with a warning that names the remedy (Binance's
  daily trade dumps, ``cryptopipe lake import``). After a clean stop nothing is
  fetched twice; after a SIGKILL, the trades of the last write (50 ms) may be
  written again (the raw log is at-least-once; both layers deduplicate).
  ``--no-resume`` starts from the live stream alone.
* **REST-filled trades are synthesized payloads.** Binance's REST rows are rewritten
  in the websocket's trade format, so the raw log holds one format::

      {"stream":"btcusdt@trade",
       "data":{"e":"trade","E":<time>,"s":"BTCUSDT","t":<id>,"p":<price>,"q":<qty>,
               "T":<time>,"m":<isBuyerMaker>,"M":<isBestMatch>},
       "source":"rest"}

  ``E`` (event time) is the trade time, the REST row having none; the envelope's
  ``"source":"rest"`` tells them apart from frames received from the socket (which
  never carry that key). Price and quantity strings are copied, never converted.
* **Rate limits.** HTTP 429 and 418 are honoured: the feed waits ``Retry-After``
  seconds (or a default when the header is missing) before any further request; one
  request at a time, never more. Other failures are retried with backoff; after
  ``fill_max_attempts`` failures (or a 4xx other than 429/418) the ids are given up
  on, counted as ``lost`` and logged at WARNING.

Connections:

* Pings are answered by ``websockets`` itself (pong with the ping's payload), as
  Binance requires; the client also pings, so a dead TCP connection is noticed.
* A connection that ends (close frame, error, no pong) is replaced after a capped
  exponential backoff with full jitter; a handshake answered 429/418 waits
  ``Retry-After``.
* Before Binance's 24 h cut (``max_connection_age_s``, 23h50m by default) and on a
  ``serverShutdown`` event, the connection is *rolled*: a new one is opened first,
  and the old one is closed once the new one delivers (or after ``roll_overlap_s``),
  so nothing is missed; the overlap is deduplicated.

Stopping (``stop_event``, Ctrl-C through the CLI) closes the socket, abandons open
gaps (logged), writes what is buffered, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, TypeVar, cast

import orjson
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from marketdata.parsing import FORMAT_WS, normalize_symbol
from marketdata.rawmessage import RawMessage
from marketdata.settings import Settings
from redisstore.conn import connect_settings
from redisstore.keys import BINANCE_RESUME_KEY
from redisstore.retry import Backoff
from streaming.heartbeat import HeartbeatWriter
from streaming.rawlog import RawLogWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_WS_URL = "wss://stream.binance.com:9443"
DEFAULT_REST_URL = "https://api.binance.com"
#: Binance cuts every connection at 24 h; roll ten minutes before.
DEFAULT_MAX_CONNECTION_AGE_S = 23 * 3600 + 50 * 60
#: Binance allows at most this many streams on one connection.
MAX_STREAMS = 1024
#: Envelope key and value marking a trade filled from the REST API.
REST_SOURCE_KEY = "source"
REST_SOURCE = "rest"
EXCHANGE = "binance"
#: Hash (suffixed ``:<websocket host:port>``): symbol -> trade id up to which every
#: trade is in the raw log (see Resuming).
RESUME_KEY = BINANCE_RESUME_KEY
_HISTORICAL_TRADES = "/api/v3/historicalTrades"
_USER_AGENT = "realtime-crypto-pipeline/binance-feed"


def _wall_ms() -> int:
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
            much request weight used in the current minute (its limit is 6000).
        open_timeout_s: websocket handshake timeout.
        ping_interval_s: the client's own keepalive pings (``None``: off).
        ping_timeout_s: a connection whose pong is this late is dropped.
        stats_every_s: period of the INFO summary line.
        resume_max_ids: on resuming, at most this many trades per symbol missed
            since the last run are fetched from REST (the newest ones).

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
    used_weight_pause: int = 5000
    open_timeout_s: float = 10.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    stats_every_s: float = 60.0
    resume_max_ids: int = 100_000

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
        trades: distinct trades written (socket and REST).
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

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"{self.trades} trades ({self.filled} from REST), {self.duplicates} duplicates, "
            f"{self.gaps} gaps ({self.gap_ids} ids, {self.lost} lost), "
            f"{self.connections} connections ({self.reconnects} reconnects, {self.rolls} rolls), "
            f"{self.rest_requests} REST requests ({self.rate_limited} rate-limited), "
            f"{self.written} written"
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

    """

    symbols: tuple[str, ...]
    ws_url: str = DEFAULT_WS_URL
    rest_url: str = DEFAULT_REST_URL
    api_key: str | None = field(default=None, repr=False)
    tuning: FeedTuning = field(default_factory=FeedTuning)

    def __post_init__(self) -> None:
        if not self.symbols:
            msg = "no symbols: pass --symbols, e.g. BTCUSDT,ETHUSDT"
            raise ValueError(msg)
        if len(self.symbols) > MAX_STREAMS:
            msg = f"{len(self.symbols)} symbols: Binance allows {MAX_STREAMS} streams a connection"
            raise ValueError(msg)
        for sym in self.symbols:
            if normalize_symbol(sym) != sym:
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
        """The combined-stream URL of every symbol's ``@trade`` stream."""
        base = self.ws_url.rstrip("/")
        for suffix in ("/stream", "/ws"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        streams = "/".join(f"{s.lower()}@trade" for s in self.symbols)
        return f"{base}/stream?streams={streams}"

    def historical_trades_url(self, symbol: str, from_id: int, limit: int) -> str:
        """The REST URL of ``limit`` trades of ``symbol`` from id ``from_id``."""
        query = urllib.parse.urlencode({"symbol": symbol, "fromId": from_id, "limit": limit})
        return f"{self.rest_url.rstrip('/')}{_HISTORICAL_TRADES}?{query}"


def rest_trade_payload(symbol: str, row: Mapping[str, Any]) -> bytes:
    """A REST ``historicalTrades`` row as a synthesized combined-stream trade frame.

    The values are copied as given (decimal strings stay strings); the envelope
    carries ``"source":"rest"`` so a reader can tell it from a received frame.
    """
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
    envelope = {"stream": f"{symbol.lower()}@trade", "data": data, REST_SOURCE_KEY: REST_SOURCE}
    return orjson.dumps(envelope)


class ResumePoints:
    """Per symbol, the trade id up to which every trade is in the raw log (Redis hash).

    Written by the feed after each write that left nothing buffered; read when it
    starts. A failed write is skipped (the next one carries a later position).
    """

    def __init__(self, client: redis.Redis, ws_url: str) -> None:
        self.client = client
        self.key = f"{RESUME_KEY}:{urllib.parse.urlsplit(ws_url).netloc}"

    def load(self, symbols: tuple[str, ...]) -> dict[str, int]:
        """The recorded positions of ``symbols`` (those without one are left out)."""
        values = self.client.hmget(self.key, list(symbols))
        out = {}
        for sym, raw in zip(symbols, values, strict=True):
            if raw is not None and raw.strip().isdigit():
                out[sym] = int(raw)
        return out

    def save(self, marks: Mapping[str, int]) -> bool:
        """Record positions; ``False`` when Redis refused (logged at DEBUG)."""
        try:
            mapping: dict[Any, Any] = dict(marks)
            self.client.hset(self.key, mapping=mapping)
        except redis.RedisError as exc:
            log.debug("binance feed: resume positions not recorded: %s", exc)
            return False
        return True


class _IdTracker:
    """The trade ids of one symbol accounted for (written, or given up on).

    Every id up to ``watermark`` is accounted for; above it, disjoint, non-adjacent
    inclusive ranges ``[_lo[i], _hi[i]]``. The holes between them are the gaps.
    """

    __slots__ = ("_hi", "_lo", "watermark")

    def __init__(self) -> None:
        self.watermark: int | None = None
        self._lo: list[int] = []
        self._hi: list[int] = []

    @property
    def top(self) -> int | None:
        """The highest id accounted for."""
        return self._hi[-1] if self._hi else self.watermark

    def seen(self, tid: int) -> bool:
        """Whether ``tid`` is accounted for."""
        if self.watermark is None:
            return False
        if tid <= self.watermark:
            return True
        i = bisect_right(self._lo, tid) - 1
        return i >= 0 and tid <= self._hi[i]

    def add(self, tid: int) -> bool:
        """Account for one id; ``False`` when it already was (a duplicate)."""
        if self.watermark is None:
            self.watermark = tid
            return True
        return self.mark(tid, tid) == 1

    def mark(self, lo: int, hi: int) -> int:
        """Account for ids ``lo..hi``; returns how many were not accounted for before."""
        if self.watermark is None:
            msg = "mark() before the first id"
            raise RuntimeError(msg)
        lo = max(lo, self.watermark + 1)
        if lo > hi:
            return 0
        # Ranges overlapping or adjacent to [lo, hi] are merged into it.
        i = bisect_left(self._hi, lo - 1)
        j = bisect_right(self._lo, hi + 1)
        new = hi - lo + 1
        for k in range(i, j):
            new -= max(0, min(self._hi[k], hi) - max(self._lo[k], lo) + 1)
        if i < j:
            lo, hi = min(lo, self._lo[i]), max(hi, self._hi[j - 1])
        self._lo[i:j] = [lo]
        self._hi[i:j] = [hi]
        if self._lo[0] == self.watermark + 1:
            self.watermark = self._hi[0]
            del self._lo[0], self._hi[0]
        return new

    def holes(self) -> list[tuple[int, int]]:
        """The missing ranges (inclusive) between the watermark and the top."""
        out = []
        prev = self.watermark
        for lo, hi in zip(self._lo, self._hi, strict=True):
            assert prev is not None
            out.append((prev + 1, lo - 1))
            prev = hi
        return out

    def first_missing(self, lo: int, hi: int) -> int | None:
        """The smallest id in ``lo..hi`` not accounted for, or ``None``."""
        if self.watermark is not None:
            lo = max(lo, self.watermark + 1)
            i = bisect_right(self._lo, lo) - 1
            if i >= 0 and lo <= self._hi[i]:
                lo = self._hi[i] + 1
        return lo if lo <= hi else None


class _HttpResult(NamedTuple):
    status: int
    headers: Mapping[str, str]
    body: bytes


def _http_get(url: str, headers: Mapping[str, str], timeout: float) -> _HttpResult:
    req = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return _HttpResult(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read()
        except OSError:
            body = b""
        return _HttpResult(exc.code, dict(exc.headers.items()) if exc.headers else {}, body)


def _retry_after(headers: Mapping[str, str], now_s: float) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or ``None``."""
    raw = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_s)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in a daemon thread (an abandoned call never holds up exit).

    For REST requests, which a stop abandons; raw-log writes use a thread pool.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(settle, False, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=work, name="binance-feed-io", daemon=True).start()
    return await fut


def _frame_event(obj: Any) -> tuple[dict[str, Any] | None, Any]:
    """The event object of a frame (inside ``data``/``event`` when wrapped) and its type."""
    if not isinstance(obj, dict):
        return None, None
    for key in ("data", "event"):
        inner = obj.get(key)
        if isinstance(inner, dict) and "e" not in obj:
            return inner, inner.get("e")
    return obj, obj.get("e")


class _Conn:
    """One websocket connection and the task reading it."""

    def __init__(self, number: int, ws: ClientConnection) -> None:
        self.number = number
        self.ws = ws
        self.opened = time.monotonic()
        self.messages = 0
        self.first_message = asyncio.Event()
        self.shutdown = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


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
        now_ms: Callable[[], int] = _wall_ms,
        resume: ResumePoints | None = None,
    ) -> None:
        self.config = config
        self.tuning = config.tuning
        self.writer = writer
        self.stats = stats if stats is not None else FeedStats()
        self._stop_event = stop_event
        self._now_ms = now_ms
        self._trackers = {s: _IdTracker() for s in config.symbols}
        self._resume_store = resume
        #: Positions of the previous run not yet taken up (a symbol's first trade does).
        self._resume_at: dict[str, int] = {}
        self._saved: dict[str, int] = {}
        self._buf: list[RawMessage] = []
        self._backoff = Backoff(self.tuning.backoff_base_s, self.tuning.backoff_cap_s)
        self._rest_not_before = 0.0
        self._conn_count = 0
        self._closing = False
        # One writer thread: batches reach Redis in order, the loop never blocks on it.
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="binance-rawlog")
        # Created inside the loop (run()).
        self._stop: asyncio.Event
        self._flush_now: asyncio.Event
        self._gap: asyncio.Event

    # -- life cycle ---------------------------------------------------------------

    async def run(self) -> int:
        """Run until the stop event is set; returns the exit status."""
        self._stop = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._gap = asyncio.Event()
        watcher = asyncio.create_task(self._watch_stop(), name="stop-watcher")
        flusher = asyncio.create_task(self._flusher(), name="flusher")
        filler = asyncio.create_task(self._filler(), name="filler")
        reporter = asyncio.create_task(self._reporter(), name="reporter")
        if self._resume_store is not None:
            loop = asyncio.get_running_loop()
            points = await loop.run_in_executor(
                self._write_pool, self._resume_store.load, self.config.symbols
            )
            self._resume_at = dict(points)
            self._saved = dict(points)
            if points:
                log.info(
                    "binance feed: resuming after %s",
                    ", ".join(f"{s} id {i}" for s, i in sorted(points.items())),
                )
        log.info(
            "binance feed: %d symbols (%s) from %s",
            len(self.config.symbols),
            ",".join(self.config.symbols),
            self.config.stream_url,
        )
        supervisor = asyncio.create_task(self._supervise(), name="supervisor")
        try:
            # A background task ending early has failed (Redis gone for good, a bug):
            # the run ends with its exception rather than stalling.
            await asyncio.wait(
                {supervisor, flusher, filler, reporter}, return_when=asyncio.FIRST_COMPLETED
            )
            self._stop.set()
            await supervisor
        finally:
            self._stop.set()
            for task in (supervisor, filler, reporter, watcher):
                task.cancel()
            await asyncio.gather(supervisor, filler, reporter, watcher, return_exceptions=True)
            self._log_open_gaps()
            self._closing = True
            self._flush_now.set()
            try:
                await flusher
            finally:
                self._write_pool.shutdown()
                self.stats.unwritten += len(self._buf)
                log.info("binance feed stopped: %s", self.stats.summary())
            for task in (filler, reporter):
                if not task.cancelled() and task.exception() is not None:
                    raise cast(BaseException, task.exception())
        return 1 if self.stats.unwritten else 0

    async def _watch_stop(self) -> None:
        while not self._stop_event.is_set():
            await asyncio.sleep(0.05)
        self._stop.set()

    def _stopped(self) -> bool:
        return self._stop.is_set() or self._stop_event.is_set()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; returns whether stop was requested."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stopped()

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(self.tuning.stats_every_s)
            log.info("binance feed: %s", self.stats.summary())

    # -- connections --------------------------------------------------------------

    async def _supervise(self) -> None:
        current: _Conn | None = None
        try:
            while not self._stopped():
                if current is None:
                    current = await self._connect()
                    if current is None:
                        return
                assert current.task is not None
                age = time.monotonic() - current.opened
                timeout = max(0.0, self.tuning.max_connection_age_s - age)
                stop_w = asyncio.create_task(self._stop.wait())
                shut_w = asyncio.create_task(current.shutdown.wait())
                try:
                    await asyncio.wait(
                        {current.task, stop_w, shut_w},
                        timeout=timeout,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    stop_w.cancel()
                    shut_w.cancel()
                if self._stopped():
                    return
                if current.task.done() and not current.shutdown.is_set():
                    self._ended(current)
                    if current.messages:
                        self._backoff.reset()
                    current = None
                    self.stats.reconnects += 1
                    delay = self._backoff.next_delay()
                    log.info(
                        "binance feed: reconnecting in %.2fs (reconnect %d)",
                        delay,
                        self.stats.reconnects,
                    )
                    if await self._sleep(delay):
                        return
                    continue
                reason = "serverShutdown" if current.shutdown.is_set() else "max connection age"
                current = await self._roll(current, reason)
        finally:
            if current is not None:
                await self._close(current)

    async def _roll(self, old: _Conn, reason: str) -> _Conn | None:
        age = time.monotonic() - old.opened
        log.info(
            "binance feed: rolling connection %d after %.1fs (%s): opening a new one first",
            old.number,
            age,
            reason,
        )
        new = await self._connect()
        if new is None:
            await self._close(old)
            return None
        assert old.task is not None
        first = asyncio.create_task(new.first_message.wait())
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait(
                {first, stop, old.task},
                timeout=self.tuning.roll_overlap_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            first.cancel()
            stop.cancel()
        await self._close(old)
        self.stats.rolls += 1
        return new

    async def _connect(self) -> _Conn | None:
        """Open a connection, retrying with backoff; ``None`` when stopped first."""
        t = self.tuning
        while not self._stopped():
            opening = asyncio.create_task(self._open())
            stop = asyncio.create_task(self._stop.wait())
            try:
                await asyncio.wait({opening, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if not opening.done():
                opening.cancel()
                with contextlib.suppress(BaseException):
                    await opening
                return None
            try:
                ws = opening.result()
            except InvalidStatus as exc:
                status = exc.response.status_code
                wait = self._backoff.next_delay()
                if status in (429, 418):
                    self.stats.rate_limited += 1
                    hinted = _retry_after(exc.response.headers, time.time())
                    default = t.rate_limit_default_s if status == 429 else t.ban_default_s
                    wait = hinted if hinted is not None else max(wait, default)
                log.warning(
                    "binance feed: handshake refused with HTTP %d; retrying in %.2fs", status, wait
                )
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                wait = self._backoff.next_delay()
                log.warning(
                    "binance feed: cannot connect (%s: %s); retrying in %.2fs",
                    type(exc).__name__,
                    exc,
                    wait,
                )
            else:
                self._conn_count += 1
                self.stats.connections += 1
                conn = _Conn(self._conn_count, ws)
                conn.task = asyncio.create_task(self._read(conn), name=f"ws-{conn.number}")
                log.info(
                    "binance feed: connection %d open (%d streams)",
                    conn.number,
                    len(self.config.symbols),
                )
                return conn
            if await self._sleep(wait):
                return None
        return None

    async def _open(self) -> ClientConnection:
        t = self.tuning
        return await connect(
            self.config.stream_url,
            open_timeout=t.open_timeout_s,
            ping_interval=t.ping_interval_s,
            ping_timeout=t.ping_timeout_s,
            close_timeout=2,
            max_queue=4096,
            user_agent_header=_USER_AGENT,
        )

    def _ended(self, conn: _Conn) -> None:
        assert conn.task is not None
        exc = conn.task.exception()
        if exc is not None:
            raise exc
        ws = conn.ws
        log.info(
            "binance feed: connection %d ended after %.1fs and %d messages (code %s %s)",
            conn.number,
            time.monotonic() - conn.opened,
            conn.messages,
            ws.close_code,
            ws.close_reason or "",
        )

    async def _close(self, conn: _Conn) -> None:
        with contextlib.suppress(Exception):
            await conn.ws.close()
        if conn.task is not None:
            with contextlib.suppress(Exception):
                await conn.task
        log.info(
            "binance feed: connection %d closed after %.1fs and %d messages",
            conn.number,
            time.monotonic() - conn.opened,
            conn.messages,
        )

    async def _read(self, conn: _Conn) -> None:
        try:
            while True:
                frame = await conn.ws.recv(decode=False)
                recv_ms = self._now_ms()
                conn.messages += 1
                conn.first_message.set()
                await self._on_frame(bytes(frame), recv_ms, conn)
        except ConnectionClosed:
            return

    # -- messages -----------------------------------------------------------------

    async def _on_frame(self, frame: bytes, recv_ms: int, conn: _Conn) -> None:
        self.stats.frames += 1
        try:
            obj = orjson.loads(frame)
        except orjson.JSONDecodeError:
            obj = None
        event, kind = _frame_event(obj)
        symbol: str | None = None
        if kind == "serverShutdown":
            self.stats.server_shutdowns += 1
            log.info("binance feed: serverShutdown on connection %d", conn.number)
            conn.shutdown.set()
            return
        if event is not None and isinstance(event.get("s"), str):
            symbol = normalize_symbol(event["s"])
        if kind == "trade" and symbol in self._trackers:
            assert symbol is not None
            tid = event.get("t") if event is not None else None
            if isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0:
                if not self._accept(symbol, tid):
                    return
        # Anything else (other events, malformed frames) is written as received: the
        # candles flow sends it to the DLQ with a reason instead of it vanishing here.
        await self._emit(RawMessage(frame, EXCHANGE, recv_ms, FORMAT_WS, symbol))

    def _accept(self, symbol: str, tid: int) -> bool:
        """Account for a trade id; ``False`` for a duplicate. Opens gaps as needed."""
        tracker = self._trackers[symbol]
        if tracker.watermark is None and symbol in self._resume_at:
            self._take_up(symbol, self._resume_at.pop(symbol), tid)
        top = tracker.top
        if not tracker.add(tid):
            self.stats.duplicates += 1
            return False
        self.stats.trades += 1
        if top is not None and tid > top + 1:
            missing = tid - top - 1
            self.stats.gaps += 1
            self.stats.gap_ids += missing
            log.info(
                "binance feed: %s gap of %d trade ids (%d..%d); filling from REST",
                symbol,
                missing,
                top + 1,
                tid - 1,
            )
            self._gap.set()
        return True

    def _take_up(self, symbol: str, point: int, tid: int) -> None:
        """Start ``symbol``'s ids at the previous run's ``point`` (first trade: ``tid``)."""
        tracker = self._trackers[symbol]
        if tid <= point:
            log.warning(
                "binance feed: %s: first trade id %d is not above the last run's position "
                "%d: not the same id sequence (another venue, or ids were reset); starting "
                "from the live stream",
                symbol,
                tid,
                point,
            )
            return
        self.stats.resumed += 1
        floor = max(point, tid - 1 - self.tuning.resume_max_ids)
        if floor > point:
            n = floor - point
            self.stats.lost += n
            log.warning(
                "binance feed: %s: %d trades were missed since the last run; the oldest %d "
                "(ids %d..%d) are not fetched from REST (resume_max_ids=%d): load Binance's "
                "daily trade dumps for them with 'cryptopipe lake import'",
                symbol,
                tid - 1 - point,
                n,
                point + 1,
                floor,
                self.tuning.resume_max_ids,
            )
        tracker.watermark = floor

    async def _emit(self, msg: RawMessage) -> None:
        self._buf.append(msg)
        if len(self._buf) >= self.tuning.flush_max:
            self._flush_now.set()
        # Redis is away: stop reading (the socket's flow control then pushes back).
        while len(self._buf) >= self.tuning.max_buffer and not self._stopped():
            await asyncio.sleep(0.05)

    # -- writing ------------------------------------------------------------------

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self.tuning.flush_interval_s)
            self._flush_now.clear()
            await self._flush()
            if self._closing:
                await self._flush()
                return

    async def _flush(self) -> None:
        chunk = max(self.tuning.flush_max, 5000)
        loop = asyncio.get_running_loop()
        while self._buf:
            # Taking the whole buffer: everything accounted for so far is in this batch
            # or written before, so the positions reached can be recorded after it.
            marks = self._marks() if len(self._buf) <= chunk else None
            batch = self._buf[:chunk]
            del self._buf[:chunk]
            try:
                await loop.run_in_executor(self._write_pool, self._write, batch, marks)
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

    def _marks(self) -> dict[str, int] | None:
        """Positions that moved since recorded (``None``: none, or no resume store)."""
        if self._resume_store is None:
            return None
        out = {}
        for sym, tracker in self._trackers.items():
            w = tracker.watermark
            if w is not None and w != self._saved.get(sym):
                out[sym] = w
        return out or None

    def _write(self, batch: list[RawMessage], marks: dict[str, int] | None) -> None:
        """Write a batch, then record the positions it completes (writer thread)."""
        self.writer.write(batch)
        if marks and self._resume_store is not None and self._resume_store.save(marks):
            self._saved.update(marks)

    # -- filling gaps from REST -----------------------------------------------------

    async def _filler(self) -> None:
        while True:
            await self._gap.wait()
            self._gap.clear()
            if await self._sleep(self.tuning.gap_grace_s):
                return
            for symbol, tracker in self._trackers.items():
                for lo, hi in tracker.holes():
                    await self._fill(symbol, lo, hi)
                    if self._stopped():
                        return

    async def _fill(self, symbol: str, lo: int, hi: int) -> None:
        tracker = self._trackers[symbol]
        nxt = tracker.first_missing(lo, hi)
        empty = 0
        filled = 0
        while nxt is not None and not self._stopped():
            limit = min(self.tuning.rest_limit, hi - nxt + 1)
            rows = await self._fetch(symbol, nxt, limit)
            if rows is None:
                if self._stopped():
                    return  # not given up: logged as unfilled at the stop
                self._give_up(symbol, nxt, hi, "the REST API failed")
                return
            recv_ms = self._now_ms()
            top = nxt - 1
            for row in rows:
                tid = row.get("id") if isinstance(row, dict) else None
                if not isinstance(tid, int) or isinstance(tid, bool) or tid < nxt:
                    continue
                if tid > hi:
                    break
                top = tid
                if self._accept_filled(symbol, tid):
                    filled += 1
                    await self._emit(
                        RawMessage(
                            rest_trade_payload(symbol, row), EXCHANGE, recv_ms, symbol=symbol
                        )
                    )
            if top < nxt:
                # Not there yet (REST may trail the socket for a moment): try again.
                empty += 1
                if empty >= self.tuning.fill_max_attempts:
                    self._give_up(symbol, nxt, hi, "the REST API does not have them")
                    return
                if await self._sleep(self._backoff_delay(empty)):
                    return
                continue
            empty = 0
            skipped = tracker.mark(nxt, top)
            if skipped:
                self.stats.lost += skipped
                log.warning(
                    "binance feed: %s: REST skipped %d ids in %d..%d; they are given up",
                    symbol,
                    skipped,
                    nxt,
                    top,
                )
            nxt = tracker.first_missing(top + 1, hi)
        if filled:
            log.info(
                "binance feed: %s: filled %d trades from REST (%d..%d)", symbol, filled, lo, hi
            )

    def _accept_filled(self, symbol: str, tid: int) -> bool:
        tracker = self._trackers[symbol]
        if not tracker.add(tid):
            self.stats.duplicates += 1
            return False
        self.stats.trades += 1
        self.stats.filled += 1
        return True

    def _give_up(self, symbol: str, lo: int, hi: int, why: str) -> None:
        lost = self._trackers[symbol].mark(lo, hi)
        self.stats.lost += lost
        log.warning(
            "binance feed: %s: giving up on %d trade ids in %d..%d (%s)", symbol, lost, lo, hi, why
        )

    def _backoff_delay(self, attempt: int) -> float:
        b = Backoff(self.tuning.backoff_base_s, self.tuning.backoff_cap_s)
        b.attempt = attempt
        return b.next_delay()

    def _log_open_gaps(self) -> None:
        for symbol, tracker in self._trackers.items():
            holes = tracker.holes()
            if holes:
                n = sum(hi - lo + 1 for lo, hi in holes)
                log.warning(
                    "binance feed: %s: stopping with %d trade ids unfilled in %d gaps (%s)",
                    symbol,
                    n,
                    len(holes),
                    ", ".join(f"{lo}..{hi}" for lo, hi in holes[:5]),
                )

    async def _fetch(self, symbol: str, from_id: int, limit: int) -> list[Any] | None:
        """Trades from REST; ``None`` after too many failures or a refusal."""
        t = self.tuning
        url = self.config.historical_trades_url(symbol, from_id, limit)
        headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        if self.config.api_key:
            headers["X-MBX-APIKEY"] = self.config.api_key
        failures = 0
        while not self._stopped():
            wait = self._rest_not_before - time.monotonic()
            if wait > 0 and await self._sleep(wait):
                return None
            self.stats.rest_requests += 1
            what = f"historicalTrades {symbol} fromId={from_id} limit={limit}"
            try:
                res = await _in_thread(_http_get, url, headers, t.rest_timeout_s)
            except (OSError, TimeoutError) as exc:
                log.warning("binance feed: %s: %s", what, exc)
            else:
                self._watch_weight(res.headers)
                if res.status == 200:
                    try:
                        rows = orjson.loads(res.body)
                    except orjson.JSONDecodeError:
                        rows = None
                    if isinstance(rows, list):
                        return rows
                    log.warning("binance feed: %s: answer is not a JSON list", what)
                elif res.status in (429, 418):
                    self.stats.rate_limited += 1
                    hinted = _retry_after(res.headers, time.time())
                    default = t.rate_limit_default_s if res.status == 429 else t.ban_default_s
                    pause = hinted if hinted is not None else default
                    self._rest_not_before = time.monotonic() + pause
                    log.warning(
                        "binance feed: %s: HTTP %d (%s); waiting %.1fs before any request",
                        what,
                        res.status,
                        "rate limit" if res.status == 429 else "IP banned",
                        pause,
                    )
                    continue  # waits do not count as failures
                elif res.status < 500:
                    log.warning(
                        "binance feed: %s: HTTP %d %s",
                        what,
                        res.status,
                        res.body[:200].decode("utf-8", "replace"),
                    )
                    return None
                else:
                    log.warning("binance feed: %s: HTTP %d", what, res.status)
            failures += 1
            if failures >= t.fill_max_attempts:
                return None
            if await self._sleep(self._backoff_delay(failures)):
                return None
        return None

    def _watch_weight(self, headers: Mapping[str, str]) -> None:
        used = _header(headers, "X-MBX-USED-WEIGHT-1M")
        if used is None or not used.strip().isdigit():
            return
        if int(used) >= self.tuning.used_weight_pause:
            pause = 60.0 - time.time() % 60.0 + 0.5
            self._rest_not_before = max(self._rest_not_before, time.monotonic() + pause)
            log.info(
                "binance feed: REST weight %s used this minute; pausing REST for %.0fs",
                used,
                pause,
            )


def run_binance_feed(
    settings: Settings,
    symbols: list[str],
    *,
    ws_url: str = DEFAULT_WS_URL,
    rest_url: str = DEFAULT_REST_URL,
    stop_event: threading.Event | None = None,
    api_key: str | None = None,
    max_connection_age_s: float | None = None,
    tuning: FeedTuning | None = None,
    stats: FeedStats | None = None,
    heartbeat_name: str | None = "feed",
    now_ms: Callable[[], int] = _wall_ms,
    resume: bool = True,
) -> int:
    """Stream live Binance trades into the raw log until stopped (blocking).

    Args:
        settings: where the raw log is (``redis_url``, ``raw_shards``).
        symbols: symbols like ``["BTCUSDT", "ETHUSDT"]`` (case-insensitive).
        ws_url: websocket base URL; ``/stream?streams=...`` is appended.
        rest_url: REST base URL for filling gaps (``/api/v3/historicalTrades``).
        stop_event: set it to stop; buffered messages are written first.
        api_key: ``X-MBX-APIKEY`` for REST; default: env ``BINANCE_API_KEY``, if set.
        max_connection_age_s: shorthand for ``tuning.max_connection_age_s``.
        tuning: timing and size knobs (see :class:`FeedTuning`).
        stats: counters to fill in (pass one to read them while or after it runs).
        heartbeat_name: flow name of the heartbeat hash (``None``: no heartbeat).
        now_ms: the wall clock (UTC ms) stamped as ``recv_ms``.
        resume: fetch the trades missed since the previous run from REST (see
            *Resuming*); ``False`` starts from the live stream alone.

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
    config = BinanceFeedConfig(tuple(dict.fromkeys(syms)), ws_url, rest_url, api_key, tuning)
    if settings.known_symbols is not None:
        unknown = sorted(set(config.symbols) - settings.known_symbols)
        if unknown:
            log.warning(
                "binance feed: %s not in CRYPTOPIPE_SYMBOLS; the candles flow will reject them",
                ",".join(unknown),
            )
    stop = stop_event if stop_event is not None else threading.Event()
    client = connect_settings(settings)
    heartbeat = HeartbeatWriter(client, heartbeat_name) if heartbeat_name else None
    writer = RawLogWriter(client, settings.raw_shards, heartbeat, should_stop=stop.is_set)
    points = ResumePoints(client, config.ws_url) if resume else None
    feed = BinanceFeed(config, writer, stop, stats=stats, now_ms=now_ms, resume=points)
    try:
        with writer:
            return asyncio.run(feed.run())
    finally:
        client.close()
