import json
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketdata.decimals import e8_to_decimal
from marketdata.parsing import MAX_PAYLOAD_BYTES, parse_message
from marketdata.trade import Rejection, Trade

REASON = re.compile(
    r"^(malformed_json|malformed_csv|oversized|bad_timestamp|unknown_symbol|unsupported_event"
    r"|bad_exchange|unknown_format"
    r"|(missing_field|bad_number|non_positive|too_precise|bad_bool):"
    r"(symbol|trade_id|last_trade_id|agg_trade_id|price|quantity|quote_quantity|event_time"
    r"|is_buyer_maker)"
    r"|duplicate_key:.+)$"
)
T = 1_741_910_400_000

GOOD: dict[str, Any] = {
    "e": "trade",
    "E": T + 1,
    "s": "BTCUSDT",
    "t": 42,
    "p": "96000.01000000",
    "q": "0.00100000",
    "T": T,
    "m": True,
    "M": True,
}


def ws(**changes: Any) -> bytes:
    d = dict(GOOD)
    for k, v in changes.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d).encode()


def check(result: Trade | Rejection, payload: bytes) -> None:
    if isinstance(result, Rejection):
        assert REASON.match(result.reason), result.reason
        assert result.payload == payload
    else:
        assert isinstance(result, Trade)
        assert result.price_e8 > 0 and result.quantity_e8 > 0
        assert 1_230_940_800_000 <= result.event_time < 4_102_444_800_000


def test_good_trade() -> None:
    t = parse_message(ws())
    assert t == Trade(
        exchange="binance",
        symbol="BTCUSDT",
        trade_id=42,
        price_e8=9_600_001_000_000,
        quantity_e8=100_000,
        event_time=T,
        is_buyer_maker=True,
    )
    assert t.price == Decimal("96000.01") and t.quantity == Decimal("0.001")


def test_combined_stream_and_extra_fields() -> None:
    env = json.dumps({"stream": "btcusdt@trade", "data": {**GOOD, "X": "extra", "b": 7}})
    assert parse_message(env.encode()) == parse_message(ws())


def test_symbol_and_exchange_are_normalised() -> None:
    t = parse_message(ws(s="btcusdt"), exchange="Binance")
    assert isinstance(t, Trade) and (t.exchange, t.symbol) == ("binance", "BTCUSDT")


def test_microseconds_are_floored_to_ms() -> None:
    t = parse_message(ws(T=T * 1000 + 999))
    assert isinstance(t, Trade) and t.event_time == T


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"", "malformed_json"),
        (b"[1,2]", "malformed_json"),
        (b'{"p": NaN}', "malformed_json"),
        (b"\xff\xfe{}", "malformed_json"),
        (ws(p="NaN"), "bad_number:price"),
        (ws(p="Infinity"), "bad_number:price"),
        (ws(p="1e5"), "bad_number:price"),
        (ws(p="1_000"), "bad_number:price"),
        (ws(p=96000.01), "bad_number:price"),
        (ws(p="1" * 30), "bad_number:price"),
        (ws(q="0.000000001"), "too_precise:quantity"),
        (ws(q="0"), "non_positive:quantity"),
        (ws(q="-2"), "non_positive:quantity"),
        (ws(p="0.00000000"), "non_positive:price"),
        (ws(t="42"), "bad_number:trade_id"),
        (ws(t=True), "bad_number:trade_id"),
        (ws(t=-1), "bad_number:trade_id"),
        (ws(T="yesterday"), "bad_timestamp"),
        (ws(T=1.5e12), "bad_timestamp"),
        (ws(T=1_000_000_000_000), "bad_timestamp"),  # 2001: before crypto
        (ws(T=5_000_000_000_000), "bad_timestamp"),  # 2128
        (ws(T=T * 1_000_000), "bad_timestamp"),  # nanoseconds
        (ws(m="true"), "bad_bool:is_buyer_maker"),
        (ws(s="BTC/USDT"), "unknown_symbol"),
        (ws(s=7), "unknown_symbol"),
        (ws(e="kline"), "unsupported_event"),
        (ws(p=...), "missing_field:price"),
        (ws(T=...), "missing_field:event_time"),
        (ws(s=...), "missing_field:symbol"),
        (
            b'{"s":"BTCUSDT","t":1,"p":"1","p":"2","q":"1","T":%d,"m":true}' % T,
            "duplicate_key:price",
        ),
        (b"{" + b" " * MAX_PAYLOAD_BYTES + b"}", "oversized"),
    ],
)
def test_rejections(payload: bytes, reason: str) -> None:
    r = parse_message(payload)
    assert isinstance(r, Rejection)
    assert r.reason == reason
    assert r.payload == payload
    assert r.exchange == "binance"


def test_whitespace_before_colon_is_not_a_duplicate() -> None:
    payload = json.dumps(GOOD, separators=(", ", " : ")).encode()
    assert isinstance(parse_message(payload), Trade)


