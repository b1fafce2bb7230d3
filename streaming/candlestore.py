"""Candles in Redis: the layout, idempotent writes, and readers (docs/storage.md).

Every key that holds one symbol's data carries the ``{SYMBOL}`` hash tag, so all of
a symbol's candles live in one Redis Cluster slot:

* ``md:candles:{SYM}:<exchange>:<interval>``: hash, field = open_time (ms), value =
  the closed candle as JSON; ``...:<interval>:idx``: sorted set of the open times
  (score = member = open_time) for range queries;
* ``md:candles:{SYM}:<exchange>:live``: hash, field = interval, value = the newest
  open window's candle as JSON (``closed: false``), expiring a day after its last
  update;
* ``md:candles:{SYM}:exchanges``: set of the exchanges with candles of the symbol,
  and ``md:candles:symbols``: set of ``exchange:SYMBOL`` (global);
* ``md:candles:closed``: stream of closed-candle events for the metrics flow;
* ``md:trades:dlq`` and ``md:trades:late``: the rejected and late streams.

Writes are idempotent: candles are upserts; stream appends go through a script that
appends only when the entry's identity (trade key, source entry id, candle key and
content) has not been appended in the last two days, so a replay after recovery
never adds a second copy. Decimals are exact strings, never floats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol, cast

import orjson
import redis

from marketdata.candle import Candle
from marketdata.decimals import (
    QUOTE_SCALE_DIGITS,
    SCALE_DIGITS,
    format_e8,
    format_e16,
)
from marketdata.interval import Interval
from marketdata.rawmessage import DLQ_STREAM, LATE_STREAM, raw_stream_names, shard_of
from marketdata.settings import Settings
from marketdata.timeutil import DAY_MS, now_ms

CLOSED_EVENTS_STREAM = "md:candles:closed"
SYMBOLS_KEY = "md:candles:symbols"
#: Closed-candle events kept (approximately) in their stream.
CLOSED_EVENTS_MAXLEN = 1_000_000
#: How long stream appends remember what they appended (replays come much sooner).
DEDUPE_RETENTION_MS = 2 * 86_400_000
LIVE_TTL_S = 86_400

SOURCE_STREAM = "stream"
SOURCE_BATCH = "batch"
SOURCES = ("merged", SOURCE_STREAM, SOURCE_BATCH)


def series_key(exchange: str, symbol: str, interval: Interval | str) -> str:
    """Hash of the closed candles of one (exchange, symbol, interval)."""
    return f"md:candles:{{{symbol}}}:{exchange}:{interval}"


def index_key(exchange: str, symbol: str, interval: Interval | str) -> str:
    """Sorted set of the open times of the closed candles of one series."""
    return series_key(exchange, symbol, interval) + ":idx"


def live_key(exchange: str, symbol: str) -> str:
    """Hash interval -> newest open window's candle of one (exchange, symbol)."""
    return f"md:candles:{{{symbol}}}:{exchange}:live"


def exchanges_key(symbol: str) -> str:
    """Set of the exchanges that have candles of ``symbol``."""
    return f"md:candles:{{{symbol}}}:exchanges"


def written_key(stream: str) -> str:
    """Sorted set of what was appended to ``stream`` (same Cluster slot as the stream)."""
    return f"{{{stream}}}:written"


def counts_key(flow: str, source_stream: str) -> str:
    """Hash of a flow's exactly-once counters for one source partition."""
    return f"md:flow:{flow}:counts:{source_stream}"


# ---- candle <-> JSON --------------------------------------------------------------


def candle_record(c: Candle, *, closed: bool) -> dict[str, Any]:
    """The stored form: DESIGN.md section 8's JSON plus the open/close order keys.

    ``first_event_time`` and ``last_event_time`` are kept so that a stored candle can
    be merged exactly with late trades (reconciliation) or with other candles.
    """
    rec = c.to_json_dict(closed=closed, source=SOURCE_STREAM)
    rec["first_event_time"] = c.first_event_time
    rec["last_event_time"] = c.last_event_time
    return rec


def candle_json(c: Candle, *, closed: bool) -> bytes:
    """The stored form as JSON bytes."""
    return orjson.dumps(candle_record(c, closed=closed))


def _scaled(text: str, digits: int) -> int:
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("-").partition(".")
    if len(frac) > digits:
        msg = f"{text!r} has more than {digits} fractional digits"
        raise ValueError(msg)
    return sign * (int(whole or "0") * 10**digits + int(frac.ljust(digits, "0") or "0"))


