"""The Coinbase feed's websocket connection (see :mod:`streaming.feeds.coinbase`).

One connection at a time: opened, subscribed (Coinbase closes a connection that has
not subscribed within 5 s), read, and replaced after a capped, jittered backoff when
it ends, errs, or falls silent for ``silence_s`` (heartbeats come every second per
product, so silence means a dead connection). A handshake answered 429 waits
``Retry-After``. Frames go to the feed's ``on_frame`` with their receive time;
``on_lost`` is told when a connection ended (trades sent meanwhile are missed).

Opening with retries (the stop, 429 with ``Retry-After``, back-off) and the
connection options are the live feeds' shared ones (:mod:`streaming.feeds.net`);
the subscribe message sent on open is Coinbase's own, here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from redisstore.retry import Backoff
from streaming.feeds.binance.config import Stop, wall_ms
from streaming.feeds.coinbase.config import USER_AGENT, CoinbaseFeedConfig, CoinbaseStats
from streaming.feeds.net import connect_with_retries, open_websocket
from streaming.prom import FEED_RECONNECTS, count_feed

log = logging.getLogger("streaming.feeds.coinbase")


class Connection:
    """Keeps one subscribed websocket connection open until stopped.

    Args:
        config: the URL, the products and tuning.
        stats: counters of the run.
        stop: the feed's stop.
        on_frame: called with each frame and its receive time (ms).
        now_ms: the wall clock stamped as receive time.
        on_lost: called when a connection ended (trades sent meanwhile are missed).

    """

    def __init__(
        self,
        config: CoinbaseFeedConfig,
        stats: CoinbaseStats,
        stop: Stop,
        on_frame: Callable[[bytes, int], Awaitable[None]],
        now_ms: Callable[[], int] = wall_ms,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.tuning = config.tuning
        self.stats = stats
        self.stop = stop
        self.on_frame = on_frame
        self.now_ms = now_ms
        self.on_lost = on_lost
        #: Is a connection open, subscribed and reading?
        self.connected = False
        self._backoff = Backoff(self.tuning.backoff_base_s, self.tuning.backoff_cap_s)

    async def run(self) -> None:
        """Connect, subscribe, read; reconnect after a backoff; until stopped."""
        number = 0
        while not self.stop.stopped():
            ws = await self._connect()
            if ws is None:
                return
            number += 1
            self.stats.connections += 1
            opened = time.monotonic()
            messages = 0
            reading = asyncio.create_task(self._read(ws), name=f"coinbase-ws-{number}")
            stopping = asyncio.create_task(self.stop.event.wait())
            try:
                await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                self.connected = False
                with contextlib.suppress(Exception):
                    await ws.close()
                if not reading.done():
                    reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    messages = await reading
            if self.stop.stopped():
                log.info("coinbase feed: connection %d closed after %d messages", number, messages)
                return
            log.info(
                "coinbase feed: connection %d ended after %.1fs and %d messages (code %s %s)",
                number,
                time.monotonic() - opened,
                messages,
                ws.close_code,
                ws.close_reason or "",
            )
            if messages:
                self._backoff.reset()
            self.on_lost()
            self.stats.reconnects += 1
            count_feed(FEED_RECONNECTS)
            delay = self._backoff.next_delay()
            log.info(
                "coinbase feed: reconnecting in %.2fs (reconnect %d)", delay, self.stats.reconnects
            )
            if await self.stop.sleep(delay):
                return

    async def _connect(self) -> ClientConnection | None:
        """Open and subscribe a connection, retrying with backoff; ``None`` when stopped."""
        waits = {429: self.tuning.rate_limit_default_s}
        ws = await connect_with_retries(
            self._open,
            self.stop,
            self._backoff,
            self.stats,
            log,
            "coinbase feed",
            waits,
            errors=(ConnectionClosed,),  # the subscribe message's send
        )
        if ws is not None:
            log.info(
                "coinbase feed: connected to %s, subscribed to %d products",
                self.config.ws_url,
                len(self.config.products),
            )
        return ws

    async def _open(self) -> ClientConnection:
        ws = await open_websocket(self.config.ws_url, self.tuning, USER_AGENT)
        try:
            await ws.send(self.config.subscribe_message().decode())
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _read(self, ws: ClientConnection) -> int:
        """Read frames until the connection ends or falls silent; how many were read."""
        self.connected = True
        messages = 0
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(ws.recv(decode=False), self.tuning.silence_s)
                except TimeoutError:
                    log.warning(
                        "coinbase feed: nothing received for %.1fs; replacing the connection",
                        self.tuning.silence_s,
                    )
                    return messages
                recv_ms = self.now_ms()
                messages += 1
                await self.on_frame(bytes(frame), recv_ms)
        except ConnectionClosed:
            return messages
        finally:
            self.connected = False
