"""``cryptopipe serve``: the HTTP API (and, next, the live chart) over what the stack holds.

A small Starlette application, run by uvicorn (both maintained, and Starlette's
streaming responses give server-sent events without another library). Everything it
answers comes from the functions the command line uses, so the two never disagree:

* ``GET /api/candles?symbol=&interval=&start=&end=&source=&exchange=&fill=``: a JSON
  array of exactly the objects ``cryptopipe candles --format json`` prints
  (:mod:`serving.query`), same parameters and defaults;
* ``GET /api/symbols``: every (exchange, symbol) with stream candles;
* ``GET /api/metrics?symbol=[&exchange=]``: the latest metrics of each exchange;
* ``GET /api/spreads?symbol=[&exchange=]``: the latest spreads the symbol's series
  (of one exchange, or of each with metrics) are in, as ``cryptopipe metrics --format
  json`` lists them under ``spreads``;
* ``GET /api/status``: what ``cryptopipe status --format json`` prints;
* ``GET /api/reconciliation?date=D``: the reconciliation summary of a day;
* ``GET /api/live?symbol=&interval=[&exchange=]``: server-sent events, one ``candle``
  event (the JSON object above) whenever the live candle or a newly closed candle of
  the series changes, checked every 250 ms;
* ``GET /api/metrics/history?symbol=&exchange=[&start=&end=]``: the metrics of each
  closed 1m candle (EMA 12/26, anomalies, ...) the metrics flow keeps for charts;
* ``GET /``: the live chart (``cryptopipe/web/``), drawn by plotly.js, which ships in
  plotly's Python package and is served from it at ``/vendor/plotly.min.js``.

A bad parameter is a 400 with ``{"error": "..."}`` saying what to give instead; an
unknown symbol names the symbols there are (404).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from batch.reconcile import read_summary
from cryptopipe.commands.flowctl import status_report
from lake.published import is_published
from marketdata.settings import Settings
from redisstore.conn import connect_settings
from serving.metrics import metrics_exchanges, read_history, read_metrics, read_spreads
from serving.query import (
    CandleQuery,
    QueryError,
    UnknownSymbolError,
    candles,
    known_series,
    records_json,
    unknown_symbol_message,
)
from serving.stream import StreamCandleReader

#: How often the live endpoint looks for a changed candle.
LIVE_POLL_S = 0.25
#: The chart page and its script.
WEB = Path(__file__).parent / "web"


def plotly_bundle() -> Path:
    """plotly.js as shipped inside plotly's Python package (installed with ours)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _error(message: str, status: int = 400) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _query_error(exc: QueryError) -> Response:
    """404 for a symbol nothing has candles of, 400 for any other bad parameter."""
    return _error(str(exc), 404 if isinstance(exc, UnknownSymbolError) else 400)


def _query(request: Request, *, interval_required: bool = True) -> CandleQuery:
    p = request.query_params
    return CandleQuery.parse(
        p.get("symbol"),
        p.get("interval") if interval_required or p.get("interval") else "1m",
        exchange=p.get("exchange"),
        start=p.get("start"),
        end=p.get("end"),
        source=p.get("source"),
        fill=p.get("fill", "").lower() in ("1", "true", "yes"),
    )


def build_app(settings: Settings, client: redis.Redis | None = None) -> Starlette:
    """The application over ``settings``' Redis and lake."""
    rc = client or connect_settings(settings)
    routes = _candle_routes(settings, rc) + _data_routes(settings, rc) + _page_routes(rc)
    return Starlette(routes=routes)