def candle_from_record(rec: dict[str, Any]) -> Candle:
    """A stored record back to a :class:`Candle` (exact)."""
    e8 = lambda name: _scaled(rec[name], SCALE_DIGITS)  # noqa: E731
    return Candle(
        rec["exchange"],
        rec["symbol"],
        Interval.parse(rec["interval"]),
        int(rec["open_time"]),
        e8("open"),
        e8("high"),
        e8("low"),
        e8("close"),
        e8("volume"),
        _scaled(rec["quote_volume"], QUOTE_SCALE_DIGITS),
        int(rec["trade_count"]),
        e8("taker_buy_volume"),
        int(rec.get("first_event_time", rec["open_time"])),
        int(rec["first_trade_id"]),
        int(rec.get("last_event_time", rec["open_time"])),
        int(rec["last_trade_id"]),
    )


# ---- writes -----------------------------------------------------------------------

#: KEYS: a stream, its "written" set. ARGV: now ms, retention ms, maxlen (0 = none),
#: fields per entry (n), then per entry: identity, n field/value pairs. Appends each
#: entry whose identity was not appended within the retention; returns how many.
XADD_ONCE_SCRIPT = """
local now = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[3])
local nf = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - tonumber(ARGV[2])))
local added = 0
local i = 5
while i <= #ARGV do
  if redis.call('ZADD', KEYS[2], 'NX', now, ARGV[i]) == 1 then
    local args = {KEYS[1]}
    if maxlen > 0 then
      args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = maxlen
    end
    args[#args + 1] = '*'
    for j = 1, 2 * nf do args[#args + 1] = ARGV[i + j] end
    redis.call('XADD', unpack(args))
    added = added + 1
  end
  i = i + 1 + 2 * nf
end
return added
"""


@dataclass
class LateRecord:
    """A late trade as the late stream stores it."""

    exchange: str
    symbol: str
    trade_id: int
    price_e8: int
    quantity_e8: int
    event_time: int
    is_buyer_maker: bool
    windows: dict[str, int]
    watermark: int
    source_stream: str
    source_id: bytes


@dataclass
class RejectRecord:
    """A rejected raw-log entry as the DLQ stores it."""

    reason: str
    payload: bytes
    exchange: str
    detail: str
    source_stream: str
    source_id: bytes
    recv_ms: int


@dataclass
class CandleWrites:
    """Everything one step of the candles flow writes, in one pipeline."""

    source_stream: str
    closed: list[Candle] = field(default_factory=list)
    live: list[Candle] = field(default_factory=list)
    late: list[LateRecord] = field(default_factory=list)
    rejects: list[RejectRecord] = field(default_factory=list)
    #: Absolute counters of the partition (exactly once: they are part of its state).
    counters: dict[str, int | str] = field(default_factory=dict)
    #: Raw-log entries consumed by this step (for the heartbeat).
    entries: int = 0

    def __len__(self) -> int:
        return len(self.closed) + len(self.live) + len(self.late) + len(self.rejects)


