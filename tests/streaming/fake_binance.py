"""A local stand-in for Binance: combined trade streams and the past-trades endpoints.

The market is a tape of taker orders ``1..n_trades`` per symbol, published one order
a tick once the first client connects. Order ``k`` is filled by ``spans[(k - 1) %
len(spans)]`` trades with contiguous trade ids, at one time, price and side (their
quantities differ): Binance's aggregate trade ``k``, computed from those trades with
:func:`marketdata.trade.aggregate`. With the default ``spans=(1,)`` each order is one
trade: trade ``k`` is aggregate ``k``. Order ``k`` happens at ``T0 + 7 k`` ms, or,
with ``live_clock``, at the wall clock of its tick (a market happening now).

Both views of that one market are served, as Binance serves them. Every open
websocket connection receives what it subscribed to of each order published while
it is open (nothing from before it connected): on ``<symbol>@trade`` one frame per
trade, on ``<symbol>@aggTrade`` one frame per order. REST serves what was published
so far (from ``fromId``, inclusive; or the most recent ones without it; at most
``limit``, 1000): ``/api/v3/historicalTrades`` by trade id and ``/api/v3/aggTrades``
by aggregate id on spot; on USD-M futures (``market="um"``) only ``/fapi/v1/aggTrades``
(rows without ``M``), and only ``@aggTrade`` streams, served under the routed path
``/market`` as Binance does (a connection elsewhere receives none of them).

Faults are scripted: per connection (by its number, from 0) drop the TCP connection,
send a close frame, or send ``serverShutdown``; refuse handshakes; send frames
twice; withhold orders from the socket (all their frames; REST still has them);
answer REST requests with 429/418 and ``Retry-After``. Everything the server saw is
recorded for assertions.
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

from marketdata.decimals import format_e8
from marketdata.simulator import agg_trade_payload, trade_payload
from marketdata.trade import Trade, aggregate

T0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z
#: REST endpoints of each market, and the request weight Binance charges for each.
REST_PATHS = {
    "spot": {"/api/v3/historicalTrades": 25, "/api/v3/aggTrades": 4},
    "um": {"/fapi/v1/aggTrades": 20},
}


@dataclass(frozen=True)
class Tape:
    """The orders of the fake market and their trades (the same for every symbol).

    Attributes:
        spans: how many trades fill each order, in turn (order ``k`` takes
            ``spans[(k - 1) % len(spans)]``).

    """

    spans: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        assert self.spans and min(self.spans) >= 1, self.spans

    def span(self, k: int) -> int:
        """How many trades fill order ``k``."""
        return self.spans[(k - 1) % len(self.spans)]

    def first_id(self, k: int) -> int:
        """The first trade id of order ``k``."""
        full, rem = divmod(k - 1, len(self.spans))
        return 1 + full * sum(self.spans) + sum(self.spans[:rem])

    def last_id(self, k: int) -> int:
        """The last trade id of order ``k``."""
        return self.first_id(k) + self.span(k) - 1

    def order_of(self, tid: int) -> int:
        """The order trade ``tid`` belongs to."""
        full, rem = divmod(tid - 1, sum(self.spans))
        k = full * len(self.spans)
        for span in self.spans:
            k += 1
            if rem < span:
                return k
            rem -= span
        raise AssertionError(tid)

    def trades(
        self, symbol: str, k: int, time_ms: int | None = None, exchange: str = "binance"
    ) -> list[Trade]:
        """The trades of order ``k``: one time (``T0 + 7 k`` unless given), price, side."""
        return [
            Trade(
                exchange=exchange,
                symbol=symbol,
                trade_id=tid,
                price_e8=(1000 + k % 97) * 10**8 + (k % 100) * 10**6,
                quantity_e8=(tid % 999 + 1) * 10**5,
                event_time=T0 + k * 7 if time_ms is None else time_ms,
                is_buyer_maker=k % 3 == 0,
            )
            for tid in range(self.first_id(k), self.last_id(k) + 1)
        ]

    def aggregate(
        self, symbol: str, k: int, time_ms: int | None = None, exchange: str = "binance"
    ) -> Trade:
        """Aggregate trade ``k``: its order's trades, aggregated as Binance does."""
        (agg,) = aggregate(self.trades(symbol, k, time_ms, exchange))
        return agg


