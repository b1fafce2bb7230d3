"""Indicators against TA-Lib itself, on a generated session of several hundred candles."""

from __future__ import annotations

import random
from decimal import Decimal

import numpy as np
import pytest
import talib

from marketdata.indicators import (
    METRIC_FIELDS,
    SPREAD_FIELDS,
    AnomalyConfig,
    ClosedBar,
    Ema,
    MetricsState,
    Rsi,
    SpreadLeg,
    spread,
)

T0 = 1_741_910_400_000
WARMUP = 200


def session(n: int, seed: int = 1) -> list[ClosedBar]:
    rnd = random.Random(seed)
    price = 65_000.0
    bars = []
    for i in range(n):
        price *= 1 + rnd.gauss(0, 0.002)
        close_e8 = round(price * 100) * 1_000_000  # 2-decimal tick
        vol_e8 = rnd.randrange(1, 10**9)
        bars.append(
            ClosedBar(
                exchange="binance",
                symbol="BTCUSDT",
                open_time=T0 + i * 60_000,
                close_e8=close_e8,
                volume_e8=vol_e8,
                quote_volume_e16=close_e8 * vol_e8,
            )
        )
    return bars


def run(bars: list[ClosedBar]) -> list[dict]:
    state = MetricsState()
    return [out for b in bars if (out := state.apply(b)) is not None]


def close_array(bars: list[ClosedBar]) -> np.ndarray:
    return np.array([b.close_e8 / 1e8 for b in bars], dtype=float)


def test_ema_and_rsi_equal_talib_from_the_first_value() -> None:
    bars = session(500)
    closes = close_array(bars)
    outs = run(bars)
    for period, key in ((12, "ema_12"), (26, "ema_26")):
        ref = talib.EMA(closes, timeperiod=period)
        ours = np.array([o[key] if o[key] is not None else np.nan for o in outs])
        assert np.isnan(ours[: period - 1]).all() and not np.isnan(ours[period - 1 :]).any()
        np.testing.assert_allclose(ours[period - 1 :], ref[period - 1 :], rtol=1e-12)
    ref_rsi = talib.RSI(closes, timeperiod=14)
    ours_rsi = np.array([o["rsi_14"] if o["rsi_14"] is not None else np.nan for o in outs])
    assert np.isnan(ours_rsi[:14]).all()
    np.testing.assert_allclose(ours_rsi[14:], ref_rsi[14:], rtol=1e-9)


def test_macd_agrees_with_talib_after_warmup() -> None:
    bars = session(600, seed=4)
    outs = run(bars)
    macd, sig, hist = talib.MACD(close_array(bars), fastperiod=12, slowperiod=26, signalperiod=9)
    for key, ref in (("macd", macd), ("macd_signal", sig), ("macd_hist", hist)):
        ours = np.array([o[key] for o in outs[WARMUP:]], dtype=float)
        # Relative to the price scale of the series (MACD itself crosses zero).
        np.testing.assert_allclose(ours, ref[WARMUP:], rtol=0, atol=1e-9 * 65_000)


def test_session_vwap_is_exact_and_resets_at_midnight() -> None:
    bars = session(1500)  # crosses 00:00 UTC after 1440 candles
    outs = run(bars)
    for i in (0, 10, 1439, 1440, 1499):
        day = bars[i].open_time // 86_400_000
        same = [b for b in bars[: i + 1] if b.open_time // 86_400_000 == day]
        q = sum(Decimal(b.quote_volume_e16) for b in same) / Decimal(10**16)
        v = sum(Decimal(b.volume_e8) for b in same) / Decimal(10**8)
        assert Decimal(outs[i]["vwap"]) == (q / v).quantize(Decimal("1e-8"))


def test_replayed_or_older_candles_do_not_move_the_state() -> None:
    bars = session(100)
    state = MetricsState()
    outs = [state.apply(b) for b in bars[:60]]
    before = repr(state)
    assert state.apply(bars[59]) is None and state.apply(bars[10]) is None
    assert repr(state) == before
    again = [state.apply(b) for b in bars[60:]]
    assert [o["open_time"] for o in outs + again] == [b.open_time for b in bars]
    assert again[-1] == run(bars)[-1]


def test_anomalies_with_known_answers() -> None:
    cfg = AnomalyConfig(price_deviation=0.05, volume_window=30, volume_min_samples=20, volume_z=3)
    state = MetricsState(anomaly=cfg)
    base = [
        ClosedBar(
            exchange="binance",
            symbol="X",
            open_time=T0 + i * 60_000,
            close_e8=100 * 10**8,
            volume_e8=(10 + i % 3) * 10**8,
            quote_volume_e16=0,
        )
        for i in range(40)
    ]
    outs = [state.apply(b) for b in base]
    assert not any(o["price_anomaly"] or o["volume_anomaly"] for o in outs)
    spike = state.apply(
        ClosedBar(
            exchange="binance",
            symbol="X",
            open_time=T0 + 40 * 60_000,
            close_e8=106 * 10**8,
            volume_e8=100 * 10**8,
            quote_volume_e16=0,
        )
    )
    assert spike["price_anomaly"] and spike["volume_anomaly"]
    assert spike["price_deviation"] == pytest.approx(0.06)
    calm = state.apply(
        ClosedBar(
            exchange="binance",
            symbol="X",
            open_time=T0 + 41 * 60_000,
            close_e8=104 * 10**8,
            volume_e8=11 * 10**8,
            quote_volume_e16=0,
        )
    )
    assert not calm["volume_anomaly"]


def test_spread_between_two_series_is_exact_and_names_both_quotes() -> None:
    a = SpreadLeg("binance:BTCUSDT", "USDT", T0 + 60_000, 100_000_00000001)
    b = SpreadLeg("coinbase:BTC-USD", "USD", T0, 100_010_00000000)
    out = spread("BTC", a, b)
    assert list(out) == list(SPREAD_FIELDS)
    assert out == {
        "a": "binance:BTCUSDT",
        "b": "coinbase:BTC-USD",
        "base": "BTC",
        "a_quote": "USDT",
        "b_quote": "USD",
        "spread": "-9.99999999",  # exact: 100000.00000001 - 100010
        "spread_share": pytest.approx(-9.99999999 / 100005.000000005),
        "a_close": "100000.00000001",
        "b_close": "100010.00000000",
        "a_open_time": T0 + 60_000,
        "b_open_time": T0,
        "open_time": T0 + 60_000,
    }


def test_ema_and_rsi_edge_cases() -> None:
    e = Ema(3)
    assert [e.update(x) for x in (1.0, 2.0, 3.0, 4.0)] == [None, None, 2.0, 3.0]
    r = Rsi(2)
    assert [r.update(x) for x in (1.0, 1.0, 1.0)] == [None, None, 0.0]


def test_every_output_field_is_computed_and_every_computed_field_is_shown() -> None:
    state = MetricsState()
    out = state.apply(
        ClosedBar(
            exchange="binance",
            symbol="X",
            open_time=T0,
            close_e8=100 * 10**8,
            volume_e8=10**8,
            quote_volume_e16=100 * 10**16,
        )
    )
    assert out is not None
    assert set(out) == set(METRIC_FIELDS)
    assert len(METRIC_FIELDS) == len(set(METRIC_FIELDS))
