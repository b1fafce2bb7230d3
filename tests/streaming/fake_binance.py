"""A local stand-in for Binance: combined trade streams and ``historicalTrades``.

The market is a tape of trades ``1..n_trades`` per symbol, published one tick at a
time once the first client connects. Trade ``i`` happens at ``T0 + 7 i`` ms, or, with
``live_clock``, at the wall clock of its tick (a market happening now). Every open
websocket connection subscribed to a symbol's ``@trade`` stream receives each trade
published while it is open (as Binance does: nothing from before it connected). The
REST endpoint serves the trades published so far, like Binance's
``/api/v3/historicalTrades`` (from ``fromId``, or the most recent ones without it).

With ``agg``, the market publishes aggregate trades instead (``@aggTrade`` streams,
REST ``/api/v3/aggTrades`` and ``/fapi/v1/aggTrades``): aggregate ``a`` (contiguous
from 1) stands for ``a % 3 + 1`` trades with contiguous trade ids (:func:`agg_row`).

Faults are scripted: per connection (by its number, from 0) drop the TCP connection,
send a close frame, or send ``serverShutdown``; refuse handshakes; send frames
twice; withhold ids from the socket (REST still has them); answer REST requests with
429/418 and ``Retry-After``. Everything the server saw is recorded for assertions.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from marketdata.trade import Trade

T0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z


def trade_row(tid: int, time_ms: int | None = None) -> dict[str, Any]:
    """The REST row of trade ``tid`` (the same for every symbol but the symbol).

    It happens at ``time_ms`` (default ``T0 + 7 tid``).
    """
    return {
        "id": tid,
        "price": f"{1000 + tid % 97}.{tid % 100:02d}000000",
        "qty": f"0.{tid % 999 + 1:03d}00000",
        "quoteQty": "0",  # not used by the feed
        "time": T0 + tid * 7 if time_ms is None else time_ms,
        "isBuyerMaker": tid % 3 == 0,
        "isBestMatch": True,
    }


def trade_frame(symbol: str, tid: int, time_ms: int | None = None) -> bytes:
    """The combined-stream frame of trade ``tid``, as Binance sends it."""
    r = trade_row(tid, time_ms)
    data = {
        "e": "trade",
        "E": r["time"] + 1,
        "s": symbol,
        "t": tid,
        "p": r["price"],
        "q": r["qty"],
        "T": r["time"],
        "m": r["isBuyerMaker"],
        "M": True,
    }
    return orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": data})


def expected_trade(symbol: str, tid: int, time_ms: int | None = None) -> Trade:
    """The domain trade both the frame and the REST row must parse to."""
    r = trade_row(tid, time_ms)
    whole, frac = r["price"].split(".")
    qwhole, qfrac = r["qty"].split(".")
    return Trade(
        exchange="binance",
        symbol=symbol,
        trade_id=tid,
        price_e8=int(whole) * 10**8 + int(frac),
        quantity_e8=int(qwhole) * 10**8 + int(qfrac),
        event_time=r["time"],
        is_buyer_maker=r["isBuyerMaker"],
    )


def agg_span(aid: int) -> int:
    """How many trades aggregate ``aid`` stands for."""
    return aid % 3 + 1


def agg_first(aid: int) -> int:
    """The first trade id of aggregate ``aid`` (the spans before it, plus one)."""
    full, rem = divmod(aid - 1, 3)
    return 1 + 6 * full + sum(agg_span(k) for k in range(3 * full + 1, 3 * full + rem + 1))


def agg_row(aid: int, time_ms: int | None = None) -> dict[str, Any]:
    """The REST row of aggregate ``aid`` (``/api/v3/aggTrades``), as Binance sends it."""
    r = trade_row(aid, time_ms)
    first = agg_first(aid)
    return {
        "a": aid,
        "p": r["price"],
        "q": r["qty"],
        "f": first,
        "l": first + agg_span(aid) - 1,
        "T": r["time"],
        "m": r["isBuyerMaker"],
        "M": True,
    }


def agg_frame(symbol: str, aid: int, time_ms: int | None = None) -> bytes:
    """The combined-stream ``aggTrade`` frame of aggregate ``aid``."""
    data = {"e": "aggTrade", "E": 0, "s": symbol, **agg_row(aid, time_ms)}
    data["E"] = data["T"] + 1
    return orjson.dumps({"stream": f"{symbol.lower()}@aggTrade", "data": data})


def expected_agg(
    symbol: str, aid: int, time_ms: int | None = None, exchange: str = "binance"
) -> Trade:
    """The domain trade of aggregate ``aid``: its first id, and its span."""
    t = expected_trade(symbol, aid, time_ms)
    return t._replace(exchange=exchange, trade_id=agg_first(aid), span=agg_span(aid))


@dataclass
class ConnPlan:
    """What happens to one connection (counts are trade frames sent on it).

    Attributes:
        drop_after: abort the TCP connection (no close frame).
        close_after: send a close frame (1001 going away).
        shutdown_after: send ``serverShutdown``, then close ``close_delay_s`` later.
        shutdown_wrapped: send it inside a combined-stream envelope.
        close_delay_s: delay between ``serverShutdown`` and the close frame.

    """

    drop_after: int | None = None
    close_after: int | None = None
    shutdown_after: int | None = None
    shutdown_wrapped: bool = False
    close_delay_s: float = 0.3


@dataclass
class ConnRecord:
    """What the server saw of one connection."""

    number: int
    path: str
    opened: float
    closed: float | None = None
    sent: int = 0
    pong_latency: float | None = None


@dataclass
class RestRecord:
    """One REST request."""

    at: float
    path: str
    query: dict[str, str]
    api_key: str | None
    status: int


@dataclass
class FakeBinance:
    """Websocket and REST servers on loopback, run in a background thread."""

    symbols: list[str]
    n_trades: int
    tick_s: float = 0.004
    plans: dict[int, ConnPlan] = field(default_factory=dict)
    #: Handshakes to refuse, by attempt number from 0: (status, Retry-After or None).
    refuse: dict[int, tuple[int, str | None]] = field(default_factory=dict)
    duplicate_every: int = 0
    withheld: dict[str, set[int]] = field(default_factory=dict)
    #: Statuses for the first REST requests, then normal answers.
    rest_script: list[tuple[int, str | None]] = field(default_factory=list)
    ping: bool = False
    #: Trades happen now (the wall clock of their tick), not at ``T0 + 7 i``.
    live_clock: bool = False
    #: Publish aggregate trades (``@aggTrade``, REST ``aggTrades``) instead of trades.
    agg: bool = False
    #: The exchange name expected in what the feed writes.
    exchange: str = "binance"

    def __post_init__(self) -> None:
        self.published: dict[str, int] = dict.fromkeys(self.symbols, 0)
        #: With ``live_clock``: trade id -> its time (ms).
        self.times: dict[int, int] = {}
        self.conns: list[ConnRecord] = []
        self.handshakes: list[tuple[float, int]] = []
        self.rest: list[RestRecord] = []
        self._queues: dict[int, tuple[set[str], asyncio.Queue[bytes | None]]] = {}
        self._market: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------

    def __enter__(self) -> FakeBinance:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        self.ws_port = self._server.sockets[0].getsockname()[1]
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._http.daemon_threads = True
        self.rest_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._server is not None:
            server = self._server

            async def close() -> None:
                server.close()
                await server.wait_closed()
                if self._market is not None:
                    self._market.cancel()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def done(self) -> bool:
        """Whether every trade has been published."""
        return all(n >= self.n_trades for n in self.published.values())

    # -- websocket side -----------------------------------------------------------

    async def _serve(self) -> Server:
        return await serve(
            self._handle, "127.0.0.1", 0, process_request=self._process_request, ping_interval=None
        )

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        attempt = len(self.handshakes)
        if attempt in self.refuse:
            status, retry_after = self.refuse[attempt]
            self.handshakes.append((time.monotonic(), status))
            resp = conn.respond(HTTPStatus(status), "refused by the test\n")
            if retry_after is not None:
                resp.headers["Retry-After"] = retry_after
            return resp
        self.handshakes.append((time.monotonic(), 101))
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        streams = query.get("streams", [""])[0].split("/")
        event = "@aggTrade" if self.agg else "@trade"
        subscribed = {s.split("@")[0].upper() for s in streams if s.endswith(event)}
        rec = ConnRecord(len(self.conns), path, time.monotonic())
        self.conns.append(rec)
        plan = self.plans.get(rec.number, ConnPlan())
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._queues[rec.number] = (subscribed, queue)
        if self._market is None:
            self._market = asyncio.create_task(self._run_market())
        pinger = asyncio.create_task(self._ping(ws, rec)) if self.ping else None
        try:
            await self._send_loop(ws, rec, plan, queue)
        finally:
            del self._queues[rec.number]
            rec.closed = time.monotonic()
            if pinger is not None:
                pinger.cancel()

    async def _send_loop(
        self, ws: ServerConnection, rec: ConnRecord, plan: ConnPlan, queue: asyncio.Queue[Any]
    ) -> None:
        closer = asyncio.create_task(ws.wait_closed())
        try:
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, closer}, return_when="FIRST_COMPLETED")
                if closer in done:
                    getter.cancel()
                    return
                frame = getter.result()
                await ws.send(frame, text=True)
                rec.sent += 1
                if self.duplicate_every and rec.sent % self.duplicate_every == 0:
                    await ws.send(frame, text=True)
                if rec.sent == plan.drop_after:
                    assert ws.transport is not None
                    ws.transport.abort()
                    return
                if rec.sent == plan.close_after:
                    await ws.close(1001, "going away")
                    return
                if rec.sent == plan.shutdown_after:
                    event: dict[str, Any] = {"e": "serverShutdown", "E": int(time.time() * 1000)}
                    if plan.shutdown_wrapped:
                        event = {"stream": "serverShutdown", "data": event}
                    await ws.send(orjson.dumps(event), text=True)
                    asyncio.get_running_loop().call_later(
                        plan.close_delay_s,
                        lambda: asyncio.ensure_future(ws.close(1001, "server shutdown")),
                    )
        finally:
            closer.cancel()

    async def _ping(self, ws: ServerConnection, rec: ConnRecord) -> None:
        await asyncio.sleep(0.05)
        t = time.monotonic()
        waiter = await ws.ping(b"binance-ping")
        await asyncio.wait_for(waiter, 2)
        rec.pong_latency = time.monotonic() - t

    def time_of(self, tid: int) -> int | None:
        """When trade ``tid`` happened (``None``: at ``T0 + 7 tid``)."""
        return self.times.get(tid) if self.live_clock else None

    def trade(self, symbol: str, tid: int) -> Trade:
        """The domain trade ``tid`` of ``symbol`` (published already, with a live clock).

        With ``agg``, ``tid`` is an aggregate id and the trade is that aggregate.
        """
        if self.agg:
            return expected_agg(symbol, tid, self.time_of(tid), self.exchange)
        return expected_trade(symbol, tid, self.time_of(tid))._replace(exchange=self.exchange)

    async def _run_market(self) -> None:
        for tid in range(1, self.n_trades + 1):
            if self.live_clock:
                self.times[tid] = time.time_ns() // 1_000_000
            for sym in self.symbols:
                with self._lock:
                    self.published[sym] = tid
                if tid in self.withheld.get(sym, ()):
                    continue
                make = agg_frame if self.agg else trade_frame
                frame = make(sym, tid, self.time_of(tid))
                for subscribed, queue in list(self._queues.values()):
                    if sym in subscribed:
                        queue.put_nowait(frame)
            await asyncio.sleep(self.tick_s)

    # -- REST side ----------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, headers, body = fake._rest_answer(
                    self.path, self.headers.get("X-MBX-APIKEY")
                )
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _rest_answer(self, path: str, api_key: str | None) -> tuple[int, dict[str, str], bytes]:
        parts = urllib.parse.urlsplit(path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
        with self._lock:
            n = len(self.rest)
            headers = {"X-MBX-USED-WEIGHT-1M": str(25 * (n + 1))}
            if n < len(self.rest_script):
                status, retry_after = self.rest_script[n]
                if retry_after is not None:
                    headers["Retry-After"] = retry_after
                body = orjson.dumps({"code": -1003, "msg": "Too many requests (test)."})
            elif parts.path not in (
                ("/api/v3/aggTrades", "/fapi/v1/aggTrades")
                if self.agg
                else ("/api/v3/historicalTrades",)
            ):
                status, body = 404, b"{}"
            elif query.get("symbol") not in self.published:
                status, body = 400, orjson.dumps({"code": -1121, "msg": "Invalid symbol."})
            else:
                status = 200
                top = self.published[query["symbol"]]
                limit = min(int(query.get("limit", "500")), 1000)
                first = int(query["fromId"]) if "fromId" in query else max(1, top - limit + 1)
                ids = range(first, min(first + limit - 1, top) + 1)
                row = agg_row if self.agg else trade_row
                body = orjson.dumps([row(i, self.time_of(i)) for i in ids])
            self.rest.append(RestRecord(time.monotonic(), parts.path, query, api_key, status))
        return status, headers, body

    def rest_ok(self) -> Iterator[RestRecord]:
        """The REST requests that were answered 200."""
        return (r for r in self.rest if r.status == 200)