def historical_row(t: Trade) -> dict[str, Any]:
    """A ``historicalTrades`` row of trade ``t``, as Binance sends it."""
    return {
        "id": t.trade_id,
        "price": format_e8(t.price_e8),
        "qty": format_e8(t.quantity_e8),
        "quoteQty": "0",  # not used by the feed
        "time": t.event_time,
        "isBuyerMaker": t.is_buyer_maker,
        "isBestMatch": True,
    }


def agg_row(a: Trade, aid: int, market: str = "spot") -> dict[str, Any]:
    """An ``aggTrades`` row of aggregate trade ``a`` with id ``aid`` (USD-M: no ``M``)."""
    row = {
        "a": aid,
        "p": format_e8(a.price_e8),
        "q": format_e8(a.quantity_e8),
        "f": a.trade_id,
        "l": a.last_trade_id,
        "T": a.event_time,
        "m": a.is_buyer_maker,
    }
    if market == "spot":
        row["M"] = True
    return row


def _combined(stream: str, payload: bytes) -> bytes:
    return b'{"stream":"' + stream.encode() + b'","data":' + payload + b"}"


def frame_of_trade(t: Trade) -> bytes:
    """The combined-stream ``@trade`` frame of trade ``t`` (sent 1 ms after it)."""
    return _combined(f"{t.symbol.lower()}@trade", trade_payload(t, t.event_time + 1))


def frame_of_agg(a: Trade, aid: int, market: str = "spot") -> bytes:
    """The combined-stream ``@aggTrade`` frame of aggregate ``a`` (USD-M: no ``M``)."""
    payload = agg_trade_payload(a, aid, a.event_time + 1)
    if market != "spot":
        data = orjson.loads(payload)
        del data["M"]
        payload = orjson.dumps(data)
    return _combined(f"{a.symbol.lower()}@aggTrade", payload)


def expected_trade(symbol: str, tid: int, time_ms: int | None = None) -> Trade:
    """Trade ``tid`` of the default tape (one trade an order), exchange ``binance``."""
    (t,) = Tape().trades(symbol, tid, time_ms)
    return t


def trade_row(tid: int, time_ms: int | None = None) -> dict[str, Any]:
    """The ``historicalTrades`` row of trade ``tid`` of the default tape."""
    return historical_row(expected_trade("BTCUSDT", tid, time_ms))