class CandleStore:
    """Writes candles, late trades and rejections to Redis; one pipeline per call."""

    def __init__(self, client: redis.Redis, flow: str = "candles") -> None:
        self.client = client
        self.flow = flow
        self._xadd_once = client.register_script(XADD_ONCE_SCRIPT)
        self._known_series: set[tuple[str, str]] = set()

    def _append_once(
        self, pipe: Any, stream: str, entries: list[tuple[str, dict[str, Any]]], now: int,
        maxlen: int = 0,
    ) -> None:  # fmt: skip
        """Append entries (identity, fields) not appended before; one script call."""
        if not entries:
            return
        nf = len(entries[0][1])
        args: list[Any] = [now, DEDUPE_RETENTION_MS, maxlen, nf]
        for identity, fields in entries:
            args.append(identity)
            for k, v in fields.items():
                args += [k, v]
        self._xadd_once(keys=[stream, written_key(stream)], args=args, client=pipe)

    def write(self, batches: Sequence[CandleWrites]) -> int:
        """Write the batches in one pipeline; returns the number of records written."""
        pipe = self.client.pipeline(transaction=False)
        now = now_ms()
        n = 0
        series: dict[tuple[str, str, Interval], dict[Any, Any]] = {}
        live: dict[str, dict[Any, Any]] = {}
        events: list[tuple[str, dict[str, Any]]] = []
        late: list[tuple[str, dict[str, Any]]] = []
        rejects: list[tuple[str, dict[str, Any]]] = []
        for b in batches:
            for c in b.closed:
                value = candle_json(c, closed=True)
                series.setdefault((c.exchange, c.symbol, c.interval), {})[str(c.open_time)] = value
                events.append(_closed_event(c, value))
            for c in b.live:
                live.setdefault(live_key(c.exchange, c.symbol), {})[c.interval.label] = candle_json(
                    c, closed=False
                )
            late += [_late_entry(lt) for lt in b.late]
            rejects += [_reject_entry(rj) for rj in b.rejects]
            if b.counters:
                counters: dict[Any, Any] = b.counters
                pipe.hset(counts_key(self.flow, b.source_stream), mapping=counters)
            n += len(b)
        for (ex, sym, iv), values in series.items():
            pipe.hset(series_key(ex, sym, iv), mapping=values)
            pipe.zadd(index_key(ex, sym, iv), {t: int(t) for t in values})
            if (ex, sym) not in self._known_series:
                pipe.sadd(exchanges_key(sym), ex)
                pipe.sadd(SYMBOLS_KEY, f"{ex}:{sym}")
                self._known_series.add((ex, sym))
        for key, values in live.items():
            pipe.hset(key, mapping=values)
            pipe.expire(key, LIVE_TTL_S)
        self._append_once(pipe, CLOSED_EVENTS_STREAM, events, now, CLOSED_EVENTS_MAXLEN)
        self._append_once(pipe, LATE_STREAM, late, now)
        self._append_once(pipe, DLQ_STREAM, rejects, now)
        if len(pipe):
            pipe.execute()
        return n


def _closed_event(c: Candle, value: bytes) -> tuple[str, dict[str, Any]]:
    # A candle re-closed with the same content (a replay) is one event; a different
    # content (more trades after an end-of-input flush) is another.
    digest = hashlib.blake2b(value, digest_size=8).hexdigest()
    identity = f"{c.exchange}:{c.symbol}:{c.interval.label}:{c.open_time}:{digest}"
    return identity, {
        "exchange": c.exchange,
        "symbol": c.symbol,
        "interval": c.interval.label,
        "open_time": c.open_time,
        "candle": value,
    }


def _late_entry(lt: LateRecord) -> tuple[str, dict[str, Any]]:
    return f"{lt.exchange}:{lt.symbol}:{lt.trade_id}", {
        "exchange": lt.exchange,
        "symbol": lt.symbol,
        "trade_id": lt.trade_id,
        "price": format_e8(lt.price_e8),
        "quantity": format_e8(lt.quantity_e8),
        "event_time": lt.event_time,
        "is_buyer_maker": "true" if lt.is_buyer_maker else "false",
        "windows": orjson.dumps(lt.windows),
        "watermark": lt.watermark,
        "source_stream": lt.source_stream,
        "source_id": lt.source_id,
    }


def _reject_entry(rj: RejectRecord) -> tuple[str, dict[str, Any]]:
    return f"{rj.source_stream}/{rj.source_id.decode()}", {
        "reason": rj.reason,
        "payload": rj.payload,
        "exchange": rj.exchange,
        "detail": rj.detail,
        "source_stream": rj.source_stream,
        "source_id": rj.source_id,
        "recv_ms": rj.recv_ms,
    }


# ---- reads ------------------------------------------------------------------------


@dataclass(frozen=True)
class CandleRecord:
    """A candle as a reader returns it.

    Attributes:
        candle: the candle; for a filled record, the previous close at zero volume.
        closed: whether its window is closed.
        source: ``stream`` or ``batch``: the layer it came from.
        filled: a gap-filled record (no trades in the window).

    """

    candle: Candle
    closed: bool
    source: str
    filled: bool = False

    def to_json_dict(self, *, with_filled: bool = False) -> dict[str, Any]:
        """DESIGN.md section 8's record; ``filled`` added when asked for gap filling.

        A filled record has zero volume, so its ``vwap`` and trade ids are ``null``.
        """
        if not self.filled:
            rec = self.candle.to_json_dict(closed=self.closed, source=self.source)
        else:
            c = self.candle
            rec = {
                "exchange": c.exchange,
                "symbol": c.symbol,
                "interval": c.interval.label,
                "open_time": c.open_time,
                "open": format_e8(c.open_e8),
                "high": format_e8(c.high_e8),
                "low": format_e8(c.low_e8),
                "close": format_e8(c.close_e8),
                "volume": format_e8(0),
                "quote_volume": format_e16(0),
                "trade_count": 0,
                "taker_buy_volume": format_e8(0),
                "vwap": None,
                "first_trade_id": None,
                "last_trade_id": None,
                "closed": self.closed,
                "source": self.source,
            }
        if with_filled:
            rec["filled"] = self.filled
        return rec


