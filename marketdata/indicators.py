"""Incremental indicators over closed 1m candles (docs/architecture.md section 8).

Per (exchange, symbol), candles are applied in open_time order; empty minutes get no
synthetic candle. Definitions follow TA-Lib:

* EMA(n): seeded with the simple average of the first ``n`` closes, then
  ``ema += (close - ema) * 2 / (n + 1)``; no value before the n-th close.
* MACD = EMA(12) - EMA(26); signal = EMA(9) of MACD (seeded like any EMA, from the
  first 9 MACD values); histogram = MACD - signal. TA-Lib's ``MACD`` seeds its fast
  EMA at a later start; the difference decays as (11/13)^k and is below 1e-9
  relative after the warm-up.
* RSI(14), Wilder: the first average gain and loss are simple means of the first 14
  changes, then ``avg = (avg * 13 + x) / 14``; ``RSI = 100 * gain / (gain + loss)``
  (0 when both averages are zero, as in TA-Lib).
* Session VWAP: exact, sum of quote volume over sum of volume since 00:00 UTC,
  rounded half-even to 8 digits.

Indicators are binary floats (they are statistics, not amounts); prices, volumes and
the VWAP stay exact. :meth:`MetricsState.apply` ignores a candle whose open_time is
not after the last one applied, so replays never move the state twice.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from marketdata.decimals import SCALE, format_e8, vwap_e8
from marketdata.timeutil import DAY_MS


@dataclass(slots=True)
class Ema:
    """TA-Lib EMA, fed one value at a time."""

    period: int
    count: int = 0
    seed_sum: float = 0.0
    value: float | None = None

    def update(self, x: float) -> float | None:
        """Feed ``x``; the EMA once ``period`` values have been seen, else ``None``."""
        self.count += 1
        if self.value is None:
            self.seed_sum += x
            if self.count == self.period:
                self.value = self.seed_sum / self.period
            return self.value
        self.value += (x - self.value) * (2.0 / (self.period + 1))
        return self.value


@dataclass(slots=True)
class Rsi:
    """TA-Lib RSI with Wilder's smoothing, fed one close at a time."""

    period: int = 14
    prev: float | None = None
    changes: int = 0
    gain: float = 0.0
    loss: float = 0.0
    value: float | None = None

    def update(self, close: float) -> float | None:
        """Feed a close; the RSI once ``period`` changes have been seen, else ``None``."""
        prev, self.prev = self.prev, close
        if prev is None:
            return None
        diff = close - prev
        up, down = (diff, 0.0) if diff > 0 else (0.0, -diff)
        self.changes += 1
        n = self.period
        if self.changes <= n:
            self.gain += up / n
            self.loss += down / n
            if self.changes < n:
                return None
        else:
            self.gain = (self.gain * (n - 1) + up) / n
            self.loss = (self.loss * (n - 1) + down) / n
        total = self.gain + self.loss
        self.value = 0.0 if total == 0 else 100.0 * self.gain / total
        return self.value


@dataclass(frozen=True)
class AnomalyConfig:
    """Thresholds of the anomaly flags.

    Attributes:
        price_deviation: flag when ``|close - EMA26| / EMA26`` exceeds this share
            (the EMA before this candle).
        volume_window: number of previous candles the volume z-score looks at.
        volume_min_samples: no volume flag before this many samples.
        volume_z: flag when the volume's z-score exceeds this.
    """

    price_deviation: float = 0.02
    volume_window: int = 60
    volume_min_samples: int = 20
    volume_z: float = 4.0


@dataclass(slots=True)
class ClosedBar:
    """What the metrics need of a closed 1m candle."""

    exchange: str
    symbol: str
    open_time: int
    close_e8: int
    volume_e8: int
    quote_volume_e16: int


#: The fields of a symbol's latest metrics, in output order (``cryptopipe metrics``,
#: docs/architecture.md section 8), then the anomaly details: :meth:`MetricsState.apply`
#: returns them (and the exchange). A new indicator adds its field here and in ``apply``.
METRIC_FIELDS = (
    "symbol",
    "exchange",
    "open_time",
    "close",
    "ema_12",
    "ema_26",
    "macd",
    "macd_signal",
    "macd_hist",
    "rsi_14",
    "vwap",
    "price_anomaly",
    "volume_anomaly",
    "price_deviation",
    "volume_zscore",
)


