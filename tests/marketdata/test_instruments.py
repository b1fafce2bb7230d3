"""Canonical instruments and declared spreads: the mapping, the rule, the errors."""

from __future__ import annotations

import pytest

from marketdata.instruments import (
    Instrument,
    InstrumentError,
    Instruments,
    Series,
    SpreadRules,
    parse_comparisons,
    split_symbol,
)
from marketdata.settings import Settings

BINANCE = Series("binance", "BTCUSDT")
KRAKEN = Series("kraken", "BTCUSDT")
COINBASE = Series("coinbase", "BTC-USD")


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        ("BTCUSDT", ("BTC", "USDT")),
        ("BTC-USD", ("BTC", "USD")),
        ("ETHBUSD", ("ETH", "BUSD")),  # the longest quote, not ETHB/USD
        ("BTCFDUSD", ("BTC", "FDUSD")),
        ("USDCUSDT", ("USDC", "USDT")),
        ("ETHBTC", ("ETH", "BTC")),
        ("1000PEPEUSDT", ("1000PEPE", "USDT")),
        ("btceur", ("BTC", "EUR")),
        ("USDT", None),  # nothing left for the base
        ("FOOBAR", None),  # no known quote: never guessed
        ("BTC-USD-INTX", None),
        ("BTC-BTC", None),
        # Binance's spelling only: Kraken's XBTUSD reads as XB/TUSD, so it needs an
        # explicit entry (kraken:XBTUSD=BTC/USD).
        ("XBTUSD", ("XB", "TUSD")),
    ],
)
def test_split_symbol(symbol: str, expected: tuple[str, str] | None) -> None:
    got = split_symbol(symbol)
    assert (None if got is None else (got.base, got.quote)) == expected


def test_explicit_entries_win_series_first() -> None:
    inst = Instruments.parse(" kraken:XBTUSD=btc/usd , XBTUSD=XBT/USD, binance:BTCUSDT=BTC/USD ")
    assert inst.of(Series("kraken", "XBTUSD")) == Instrument("BTC", "USD")
    assert inst.of(Series("other", "XBTUSD")) == Instrument("XBT", "USD")
    assert inst.of(BINANCE) == Instrument("BTC", "USD")
    assert inst.of(KRAKEN) == Instrument("BTC", "USDT")  # split by its spelling
    assert Instruments.parse(inst.text()) == inst
    assert Instruments.parse("") == Instruments()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("coinbase:BTC-USD", "missing '='"),
        ("coinbase:BTC-USD=BTCUSD", "write BASE/QUOTE"),
        ("coinbase:BTC-USD=BTC/BTC", "the base and the quote are the same"),
        (":BTC-USD=BTC/USD", "write exchange:SYMBOL"),
        ("a:XY=BTC/USD,A:xy=ETH/USD", "given twice"),
    ],
)
def test_bad_instrument_entries_say_what_to_write(text: str, says: str) -> None:
    with pytest.raises(InstrumentError) as err:
        Instruments.parse(text)
    assert says in str(err.value)
    assert "CRYPTOPIPE_INSTRUMENTS" in str(err.value)


def test_the_same_instrument_on_two_exchanges_compares_without_a_declaration() -> None:
    rules = SpreadRules()
    assert rules.comparable(KRAKEN, BINANCE) == (BINANCE, KRAKEN)  # ordered by name
    assert rules.comparable(BINANCE, COINBASE) is None  # USDT against USD: undeclared
    assert rules.comparable(BINANCE, Series("binance", "ETHUSDT")) is None
    assert rules.comparable(Series("a", "FOOBAR"), Series("b", "FOOBAR")) is None  # no instrument
    assert rules.comparable(BINANCE, BINANCE) is None


def test_a_declared_cross_quote_pair_compares_in_its_order() -> None:
    declared = parse_comparisons("coinbase:btc-usd ~ Binance:BTCUSDT")
    rules = SpreadRules.build(Instruments(), declared)
    assert rules.comparable(BINANCE, COINBASE) == (COINBASE, BINANCE)
    assert rules.base_of(COINBASE) == rules.base_of(BINANCE) == "BTC"
    assert rules.pairs([BINANCE], [BINANCE, KRAKEN, COINBASE]) == [
        (BINANCE, KRAKEN),
        (COINBASE, BINANCE),
    ]


@pytest.mark.parametrize(
    ("instruments", "spreads", "says"),
    [
        ("", "binance:ETHUSDT~coinbase:BTC-USD", "compares ETH/USDT with BTC/USD"),
        ("", "binance:BTCUSDT~binance:BTCUSDT", "with itself"),
        ("", "a:BTCUSDT~b:BTCUSDT,b:BTCUSDT~a:BTCUSDT", "declare the same pair"),
        ("", "bitmex:XBTH25~coinbase:BTC-USD", "add it to CRYPTOPIPE_INSTRUMENTS"),
        ("", "binance:BTCUSDT-coinbase:BTC-USD", "has no '~'"),
        ("kraken:XBTUSD=XBT/USD", "kraken:XBTUSD~coinbase:BTC-USD", "XBT/USD with BTC/USD"),
    ],
)
def test_bad_declarations_are_refused_by_the_settings(
    monkeypatch: pytest.MonkeyPatch, instruments: str, spreads: str, says: str
) -> None:
    monkeypatch.setenv("CRYPTOPIPE_INSTRUMENTS", instruments)
    monkeypatch.setenv("CRYPTOPIPE_SPREADS", spreads)
    with pytest.raises(ValueError, match="CRYPTOPIPE_SPREADS") as err:
        Settings.from_env()
    assert says in str(err.value)


def test_settings_carry_the_declarations_to_child_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRYPTOPIPE_INSTRUMENTS", "kraken:XBTUSD=BTC/USD")
    monkeypatch.setenv("CRYPTOPIPE_SPREADS", "kraken:XBTUSD~coinbase:BTC-USD")
    settings = Settings.from_env()
    rules = settings.spread_rules
    assert rules.comparable(COINBASE, Series("kraken", "XBTUSD")) == (
        Series("kraken", "XBTUSD"),
        COINBASE,
    )
    for var, value in settings.env().items():
        monkeypatch.setenv(var, value)
    assert Settings.from_env() == settings


def test_a_series_symbol_is_one_the_parser_takes() -> None:
    # One rule for symbols (marketdata.parsing.normalize_symbol): 2 to 30 characters.
    for bad in ("binance:X", f"binance:{'A' * 31}", "binance:BTC--USD", "Bin ance:BTCUSDT"):
        with pytest.raises(InstrumentError, match="bad series"):
            Series.parse(bad)
    assert Series.parse("Coinbase:btc-usd") == Series("coinbase", "BTC-USD")
