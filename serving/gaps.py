"""Gap filling: empty windows shown as the previous close at zero volume, marked filled.

A window with no trades has no stored candle in either layer (docs/architecture.md
section 3); readers asked for ``--fill`` get one synthetic record per empty window.
"""

from __future__ import annotations

from collections.abc import Iterable

from marketdata.candle import Candle
from marketdata.interval import Interval
from marketdata.records import CandleRecord


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
    c = Candle(
        exchange=prev.exchange,
        symbol=prev.symbol,
        interval=interval,
        open_time=open_time,
        open_e8=p,
        high_e8=p,
        low_e8=p,
        close_e8=p,
        volume_e8=0,
        quote_volume_e16=0,
        trade_count=0,
        taker_buy_volume_e8=0,
        first_event_time=open_time,
        first_trade_id=0,
        last_event_time=open_time,
        last_trade_id=0,
    )
    return CandleRecord(c, True, source, filled=True)