@dataclass
class MetricsState:
    """Indicators of one (exchange, symbol), updated candle by candle."""

    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    last_open_time: int | None = None
    ema12: Ema = field(default_factory=lambda: Ema(12))
    ema26: Ema = field(default_factory=lambda: Ema(26))
    signal: Ema = field(default_factory=lambda: Ema(9))
    rsi: Rsi = field(default_factory=Rsi)
    session_day: int | None = None
    session_quote_e16: int = 0
    session_volume_e8: int = 0
    volumes: deque[float] = field(default_factory=deque)

    def apply(self, bar: ClosedBar) -> dict[str, Any] | None:
        """Fold one closed candle in; ``None`` (state untouched) if not newer than the last."""
        if self.last_open_time is not None and bar.open_time <= self.last_open_time:
            return None
        self.last_open_time = bar.open_time
        close = bar.close_e8 / SCALE
        prev_ema26 = self.ema26.value
        e12, e26 = self.ema12.update(close), self.ema26.update(close)
        macd = sig = hist = None
        if e12 is not None and e26 is not None:
            macd = e12 - e26
            sig = self.signal.update(macd)
            hist = None if sig is None else macd - sig
        rsi = self.rsi.update(close)

        day = bar.open_time // DAY_MS
        if day != self.session_day:
            self.session_day, self.session_quote_e16, self.session_volume_e8 = day, 0, 0
        self.session_quote_e16 += bar.quote_volume_e16
        self.session_volume_e8 += bar.volume_e8
        vwap = (
            format_e8(vwap_e8(self.session_quote_e16, self.session_volume_e8))
            if self.session_volume_e8
            else None
        )

        price_dev = None if not prev_ema26 else abs(close - prev_ema26) / prev_ema26
        volume = bar.volume_e8 / SCALE
        vol_z = _zscore(self.volumes, volume, self.anomaly.volume_min_samples)
        self.volumes.append(volume)
        while len(self.volumes) > self.anomaly.volume_window:
            self.volumes.popleft()
        return {
            "exchange": bar.exchange,
            "symbol": bar.symbol,
            "open_time": bar.open_time,
            "close": format_e8(bar.close_e8),
            "ema_12": e12,
            "ema_26": e26,
            "macd": macd,
            "macd_signal": sig,
            "macd_hist": hist,
            "rsi_14": rsi,
            "vwap": vwap,
            "price_deviation": price_dev,
            "volume_zscore": vol_z,
            "price_anomaly": price_dev is not None and price_dev > self.anomaly.price_deviation,
            "volume_anomaly": vol_z is not None and vol_z > self.anomaly.volume_z,
        }


def _zscore(window: deque[float], x: float, min_samples: int) -> float | None:
    n = len(window)
    if n < min_samples:
        return None
    mean = sum(window) / n
    var = sum((v - mean) ** 2 for v in window) / (n - 1)
    if var <= 0:
        return None
    return (x - mean) / math.sqrt(var)


@dataclass(frozen=True, slots=True)
class SpreadLeg:
    """One side of a spread: a series' latest closed 1m candle.

    Attributes:
        series: ``exchange:SYMBOL``.
        quote: the quote currency its close is in.
        open_time: the candle's open time, ms.
        close_e8: its close, exact (e8).
    """

    series: str
    quote: str
    open_time: int
    close_e8: int


#: The fields of a spread, in output order (docs/architecture.md, "Instruments and spreads").
SPREAD_FIELDS = (
    "a",
    "b",
    "base",
    "a_quote",
    "b_quote",
    "spread",
    "spread_share",
    "a_close",
    "b_close",
    "a_open_time",
    "b_open_time",
    "open_time",
)


def spread(base: str, a: SpreadLeg, b: SpreadLeg) -> dict[str, Any]:
    """The spread ``a - b`` between two series' latest closes of one base currency.

    Returns:
        The fields of :data:`SPREAD_FIELDS`: the spread and both closes exact (decimal
        strings), its share of the mid price as a float, both quotes (a spread between
        different quotes, say USDT and USD, is one the configuration declared), both
        candles' open times and the later of the two (``open_time``).
    """
    diff = a.close_e8 - b.close_e8
    mid = (a.close_e8 + b.close_e8) / 2
    return {
        "a": a.series,
        "b": b.series,
        "base": base,
        "a_quote": a.quote,
        "b_quote": b.quote,
        "spread": format_e8(diff),
        "spread_share": diff / mid if mid else None,
        "a_close": format_e8(a.close_e8),
        "b_close": format_e8(b.close_e8),
        "a_open_time": a.open_time,
        "b_open_time": b.open_time,
        "open_time": max(a.open_time, b.open_time),
    }
