import pytest

from marketdata.trade import Trade

TRADE = Trade(
    exchange="binance",
    symbol="BTCUSDT",
    trade_id=4_000_000_001,
    price_e8=9_600_001_000_000,
    quantity_e8=100_000,
    event_time=1_741_910_400_123,
    is_buyer_maker=True,
)


def test_stream_fields_are_exact_strings_in_a_fixed_order() -> None:
    # The late stream's entries start with these fields, in this order (byte-identical
    # to what the candles flow has always written).
    assert list(TRADE.to_fields().items()) == [
        ("exchange", "binance"),
        ("symbol", "BTCUSDT"),
        ("trade_id", 4_000_000_001),
        ("price", "96000.01000000"),
        ("quantity", "0.00100000"),
        ("event_time", 1_741_910_400_123),
        ("is_buyer_maker", "true"),
    ]


@pytest.mark.parametrize("maker", [True, False])
def test_stream_fields_read_back(maker: bool) -> None:
    trade = TRADE._replace(is_buyer_maker=maker)
    # As Redis returns them: names and values as bytes.
    raw = {k.encode(): str(v).encode() for k, v in trade.to_fields().items()}
    assert Trade.from_fields(raw) == trade
