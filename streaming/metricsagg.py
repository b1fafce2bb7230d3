"""The metrics flow's logic: the metrics of one symbol, closed candle by closed candle.

Pure Python, no bytewax, no Redis: the metrics flow (:mod:`streaming.flows.metrics`,
the wiring) keeps one :class:`SymbolState` per symbol in a bytewax ``stateful_batch``
step, and :mod:`streaming.metricsstore` writes what :func:`apply_bars` returns (every
flow is laid out so: docs/architecture.md, "Inside the speed layer").
The indicators themselves are the domain's (:mod:`marketdata.indicators`).

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

from marketdata.indicators import AnomalyConfig, ClosedBar, MetricsState, spread
from marketdata.records import candle_from_record
from streaming.metricsstore import MetricsWrites


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
    """Metrics of one symbol: per exchange, plus each exchange's latest close."""

    per_exchange: dict[str, MetricsState] = field(default_factory=dict)
    last_close: dict[str, tuple[int, int]] = field(default_factory=dict)  # open_time, close


def apply_bars(
    state: SymbolState, bars: Sequence[ClosedBar], anomaly: AnomalyConfig
) -> MetricsWrites:
    """Fold closed candles of one symbol into ``state``; what to write for them."""
    out = MetricsWrites(bars[0].symbol)
    moved = False
    for bar in bars:
        st = state.per_exchange.get(bar.exchange)
        if st is None:
            st = state.per_exchange[bar.exchange] = MetricsState(anomaly=anomaly)
        m = st.apply(bar)
        if m is None:
            continue  # a replayed or older candle
        moved = True
        out.metrics.append(m)
        state.last_close[bar.exchange] = (bar.open_time, bar.close_e8)
        for kind in ("price", "volume"):
            if m[f"{kind}_anomaly"]:
                out.anomalies.append(_anomaly(kind, m))
    if moved and len(state.last_close) > 1:
        at = max(t for t, _ in state.last_close.values())
        prices = {ex: c for ex, (_, c) in state.last_close.items()}
        out.spreads = [{**s, "open_time": at} for s in spread(prices)]
    return out


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
