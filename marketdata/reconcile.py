"""Reconciliation: stream candles against batch candles, exactly (docs/architecture.md section 5).

Pure: candles and late trades in, outcomes out. For each candle key of a day:

* ``match``: every field equal (exact, no tolerance);
* ``explained_by_late``: the stream candle merged with its window's late trades
  equals the batch candle exactly, or the stream has no candle and the window's late
  trades alone fold into the batch candle;
* ``mismatch``: both have the candle, and the late trades do not explain the gap;
* ``missing_in_stream``: only the batch has it (the stream lost data);
* ``extra_in_stream``: only the stream has it (the archive lost data).

Late trades are deduplicated by (exchange, symbol, trade_id) before they are used.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from marketdata.candle import Candle, dedupe
from marketdata.decimals import format_e16
from marketdata.interval import Interval
from marketdata.trade import Trade

MATCH = "match"
EXPLAINED = "explained_by_late"
MISMATCH = "mismatch"
MISSING = "missing_in_stream"
EXTRA = "extra_in_stream"
OUTCOMES = (MATCH, EXPLAINED, MISMATCH, MISSING, EXTRA)
UNEXPLAINED = (MISMATCH, MISSING, EXTRA)

Key = tuple[str, str, str, int]  # exchange, symbol, interval label, open_time


@dataclass(frozen=True)
class LateTrade:
    """A trade of the late stream with the windows it was late for (label -> open_time)."""

    trade: Trade
    windows: Mapping[str, int]


@dataclass(frozen=True)
class Difference:
    """One candle key whose outcome is not ``match``.

    Attributes:
        key: (exchange, symbol, interval, open_time).
        outcome: one of :data:`OUTCOMES` other than ``match``.
        differing: the fields that differ between the stream and batch candles.
        stream: the stream candle's fields, if any.
        batch: the batch candle's fields, if any.
        late_trades: late trades of the window (after deduplication).
        quote_gap_e16: batch minus stream quote volume (1e-16 units): the size of
            what one side lacks, used to list the worst first.
    """

    key: Key
    outcome: str
    differing: tuple[str, ...]
    stream: dict[str, Any] | None
    batch: dict[str, Any] | None
    late_trades: int
    quote_gap_e16: int

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-friendly form (decimals as strings)."""
        ex, sym, iv, ot = self.key
        return {
            "exchange": ex,
            "symbol": sym,
            "interval": iv,
            "open_time": ot,
            "outcome": self.outcome,
            "differing": list(self.differing),
            "stream": self.stream,
            "batch": self.batch,
            "late_trades": self.late_trades,
            "quote_volume_gap": format_e16(self.quote_gap_e16),
        }


@dataclass
class Reconciliation:
    """The outcome of one day's reconciliation."""

    counts: Counter[str] = field(default_factory=Counter)
    by_interval: dict[str, Counter[str]] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)

    @property
    def unexplained(self) -> int:
        """Keys whose outcome is mismatch, missing_in_stream or extra_in_stream."""
        return sum(self.counts[o] for o in UNEXPLAINED)

    @property
    def ok(self) -> bool:
        """No unexplained difference."""
        return self.unexplained == 0

    def summary(self, worst: int = 20) -> dict[str, Any]:
        """Counts per outcome (all five names, zeros included) and the worst rows."""
        return {
            "counts": {o: self.counts[o] for o in OUTCOMES},
            "unexplained": self.unexplained,
            "ok": self.ok,
            "by_interval": {
                iv: {o: c[o] for o in OUTCOMES} for iv, c in sorted(self.by_interval.items())
            },
            "worst": [d.to_json_dict() for d in self.differences[:worst]],
        }


def _late_index(late: Iterable[LateTrade]) -> dict[Key, list[Trade]]:
    unique: dict[tuple[str, str, int], LateTrade] = {}
    for lt in late:
        unique.setdefault(lt.trade.key, lt)
    out: dict[Key, list[Trade]] = {}
    for lt in unique.values():
        t = lt.trade
        for label, open_time in lt.windows.items():
            out.setdefault((t.exchange, t.symbol, label, open_time), []).append(t)
    return out


def _fold(trades: list[Trade], interval: Interval) -> Candle:
    ts = dedupe(trades)
    c = Candle.from_trade(ts[0], interval)
    for t in ts[1:]:
        c.add(t)
    return c


def _differing(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, ...]:
    return tuple(k for k in a if a[k] != b.get(k))


def _severity(d: Difference) -> tuple[int, int, int, Key]:
    explained = 1 if d.outcome == EXPLAINED else 0
    return (explained, -abs(d.quote_gap_e16), -Interval.parse(d.key[2]).ms, d.key)


def reconcile(
    stream: Mapping[Key, Candle], batch: Mapping[Key, Candle], late: Iterable[LateTrade] = ()
) -> Reconciliation:
    """Compare a day's stream and batch candles; differences are listed worst first."""
    late_by_key = _late_index(late)
    result = Reconciliation()
    for key in sorted(set(stream) | set(batch)):
        s, b = stream.get(key), batch.get(key)
        lates = late_by_key.get(key, [])
        sf = s.fields() if s is not None else None
        bf = b.fields() if b is not None else None
        interval = Interval.parse(key[2])
        if sf is not None and bf is not None:
            if sf == bf:
                outcome = MATCH
            elif lates and s is not None and s.merged(_fold(lates, interval)).fields() == bf:
                outcome = EXPLAINED
            else:
                outcome = MISMATCH
        elif bf is not None:
            explained = bool(lates) and _fold(lates, interval).fields() == bf
            outcome = EXPLAINED if explained else MISSING
        else:
            outcome = EXTRA
        result.counts[outcome] += 1
        result.by_interval.setdefault(key[2], Counter())[outcome] += 1
        if outcome != MATCH:
            gap = (b.quote_volume_e16 if b else 0) - (s.quote_volume_e16 if s else 0)
            differing = _differing(sf, bf) if sf and bf else ()
            result.differences.append(Difference(key, outcome, differing, sf, bf, len(lates), gap))
    result.differences.sort(key=_severity)
    return result


def volume_total_e8(candles: Iterable[Candle]) -> int:
    """Total volume of candles (1e-8 units): conservation checks across layers."""
    return sum(c.volume_e8 for c in candles)
