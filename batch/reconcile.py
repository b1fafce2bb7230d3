"""Reconciliation of a day: stream candles (Redis) against batch candles (lake).

Reads the streamed candles as stored in Redis (or, for a day the candle retention
trimmed some of, the lake's earlier snapshot of them), the batch candles from
``candles/source=batch``, and the day's late trades from ``md:trades:late`` and its
lake copies (``late/``); compares
them exactly with :func:`marketdata.reconcile.reconcile`; writes

* ``candles/source=stream/...`` for the day (the stream's candles, kept beside the
  batch's),
* ``reconciliation/date=D/report.json`` (every non-matching key, worst first) and
  ``summary.json``,
* in Redis, ``md:reconcile:last`` (the latest summary) and ``md:reconcile:days``
  (hash: day -> counts).

It does not decide what readers get: a passing reconciliation is published by
:func:`lake.published.publish` (the command ``reconcile``, or the Dagster asset
``served_candles`` behind the blocking check), and from then on readers get the
batch candles for that day.

:func:`reconcile_klines_day` compares the batch's 1m candles with the exchange's own
klines (imported into ``klines/``) by :func:`marketdata.binance_klines.compare_klines`
and writes ``reconciliation/date=D/klines.json``; it needs no Redis.

The comparison runs in Python on the exact domain types: a day holds about 1,900
candles per (exchange, symbol), far below what would need Spark.
"""

from __future__ import annotations

import json
import time
from datetime import date
from typing import Any

import orjson
import redis

from lake.candles import read_day_candles, write_day_candles
from lake.klines import read_day_klines
from lake.layout import LATE_DIR, RECONCILIATION_DIR, Lake, partition
from lake.published import batch_run
from lake.sidestreams import read_side_entries
from marketdata.binance_klines import (
    EXACT_FIELDS,
    QUOTE_VOLUME_RULE,
    TAKER_BUY_QUOTE_RULE,
    KlineComparison,
    compare_klines,
)
from marketdata.candle import Candle
from marketdata.interval import ALL_INTERVALS, Interval
from marketdata.reconcile import LateTrade, Reconciliation, reconcile
from marketdata.records import SOURCE_BATCH, SOURCE_STREAM
from marketdata.settings import Settings
from marketdata.timeutil import DAY_MS, day_start_ms
from marketdata.trade import Trade
from redisstore.conn import text
from redisstore.keys import (
    LATE_STREAM,
    RECONCILE_DAYS_KEY,
    RECONCILE_LAST_KEY,
    SYMBOLS_KEY,
    trimmed_key,
)
from serving.stream import StreamCandleReader


class BatchNotRunError(RuntimeError):
    """The day has no batch candles yet."""


class StreamCandlesTrimmedError(RuntimeError):
    """Redis may have trimmed some of the day's stream candles, and the lake has no snapshot."""


def stream_day_trimmed(client: redis.Redis, day: date) -> bool:
    """Whether the candles store trimmed some of ``day``'s candles from Redis.

    Its retention (:class:`streaming.candlestore.CandleStore`) records, per series,
    each UTC day it trimmed candles of (``...:trimmed``): the day is whole in Redis
    while no series has it there. A series that trades at other times only (a live
    venue next to a replayed day) does not count.
    """
    start = day_start_ms(day)
    marks = [
        trimmed_key(exchange, symbol, iv)
        for exchange, _, symbol in (
            text(m).partition(":") for m in sorted(client.smembers(SYMBOLS_KEY))
        )
        for iv in ALL_INTERVALS
    ]
    # one command per key (keys of several symbols are in different Cluster slots)
    pipe = client.pipeline(transaction=False)
    for key in marks:
        pipe.zscore(key, str(start))
    return any(score is not None for score in pipe.execute())


def stream_day_candles(client: redis.Redis, day: date) -> dict[tuple[str, str, str, int], Candle]:
    """The stream's closed candles of ``day`` as stored in Redis, every series and interval."""
    start = day_start_ms(day)
    reader = StreamCandleReader(client)
    out: dict[tuple[str, str, str, int], Candle] = {}
    for member in sorted(text(m) for m in client.smembers(SYMBOLS_KEY)):
        exchange, _, symbol = member.partition(":")
        for iv in ALL_INTERVALS:
            for rec in reader.read(symbol, iv, exchange=exchange, start=start, end=start + DAY_MS):
                if rec.closed and not rec.filled:
                    out[rec.candle.key] = rec.candle
    return out