def test_future_relative_to_receipt() -> None:
    day = 86_400_000
    assert isinstance(parse_message(ws(), recv_ms=T - day + 1000), Trade)
    assert parse_message(ws(), recv_ms=T - day - 1).reason == "bad_timestamp"


def test_known_symbols() -> None:
    assert isinstance(parse_message(ws(), known_symbols={"BTCUSDT"}), Trade)
    assert parse_message(ws(), known_symbols={"ETHUSDT"}).reason == "unknown_symbol"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (b"5,96000.01,0.1,9600.001,1741910400000,True,True", (5, T, True)),
        (b"5,96000.01,0.1,9600.001,1741910400000123,false,True\r\n", (5, T, False)),
        (b"5,96000.01,0.1,9600.001,1741910400000,true", (5, T, True)),  # no isBestMatch
    ],
)
def test_csv_rows(row: bytes, expected: tuple[int, int, bool]) -> None:
    t = parse_message(row, fmt="binance-csv", symbol="BTCUSDT")
    assert isinstance(t, Trade)
    assert (t.trade_id, t.event_time, t.is_buyer_maker) == expected
    assert t.price == Decimal("96000.01") and t.quantity == Decimal("0.1")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (b"5,96000.01,0.1", "missing_field:quote_quantity"),
        (b"x,96000.01,0.1,1,1741910400000,true,true", "bad_number:trade_id"),
        (b"5,nan,0.1,1,1741910400000,true,true", "bad_number:price"),
        (b"5,1,0.1,1,17419104000000000000,true,true", "bad_timestamp"),
        (b"5,1,0.1,1,1741910400000,maybe,true", "bad_bool:is_buyer_maker"),
        (b"5,1,0.1,1,1741910400000,true,true,extra", "malformed_csv"),
        (b"\xff,1,0.1,1,1741910400000,true,true", "malformed_csv"),
    ],
)
def test_csv_rejections(row: bytes, reason: str) -> None:
    r = parse_message(row, fmt="binance-csv", symbol="BTCUSDT")
    assert isinstance(r, Rejection) and r.reason == reason


def test_csv_needs_a_symbol() -> None:
    r = parse_message(b"5,1,0.1,1,1741910400000,true,true", fmt="binance-csv")
    assert r.reason == "missing_field:symbol"


# ---- properties ------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
decimal_texts = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.from_regex(r"-?[0-9_]{0,14}(\.[0-9]{0,12})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
    st.sampled_from(["NaN", "-Infinity", "1e308", "0x1p3", "٣", "1.0\n", " 2", "0.0"]),
)


@st.composite
def mutated_ws(draw: st.DrawFn) -> bytes:
    d: dict[str, Any] = dict(GOOD)
    for key in draw(st.lists(st.sampled_from(sorted(GOOD)), max_size=4, unique=True)):
        action = draw(st.sampled_from(["drop", "json", "decimal", "int"]))
        if action == "drop":
            d.pop(key)
        elif action == "json":
            d[key] = draw(json_values)
        elif action == "decimal":
            d[key] = draw(decimal_texts)
        else:
            d[key] = draw(st.integers(min_value=-(2**70), max_value=2**70))
    text = json.dumps(d, allow_nan=True)
    if draw(st.booleans()):
        text = json.dumps({"stream": "x@trade", "data": d}, allow_nan=True)
    cut = draw(st.integers(0, 3))
    if cut == 1:
        text = text[: draw(st.integers(0, len(text)))]
    elif cut == 2 and d:
        key = draw(st.sampled_from(sorted(d)))
        text = text[:-1] + f', "{key}": {json.dumps(d[key], allow_nan=True)}}}'
    return text.encode("utf-8", "surrogatepass")


SLOW = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))


@SLOW
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash(payload: bytes) -> None:
    check(parse_message(payload), payload)
    check(parse_message(payload, fmt="binance-csv", symbol="BTCUSDT"), payload)


@SLOW
@given(mutated_ws())
def test_mutated_trades_never_crash(payload: bytes) -> None:
    check(parse_message(payload), payload)


@SLOW
@given(st.lists(st.text(alphabet="0123456789.,-eE truefalsTRUEFALS\xff", max_size=20), max_size=9))
def test_mutated_csv_never_crash(cols: list[str]) -> None:
    payload = ",".join(cols).encode("utf-8", "surrogateescape")
    check(parse_message(payload, fmt="binance-csv", symbol="ETHUSDT"), payload)


