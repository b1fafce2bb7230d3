import random
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from marketdata.candle import Candle, dedupe, fold_trades, roll_up
from marketdata.interval import ALL_INTERVALS, Interval
from marketdata.trade import Trade, aggregate

T0 = 1_741_910_400_000

trades_st = st.lists(
    st.builds(
        Trade,
        exchange=st.sampled_from(["binance", "kraken"]),
        symbol=st.sampled_from(["BTCUSDT", "ETHUSDT"]),
        trade_id=st.integers(1, 400),
        price_e8=st.integers(1, 10**13),
        quantity_e8=st.integers(1, 10**10),
        event_time=st.integers(T0, T0 + 2 * 86_400_000),
        is_buyer_maker=st.booleans(),
        span=st.just(1),
    ),
    max_size=120,
)


def _by_hand(trades: list[Trade]) -> dict:
    """An independent, obviously-correct computation with Decimal."""
    ts = sorted(trades, key=lambda t: (t.event_time, t.trade_id))
    vol = sum((t.quantity for t in ts), Decimal(0))
    quote = sum((t.price * t.quantity for t in ts), Decimal(0))
    return {
        "open": ts[0].price,
        "close": ts[-1].price,
        "high": max(t.price for t in ts),
        "low": min(t.price for t in ts),
        "volume": vol,
        "quote_volume": quote,
        "trade_count": len(ts),
        "taker_buy_volume": sum((t.quantity for t in ts if not t.is_buyer_maker), Decimal(0)),
        "first_trade_id": ts[0].trade_id,
        "last_trade_id": ts[-1].trade_id,
    }


def test_fold_against_hand_computation() -> None:
    trades = [
        Trade(
            exchange="binance",
            symbol="BTCUSDT",
            trade_id=3,
            price_e8=10_050_000_000,
            quantity_e8=200_000_000,
            event_time=T0 + 500,
            is_buyer_maker=True,
        ),
        Trade(
            exchange="binance",
            symbol="BTCUSDT",
            trade_id=1,
            price_e8=10_000_000_000,
            quantity_e8=100_000_000,
            event_time=T0 + 100,
            is_buyer_maker=False,
        ),
        Trade(
            exchange="binance",
            symbol="BTCUSDT",
            trade_id=2,
            price_e8=9_900_000_000,
            quantity_e8=50_000_000,
            event_time=T0 + 100,
            is_buyer_maker=False,
        ),
        Trade(
            exchange="binance",
            symbol="BTCUSDT",
            trade_id=4,
            price_e8=10_100_000_000,
            quantity_e8=25_000_000,
            event_time=T0 + 59_999,
            is_buyer_maker=True,
        ),
        Trade(
            exchange="binance",
            symbol="BTCUSDT",
            trade_id=5,
            price_e8=7_000_000_000,
            quantity_e8=1,
            event_time=T0 + 60_000,
            is_buyer_maker=True,
        ),  # next window
    ]
    candles = fold_trades(trades, Interval.M1)
    assert sorted(k[3] for k in candles) == [T0, T0 + 60_000]
    f = candles[("binance", "BTCUSDT", "1m", T0)].fields()
    assert f == {
        "open": "100.00000000",  # (T0+100, id 1) comes before (T0+100, id 2)
        "high": "101.00000000",
        "low": "99.00000000",
        "close": "101.00000000",
        "volume": "3.75000000",
        "quote_volume": "375.7500000000000000",  # 100 + 49.5 + 201 + 25.25
        "trade_count": 4,
        "taker_buy_volume": "1.50000000",
        "vwap": "100.20000000",
        "first_trade_id": 1,
        "last_trade_id": 4,
    }


def test_vwap_rounds_half_even() -> None:
    # quote 0.000000025 / volume 1 = 0.000000025 -> 0.00000002 (half to even).
    # price 0.00000005 x quantity 0.5 -> quote 0.000000025, volume 0.5 -> vwap 0.00000005;
    # two trades 0.00000002 x 0.5 and 0.00000003 x 0.5 -> quote 0.000000025 / 1.0 =
    # 0.000000025 -> 0.00000002 (half to even); with 0.00000004 the tie 0.000000035 -> ...04.
    c = Candle.from_trade(
        Trade(
            exchange="b",
            symbol="X",
            trade_id=1,
            price_e8=2,
            quantity_e8=50_000_000,
            event_time=T0,
            is_buyer_maker=True,
        ),
        Interval.M1,
    )
    c.add(
        Trade(
            exchange="b",
            symbol="X",
            trade_id=2,
            price_e8=3,
            quantity_e8=50_000_000,
            event_time=T0 + 1,
            is_buyer_maker=True,
        )
    )
    assert c.fields()["vwap"] == "0.00000002"
    d = Candle.from_trade(
        Trade(
            exchange="b",
            symbol="X",
            trade_id=1,
            price_e8=3,
            quantity_e8=50_000_000,
            event_time=T0,
            is_buyer_maker=True,
        ),
        Interval.M1,
    )
    d.add(
        Trade(
            exchange="b",
            symbol="X",
            trade_id=2,
            price_e8=4,
            quantity_e8=50_000_000,
            event_time=T0 + 1,
            is_buyer_maker=True,
        )
    )
    assert d.fields()["vwap"] == "0.00000004"


