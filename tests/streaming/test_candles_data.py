"""Generated market days for the candles-flow tests, with known faults and known outcomes.

A :class:`Day` is a set of distinct trades and the raw-log entries that deliver them
in arrival order: most on time, some out of order inside the allowed lateness, some
twice, some late (after a later trade has moved the watermark past their 1m window),
and malformed messages in between. The expected outcome is known independently of
the flow: the reference candles are :func:`marketdata.candle.fold_trades` of every
trade that is not late, and the late set is the trades generated late.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson
import redis

from marketdata.candle import Candle, fold_trades
from marketdata.hostile import GENERATORS
from marketdata.interval import Interval
from marketdata.parsing import FORMAT_CSV
from marketdata.rawmessage import ProgressMark, RawMessage
from marketdata.simulator import trade_payload
from marketdata.trade import Rejection, Trade
from redisstore.streamids import join_id, parse_id
from streaming.fastparse import parse_raw_message

T0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z
_MALFORMED = [k for k in GENERATORS if k not in ("valid", "oversized")]

CandleKey = tuple[str, str, str, int]


@dataclass
class Day:
    """A generated stretch of market with its raw-log entries and expected outcome."""

    trades: list[Trade]
    late_keys: set[tuple[str, str, int]]
    #: (arrival ms, message or progress mark) in arrival order.
    entries: list[tuple[int, RawMessage | ProgressMark]]
    rejected: int
    duplicates: int
    lateness_ms: int
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def on_time(self) -> list[Trade]:
        """The trades the stream must fold (all but the late ones)."""
        return [t for t in self.trades if t.key not in self.late_keys]

    @property
    def late(self) -> list[Trade]:
        """The trades the stream must send to the late stream."""
        return [t for t in self.trades if t.key in self.late_keys]

    def reference(self, intervals: Iterable[Interval] = Interval) -> dict[CandleKey, Candle]:
        """The reference candles of every interval: fold_trades of the on-time trades."""
        out: dict[CandleKey, Candle] = {}
        on_time = self.on_time
        for iv in intervals:
            out.update(fold_trades(on_time, iv))
        return out

    def stream_ids(self) -> list[bytes]:
        """Explicit, increasing stream ids from the arrival times (``ms-seq``)."""
        ids: list[bytes] = []
        prev, seq = -1, 0
        for arrival, _ in self.entries:
            ms = max(arrival, prev)
            seq = seq + 1 if ms == prev else 0
            ids.append(join_id(ms, seq))
            prev = ms
        return ids

    def field_lists(self) -> list[list[bytes]]:
        """Each entry's fields as the flat list XREAD returns."""
        out = []
        for _, msg in self.entries:
            flat: list[bytes] = []
            for k, v in msg.to_fields().items():
                flat += [k, v]
            out.append(flat)
        return out

    def write(
        self,
        client: redis.Redis,
        stream: str = "md:trades:raw",
        start: int = 0,
        stop: int | None = None,
        explicit_ids: bool = True,
    ) -> int:
        """XADD entries ``[start, stop)`` (with arrival-time ids unless told otherwise)."""
        ids = self.stream_ids()
        stop = len(self.entries) if stop is None else stop
        pipe = client.pipeline(transaction=False)
        for i in range(start, stop):
            fields = self.entries[i][1].to_fields()
            if explicit_ids:
                pipe.xadd(stream, fields, id=ids[i])  # type: ignore[arg-type]
            else:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            if len(pipe) >= 2000:
                pipe.execute()
        pipe.execute()
        return stop - start


