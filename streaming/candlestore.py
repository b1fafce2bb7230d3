"""The candles flow's store: its idempotent writes to Redis (docs/storage.md).

What a batch of :class:`CandleWrites` writes, through :class:`streaming.sinks.FlowSink`
(the logic is :mod:`streaming.candleagg`, the wiring :mod:`streaming.flows.candles`;
docs/architecture.md, "Inside the speed layer").
Every key that holds one symbol's data carries the ``{SYMBOL}`` hash tag, so all of
a symbol's candles live in one Redis Cluster slot (the key names are
:mod:`redisstore.keys`):

* ``md:candles:{SYM}:<exchange>:<interval>``: hash, field = open_time (ms), value =
  the closed candle as JSON; ``...:<interval>:idx``: sorted set of the open times
  (score = member = open_time) for range queries; both trimmed of the candles that
  opened more than the retention before the newest one written to the key;
  ``...:<interval>:trimmed``: sorted set of the UTC days (start ms) it trimmed candles of;
* ``md:candles:{SYM}:<exchange>:live``: hash, field = interval, value = the newest
  open window's candle as JSON (``closed: false``), expiring a day after its last
  update;
* ``md:candles:{SYM}:exchanges``: set of the exchanges with candles of the symbol,
  and ``md:candles:symbols``: set of ``exchange:SYMBOL`` (global);
* ``md:candles:closed``: stream of closed-candle events for the metrics flow;
* ``md:trades:dlq`` and ``md:trades:late``: the rejected and late streams.

Writes are idempotent: candles are upserts; stream appends go through a script that
appends only when the entry's identity (trade key, source entry id, candle key and
content) has not been appended in the last two days (``CRYPTOPIPE_APPEND_DEDUPE_MS``),
so a replay after recovery never adds a second copy. Decimals are exact strings,
never floats. Reading is the serving package's (:mod:`serving.stream`).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from marketdata.candle import Candle
from marketdata.interval import Interval
from marketdata.records import candle_json
from marketdata.settings import (
    DEFAULT_APPEND_DEDUPE_MS,
    DEFAULT_CANDLE_RETENTION_MS,
    DEFAULT_CLOSED_EVENTS_MAXLEN,
    DEFAULT_LATENESS_MS,
)
from marketdata.timeutil import now_ms
from redisstore.keys import (
    CLOSED_EVENTS_STREAM,
    DLQ_STREAM,
    LATE_STREAM,
    SYMBOLS_KEY,
    counts_key,
    exchanges_key,
    index_key,
    live_key,
    series_key,
    trimmed_key,
    written_key,
)
from streaming.candleagg import LateTrade, RejectedEntry
from streaming.prom import CLOSE_DELAY, add_source, candle_counter_families
from streaming.rejectlog import RejectionLog

LIVE_TTL_S = 86_400
#: A series key is trimmed at most once per this many seconds (per store)...
TRIM_EVERY_S = 60.0
#: ... by at most this many candles (one that hit it is trimmed again next write).
TRIM_LIMIT = 100

#: KEYS: a series hash, its index, its trimmed days. ARGV: cutoff (exclusive), limit.
#: Removes the closed candles whose open_time is below the cutoff, oldest first, at
#: most ``limit``, from both, and adds the UTC day (its start, ms) of each to the
#: trimmed days (so reconciliation knows exactly which days Redis no longer holds
#: whole); returns how many.
TRIM_SCRIPT = """
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
if #old > 0 then
  redis.call('HDEL', KEYS[1], unpack(old))
  redis.call('ZREM', KEYS[2], unpack(old))
  local seen = {}
  for _, t in ipairs(old) do
    local day = tonumber(t) - tonumber(t) % 86400000
    if not seen[day] then
      seen[day] = true
      redis.call('ZADD', KEYS[3], day, string.format('%d', day))
    end
  end
