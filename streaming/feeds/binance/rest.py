"""Filling the Binance feed's gaps from the REST API (see :mod:`streaming.feeds.binance`).

The missing ids of a gap are fetched from the stream's endpoint, ``fromId`` the first
missing id (``GET /api/v3/historicalTrades`` for ``@trade``; ``/api/v3/aggTrades`` or,
on USD-M futures, ``/fapi/v1/aggTrades`` for ``@aggTrade``, whose ids are aggregate
ids), one request at a time (429 and 418 honoured with ``Retry-After``; the used
weight watched against the market's limit), and written as synthesized websocket
frames of that stream marked ``"source":"rest"``. A symbol that may have missed
trades the feed cannot know of (after a resume or a lost connection, before the
socket shows a trade of it) is *probed*: its newest trade (or aggregate trade) is
asked for (no ``fromId``), which settles it and opens the gap of what it missed, if
any.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple, TypeVar

import orjson

from marketdata.rawmessage import RawMessage
from redisstore.retry import Backoff
from streaming.feeds.binance.config import (
    TRADES,
    USER_AGENT,
    BinanceFeedConfig,
    FeedStats,
    Stop,
    wall_ms,
)
from streaming.feeds.binance.ids import TradeIds
from streaming.prom import FEED_GAPS, count_feed

log = logging.getLogger("streaming.feeds.binance")
T = TypeVar("T")


def rest_trade_payload(symbol: str, row: Mapping[str, Any]) -> bytes:
    """A REST ``historicalTrades`` row as a synthesized combined-stream trade frame."""
    return TRADES.rest_payload(symbol, row)


class HttpResult(NamedTuple):
    """Status, headers and body of an HTTP answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def http_get(url: str, headers: Mapping[str, str], timeout: float) -> HttpResult:
    """GET ``url``; an HTTP error status is an answer too, not an exception."""
    req = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResult(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read()
        except OSError:
            body = b""
        return HttpResult(exc.code, dict(exc.headers.items()) if exc.headers else {}, body)


def retry_after(headers: Mapping[str, str], now_s: float) -> float | None:
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


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, whatever its case."""
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
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


class GapFiller:
    """Fills the holes of every symbol's ids from REST, while the feed runs.

    Args:
        config: the feed's URLs, key and tuning.
        stats: counters of the run.
        ids: the ids accounted for (holes are what is missing).
        emit: queues a filled trade for the raw log, with its trade time (a pending
            backfill is written in trade-time order across symbols).
        stop: the feed's stop.
        now_ms: the wall clock stamped as receive time.
        connected: whether a websocket connection is open (probes wait for one).
        emit_live: queues a probed trade: it is newer than the gap it opens, so it
            goes where live frames go (held behind that backfill); default ``emit``.

    """

    def __init__(
        self,
        config: BinanceFeedConfig,
        stats: FeedStats,
        ids: TradeIds,
        emit: Callable[[RawMessage, int], Awaitable[None]],
        stop: Stop,
        now_ms: Callable[[], int] = wall_ms,
        connected: Callable[[], bool] = lambda: True,
        emit_live: Callable[[RawMessage], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.connected = connected
        self.emit_live = emit_live or (lambda msg: emit(msg, 0))
        self.tuning = config.tuning
        self.stats = stats
        self.ids = ids
        self.emit = emit
        self.stop = stop
        self.now_ms = now_ms
        #: Set when a gap opens; the filler waits ``gap_grace_s`` and fills every hole.
        self.gap = asyncio.Event()
        self._rest_not_before = 0.0

    async def run(self) -> None:
        """Probe unsure symbols and fill holes whenever a gap opens, until stopped."""
        while True:
            await self.gap.wait()
            self.gap.clear()
            if await self.stop.sleep(self.tuning.gap_grace_s):
                return
            await self.probe_unsure()
            if self.stop.stopped():
                return
            for symbol, tracker in self.ids.trackers.items():
                for lo, hi in tracker.holes():
                    await self.fill(symbol, lo, hi)
                    if self.stop.stopped():
                        return

    async def probe_unsure(self) -> None:
        """Ask REST for the newest trade of every unsure symbol (see the module docstring).

        Only while connected (then every later trade comes from the socket); otherwise
        it is tried again after the next grace.
        """
        for symbol in sorted(self.ids.unsure):
            if symbol not in self.ids.unsure:
                continue  # the socket showed a trade of it meanwhile
            if not self.connected():
                self.gap.set()
                return
            epoch = self.ids.epoch
            self.stats.probes += 1
            rows = await self.fetch(symbol, None, 1)
            if self.stop.stopped():
                return
            if rows is None:
                self.ids.unsure.discard(symbol)
                log.warning(
                    "binance feed: %s: cannot ask REST for the newest trade; trades missed "
                    "while disconnected are fetched when the next one arrives",
                    symbol,
                )
                continue
            row = rows[-1] if rows and isinstance(rows[-1], dict) else None
            tid = row.get(self.config.stream.rest_id) if row is not None else None
            if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
                tid = None
            new, _ = self.ids.probed(symbol, tid, epoch)  # holes: filled next
            if epoch != self.ids.epoch:
                self.gap.set()  # lost the connection meanwhile: probe again
            if new and row is not None:
                self.stats.filled += 1
                count_feed(FEED_GAPS)
                payload = self.config.stream.rest_payload(symbol, row)
                ex = self.config.exchange
                await self.emit_live(RawMessage(payload, ex, self.now_ms(), symbol=symbol))

    async def fill(self, symbol: str, lo: int, hi: int) -> None:
        """Fetch the missing ids of ``symbol`` in ``lo..hi`` and write them."""
        tracker = self.ids.trackers[symbol]
        stream = self.config.stream
        nxt = tracker.first_missing(lo, hi)
        empty = 0
        filled = 0
        while nxt is not None and not self.stop.stopped():
            limit = min(self.tuning.rest_limit, hi - nxt + 1)
            rows = await self.fetch(symbol, nxt, limit)
            if rows is None:
                if self.stop.stopped():
                    return  # not given up: logged as unfilled at the stop
                self.ids.give_up(symbol, nxt, hi, "the REST API failed")
                return
            recv_ms = self.now_ms()
            top = nxt - 1
            for row in rows:
                tid = row.get(stream.rest_id) if isinstance(row, dict) else None
                if not isinstance(tid, int) or isinstance(tid, bool) or tid < nxt:
                    continue
                if tid > hi:
                    break
                top = tid
                if self.ids.accept_filled(symbol, tid):
                    filled += 1
                    when = row.get(stream.rest_time)
                    await self.emit(
                        RawMessage(
                            stream.rest_payload(symbol, row),
                            self.config.exchange,
                            recv_ms,
                            symbol=symbol,
                        ),
                        when if isinstance(when, int) else 0,
                    )
            if top < nxt:
                # Not there yet (REST may trail the socket for a moment): try again.
                empty += 1
                if empty >= self.tuning.fill_max_attempts:
                    self.ids.give_up(symbol, nxt, hi, "the REST API does not have them")
                    return
                if await self.stop.sleep(self._backoff_delay(empty)):
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
                "binance feed: %s: filled %d %ss from REST (%d..%d)",
                symbol,
                filled,
                stream.noun,
                lo,
                hi,
            )

    def _backoff_delay(self, attempt: int) -> float:
        b = Backoff(self.tuning.backoff_base_s, self.tuning.backoff_cap_s)
        b.attempt = attempt
        return b.next_delay()

    async def fetch(self, symbol: str, from_id: int | None, limit: int) -> list[Any] | None:
        """Trades (or aggregate trades) from REST (the newest without ``from_id``).

        ``None`` after too many failures or a refusal.
        """
        t = self.tuning
        url = self.config.past_trades_url(symbol, from_id, limit)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.config.api_key and self.config.stream.takes_api_key:
            headers["X-MBX-APIKEY"] = self.config.api_key
        failures = 0
        while not self.stop.stopped():
            wait = self._rest_not_before - time.monotonic()
            if wait > 0 and await self.stop.sleep(wait):
                return None
            self.stats.rest_requests += 1
            what = f"{self.config.stream.rest_path} {symbol} fromId={from_id} limit={limit}"
            try:
                res = await in_thread(http_get, url, headers, t.rest_timeout_s)
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
                    hinted = retry_after(res.headers, time.time())
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
            if await self.stop.sleep(self._backoff_delay(failures)):
                return None
        return None

    def _watch_weight(self, headers: Mapping[str, str]) -> None:
        used = header(headers, "X-MBX-USED-WEIGHT-1M")
        if used is None or not used.strip().isdigit():
            return
        limit = self.tuning.used_weight_pause
        if limit is None:
            limit = self.config.stream.market.weight_limit * 5 // 6
        if int(used) >= limit:
            pause = 60.0 - time.time() % 60.0 + 0.5
            self._rest_not_before = max(self._rest_not_before, time.monotonic() + pause)
            log.info(
                "binance feed: REST weight %s used this minute; pausing REST for %.0fs",
                used,
                pause,
            )
