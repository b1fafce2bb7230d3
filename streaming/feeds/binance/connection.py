"""The Binance feed's websocket connection (see :mod:`streaming.feeds.binance`).

One combined-stream connection at a time: replaced after a capped, jittered backoff
when it ends; *rolled* (a new one opened first, the old closed once the new one
delivers) before Binance's 24 h cut and on ``serverShutdown``. Frames go to the
feed's ``on_frame`` with their receive time; ``on_lost`` is told when trades may have
been missed (a connection ended before its replacement was open).

Opening with retries (the stop, 429 and 418 with ``Retry-After``, back-off) and the
connection options are the live feeds' shared ones (:mod:`streaming.feeds.net`);
the numbering, rolls and reading are Binance's own, here.
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
from streaming.feeds.binance.config import USER_AGENT, BinanceFeedConfig, FeedStats, Stop, wall_ms
from streaming.feeds.net import connect_with_retries, open_websocket
from streaming.prom import FEED_RECONNECTS, count_feed

log = logging.getLogger("streaming.feeds.binance")


class Conn:
    """One websocket connection and the task reading it."""

    def __init__(self, number: int, ws: ClientConnection) -> None:
        self.number = number
        self.ws = ws
        self.opened = time.monotonic()
        self.messages = 0
        self.first_message = asyncio.Event()
        self.shutdown = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class Connections:
    """Opens, watches, replaces and rolls the feed's websocket connection.

    Args:
        config: the stream URL and tuning.
        stats: counters of the run.
        stop: the feed's stop.
        on_frame: called with each frame, its receive time (ms) and its connection.
        now_ms: the wall clock stamped as receive time.
        on_lost: called when a connection ended with no other one open (trades sent
            meanwhile are missed).

    """

    def __init__(
        self,
        config: BinanceFeedConfig,
        stats: FeedStats,
        stop: Stop,
        on_frame: Callable[[bytes, int, Conn], Awaitable[None]],
        now_ms: Callable[[], int] = wall_ms,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.on_lost = on_lost
        #: The connection in use (``None`` while connecting).
        self.current: Conn | None = None
        self.tuning = config.tuning
        self.stats = stats
        self.stop = stop
        self.on_frame = on_frame
        self.now_ms = now_ms
        self._backoff = Backoff(self.tuning.backoff_base_s, self.tuning.backoff_cap_s)
        self._conn_count = 0

    @property
    def connected(self) -> bool:
        """Is a connection open and reading?"""
        c = self.current
        return c is not None and c.task is not None and not c.task.done()

    async def run(self) -> None:
        """Keep one connection open (replace, roll) until stopped."""
        try:
            while not self.stop.stopped():
                if self.current is None:
                    self.current = await self._connect()
                    if self.current is None:
                        return
                current = self.current
                assert current.task is not None
                age = time.monotonic() - current.opened
                timeout = max(0.0, self.tuning.max_connection_age_s - age)
                stop_w = asyncio.create_task(self.stop.event.wait())
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
                if self.stop.stopped():
                    return
                if current.task.done() and not current.shutdown.is_set():
                    self._ended(current)
                    if current.messages:
                        self._backoff.reset()
                    self.current = None
                    self.on_lost()
                    self.stats.reconnects += 1
                    count_feed(FEED_RECONNECTS)
                    delay = self._backoff.next_delay()
                    log.info(
                        "binance feed: reconnecting in %.2fs (reconnect %d)",
                        delay,
                        self.stats.reconnects,
                    )
                    if await self.stop.sleep(delay):
                        return
                    continue
                reason = "serverShutdown" if current.shutdown.is_set() else "max connection age"
                self.current = await self._roll(current, reason)
        finally:
            if self.current is not None:
                await self._close(self.current)

    async def _roll(self, old: Conn, reason: str) -> Conn | None:
        age = time.monotonic() - old.opened
        log.info(
            "binance feed: rolling connection %d after %.1fs (%s): opening a new one first",
            old.number,
            age,
            reason,
        )
        new = await self._connect()
        assert old.task is not None
        if old.task.done():
            self.on_lost()  # it ended before the new one was open
        if new is None:
            await self._close(old)
            return None
        first = asyncio.create_task(new.first_message.wait())
        stop = asyncio.create_task(self.stop.event.wait())
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

    async def _connect(self) -> Conn | None:
        """Open a connection, retrying with backoff; ``None`` when stopped first."""
        t = self.tuning
        waits = {429: t.rate_limit_default_s, 418: t.ban_default_s}
        ws = await connect_with_retries(
            self._open, self.stop, self._backoff, self.stats, log, "binance feed", waits
        )
        if ws is None:
            return None
        self._conn_count += 1
        self.stats.connections += 1
        conn = Conn(self._conn_count, ws)
        conn.task = asyncio.create_task(self._read(conn), name=f"ws-{conn.number}")
        log.info(
            "binance feed: connection %d open (%d streams)",
            conn.number,
            len(self.config.symbols),
        )
        return conn

    async def _open(self) -> ClientConnection:
        return await open_websocket(self.config.stream_url, self.tuning, USER_AGENT)

    def _ended(self, conn: Conn) -> None:
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

    async def _close(self, conn: Conn) -> None:
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

    async def _read(self, conn: Conn) -> None:
        try:
            while True:
                frame = await conn.ws.recv(decode=False)
                recv_ms = self.now_ms()
                conn.messages += 1
                conn.first_message.set()
                await self.on_frame(bytes(frame), recv_ms, conn)
        except ConnectionClosed:
            return