@settings(max_examples=300, deadline=None)
@given(trades_st, st.randoms(use_true_random=False))
def test_fold_is_arrival_order_independent_and_matches_decimal(trades, rnd) -> None:
    trades = dedupe(trades)
    shuffled = trades[:]
    rnd.shuffle(shuffled)
    for interval in (Interval.M1, Interval.H4):
        a, b = fold_trades(trades, interval), fold_trades(shuffled, interval)
        assert {k: c.fields() for k, c in a.items()} == {k: c.fields() for k, c in b.items()}
        for key, candle in a.items():
            members = [
                t
                for t in trades
                if (t.exchange, t.symbol, interval.floor(t.event_time)) == (key[0], key[1], key[3])
            ]
            expected = _by_hand(members)
            f = candle.fields()
            for name, value in expected.items():
                assert (Decimal(f[name]) if isinstance(value, Decimal) else f[name]) == value


@settings(max_examples=300, deadline=None)
@given(trades_st, st.integers(0, 120))
def test_merge_equals_fold_of_union(trades, cut) -> None:
    trades = dedupe(trades)
    left, right = trades[:cut], trades[cut:]
    whole = fold_trades(trades, Interval.M15)
    a, b = fold_trades(left, Interval.M15), fold_trades(right, Interval.M15)
    merged = dict(a)
    for k, c in b.items():
        merged[k] = merged[k].merged(c) if k in merged else c
    assert {k: c.fields() for k, c in merged.items()} == {k: c.fields() for k, c in whole.items()}


@settings(max_examples=200, deadline=None)
@given(trades_st)
def test_roll_up_equals_fold(trades) -> None:
    ones = fold_trades(trades, Interval.M1)
    for interval in ALL_INTERVALS[1:]:
        rolled = roll_up(ones.values(), interval)
        direct = fold_trades(trades, interval)
        assert {k: c.fields() for k, c in rolled.items()} == {
            k: c.fields() for k, c in direct.items()
        }


def test_duplicates_count_once_per_exchange_symbol_and_id() -> None:
    t = Trade(
        exchange="binance",
        symbol="BTCUSDT",
        trade_id=7,
        price_e8=100,
        quantity_e8=100,
        event_time=T0,
        is_buyer_maker=False,
    )
    folded = fold_trades([t, t, t._replace(exchange="kraken"), t._replace(trade_id=8)], Interval.M1)
    counts = {k[0]: c.trade_count for k, c in folded.items()}
    assert counts == {"binance": 2, "kraken": 1}
    assert folded[("binance", "BTCUSDT", "1m", T0)].volume_e8 == 200


def test_json_record_shape() -> None:
    rnd = random.Random(1)
    t = Trade(
        exchange="binance",
        symbol="BTCUSDT",
        trade_id=1,
        price_e8=rnd.randrange(1, 10**12),
        quantity_e8=5,
        event_time=T0 + 61_000,
        is_buyer_maker=True,
    )
    rec = Candle.from_trade(t, Interval.M1).to_json_dict(closed=False, source="stream")
    assert rec["open_time"] == T0 + 60_000 and rec["closed"] is False
    assert {"symbol", "interval", "open_time", "closed", "source", "vwap", "open"} <= rec.keys()
    assert all(isinstance(rec[k], str) for k in ("open", "volume", "quote_volume", "vwap"))


@st.composite
def _runs(draw: st.DrawFn) -> list[Trade]:
    """Trades with consecutive ids, in runs of one time, price and side (aggregatable)."""
    out: list[Trade] = []
    tid = draw(st.integers(1, 1000))
    t = T0
    for _ in range(draw(st.integers(1, 40))):
        t += draw(st.sampled_from([0, 1, 999, 20_000, 61_000]))
        price = draw(st.integers(1, 10**12))
        maker = draw(st.booleans())
        for _ in range(draw(st.integers(1, 6))):
            qty = draw(st.integers(1, 10**9))
            out.append(Trade("binance", "BTCUSDT", tid, price, qty, t, maker))
            tid += 1
    return out


@given(_runs(), st.randoms())
@settings(max_examples=200, deadline=None)
def test_aggregate_trades_fold_to_the_candles_of_their_trades(trades: list[Trade], rnd) -> None:
    aggs = aggregate(trades)
    assert sum(a.span for a in aggs) == len(trades)
    assert len(aggs) < len(trades) or all(a.span == 1 for a in aggs)
    shuffled = list(aggs)
    rnd.shuffle(shuffled)
    for interval in Interval:
        want = {k: c.fields() for k, c in fold_trades(trades, interval).items()}
        got = {k: c.fields() for k, c in fold_trades(shuffled, interval).items()}
        assert got == want