def trade_frame(symbol: str, tid: int, time_ms: int | None = None) -> bytes:
    """The combined-stream frame of trade ``tid`` of the default tape."""
    return frame_of_trade(expected_trade(symbol, tid, time_ms))


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
    """Websocket and REST servers on loopback, run in a background thread.

    ``n_trades`` is how many orders each symbol's market makes (one a tick): as many
    trades with the default ``spans``, and always as many aggregate trades.
    ``withheld`` and ``published`` count orders (aggregate ids) too.
    """

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
    #: Orders happen now (the wall clock of their tick), not at ``T0 + 7 k``.
    live_clock: bool = False
    #: Trades per order, in turn (see :class:`Tape`).
    spans: tuple[int, ...] = (1,)
    #: ``spot`` or ``um`` (USD-M futures: aggregate trades only, under ``/market``).
    market: str = "spot"
    #: The exchange name expected in what the feed writes (default: the market's).
    exchange: str = ""

    def __post_init__(self) -> None:
        assert self.market in REST_PATHS, self.market
        self.exchange = self.exchange or ("binance" if self.market == "spot" else "binance-um")
        self.tape = Tape(self.spans)
        #: Per symbol, the orders published so far (the newest aggregate id).
        self.published: dict[str, int] = dict.fromkeys(self.symbols, 0)
        #: With ``live_clock``: order -> its time (ms).
        self.times: dict[int, int] = {}
        self._weight = 0
        self.conns: list[ConnRecord] = []
        self.handshakes: list[tuple[float, int]] = []
        self.rest: list[RestRecord] = []
        self._queues: dict[int, tuple[set[tuple[str, str]], asyncio.Queue[bytes | None]]] = {}
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
        """The websocket base URL (USD-M: its ``/market`` routed path)."""
        route = "/market" if self.market == "um" else ""
        return f"ws://127.0.0.1:{self.ws_port}{route}"

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
        subscribed = self._subscribed(path)
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

    def _subscribed(self, path: str) -> set[tuple[str, str]]:
        """The (symbol, event) pairs a combined-stream path asks for that are served."""
        parts = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(parts.query)
        events = ("trade", "aggTrade") if self.market == "spot" else ("aggTrade",)
        if self.market == "um" and parts.path != "/market/stream":
            return set()  # Binance routes @aggTrade under /market only
        out = set()
        for name in query.get("streams", [""])[0].split("/"):
            symbol, _, event = name.partition("@")
            if event in events:
                out.add((symbol.upper(), event))
        return out

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

    def time_of(self, k: int) -> int | None:
        """When order ``k`` happened (``None``: at ``T0 + 7 k``)."""
        return self.times.get(k) if self.live_clock else None

    def trade(self, symbol: str, tid: int) -> Trade:
        """The domain trade ``tid`` of ``symbol`` (published already, with a live clock)."""
        k = self.tape.order_of(tid)
        trades = self.tape.trades(symbol, k, self.time_of(k), self.exchange)
        return trades[tid - self.tape.first_id(k)]

    def agg(self, symbol: str, aid: int) -> Trade:
        """Aggregate trade ``aid`` of ``symbol``: order ``aid``'s trades, aggregated."""
        return self.tape.aggregate(symbol, aid, self.time_of(aid), self.exchange)

    def all_trades(self) -> list[Trade]:
        """Every trade published so far, of every symbol."""
        return [
            t
            for s in self.symbols
            for k in range(1, self.published[s] + 1)
            for t in self.tape.trades(s, k, self.time_of(k), self.exchange)
        ]

    async def _run_market(self) -> None:
        for k in range(1, self.n_trades + 1):
            if self.live_clock:
                self.times[k] = time.time_ns() // 1_000_000
            for sym in self.symbols:
                with self._lock:
                    self.published[sym] = k
                if k in self.withheld.get(sym, ()):
                    continue
                trades = self.tape.trades(sym, k, self.time_of(k), self.exchange)
                frames = {
                    "trade": [frame_of_trade(t) for t in trades],
                    "aggTrade": [frame_of_agg(self.agg(sym, k), k, self.market)],
                }
                for subscribed, queue in list(self._queues.values()):
                    for event, sent in frames.items():
                        if (sym, event) in subscribed:
                            for frame in sent:
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
        served = REST_PATHS[self.market]
        with self._lock:
            n = len(self.rest)
            self._weight += served.get(parts.path, 1)
            headers = {"X-MBX-USED-WEIGHT-1M": str(self._weight)}
            if n < len(self.rest_script):
                status, retry_after = self.rest_script[n]
                if retry_after is not None:
                    headers["Retry-After"] = retry_after
                body = orjson.dumps({"code": -1003, "msg": "Too many requests (test)."})
            elif parts.path not in served:
                status, body = 404, b"{}"
            elif query.get("symbol") not in self.published:
                status, body = 400, orjson.dumps({"code": -1121, "msg": "Invalid symbol."})
            else:
                status = 200
                sym = query["symbol"]
                by_trade = parts.path.endswith("/historicalTrades")
                orders = self.published[sym]
                top = self.tape.last_id(orders) if by_trade and orders else orders
                limit = min(int(query.get("limit", "500")), 1000)
                first = int(query["fromId"]) if "fromId" in query else max(1, top - limit + 1)
                ids = range(first, min(first + limit - 1, top) + 1)
                if by_trade:
                    rows = [historical_row(self.trade(sym, i)) for i in ids]
                else:
                    rows = [agg_row(self.agg(sym, a), a, self.market) for a in ids]
                body = orjson.dumps(rows)
            self.rest.append(RestRecord(time.monotonic(), parts.path, query, api_key, status))
        return status, headers, body

    def rest_ok(self) -> Iterator[RestRecord]:
        """The REST requests that were answered 200."""
        return (r for r in self.rest if r.status == 200)
