"""The metrics flow's logic: one symbol's metrics, one base currency's spreads.

Pure Python, no bytewax, no Redis: the metrics flow (:mod:`streaming.flows.metrics`,
the wiring) keeps one :class:`SymbolState` per symbol and one :class:`SpreadState`
per base currency in two bytewax ``stateful_batch`` steps, and
:mod:`streaming.metricsstore` writes what :func:`apply_bars` and
:func:`apply_spread_bars` return (every flow is laid out so: docs/architecture.md,
"Inside the speed layer"). The indicators themselves are the domain's
(:mod:`marketdata.indicators`), which series are compared too
(:mod:`marketdata.instruments`).

Spreads are keyed by base currency: a declared spread never pairs two bases (the
settings refuse it) and an undeclared one is within one instrument, so every pair a
series is in lives under its base, and each closed candle goes to exactly one key.

Idempotent against replays: a candle whose open_time is not after the last one
applied for its (exchange, symbol) does not move the state, so a duplicate event, a
re-closed candle, or events read again after a restart from a snapshot change
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from marketdata.indicators import AnomalyConfig, ClosedBar, MetricsState, SpreadLeg, spread
from marketdata.instruments import Series, SpreadRules
from marketdata.records import candle_from_record
from streaming.metricsstore import MetricsWrites, SpreadWrites


def closed_bars(
    events: Sequence[Sequence[bytes]], rejected: list[str] | None = None
) -> list[ClosedBar]:
    """The 1m candles of closed-candle events (flat field lists of the event stream).

    Events of other intervals are not for the metrics. An event that cannot be read
    is skipped, never silently: its reason goes to ``rejected``
    (``missing_field:interval``, ``missing_field:candle``, ``malformed_candle``).

    Args:
        events: the events' field lists (``[name, value, name, value, ...]``).
        rejected: where the reasons of the unreadable events are appended.

    Returns:
        The 1m candles, in event order.

    """
    out = []
    for flat in events:
        fields = dict(zip(flat[::2], flat[1::2], strict=False))
        reason = None
        if b"interval" not in fields:
            reason = "missing_field:interval"
        elif fields[b"interval"] != b"1m":
            continue
        elif b"candle" not in fields:
            reason = "missing_field:candle"
        else:
            try:
                c = candle_from_record(orjson.loads(fields[b"candle"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                reason = "malformed_candle"
        if reason is not None:
            if rejected is not None:
                rejected.append(reason)
            continue
        out.append(
            ClosedBar(
                exchange=c.exchange,
                symbol=c.symbol,
                open_time=c.open_time,
                close_e8=c.close_e8,
                volume_e8=c.volume_e8,
                quote_volume_e16=c.quote_volume_e16,
            )
        )
    return out


@dataclass
class SymbolState:
    """Metrics of one symbol, per exchange."""

    per_exchange: dict[str, MetricsState] = field(default_factory=dict)


def apply_bars(
    state: SymbolState, bars: Sequence[ClosedBar], anomaly: AnomalyConfig
) -> MetricsWrites:
    """Fold closed candles of one symbol into ``state``; what to write for them."""
    out = MetricsWrites(bars[0].symbol)
    for bar in bars:
        st = state.per_exchange.get(bar.exchange)
        if st is None:
            st = state.per_exchange[bar.exchange] = MetricsState(anomaly=anomaly)
        m = st.apply(bar)
        if m is None:
            continue  # a replayed or older candle
        out.metrics.append(m)
        for kind in ("price", "volume"):
            if m[f"{kind}_anomaly"]:
                out.anomalies.append(_anomaly(kind, m))
    return out


@dataclass
class SpreadState:
    """The spreads of one base currency: each series' latest closed 1m candle."""

    last_close: dict[Series, tuple[int, int]] = field(default_factory=dict)  # open_time, close


def spread_base(rules: SpreadRules, bar: ClosedBar) -> str | None:
    """The key of ``bar``'s spreads: its base currency, ``None`` with no instrument."""
    return rules.base_of(Series(bar.exchange, bar.symbol))


def apply_spread_bars(
    state: SpreadState, bars: Sequence[ClosedBar], rules: SpreadRules
) -> SpreadWrites:
    """Fold closed candles of one base (:func:`spread_base`) into ``state``; new spreads.

    Each comparable pair (:meth:`SpreadRules.comparable`) with a series that moved
    and both closes known gets its spread from the two latest closes, once per call.
    """
    base = spread_base(rules, bars[0]) or ""
    moved: list[Series] = []
    for bar in bars:
        series = Series(bar.exchange, bar.symbol)
        last = state.last_close.get(series)
        if last is not None and bar.open_time <= last[0]:
            continue  # a replayed or older candle
        state.last_close[series] = (bar.open_time, bar.close_e8)
        moved.append(series)
    out = SpreadWrites(base)
    for a, b in rules.pairs(dict.fromkeys(moved), state.last_close):
        out.spreads.append(spread(base, _leg(state, rules, a), _leg(state, rules, b)))
    return out


def _leg(state: SpreadState, rules: SpreadRules, series: Series) -> SpreadLeg:
    open_time, close = state.last_close[series]
    inst = rules.instruments.of(series)
    if inst is None:  # comparable() pairs only series with an instrument
        msg = f"{series.name} has no instrument"
        raise ValueError(msg)
    return SpreadLeg(series.name, inst.quote, open_time, close)


def _anomaly(kind: str, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind,
        "exchange": m["exchange"],
        "symbol": m["symbol"],
        "open_time": m["open_time"],
        "close": m["close"],
        "ema_26": m["ema_26"],
        "price_deviation": m["price_deviation"],
        "volume_zscore": m["volume_zscore"],
    }