def _candle_routes(settings: Settings, rc: redis.Redis) -> list[Route | Mount]:
    """Candles, symbols, the latest metrics."""

    async def api_candles(request: Request) -> Response:
        try:
            q = _query(request)
            records = await run_in_threadpool(candles, q, settings, rc, strict=True)
        except QueryError as exc:
            return _query_error(exc)
        return _json(records_json(records, filled=q.fill))

    async def api_symbols(_: Request) -> Response:
        series = await run_in_threadpool(known_series, rc)
        return _json([{"exchange": ex, "symbol": sym} for ex, sym in series])

    async def api_metrics(request: Request) -> Response:
        try:
            q = _query(request, interval_required=False)
        except QueryError as exc:
            return _error(str(exc))

        def read() -> dict[str, Any]:
            exchanges = [q.exchange] if q.exchange else metrics_exchanges(rc, q.symbol)
            return {ex: read_metrics(rc, q.symbol, ex) for ex in exchanges}

        found = await run_in_threadpool(read)
        if not any(found.values()):
            message = await run_in_threadpool(unknown_symbol_message, q.symbol, rc)
            return _error(message.replace("no candles", "no metrics"), 404)
        return _json(found)

    async def api_spreads(request: Request) -> Response:
        try:
            q = _query(request, interval_required=False)
        except QueryError as exc:
            return _error(str(exc))

        def read() -> list[dict[str, Any]]:
            exchanges = [q.exchange] if q.exchange else metrics_exchanges(rc, q.symbol)
            return read_spreads(rc, settings.spread_rules, q.symbol, exchanges)

        return _json(await run_in_threadpool(read))

    return [
        Route("/api/candles", api_candles),
        Route("/api/symbols", api_symbols),
        Route("/api/metrics", api_metrics),
        Route("/api/spreads", api_spreads),
    ]


def _page_routes(rc: redis.Redis) -> list[Route | Mount]:
    """The chart page, its script, plotly.js; the metrics history it overlays."""

    async def api_metrics_history(request: Request) -> Response:
        try:
            q = _query(request, interval_required=False)
        except QueryError as exc:
            return _error(str(exc))
        exchange = q.exchange or "binance"
        rows = await run_in_threadpool(
            read_history, rc, q.symbol, exchange, start=q.start, end=q.end
        )
        return _json(rows)

    async def page(_: Request) -> Response:
        return FileResponse(WEB / "index.html", media_type="text/html")

    async def plotly_js(_: Request) -> Response:
        return FileResponse(plotly_bundle(), media_type="text/javascript")

    return [
        Route("/api/metrics/history", api_metrics_history),
        Route("/", page),
        Route("/vendor/plotly.min.js", plotly_js),
        Mount("/static", StaticFiles(directory=WEB), name="static"),
    ]


def _data_routes(settings: Settings, rc: redis.Redis) -> list[Route | Mount]:
    """The JSON and event-stream endpoints."""

    async def api_status(_: Request) -> Response:
        return _json(await run_in_threadpool(status_report, settings, rc))

    async def api_reconciliation(request: Request) -> Response:
        raw = request.query_params.get("date", "")
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            return _error(f"bad date {raw!r}: give a UTC day as YYYY-MM-DD")
        summary = await run_in_threadpool(read_summary, settings, day)
        if summary is None:
            return _error(f"{day} has not been reconciled (cryptopipe reconcile --date {day})", 404)
        published = await run_in_threadpool(is_published, settings, day)
        return _json({**summary, "served_from": "batch" if published else "stream"})

    async def api_live(request: Request) -> Response:
        try:
            q = _query(request)
            await run_in_threadpool(candles, q, settings, rc, strict=True)
        except QueryError as exc:
            return _query_error(exc)
        return StreamingResponse(
            _live_events(q, rc, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return [
        Route("/api/status", api_status),
        Route("/api/reconciliation", api_reconciliation),
        Route("/api/live", api_live),
    ]


async def _live_events(
    q: CandleQuery, client: redis.Redis, request: Request
) -> AsyncIterator[bytes]:
    """``candle`` events for each new or changed candle of the series.

    The stream's view (its newest closed candles and the live one), checked every
    :data:`LIVE_POLL_S`.
    """
    reader = StreamCandleReader(client)
    seen: dict[tuple[str, int], bytes] = {}
    yield b": connected\n\n"
    while not await request.is_disconnected():
        records = await run_in_threadpool(reader.latest, q.symbol, q.interval, exchange=q.exchange)
        for obj in records_json(records, filled=False):
            key = (obj["exchange"], obj["open_time"])
            body = orjson.dumps(obj)
            if seen.get(key) != body:
                seen[key] = body
                yield b"event: candle\ndata: " + body + b"\n\n"
        for k in sorted(seen)[:-16]:  # keep what can still change
            del seen[k]
        await asyncio.sleep(LIVE_POLL_S)


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the server until interrupted (uvicorn's own signal handling)."""
    import uvicorn

    uvicorn.run(build_app(settings), host=host, port=port, log_level="info", access_log=False)