def gen_day(
    seed: int,
    *,
    n: int = 20_000,
    start_ms: int = T0,
    span_ms: int = 86_400_000,
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "SOLUSDT"),
    exchanges: tuple[str, ...] = ("binance",),
    lateness_ms: int = 5_000,
    out_of_order: float = 0.05,
    duplicates: float = 0.03,
    late: float = 0.0,
    malformed: float = 0.01,
    sparse_ids: bool = False,
    marks_every_ms: int = 0,
    far_ahead: float = 0.0,
) -> Day:
    """A generated day: ``n`` trades over ``span_ms`` with the given fault shares.

    Arrival is event time plus a delay: zero, or under 0.8 x lateness for
    out-of-order trades, so those are never late. A duplicate arrives less than half
    the lateness after its original. A late trade arrives after the first on-time
    arrival that moved the largest event time past its 1m window's end plus the
    lateness, so it is late by construction.

    With ``marks_every_ms``, each venue's feed writes a progress mark that often (in
    arrival time): the largest event time of its on-time trades arrived so far, so
    the marks never change what is late. With ``far_ahead``, that share of trades
    also comes once more, under a new trade id, dated two hours ahead (as a
    websocket message with or without receive time, or as a CSV row): rejected as
    ``bad_timestamp`` by its venue's clock.
    """
    rng = random.Random(seed)
    times = sorted(start_ms + rng.randrange(span_ms) for _ in range(n))
    next_id = {(ex, s): rng.randrange(1, 10**9) for ex in exchanges for s in symbols}
    price = {s: rng.randrange(10**9, 10**13) for s in symbols}
    trades: list[Trade] = []
    for t in times:
        ex, sym = rng.choice(exchanges), rng.choice(symbols)
        tid = next_id[(ex, sym)]
        next_id[(ex, sym)] += rng.randrange(2, 50) if sparse_ids else 1
        price[sym] = max(10**6, price[sym] + rng.randrange(-(10**7), 10**7 + 1))
        qty = rng.randrange(1, 10**9)
        trades.append(
            Trade(
                exchange=ex,
                symbol=sym,
                trade_id=tid,
                price_e8=price[sym],
                quantity_e8=qty,
                event_time=t,
                is_buyer_maker=rng.random() < 0.5,
            )
        )
    kinds = ["late" if rng.random() < late else "normal" for _ in trades]
    arrivals: list[int] = []
    for t, kind in zip(trades, kinds, strict=True):
        if kind == "normal" and rng.random() < out_of_order:
            arrivals.append(t.event_time + rng.randrange(1, max(2, lateness_ms * 8 // 10)))
        else:
            arrivals.append(t.event_time)
    late_keys, normal_arrivals, prefix_max = _make_late(trades, kinds, arrivals, lateness_ms, rng)
    entries: list[tuple[int, int, RawMessage | ProgressMark]] = []  # (arrival, tie-break, entry)
    seq = 0

    def push(arrival: int, msg: RawMessage | ProgressMark) -> None:
        nonlocal seq
        entries.append((arrival, seq, msg))
        seq += 1

    dup_count = 0
    rejected = 0
    reasons: dict[str, int] = {}
    for t, a in zip(trades, arrivals, strict=True):
        msg = RawMessage(trade_payload(t), t.exchange, a, symbol=t.symbol)
        push(a, msg)
        if rng.random() < duplicates:
            push(a + rng.randrange(0, max(1, lateness_ms // 2)), msg._replace(recv_ms=a + 1))
            dup_count += 1
        if rng.random() < malformed:
            base = orjson.loads(trade_payload(t))
            payload, _ = GENERATORS[rng.choice(_MALFORMED)](rng, base)
            bad = RawMessage(payload, t.exchange, a, symbol=t.symbol)
            res = parse_raw_message(bad)
            if isinstance(res, Rejection):
                push(a, bad)
                rejected += 1
                reasons[res.reason] = reasons.get(res.reason, 0) + 1
        if rng.random() < far_ahead:
            push(a, far_ahead_entry(t, a, rng))
            rejected += 1
            reasons["bad_timestamp"] = reasons.get("bad_timestamp", 0) + 1
    if marks_every_ms:
        for a, mark in progress_marks(normal_arrivals, prefix_max, marks_every_ms):
            push(a, mark)
    entries.sort(key=lambda e: (e[0], e[1]))
    return Day(
        trades=trades,
        late_keys=late_keys,
        entries=[(a, msg) for a, _, msg in entries],
        rejected=rejected,
        duplicates=dup_count,
        lateness_ms=lateness_ms,
        reasons=reasons,
    )


def _make_late(
    trades: list[Trade],
    kinds: list[str],
    arrivals: list[int],
    lateness_ms: int,
    rng: random.Random,
) -> tuple[set[tuple[str, str, int]], dict[str, list[int]], dict[str, list[int]]]:
    """Delay the trades of kind ``late`` until after their venue's clock passed their
    window (in place); returns their keys, and per venue the on-time arrivals and the
    largest event time delivered by each."""
    # Per venue (each has its own clock): the largest event time delivered, as a
    # function of arrival, over its on-time trades.
    normal: dict[str, list[tuple[int, int]]] = {}
    for a, t, k in zip(arrivals, trades, kinds, strict=True):
        if k == "normal":
            normal.setdefault(t.exchange, []).append((a, t.event_time))
    normal_arrivals: dict[str, list[int]] = {}
    prefix_max: dict[str, list[int]] = {}
    for ex, pairs in normal.items():
        pairs.sort()
        normal_arrivals[ex] = [a for a, _ in pairs]
        prefix_max[ex] = list(itertools.accumulate((e for _, e in pairs), max))
    late_keys: set[tuple[str, str, int]] = set()
    for i, (t, kind) in enumerate(zip(trades, kinds, strict=True)):
        if kind != "late":
            continue
        need = t.event_time - t.event_time % 60_000 + 60_000 + lateness_ms
        marks = prefix_max.get(t.exchange, [])
        j = bisect.bisect_left(marks, need)
        if j == len(marks):
            kinds[i] = "normal"  # nothing later moves its venue's clock: on time after all
            continue
        arrivals[i] = normal_arrivals[t.exchange][j] + rng.randrange(1, 30_000)
        late_keys.add(t.key)
    return late_keys, normal_arrivals, prefix_max


def far_ahead_entry(t: Trade, a: int, rng: random.Random) -> RawMessage:
    """``t`` once more under a new id, dated 2 h ahead: a websocket message with or
    without receive time, or a dump row, arriving at ``a``."""
    bogus = t._replace(trade_id=t.trade_id + 10**12, event_time=t.event_time + 7_200_000)
    form = rng.choice(["ws", "ws-no-recv", "csv"])
    if form == "csv":
        p, q = divmod(bogus.price_e8, 10**8), divmod(bogus.quantity_e8, 10**8)
        row = (
            f"{bogus.trade_id},{p[0]}.{p[1]:08d},{q[0]}.{q[1]:08d},"
            f"0,{bogus.event_time},{bogus.is_buyer_maker},True"
        )
        return RawMessage(row.encode(), t.exchange, a, FORMAT_CSV, t.symbol)
    recv = a if form == "ws" else 0
    return RawMessage(trade_payload(bogus), t.exchange, recv, symbol=t.symbol)


def progress_marks(
    arrivals: dict[str, list[int]], prefix_max: dict[str, list[int]], every_ms: int
) -> Iterator[tuple[int, ProgressMark]]:
    """Each venue's honest marks every ``every_ms`` of arrival: its largest on-time
    event time arrived so far (so they never change what is late)."""
    for ex, arrived in arrivals.items():
        a = arrived[0]
        while a <= arrived[-1] + every_ms:
            j = bisect.bisect_right(arrived, a)
            if j:
                yield a, ProgressMark(ex, prefix_max[ex][j - 1], a)
            a += every_ms


def batches(items: list, rng: random.Random, low: int = 1, high: int = 3000) -> Iterator[list]:
    """``items`` cut into consecutive batches of random sizes."""
    i = 0
    while i < len(items):
        k = rng.randrange(low, high + 1)
        yield items[i : i + k]
        i += k


def candle_map(candles: Iterable[Candle]) -> dict[CandleKey, dict]:
    """Candles by key, as their exact comparable fields (later ones win)."""
    return {c.key: c.fields() for c in candles}


def ref_map(day: Day) -> dict[CandleKey, dict]:
    """The day's reference candles as exact comparable fields."""
    return {k: c.fields() for k, c in day.reference().items()}


def test_generated_day_is_what_it_says() -> None:
    day = gen_day(1, n=3000, late=0.02, duplicates=0.05, malformed=0.02)
    assert len({t.key for t in day.trades}) == len(day.trades)
    assert day.late_keys and day.rejected and day.duplicates
    arrivals = [a for a, _ in day.entries]
    assert arrivals == sorted(arrivals)
    ids = day.stream_ids()
    assert ids == sorted(ids, key=parse_id)
    assert len(set(ids)) == len(ids)
    # Every late trade arrives after a trade 'lateness' past its window's end arrived.
    max_event = -1
    for _, msg in day.entries:
        res = parse_raw_message(msg)
        if isinstance(res, Trade):
            if res.key in day.late_keys:
                assert max_event - day.lateness_ms >= Interval.M1.floor(res.event_time) + 60_000
            else:
                max_event = max(max_event, res.event_time)