@settings(max_examples=1000, deadline=None)
@given(
    price=st.decimals(
        min_value=Decimal("0.00000001"), max_value=Decimal("9999999999.99999999"), places=8
    ),
    qty=st.decimals(
        min_value=Decimal("0.00000001"), max_value=Decimal("999999999999.99999999"), places=8
    ),
    tid=st.integers(0, 2**63 - 1),
    ts=st.integers(1_230_940_800_000, 4_102_444_799_999),
    maker=st.booleans(),
    symbol=st.from_regex(r"[A-Z0-9]{2,12}", fullmatch=True),
)
def test_valid_trades_parse_exactly(
    price: Decimal, qty: Decimal, tid: int, ts: int, maker: bool, symbol: str
) -> None:
    payload = ws(p=format(price, "f"), q=format(qty, "f"), t=tid, T=ts, m=maker, s=symbol)
    t = parse_message(payload)
    assert isinstance(t, Trade), t
    assert (e8_to_decimal(t.price_e8), e8_to_decimal(t.quantity_e8)) == (price, qty)
    assert (t.trade_id, t.event_time, t.is_buyer_maker, t.symbol) == (tid, ts, maker, symbol)
    row = f"{tid},{price:f},{qty:f},0,{ts},{str(maker).lower()},true".encode()
    assert parse_message(row, fmt="binance-csv", symbol=symbol) == t


def test_every_payload_is_a_trade_or_an_explained_rejection() -> None:
    from marketdata.simulator import SimConfig, simulate

    msgs = list(simulate(SimConfig(rate=200, duration_s=120, malformed=0.2, seed=7)))
    results = [parse_message(m.payload) for m in msgs]
    trades = [r for r in results if isinstance(r, Trade)]
    rejects = [r for r in results if isinstance(r, Rejection)]
    assert len(trades) + len(rejects) == len(msgs)
    assert len(rejects) == sum(m.kind == "malformed" for m in msgs)
    assert all(REASON.match(r.reason) for r in rejects)


AGG: dict[str, Any] = {
    "e": "aggTrade",
    "E": T + 1,
    "s": "BTCUSDT",
    "a": 7,
    "p": "96000.01000000",
    "q": "0.30000000",
    "f": 100,
    "l": 104,
    "T": T,
    "m": False,
    "M": True,
}


def test_agg_trade_message_counts_its_trades() -> None:
    t = parse_message(json.dumps(AGG).encode())
    assert isinstance(t, Trade)
    assert (t.trade_id, t.span, t.last_trade_id) == (100, 5, 104)
    assert t.quantity == Decimal("0.3") and t.is_buyer_maker is False
    # In the combined-stream envelope too.
    wrapped = json.dumps({"stream": "btcusdt@aggTrade", "data": AGG}).encode()
    assert parse_message(wrapped) == t
    # One trade: f == l.
    one = parse_message(json.dumps({**AGG, "l": 100}).encode())
    assert isinstance(one, Trade) and one.span == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"l": 99}, "bad_number:last_trade_id"),
        ({"l": "104"}, "bad_number:last_trade_id"),
        ({"f": -1}, "bad_number:trade_id"),
        ({"f": ...}, "missing_field:trade_id"),
        ({"l": ...}, "missing_field:last_trade_id"),
        ({"m": "false"}, "bad_bool:is_buyer_maker"),
    ],
)
def test_agg_trade_message_rejections(change: dict[str, Any], reason: str) -> None:
    d = dict(AGG)
    for k, v in change.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    payload = json.dumps(d).encode()
    res = parse_message(payload)
    assert isinstance(res, Rejection) and res.reason == reason
    check(res, payload)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        # Spot: 8 columns, µs since 2025; USD-M: 7 columns (after its header line).
        (b"7,96000.01000000,0.30000000,100,104,1741910400000123,False,True", (100, 5, False)),
        (b"7,96000.01,0.3,100,104,1741910400000,true", (100, 5, True)),
        (b"8,96000.01,0.3,105,105,1741910400000,True", (105, 1, True)),
    ],
)
def test_agg_trades_csv_rows(row: bytes, expected: tuple[int, int, bool]) -> None:
    t = parse_message(row, fmt="binance-aggtrades", symbol="BTCUSDT")
    assert isinstance(t, Trade)
    assert (t.trade_id, t.span, t.is_buyer_maker) == expected
    assert t.event_time == 1741910400000 and t.price == Decimal("96000.01")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (b"7,96000.01,0.3,100,99,1741910400000,true", "bad_number:last_trade_id"),
        (b"7,96000.01,0.3,100,104,1741910400000", "missing_field:is_buyer_maker"),
        (b"7,96000.01,0.3,100,104,1741910400000,maybe", "bad_bool:is_buyer_maker"),
        (b"x,96000.01,0.3,100,104,1741910400000,true", "bad_number:agg_trade_id"),
        (b"7,96000.01,0.3,100,104,1741910400000,true,true,9", "malformed_csv"),
    ],
)
def test_agg_trades_csv_rejections(row: bytes, reason: str) -> None:
    res = parse_message(row, fmt="binance-aggtrades", symbol="BTCUSDT")
    assert isinstance(res, Rejection) and res.reason == reason