class CandleReader(Protocol):
    """Reads candles of one symbol and interval, ordered by (exchange, open_time)."""

    def read(
        self,
        symbol: str,
        interval: Interval,
        *,
        exchange: str | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> list[CandleRecord]:
        """Candles with ``start <= open_time < end`` (either bound optional)."""
        ...

    def previous(
        self, symbol: str, interval: Interval, exchange: str, before: int
    ) -> CandleRecord | None:
        """The last closed candle with ``open_time < before``, if any (for gap filling)."""
        ...


class StreamCandleReader:
    """The speed layer's candles: closed ones, plus the live candle of the open window."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def exchanges(self, symbol: str) -> list[str]:
        """Exchanges that have candles of ``symbol``."""
        return sorted(x.decode() for x in self.client.smembers(exchanges_key(symbol)))  # type: ignore[union-attr]

    def read(
        self,
        symbol: str,
        interval: Interval,
        *,
        exchange: str | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> list[CandleRecord]:
        """Closed candles in range, then the live one when its window is in range."""
        out: list[CandleRecord] = []
        for ex in [exchange] if exchange else self.exchanges(symbol):
            out += self._series(ex, symbol, interval, start, end)
        return out

    def _series(
        self, ex: str, symbol: str, interval: Interval, start: int | None, end: int | None
    ) -> list[CandleRecord]:
        lo = "-inf" if start is None else start
        hi = "+inf" if end is None else f"({end}"
        members = self.client.zrangebyscore(index_key(ex, symbol, interval), lo, hi)
        out: list[CandleRecord] = []
        if members:
            values: list[Any] = self.client.hmget(series_key(ex, symbol, interval), members)  # type: ignore[arg-type]
            for v in values:
                if v is not None:
                    out.append(CandleRecord(candle_from_record(orjson.loads(v)), True, "stream"))
        live = self.client.hget(live_key(ex, symbol), interval.label)
        if live is not None:
            c = candle_from_record(orjson.loads(cast(bytes, live)))
            in_range = (start is None or c.open_time >= start) and (
                end is None or c.open_time < end
            )
            newer = not out or c.open_time > out[-1].candle.open_time
            if in_range and newer and not self._is_closed(ex, symbol, interval, c.open_time):
                out.append(CandleRecord(c, False, SOURCE_STREAM))
        return out

    def _is_closed(self, ex: str, symbol: str, interval: Interval, open_time: int) -> bool:
        return self.client.zscore(index_key(ex, symbol, interval), str(open_time)) is not None

    def previous(
        self, symbol: str, interval: Interval, exchange: str, before: int
    ) -> CandleRecord | None:
        """The last closed candle before ``before``."""
        members: list[Any] = self.client.zrevrangebyscore(
            index_key(exchange, symbol, interval), f"({before}", "-inf", start=0, num=1
        )
        if not members:
            return None
        v = self.client.hget(series_key(exchange, symbol, interval), members[0])
        if v is None:
            return None
        return CandleRecord(candle_from_record(orjson.loads(cast(bytes, v))), True, SOURCE_STREAM)


class BatchLayerUnavailableError(RuntimeError):
    """The batch layer's candles cannot be read (not built or not configured)."""


class MergedCandleReader:
    """What users get: the batch view for sealed days, the speed view for the rest.

    Until a batch reader is plugged in (``batch=None``), this is the speed view.
    """

    def __init__(self, stream: CandleReader, batch: CandleReader | None = None) -> None:
        self.stream = stream
        self.batch = batch

    def read(
        self,
        symbol: str,
        interval: Interval,
        *,
        exchange: str | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> list[CandleRecord]:
        """Candles of both layers, the batch layer's winning where it has a candle."""
        got = self.stream.read(symbol, interval, exchange=exchange, start=start, end=end)
        if self.batch is None:
            return got
        batch = self.batch.read(symbol, interval, exchange=exchange, start=start, end=end)
        # A day the batch layer has computed is served from it alone (DESIGN.md 1, 5).
        covered = getattr(self.batch, "covered_days", None)
        days = {(d - date(1970, 1, 1)).days for d in covered(interval)} if covered else set()
        by_key = {r.candle.key: r for r in got if r.candle.open_time // DAY_MS not in days}
        by_key.update({r.candle.key: r for r in batch})
        return [by_key[k] for k in sorted(by_key)]

    def previous(
        self, symbol: str, interval: Interval, exchange: str, before: int
    ) -> CandleRecord | None:
        """The later of the two layers' previous candles."""
        found = [
            r.previous(symbol, interval, exchange, before)
            for r in (self.stream, self.batch)
            if r is not None
        ]
        present = [r for r in found if r is not None]
        return max(present, key=lambda r: r.candle.open_time) if present else None


#: Factory of the batch layer's reader, set by the batch layer when it is built
#: (``candlestore.BATCH_READER_FACTORY = lambda settings: ...``).
BATCH_READER_FACTORY: Any = None


def batch_reader(settings: Settings) -> CandleReader:
    """The batch layer's candle reader.

    Raises:
        BatchLayerUnavailableError: until the batch layer registers one.

    """
    if BATCH_READER_FACTORY is None:
        try:  # the batch layer registers its reader when imported
            __import__("batch.serving")
        except ImportError:
            pass
    if BATCH_READER_FACTORY is None:
        msg = (
            "the batch layer's candles are not available yet (no batch reader is "
            "registered); use --source stream or --source merged"
        )
        raise BatchLayerUnavailableError(msg)
    reader: CandleReader = BATCH_READER_FACTORY(settings)
    return reader


def reader_for(source: str, settings: Settings, client: redis.Redis) -> CandleReader:
    """The reader of ``--source merged|stream|batch``."""
    if source == SOURCE_STREAM:
        return StreamCandleReader(client)
    if source == SOURCE_BATCH:
        return batch_reader(settings)
    if source == "merged":
        try:
            batch: CandleReader | None = batch_reader(settings)
        except BatchLayerUnavailableError:
            batch = None
        return MergedCandleReader(StreamCandleReader(client), batch)
    msg = f"unknown source {source!r}: use one of {', '.join(SOURCES)}"
    raise ValueError(msg)


# ---- gap filling ------------------------------------------------------------------


def closed_until(
    client: redis.Redis, settings: Settings, symbol: str, flow: str = "candles"
) -> int:
    """The candles flow's watermark for ``symbol``'s partition (windows before it are closed)."""
    streams = raw_stream_names(settings.raw_shards)
    stream = streams[shard_of(symbol, settings.raw_shards)]
    raw = client.hget(counts_key(flow, stream), "watermark")
    return int(cast(bytes, raw)) if raw is not None else 0


def fill_gaps(
    records: Iterable[CandleRecord],
    interval: Interval,
    *,
    start: int | None,
    end: int | None,
    previous: dict[str, CandleRecord | None],
    closed_until_ms: int,
) -> list[CandleRecord]:
    """Records with every empty window in range filled (previous close, zero volume).

    Per exchange: from ``start`` when a candle before it gives a close (else from
    the first candle), to ``end`` (else the last candle). Windows after the last
    candle are filled only while closed (ending at or before ``closed_until_ms``),
    so nothing is invented for a window still open or in the future.
    """
    by_ex: dict[str, list[CandleRecord]] = {}
    for r in records:
        by_ex.setdefault(r.candle.exchange, []).append(r)
    for ex, prev in previous.items():
        if prev is not None:
            by_ex.setdefault(ex, [])
    step = interval.ms
    out: list[CandleRecord] = []
    for ex in sorted(by_ex):
        recs = {r.candle.open_time: r for r in by_ex[ex]}
        last = previous.get(ex) if start is not None else None
        if last is not None:
            t = -(-start // step) * step  # type: ignore[operator]
        elif recs:
            t = min(recs)
        else:
            continue
        last_real = max(recs) if recs else t - step
        stop = end if end is not None else last_real + step
        while t < stop:
            rec = recs.get(t)
            if rec is not None:
                out.append(rec)
                last = rec
            elif last is not None:
                if t > last_real and t + step > closed_until_ms:
                    break
                out.append(_filled(last.candle, interval, t, last.source))
            t += step
    return out


def _filled(prev: Candle, interval: Interval, open_time: int, source: str) -> CandleRecord:
    p = prev.close_e8
    c = Candle(prev.exchange, prev.symbol, interval, open_time, p, p, p, p, 0, 0, 0, 0,
               open_time, 0, open_time, 0)  # fmt: skip
    return CandleRecord(c, True, source, filled=True)
