"""A seeded market simulator: realistic trades, bursty arrivals, injected faults.

Pure and deterministic: the same :class:`SimConfig` always yields the same messages
in the same order. The feed (``cryptopipe feed simulate``) paces them and writes
them to the raw log.

Model:

* price: a geometric random walk per symbol (annualised volatility ``vol``) on the
  symbol's tick size; with several exchanges each quotes the common price plus a
  small exchange-specific basis, so cross-exchange spreads exist;
* arrivals: a Poisson process whose rate switches between calm and burst regimes,
  averaging ``rate`` trades per second across all symbols; several trades may
  share a millisecond;
* quantity: log-normal, on the symbol's lot size.

Faults (each a share of trades, applied independently):

* ``out_of_order``: the message arrives later than it should, but inside the
  allowed lateness, so it still belongs to an open window;
* ``duplicates``: the same message is delivered a second time, inside the lateness;
* ``late``: the message arrives after its 1m window closed (more than the lateness
  after the window's end), so the speed layer must send it to the late stream;
* ``malformed``: an extra, invalid message (bad JSON, NaN, missing fields, ...).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import orjson

from marketdata.decimals import SCALE, format_e8
from marketdata.hostile import GENERATORS
from marketdata.trade import Trade

# symbol -> (start price, tick size e8, lot size e8, typical quantity)
_PROFILES: dict[str, tuple[float, int, int, float]] = {
    "BTCUSDT": (65_000.0, 1_000_000, 1_000, 0.02),
    "ETHUSDT": (3_200.0, 1_000_000, 10_000, 0.3),
    "SOLUSDT": (150.0, 1_000_000, 1_000_000, 3.0),
    "BNBUSDT": (580.0, 1_000_000, 100_000, 1.0),
    "XRPUSDT": (0.6, 10_000, 10_000_000, 500.0),
    "DOGEUSDT": (0.12, 1_000, 100_000_000, 2_000.0),
    "ETHBTC": (0.05, 100, 10_000, 0.3),
}
_DEFAULT_PROFILE = (100.0, 10_000, 1_000_000, 5.0)
_MS_PER_YEAR = 365.25 * 86_400_000

KIND_TRADE = "trade"
KIND_OUT_OF_ORDER = "out_of_order"
KIND_DUPLICATE = "duplicate"
KIND_LATE = "late"
KIND_MALFORMED = "malformed"


@dataclass(frozen=True)
class SimConfig:
    """What to simulate.

    Attributes:
        symbols: upper-case symbols; activity is weighted toward the first ones.
        exchanges: lower-case exchange names; each trades every symbol.
        rate: average trades per second (event time), all symbols together.
        start_ms: event time of the first trade, ms since the epoch UTC.
        duration_s: simulated seconds; ``None`` runs forever.
        seed: random seed; same seed, same market.
        out_of_order / duplicates / late / malformed: fault shares in [0, 1].
        lateness_ms: the speed layer's allowed lateness the faults are sized by.
        vol: annualised volatility of the price walk.

    """

    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    exchanges: tuple[str, ...] = ("binance",)
    rate: float = 50.0
    start_ms: int = 1_741_910_400_000  # 2025-03-14T00:00:00Z
    duration_s: float | None = 60.0
    seed: int = 0
    out_of_order: float = 0.0
    duplicates: float = 0.0
    late: float = 0.0
    malformed: float = 0.0
    lateness_ms: int = 5_000
    vol: float = 0.8
    first_trade_id: int = 1_000_000

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("simulate needs at least one symbol")
        if not self.exchanges:
            raise ValueError("simulate needs at least one exchange")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            msg = f"rate must be a positive number of trades per second, got {self.rate}"
            raise ValueError(msg)
        for name in ("out_of_order", "duplicates", "late", "malformed"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                msg = f"{name} must be a share between 0 and 1, got {share}"
                raise ValueError(msg)


class SimMessage(NamedTuple):
    """One message of the simulated market, in arrival order.

    Attributes:
        arrival_ms: when it reaches the feed (simulated clock).
        exchange: where it comes from.
        symbol: its symbol (for sharding; malformed messages keep their source's).
        payload: Binance ``@trade`` JSON (or garbage, when malformed).
        kind: ``trade``, ``out_of_order``, ``duplicate``, ``late`` or ``malformed``.
        trade: the trade it carries (``None`` for malformed messages).

    """

    arrival_ms: int
    exchange: str
    symbol: str
    payload: bytes
    kind: str
    trade: Trade | None


def trade_payload(t: Trade, event_ms: int | None = None) -> bytes:
    """A Binance ``@trade`` websocket payload for a trade."""
    e = t.event_time if event_ms is None else event_ms
    return (
        f'{{"e":"trade","E":{e},"s":"{t.symbol}","t":{t.trade_id},'
        f'"p":"{format_e8(t.price_e8)}","q":"{format_e8(t.quantity_e8)}",'
        f'"T":{t.event_time},"m":{"true" if t.is_buyer_maker else "false"},"M":true}}'
    ).encode()


def coinbase_match_payload(
    t: Trade, sequence: int, *, micros: int = 0, kind: str = "match"
) -> bytes:
    """A Coinbase Exchange ``match`` (or ``last_match``) frame for a trade.

    Shaped as the sample of Coinbase's websocket documentation (its keys in that
    order; decimals as strings without trailing zeros, ``time`` in ISO 8601 UTC with
    microseconds: ``micros`` (0-999) beyond the trade's millisecond). ``side`` is the
    maker's: ``buy`` when the buyer was the maker.
    """
    when = datetime.fromtimestamp(t.event_time / 1000, UTC).replace(
        microsecond=(t.event_time % 1000) * 1000 + micros
    )
    side = "buy" if t.is_buyer_maker else "sell"
    return (
        f'{{"type":"{kind}","trade_id":{t.trade_id},"sequence":{sequence},'
        f'"maker_order_id":"{_order_id(t, 1)}","taker_order_id":"{_order_id(t, 2)}",'
        f'"time":"{when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}","product_id":"{t.symbol}",'
        f'"size":"{_plain(t.quantity_e8)}","price":"{_plain(t.price_e8)}","side":"{side}"}}'
    ).encode()


def _plain(e8: int) -> str:
    """A decimal as Coinbase writes it: no trailing zeros (``400.23``, ``5.23512``, ``7``)."""
    text = format_e8(e8).rstrip("0")
    return text[:-1] if text.endswith(".") else text


def _order_id(t: Trade, n: int) -> str:
    """A stable UUID-shaped order id for a trade's maker (1) or taker (2)."""
    h = f"{t.trade_id * 2 + n:032x}"[-32:]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def agg_trade_payload(t: Trade, agg_id: int, event_ms: int | None = None) -> bytes:
    """A Binance ``@aggTrade`` websocket payload for an aggregate trade (``t.span`` trades)."""
    e = t.event_time if event_ms is None else event_ms
    return (
        f'{{"e":"aggTrade","E":{e},"s":"{t.symbol}","a":{agg_id},'
        f'"p":"{format_e8(t.price_e8)}","q":"{format_e8(t.quantity_e8)}",'
        f'"f":{t.trade_id},"l":{t.last_trade_id},"T":{t.event_time},'
        f'"m":{"true" if t.is_buyer_maker else "false"},"M":true}}'
    ).encode()


_MALFORMED_KINDS = tuple(k for k in GENERATORS if k not in ("valid", "oversized"))


def _malformed(rng: random.Random, t: Trade) -> bytes:
    """An invalid message built from a real trade (see :mod:`marketdata.hostile`)."""
    base = orjson.loads(trade_payload(t))
    return GENERATORS[rng.choice(_MALFORMED_KINDS)](rng, base)[0]


@dataclass
class _Book:
    price_e8: int
    tick_e8: int
    lot_e8: int
    qty: float
    next_id: int
    basis: dict[str, float] = field(default_factory=dict)


def simulate(cfg: SimConfig) -> Iterator[SimMessage]:  # noqa: C901 - one generator loop, kept whole for its ordering rules
    """Messages of the simulated market in arrival order (ties keep generation order)."""
    rng = random.Random(cfg.seed)
    books: dict[tuple[str, str], _Book] = {}
    mids: dict[str, float] = {}
    for s in cfg.symbols:
        start, tick, lot, qty = _PROFILES.get(s, _DEFAULT_PROFILE)
        mids[s] = start * (1 + rng.uniform(-0.02, 0.02))
        for ex in cfg.exchanges:
            books[(ex, s)] = _Book(0, tick, lot, qty, cfg.first_trade_id)
    weights = [1.0 / (1 + i) for i in range(len(cfg.symbols))]
    basis = {
        ex: (0.0 if i == 0 else rng.uniform(-0.0015, 0.0015)) for i, ex in enumerate(cfg.exchanges)
    }

    end_ms = None if cfg.duration_s is None else cfg.start_ms + int(cfg.duration_s * 1000)
    pending: list[tuple[int, int, SimMessage]] = []  # (arrival, seq, message)
    seq = 0
    t_ms = float(cfg.start_ms)
    burst = 1.0
    regime_until = t_ms
    window_ms = 60_000

    max_event = 0  # largest event time delivered so far: the event-time watermark's base

    def push(msg: SimMessage) -> None:
        nonlocal seq
        heapq.heappush(pending, (msg.arrival_ms, seq, msg))
        seq += 1

    def is_late(msg: SimMessage) -> bool:
        t = msg.trade.event_time  # type: ignore[union-attr]
        return max_event - cfg.lateness_ms >= t - t % window_ms + window_ms

    def deliver(msg: SimMessage) -> SimMessage:
        nonlocal max_event
        if msg.trade is not None and msg.kind != KIND_MALFORMED:
            max_event = max(max_event, msg.trade.event_time)
        return msg

    while True:
        if t_ms >= regime_until:
            # Calm regimes (mean 20 s) 80% of the time, bursts (mean 5 s) at 4x the
            # calm rate otherwise: calm holds 16/17 of the time, so 0.85 and 3.4 make
            # the time-weighted mean exactly ``rate``.
            calm = rng.random() < 0.8
            burst = 0.85 if calm else 3.4
            regime_until = t_ms + rng.expovariate(1 / (20_000 if calm else 5_000))
        t_ms += rng.expovariate(cfg.rate * burst / 1000.0)
        now = int(t_ms)
        # Everything due before this trade's arrival leaves first. A late message
        # waits until a later trade has really moved the watermark past its window
        # (quiet markets can leave a gap), so "late" always means late.
        held = []
        while pending and pending[0][0] <= now:
            msg = heapq.heappop(pending)[2]
            if msg.kind == KIND_LATE and not is_late(msg):
                held.append(msg._replace(arrival_ms=now + 1))
                continue
            yield deliver(msg)
        for msg in held:
            push(msg)
        if end_ms is not None and now >= end_ms:
            break
        sym = rng.choices(cfg.symbols, weights)[0]
        ex = cfg.exchanges[rng.randrange(len(cfg.exchanges))]
        book = books[(ex, sym)]
        # Random walk of the common mid, per trade of the symbol.
        dt_years = max(1.0, 1000.0 / cfg.rate) / _MS_PER_YEAR
        mids[sym] *= math.exp(rng.gauss(0.0, cfg.vol * math.sqrt(dt_years * len(cfg.symbols))))
        px = mids[sym] * (1 + basis[ex]) * (1 + rng.uniform(-0.0002, 0.0002))
        price_e8 = max(book.tick_e8, round(px * SCALE / book.tick_e8) * book.tick_e8)
        qty_e8 = max(
            book.lot_e8,
            round(rng.lognormvariate(0, 1.0) * book.qty * SCALE / book.lot_e8) * book.lot_e8,
        )
        trade = Trade(
            exchange=ex,
            symbol=sym,
            trade_id=book.next_id,
            price_e8=price_e8,
            quantity_e8=qty_e8,
            event_time=now,
            is_buyer_maker=rng.random() < 0.5,
        )
        book.next_id += 1
        payload = trade_payload(trade, now + rng.randrange(0, 3))

        kind = KIND_TRADE
        arrival = now
        roll = rng.random()
        if roll < cfg.late:
            kind = KIND_LATE
            window_end = now - now % window_ms + window_ms
            arrival = window_end + cfg.lateness_ms + rng.randrange(1_000, 30_000)
        elif roll < cfg.late + cfg.out_of_order:
            kind = KIND_OUT_OF_ORDER
            arrival = now + rng.randrange(
                max(1, cfg.lateness_ms // 10), max(2, cfg.lateness_ms * 8 // 10)
            )
        push(SimMessage(arrival, ex, sym, payload, kind, trade))
        if rng.random() < cfg.duplicates:
            # A duplicate must stay inside the lateness of its original's arrival.
            dup_at = arrival + rng.randrange(0, max(1, cfg.lateness_ms // 2))
            if kind == KIND_LATE:
                dup_at = arrival + rng.randrange(0, 1_000)
            push(SimMessage(dup_at, ex, sym, payload, KIND_DUPLICATE, trade))
        if rng.random() < cfg.malformed:
            push(SimMessage(now, ex, sym, _malformed(rng, trade), KIND_MALFORMED, None))
    # The market has ended: what is left arrives after the last trade. A "late"
    # message no later trade overtook is not late after all.
    while pending:
        msg = heapq.heappop(pending)[2]
        if msg.kind == KIND_LATE and not is_late(msg):
            msg = msg._replace(kind=KIND_OUT_OF_ORDER)
        yield deliver(msg)
