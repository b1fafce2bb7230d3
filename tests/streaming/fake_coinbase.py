"""A local stand-in for Coinbase Exchange: the websocket feed and the trades endpoint.

The market is a tape of trades ``1..n_trades`` per product, published one a tick once
the first client has subscribed. Trade ``k`` happens at ``T0 + step_ms * k`` ms (and
``(k * 37) % 1000`` µs, Coinbase's times having microseconds), or, with
``live_clock``, at the wall clock of its tick (a market happening now). Its price,
size and side follow from ``k``.

Frames are shaped like the samples of Coinbase's documentation (Exchange WebSocket
Overview and Channels; REST *Get product trades* and *Pagination*):

* a client must send ``{"type":"subscribe","product_ids":[...],"channels":[...]}``
  within 5 s (else it is closed); it gets ``{"type":"subscriptions","channels":
  [{"name":..,"product_ids":[..]},..]}``, or ``{"type":"error","message":"Failed to
  subscribe","reason":"<id> is not a valid product"}`` and a close;
* on ``matches``: first one ``last_match`` per product (its newest trade, if any),
  then one ``match`` per trade published while it is open: ``type, trade_id,
  sequence, maker_order_id, taker_order_id, time, product_id, size, price, side``
  (``side`` the maker's; decimals as short strings, ``"400.23"``);
* on ``heartbeat``: every ``heartbeat_s`` per product ``{"type":"heartbeat",
  "sequence":..,"last_trade_id":..,"product_id":..,"time":..}``, ``last_trade_id`` the
  newest trade published (withheld ones included);
* REST ``GET /products/<id>/trades[?limit=&before=&after=]``: rows ``{"time",
  "trade_id","price","size","side"}`` newest first (decimals with 8 digits), at most
  ``limit`` (default and maximum 1000); ``after=X`` the trades older than X,
  ``before=X`` the ones just newer than X; headers ``CB-BEFORE`` (the page's newest
  id) and ``CB-AFTER`` (its oldest).

Faults are scripted: per connection (by its number, from 0) drop the TCP connection,
send a close frame, or fall silent (the connection left open) after so many matches;
withhold trades from the socket (REST still has them); answer the first REST
requests with 429 and ``Retry-After``. What the server saw is recorded for
assertions.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from marketdata.decimals import format_e8
from marketdata.trade import Trade

T0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z


def iso_us(us: int) -> str:
    """A time in µs as Coinbase writes it: ``2014-11-07T08:19:27.028459Z``."""
    dt = datetime.fromtimestamp(us // 1_000_000, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{us % 1_000_000:06d}Z"


def short(e8: int) -> str:
    """A decimal without trailing zeros, as the websocket samples show (``"400.23"``)."""
    text = format_e8(e8).rstrip("0")
    return text + "0" if text.endswith(".") else text


@dataclass
class ConnPlan:
    """What happens to one connection (counts are match frames sent on it).

    Attributes:
        drop_after: abort the TCP connection (no close frame).
        close_after: send a close frame (1001 going away).
        stall_after: send nothing more (heartbeats neither), the connection left open.

    """

    drop_after: int | None = None
    close_after: int | None = None
    stall_after: int | None = None


@dataclass
class ConnRecord:
    """What the server saw of one connection."""

    number: int
    opened: float
    subscribe: Any = None
    closed: float | None = None
    sent: int = 0


@dataclass
class RestRecord:
    """One REST request."""

    at: float
    path: str
    query: dict[str, str]
    status: int


@dataclass
class FakeCoinbase:
    """Websocket and REST servers on loopback, run in a background thread."""

    products: list[str]
    n_trades: int
    tick_s: float = 0.004
    step_ms: int = 7
    heartbeat_s: float = 1.0
    plans: dict[int, ConnPlan] = field(default_factory=dict)
    withheld: dict[str, set[int]] = field(default_factory=dict)
    #: Statuses for the first REST requests (status, Retry-After), then normal answers.
    rest_script: list[tuple[int, str | None]] = field(default_factory=list)
    live_clock: bool = False
    exchange: str = "coinbase"

    def __post_init__(self) -> None:
        #: Per product, the newest trade published so far.
        self.published: dict[str, int] = dict.fromkeys(self.products, 0)
        #: With ``live_clock``: trade -> its time (µs).
        self.times: dict[int, int] = {}
        self.conns: list[ConnRecord] = []
        self.rest: list[RestRecord] = []
        #: Every frame sent, as sent.
        self.frames: set[bytes] = set()
        self._seq = 100
        self._queues: dict[int, tuple[set[str], asyncio.Queue[bytes]]] = {}
        self._market: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------

    def __enter__(self) -> FakeCoinbase:
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

    # -- the market ---------------------------------------------------------------

    def time_us(self, k: int) -> int:
        """When trade ``k`` happened (µs)."""
        if self.live_clock:
            return self.times[k]
        return (T0 + self.step_ms * k) * 1000 + (k * 37) % 1000

    def trade(self, product: str, k: int) -> Trade:
        """The domain trade ``k`` of ``product`` (what the parser must make of its frames)."""
        return Trade(
            exchange=self.exchange,
            symbol=product,
            trade_id=k,
            price_e8=(400 + k % 97) * 10**8 + (k % 100) * 10**6,
            quantity_e8=(k % 999 + 1) * 10**5,
            event_time=self.time_us(k) // 1000,
            # Coinbase's side is the maker's: "buy" = the maker bought = a taker sell.
            is_buyer_maker=k % 3 == 0,
        )

    def all_trades(self) -> list[Trade]:
        """Every trade published so far, of every product."""
        return [self.trade(p, k) for p in self.products for k in range(1, self.published[p] + 1)]

    def side(self, k: int) -> str:
        """Trade ``k``'s ``side``: the maker's (``"buy"``: the maker bought)."""
        return "buy" if k % 3 == 0 else "sell"

    def match_frame(self, product: str, k: int, kind: str = "match") -> bytes:
        """The ``match`` (or ``last_match``) frame of trade ``k``, as the docs' sample."""
        t = self.trade(product, k)
        self._seq += 3
        return orjson.dumps(
            {
                "type": kind,
                "trade_id": k,
                "sequence": self._seq,
                "maker_order_id": str(uuid.uuid4()),
                "taker_order_id": str(uuid.uuid4()),
                "time": iso_us(self.time_us(k)),
                "product_id": product,
                "size": short(t.quantity_e8),
                "price": short(t.price_e8),
                "side": self.side(k),
            }
        )

    def rest_row(self, product: str, k: int) -> dict[str, Any]:
        """A ``GET /products/<id>/trades`` row of trade ``k``, as the docs' sample."""
        t = self.trade(product, k)
        return {
            "time": iso_us(self.time_us(k)),
            "trade_id": k,
            "price": format_e8(t.price_e8),
            "size": format_e8(t.quantity_e8),
            "side": self.side(k),
        }

    def now_us(self) -> int:
        """The venue's clock: the wall clock, or the newest trade's time."""
        if self.live_clock:
            return time.time_ns() // 1000
        newest = max(self.published.values())
        return self.time_us(newest) if newest else T0 * 1000

    async def _run_market(self) -> None:
        for k in range(1, self.n_trades + 1):
            if self.live_clock:
                self.times[k] = time.time_ns() // 1000
            for p in self.products:
                with self._lock:
                    self.published[p] = k
                if k in self.withheld.get(p, ()):
                    continue
                frame = self.match_frame(p, k)
                for subscribed, queue in list(self._queues.values()):
                    if p in subscribed:
                        queue.put_nowait(frame)
            await asyncio.sleep(self.tick_s)

    # -- websocket side -----------------------------------------------------------

    async def _serve(self) -> Server:
        return await serve(self._handle, "127.0.0.1", 0, ping_interval=None)

    async def _handle(self, ws: ServerConnection) -> None:
        rec = ConnRecord(len(self.conns), time.monotonic())
        self.conns.append(rec)
        try:
            raw = await asyncio.wait_for(ws.recv(), 5)
        except (TimeoutError, ConnectionClosed):
            await ws.close(1008, "no subscribe message within 5 s")
            return
        req = orjson.loads(raw)
        rec.subscribe = req
        products = req.get("product_ids", [])
        bad = [p for p in products if p not in self.products]
        if req.get("type") != "subscribe" or bad:
            reason = f"{bad[0]} is not a valid product" if bad else "type must be subscribe"
            error = {"type": "error", "message": "Failed to subscribe", "reason": reason}
            await ws.send(orjson.dumps(error).decode())
            await ws.close()
            return
        channels = [c if isinstance(c, str) else c["name"] for c in req.get("channels", [])]
        reply = {
            "type": "subscriptions",
            "channels": [{"name": c, "product_ids": products} for c in channels],
        }
        await ws.send(orjson.dumps(reply).decode())
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        if "matches" in channels:
            for p in products:
                if self.published[p]:
                    queue.put_nowait(self.match_frame(p, self.published[p], "last_match"))
            self._queues[rec.number] = (set(products), queue)
        if self._market is None:
            self._market = asyncio.create_task(self._run_market())
        beats = (
            asyncio.create_task(self._heartbeats(queue, products))
            if "heartbeat" in channels
            else None
        )
        try:
            await self._send_loop(ws, rec, self.plans.get(rec.number, ConnPlan()), queue)
        finally:
            self._queues.pop(rec.number, None)
            rec.closed = time.monotonic()
            if beats is not None:
                beats.cancel()

    async def _heartbeats(self, queue: asyncio.Queue[bytes], products: list[str]) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            for p in products:
                self._seq += 1
                beat = {
                    "type": "heartbeat",
                    "sequence": self._seq,
                    "last_trade_id": self.published[p],
                    "product_id": p,
                    "time": iso_us(self.now_us()),
                }
                queue.put_nowait(orjson.dumps(beat))

    async def _send_loop(
        self, ws: ServerConnection, rec: ConnRecord, plan: ConnPlan, queue: asyncio.Queue[bytes]
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
                await ws.send(frame.decode())
                self.frames.add(frame)
                if not frame.startswith(b'{"type":"match"'):
                    continue
                rec.sent += 1
                if rec.sent == plan.drop_after:
                    assert ws.transport is not None
                    ws.transport.abort()
                    return
                if rec.sent == plan.close_after:
                    await ws.close(1001, "going away")
                    return
                if rec.sent == plan.stall_after:
                    await closer  # until the client gives up on it
                    return
        finally:
            closer.cancel()

    # -- REST side ----------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, headers, body = fake._rest_answer(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _rest_answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        parts = urllib.parse.urlsplit(path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
        segments = parts.path.strip("/").split("/")
        headers: dict[str, str] = {}
        with self._lock:
            n = len(self.rest)
            product = segments[1] if len(segments) == 3 else ""
            limit = int(query.get("limit", "1000"))
            if n < len(self.rest_script):
                status, retry = self.rest_script[n]
                if retry is not None:
                    headers["Retry-After"] = retry
                body = orjson.dumps({"message": "Public rate limit exceeded"})
            elif segments[0] != "products" or segments[-1] != "trades" or len(segments) != 3:
                status, body = 404, orjson.dumps({"message": "route not found"})
            elif product not in self.published:
                status, body = 404, orjson.dumps({"message": "NotFound"})
            elif not 1 <= limit <= 1000:
                status, body = 400, orjson.dumps({"message": "Invalid limit"})
            else:
                status = 200
                top = self.published[product]
                if "after" in query:
                    hi = min(int(query["after"]) - 1, top)
                    ids = range(hi, max(0, hi - limit), -1)
                elif "before" in query:
                    lo = int(query["before"]) + 1
                    ids = range(min(top, lo + limit - 1), lo - 1, -1)
                else:
                    ids = range(top, max(0, top - limit), -1)
                rows = [self.rest_row(product, k) for k in ids]
                if rows:
                    headers["CB-BEFORE"] = str(rows[0]["trade_id"])
                    headers["CB-AFTER"] = str(rows[-1]["trade_id"])
                body = orjson.dumps(rows)
            self.rest.append(RestRecord(time.monotonic(), parts.path, query, status))
        return status, headers, body