end
return #old
"""


# ---- writes -----------------------------------------------------------------------

#: The latest exactly-once counters of each partition this process writes (for
#: ``/metrics``: the same values as ``md:flow:candles:counts:<stream>``).
_COUNTERS: dict[str, dict[str, Any]] = {}


@functools.cache  # once per process, by the first store
def _export_counters() -> None:
    add_source(lambda: candle_counter_families(dict(_COUNTERS)))


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
class CandleWrites:
    """Everything one step of the candles flow writes, in one pipeline."""

    source_stream: str
    closed: list[Candle] = field(default_factory=list)
    live: list[Candle] = field(default_factory=list)
    late: list[LateTrade] = field(default_factory=list)
    rejects: list[RejectedEntry] = field(default_factory=list)
    #: Absolute counters of the partition (exactly once: they are part of its state).
    counters: dict[str, int | str] = field(default_factory=dict)
    #: Raw-log entries consumed by this step (for the heartbeat).
    entries: int = 0

    def __len__(self) -> int:
        return len(self.closed) + len(self.live) + len(self.late) + len(self.rejects)


class CandleStore:
    """Writes candles, late trades and rejections to Redis; one pipeline per call.

    Args:
        client: the Redis to write to.
        flow: the flow's name (its counters' keys, its log lines).
        rejection_log: where new rejections and late trades are summed up (at most
            every 10 s); the flow passes the one its workers share and its
            heartbeat ticks. Default: a log of this store's own.
        retention_ms: closed candles whose open_time is more than this before the
            newest one this store wrote to their key are trimmed (hash and index),
            at most :data:`TRIM_LIMIT` per key every ``trim_every_s``; ``0`` never trims.
        trim_every_s: the least time between two trims of one key.
        closed_events_maxlen: closed-candle events kept (``MAXLEN ~``).
        dedupe_ms: how long appends remember their identities.
        lateness_ms: the flow's allowed lateness (the close delay's origin).

    """

    def __init__(
        self,
        client: redis.Redis,
        flow: str = "candles",
        rejection_log: RejectionLog | None = None,
        retention_ms: int = DEFAULT_CANDLE_RETENTION_MS,
        trim_every_s: float = TRIM_EVERY_S,
        closed_events_maxlen: int = DEFAULT_CLOSED_EVENTS_MAXLEN,
        dedupe_ms: int = DEFAULT_APPEND_DEDUPE_MS,
        lateness_ms: int = DEFAULT_LATENESS_MS,
    ) -> None:
        if retention_ms < 0:
            msg = f"retention_ms={retention_ms}: must not be negative"
            raise ValueError(msg)
        self.client = client
        self.flow = flow
        self.retention_ms = retention_ms
        self.trim_every_s = trim_every_s
        self.closed_events_maxlen = closed_events_maxlen
        self.dedupe_ms = dedupe_ms
        self.lateness_ms = lateness_ms
        _export_counters()
        self._xadd_once = client.register_script(XADD_ONCE_SCRIPT)
        self._trim = client.register_script(TRIM_SCRIPT)
        #: series key -> newest open_time written (this store's lifetime)
        self._newest: dict[str, int] = {}
        #: series key -> when it was last trimmed (monotonic seconds)
        self._trimmed_at: dict[str, float] = {}
        self._known_series: set[tuple[str, str]] = set()
        self.rejection_log = rejection_log or RejectionLog(flow)

    def _append_once(
        self,
        pipe: Any,
        stream: str,
        entries: list[tuple[str, dict[str, Any]]],
        now: int,
        maxlen: int = 0,
    ) -> None:
        """Append entries (identity, fields) not appended before; one script call."""
        if not entries:
            return
        nf = len(entries[0][1])
        args: list[Any] = [now, self.dedupe_ms, maxlen, nf]
        for identity, fields in entries:
            args.append(identity)
            for k, v in fields.items():
                args += [k, v]
        self._xadd_once(keys=[stream, written_key(stream)], args=args, client=pipe)

    def stage(self, batches: Sequence[CandleWrites]) -> int:
        """Note what was rejected or late, for the log (:mod:`streaming.rejectlog`).

        Runs once per batch, before the (retried) Redis writes; writes nothing.
        """
        for b in batches:
            if b.rejects or b.late:
                self.rejection_log.observe((rj.rejection.reason for rj in b.rejects), len(b.late))
        return 0

    def finish(self) -> None:
        """The flow ends: log what was rejected or late since the last line."""
        self.rejection_log.flush()

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
                _COUNTERS[b.source_stream] = dict(counters)

            n += len(b)
        trims: list[tuple[int, str]] = []  # (position in the pipeline, series key)
        mono = time.monotonic()
        for (ex, sym, iv), values in series.items():
            key, idx = series_key(ex, sym, iv), index_key(ex, sym, iv)
            pipe.hset(key, mapping=values)
            pipe.zadd(idx, {t: int(t) for t in values})
            newest = max(self._newest.get(key, 0), *map(int, values))
            self._newest[key] = newest
            if self.retention_ms and mono - self._trimmed_at.get(key, -1e18) >= self.trim_every_s:
                self._trimmed_at[key] = mono
                trims.append((len(pipe), key))
                self._trim(
                    keys=[key, idx, trimmed_key(ex, sym, iv)],
                    args=[newest - self.retention_ms, TRIM_LIMIT],
                    client=pipe,
                )
            if (ex, sym) not in self._known_series:
                pipe.sadd(exchanges_key(sym), ex)
                pipe.sadd(SYMBOLS_KEY, f"{ex}:{sym}")
                self._known_series.add((ex, sym))
        for key, values in live.items():
            pipe.hset(key, mapping=values)
            pipe.expire(key, LIVE_TTL_S)
        self._append_once(pipe, CLOSED_EVENTS_STREAM, events, now, self.closed_events_maxlen)
        self._append_once(pipe, LATE_STREAM, late, now)
        self._append_once(pipe, DLQ_STREAM, rejects, now)
        if len(pipe):
            results = pipe.execute()
            for pos, key in trims:
                if results[pos] >= TRIM_LIMIT:  # more left: trim again at the next write
                    self._trimmed_at.pop(key, None)
        written = now_ms()
        for b in batches:
            for c in b.closed:
                due = c.open_time + c.interval.ms + self.lateness_ms
                CLOSE_DELAY.observe(max(0, written - due) / 1000)
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


def _late_entry(lt: LateTrade) -> tuple[str, dict[str, Any]]:
    t = lt.trade
    return f"{t.exchange}:{t.symbol}:{t.trade_id}", {
        **t.to_fields(),
        "windows": orjson.dumps(lt.windows),
        "watermark": lt.watermark,
        "source_stream": lt.stream,
        "source_id": lt.entry_id,
    }


def _reject_entry(rj: RejectedEntry) -> tuple[str, dict[str, Any]]:
    r = rj.rejection
    return f"{rj.stream}/{rj.entry_id.decode()}", {
        "reason": r.reason,
        "payload": r.payload,
        "exchange": r.exchange,
        "detail": r.detail,
        "source_stream": rj.stream,
        "source_id": rj.entry_id,
        "recv_ms": rj.recv_ms,
    }