def _late_trade(f: dict[bytes, bytes]) -> LateTrade:
    return LateTrade(trade=Trade.from_fields(f), windows=orjson.loads(f[b"windows"]))


def late_trades_for_day(
    client: redis.Redis, day: date, count: int = 10_000, *, lake: Lake | None = None
) -> list[LateTrade]:
    """Late trades whose windows lie in ``day``, each once.

    From the late stream in Redis and (with ``lake``) from its copies in the lake,
    taken before Redis trimmed them (:mod:`streaming.spill`). A late trade arrives
    after its day starts, so only the lake's days from ``day`` on are read.
    """
    start = day_start_ms(day)
    out: list[LateTrade] = []
    seen: set[bytes] = set()

    def take(entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        if entry_id in seen:
            return
        seen.add(entry_id)
        lt = _late_trade(fields)
        if lt.windows.get("1d") == start:
            out.append(lt)

    if lake is not None:
        for entry_id, fields in read_side_entries(lake, LATE_DIR, since=day):
            take(entry_id, fields)
    last = "-"
    while True:
        entries: list[Any] = list(client.xrange(LATE_STREAM, min=last, max="+", count=count) or [])
        if last != "-":
            entries = entries[1:]  # the first is the previous chunk's last
        if not entries:
            return out
        for entry_id, fields in entries:
            take(entry_id, fields)
        last = text(entries[-1][0])


def snapshot_stream_day(
    settings: Settings, day: date, client: redis.Redis
) -> dict[tuple[str, str, str, int], Candle]:
    """Copy the stream's candles of ``day`` from Redis to ``candles/source=stream``; return them.

    A day Redis may have trimmed some of (:func:`stream_day_trimmed`) is not copied
    again: the lake's snapshot, taken when the day was whole, is kept and returned.

    Raises:
        StreamCandlesTrimmedError: such a day has no snapshot in the lake.

    """
    if stream_day_trimmed(client, day):
        kept = read_day_candles(Lake(settings.lake), SOURCE_STREAM, day)
        if kept is None:
            msg = (
                f"Redis no longer holds all stream candles of {day} (the candle retention, "
                f"{settings.candle_retention_ms} ms of CRYPTOPIPE_CANDLE_RETENTION_MS, trimmed "
                "some) and the lake has no snapshot of them (candles/source=stream, taken by "
                "the stream_candles asset): this day cannot be reconciled"
            )
            raise StreamCandlesTrimmedError(msg)
        return kept
    stream = stream_day_candles(client, day)
    write_day_candles(Lake(settings.lake), SOURCE_STREAM, day, stream.values())
    return stream


def reconcile_day(
    settings: Settings, day: date, client: redis.Redis, *, worst: int = 20
) -> tuple[Reconciliation, dict[str, Any]]:
    """Reconcile ``day``; write the report and the stream's candles; return both.

    Raises:
        BatchNotRunError: when the batch has not produced candles for ``day``.
    """
    lake = Lake(settings.lake)
    run = batch_run(lake, day)  # read first: a re-run from here on is not publishable
    batch = read_day_candles(lake, SOURCE_BATCH, day)
    if batch is None:
        msg = (
            f"no batch candles for {day}: run 'cryptopipe batch run --date {day}' first "
            "(the batch layer's candles are what the stream is checked against)"
        )
        raise BatchNotRunError(msg)
    stream = snapshot_stream_day(settings, day, client)
    late = late_trades_for_day(client, day, lake=lake)
    result = reconcile(stream, batch, late)
    summary: dict[str, Any] = {
        "date": day.isoformat(),
        **{o: n for o, n in result.summary(0)["counts"].items()},
        **result.summary(worst),
        "stream_candles": len(stream),
        "batch_candles": len(batch),
        "late_trades": len(late),
        "batch_run": run,
        "at_ms": int(time.time() * 1000),
    }
    full = {**summary, "differences": [d.to_json_dict() for d in result.differences]}
    _write_report(lake, day, "report.json", full)
    _write_report(lake, day, "summary.json", summary)
    # Two independent writes (the keys are in different Redis Cluster slots).
    pipe = client.pipeline(transaction=False)
    pipe.set(RECONCILE_LAST_KEY, json.dumps(summary))
    pipe.hset(RECONCILE_DAYS_KEY, day.isoformat(), json.dumps(summary["counts"]))
    pipe.execute()
    return result, summary


def _write_report(lake: Lake, day: date, name: str, content: dict[str, Any]) -> None:
    """``reconciliation/date=D/<name>``, atomically."""
    directory = lake.path(RECONCILIATION_DIR, partition(day))
    lake.mkdir(directory)
    lake.write_bytes(f"{directory}/{name}", json.dumps(content, indent=1).encode())


def read_summary(settings: Settings, day: date) -> dict[str, Any] | None:
    """The reconciliation summary of ``day`` from the lake, or ``None`` if never reconciled."""
    lake = Lake(settings.lake)
    return lake.read_json(f"{lake.path(RECONCILIATION_DIR, partition(day))}/summary.json")


def reconcile_klines_day(
    settings: Settings, day: date, *, exchange: str | None = None, worst: int = 20
) -> tuple[KlineComparison, dict[str, Any]]:
    """The batch's 1m candles of ``day`` against the exchange's imported klines.

    Compares, per (exchange, symbol, open_time), the 1m candles of
    ``candles/source=batch/interval=1m/date=D`` with the klines of ``klines/date=D``
    (of ``exchange``, else of every exchange that has klines that day) by
    :func:`marketdata.binance_klines.compare_klines`. Writes
    ``reconciliation/date=D/klines.json`` (every difference) and returns the
    comparison and its summary: the counts at the top level (``match``,
    ``mismatch``, ``missing_in_klines``, ``missing_in_batch``, ``empty_klines``), the
    rules applied, the series not compared, and the worst rows.

    Raises:
        BatchNotRunError: the batch has not produced candles for ``day``.
        NoKlinesError: no klines were imported for ``day`` (of ``exchange``).

    """
    lake = Lake(settings.lake)
    batch = read_day_candles(lake, SOURCE_BATCH, day)
    if batch is None:
        msg = (
            f"no batch candles for {day}: run 'cryptopipe batch run --date {day}' first "
            "(the batch's 1m candles are what the klines are compared with)"
        )
        raise BatchNotRunError(msg)
    klines = read_day_klines(lake, day, exchange)
    if not klines:
        which = f" of {exchange}" if exchange else ""
        msg = (
            f"no klines{which} imported for {day}: import Binance's 1m klines first, e.g. "
            f"'cryptopipe lake import BTCUSDT-1m-{day}.zip'"
        )
        raise NoKlinesError(msg)
    minutes = {
        (c.exchange, c.symbol, c.open_time): c
        for c in batch.values()
        if c.interval is Interval.M1 and (exchange is None or c.exchange == exchange)
    }
    result = compare_klines(minutes, klines)
    summary: dict[str, Any] = {
        "date": day.isoformat(),
        "against": "klines",
        "exchange": exchange,
        "exchanges": result.exchanges,
        **result.counts,
        "empty_klines": result.empty_klines,
        "klines": len(klines),
        "batch_candles": len(minutes),
        "symbols_without_klines": [f"{e}:{s}" for e, s in result.symbols_without_klines],
        "symbols_without_candles": [f"{e}:{s}" for e, s in result.symbols_without_candles],
        "exact_fields": list(EXACT_FIELDS),
        "quote_volume_rule": QUOTE_VOLUME_RULE,
        "taker_buy_quote_volume_rule": TAKER_BUY_QUOTE_RULE,
        "ok": result.ok,
        "worst": [d.to_json_dict() for d in result.worst(worst)],
        "at_ms": int(time.time() * 1000),
    }
    full = {**summary, "differences": [d.to_json_dict() for d in result.differences]}
    _write_report(lake, day, "klines.json", full)
    return result, summary


class NoKlinesError(RuntimeError):
    """No klines were imported for the day."""
