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

The request loop (gate, waits, refusals, back-off) and the HTTP helpers are the
live feeds' shared ones (:mod:`streaming.feeds.net`); what is Binance's stays here:
its URLs and API key, 418 (an IP ban) besides 429, the used-weight watch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from marketdata.rawmessage import RawMessage
from streaming.feeds.binance.config import (
    TRADES,
    USER_AGENT,
    BinanceFeedConfig,
    FeedStats,
    Stop,
    wall_ms,
)
from streaming.feeds.binance.ids import TradeIds
from streaming.feeds.net import RestClient, Wait, backoff_delay, header
from streaming.prom import FEED_GAPS, count_feed

log = logging.getLogger("streaming.feeds.binance")


def rest_trade_payload(symbol: str, row: Mapping[str, Any]) -> bytes:
    """A REST ``historicalTrades`` row as a synthesized combined-stream trade frame."""
    return TRADES.rest_payload(symbol, row)


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
        t = self.tuning
        waits = {
            429: Wait(t.rate_limit_default_s, "rate limit"),
            418: Wait(t.ban_default_s, "IP banned"),
        }
        self._rest = RestClient(
            t, stop, stats, log, "binance feed", waits, on_headers=self._watch_weight
        )

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

    @property
    def _rest_not_before(self) -> float:
        """No REST request starts before this ``time.monotonic()`` (the shared gate)."""
        return self._rest.not_before

    @_rest_not_before.setter
    def _rest_not_before(self, when: float) -> None:
        self._rest.not_before = when

    def _backoff_delay(self, attempt: int) -> float:
        return backoff_delay(self.tuning.backoff_base_s, self.tuning.backoff_cap_s, attempt)

    async def fetch(self, symbol: str, from_id: int | None, limit: int) -> list[Any] | None:
        """Trades (or aggregate trades) from REST (the newest without ``from_id``).

        ``None`` after too many failures or a refusal (the loop is
        :class:`streaming.feeds.net.RestClient`'s).
        """
        url = self.config.past_trades_url(symbol, from_id, limit)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.config.api_key and self.config.stream.takes_api_key:
            headers["X-MBX-APIKEY"] = self.config.api_key
        what = f"{self.config.stream.rest_path} {symbol} fromId={from_id} limit={limit}"
        return await self._rest.get_list(url, headers, what)

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
