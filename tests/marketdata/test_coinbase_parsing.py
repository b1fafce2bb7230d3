"""Coinbase Exchange ``matches`` frames (``coinbase-ws``) to trades, and their rejections.

The frames are shaped as the samples of Coinbase's websocket documentation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketdata.parsing import (
    FORMAT_COINBASE_WS,
    iso_utc_ms,
    normalize_symbol,
    parse_message,
)
from marketdata.trade import Rejection, Trade
from tests.marketdata.test_parsing import REASON

# The documentation's sample ``match`` message.
SAMPLE = (
    b'{"type":"match","trade_id":10,"sequence":50,'
    b'"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8",'
    b'"taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1",'
    b'"time":"2014-11-07T08:19:27.028459Z","product_id":"BTC-USD",'
    b'"size":"5.23512","price":"400.23","side":"sell"}'
)
RECV = 1_415_348_368_000


def frame(**changes: Any) -> bytes:
    d = orjson.loads(SAMPLE)
    for k, v in changes.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return orjson.dumps(d)


def parse(payload: bytes, **kw: Any) -> Trade | Rejection:
    return parse_message(payload, fmt=FORMAT_COINBASE_WS, exchange="coinbase", recv_ms=RECV, **kw)


def test_the_documented_sample_is_one_trade_exactly() -> None:
    got = parse(SAMPLE)
    assert got == Trade(
        exchange="coinbase",
        symbol="BTC-USD",
        trade_id=10,
        price_e8=400_23_000_000,
        quantity_e8=5_23_512_000,
        event_time=1_415_348_367_028,  # .028459 s floored to ms
        is_buyer_maker=False,  # the maker sold: a taker buy
    )


def test_side_is_the_makers_side() -> None:
    assert isinstance(t := parse(frame(side="buy")), Trade) and t.is_buyer_maker
    assert isinstance(t := parse(frame(side="sell")), Trade) and not t.is_buyer_maker


def test_last_match_is_a_trade_and_source_rest_is_ignored() -> None:
    assert parse(frame(type="last_match")) == parse(SAMPLE)
    assert parse(frame(source="rest", sequence=..., maker_order_id=...)) == parse(SAMPLE)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"type": "heartbeat"}, "unsupported_event"),
        ({"type": "subscriptions"}, "unsupported_event"),
        ({"type": ...}, "unsupported_event"),
        ({"product_id": ...}, "missing_field:symbol"),
        ({"trade_id": ...}, "missing_field:trade_id"),
        ({"price": ...}, "missing_field:price"),
        ({"size": ...}, "missing_field:quantity"),
        ({"time": ...}, "missing_field:event_time"),
        ({"side": ...}, "missing_field:is_buyer_maker"),
        ({"side": "BUY"}, "bad_bool:is_buyer_maker"),
        ({"side": True}, "bad_bool:is_buyer_maker"),
        ({"price": 400.23}, "bad_number:price"),
        ({"price": "-400.23"}, "non_positive:price"),
        ({"size": "0.000000001"}, "too_precise:quantity"),
        ({"size": "0"}, "non_positive:quantity"),
        ({"trade_id": "10"}, "bad_number:trade_id"),
        ({"trade_id": -1}, "bad_number:trade_id"),
        ({"time": "2014-11-07 08:19:27.028459"}, "bad_timestamp"),
        ({"time": "2014-11-07T08:19:27.028459+00:00"}, "bad_timestamp"),
        ({"time": "2014-02-30T08:19:27.028459Z"}, "bad_timestamp"),
        ({"time": "2014-11-07T24:00:00Z"}, "bad_timestamp"),
        ({"time": 1415348367028}, "bad_timestamp"),
        ({"time": "2014-11-09T08:19:27Z"}, "bad_timestamp"),  # over a day after receipt
        ({"time": "2008-11-07T08:19:27Z"}, "bad_timestamp"),
        ({"product_id": "BTC--USD"}, "unknown_symbol"),
        ({"product_id": 7}, "unknown_symbol"),
    ],
)
def test_rejections_name_the_domain_field(changes: dict[str, Any], reason: str) -> None:
    got = parse(frame(**changes))
    assert isinstance(got, Rejection), got
    assert got.reason == reason and REASON.match(got.reason), got
    assert got.exchange == "coinbase"


def test_malformed_and_duplicate_keys_and_unknown_products() -> None:
    assert isinstance(r := parse(b'{"type":"match",'), Rejection) and r.reason == "malformed_json"
    assert isinstance(r := parse(b"[1]"), Rejection) and r.reason == "malformed_json"
    dup = SAMPLE[:-1] + b',"price":"1.0"}'
    assert isinstance(r := parse(dup), Rejection) and r.reason == "duplicate_key:price"
    assert isinstance(parse(SAMPLE, known_symbols={"BTC-USD"}), Trade)
    got = parse(SAMPLE, known_symbols={"ETH-USD"})
    assert isinstance(got, Rejection) and got.reason == "unknown_symbol"


def test_symbols_may_hold_inner_hyphens() -> None:
    assert normalize_symbol("btc-usd") == "BTC-USD"
    assert normalize_symbol("BTCUSDT") == "BTCUSDT"
    assert normalize_symbol("ETH-USD-PERP") == "ETH-USD-PERP"
    for bad in ("-BTC", "BTC-", "BTC--USD", "B", "BTC_USD", "BTC USD", "X" * 31, "É-USD"):
        assert normalize_symbol(bad) is None, bad
    assert normalize_symbol("A" * 30) == "A" * 30


@given(st.datetimes(min_value=datetime(2009, 1, 3), max_value=datetime(2099, 12, 31)))
def test_iso_times_floor_to_the_millisecond(when: datetime) -> None:
    text = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    exact = (when.replace(tzinfo=UTC) - epoch) // timedelta(milliseconds=1)
    assert iso_utc_ms(text) == exact
    assert iso_utc_ms(when.strftime("%Y-%m-%dT%H:%M:%SZ")) == exact - exact % 1000
    assert iso_utc_ms(text[:-1]) is None  # no zone: not Coinbase's form
