from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketdata.decimals import (
    DecimalFormatError,
    decimal_to_e8,
    div_half_even,
    e8_to_decimal,
    e16_to_decimal,
    format_e8,
    format_e16,
    parse_e8,
    parse_e16,
    quantize8,
    vwap_e8,
)


@pytest.mark.parametrize(
    ("text", "e8"),
    [
        ("0", 0),
        ("1", 100_000_000),
        ("0.00000001", 1),
        ("96000.01000000", 9_600_001_000_000),
        ("1.5", 150_000_000),
        ("1.1234567800", 112_345_678),  # zeros past the 8th digit are exact
        ("007.5", 750_000_000),
    ],
)
def test_parse_e8(text: str, e8: int) -> None:
    assert parse_e8(text) == e8


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("1.000000001", "too_precise"),
        ("0.123456789", "too_precise"),
        ("NaN", "bad_number"),
        ("Infinity", "bad_number"),
        ("1e5", "bad_number"),
        ("1_000", "bad_number"),
        ("-1", "bad_number"),
        ("+1", "bad_number"),
        (" 1", "bad_number"),
        ("", "bad_number"),
        (".5", "bad_number"),
        ("5.", "bad_number"),
        ("1.2.3", "bad_number"),
        ("١٢٣", "bad_number"),  # Arabic-Indic digits pass str.isdigit(), not us
        ("0x10", "bad_number"),
    ],
)
def test_parse_e8_rejects(text: str, kind: str) -> None:
    with pytest.raises(DecimalFormatError) as err:
        parse_e8(text)
    assert err.value.kind == kind


@pytest.mark.parametrize(
    ("text", "e16"),
    [
        ("0", 0),
        ("1", 10**16),
        ("0.0000000000000001", 1),
        ("9302145.66080", 93_021_456_608_000_000_000_000),
        ("126000.75000000", 1_260_007_500_000_000_000_000),
        ("1.12345678901234560000", 11_234_567_890_123_456),  # zeros past the 16th
    ],
)
def test_parse_e16(text: str, e16: int) -> None:
    assert parse_e16(text) == e16


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("1.00000000000000001", "too_precise"),
        ("-1", "bad_number"),
        ("1e5", "bad_number"),
        (".5", "bad_number"),
        ("5.", "bad_number"),
        ("NaN", "bad_number"),
        ("١٢٣", "bad_number"),
    ],
)
def test_parse_e16_rejects(text: str, kind: str) -> None:
    with pytest.raises(DecimalFormatError) as err:
        parse_e16(text)
    assert err.value.kind == kind


@given(st.decimals(min_value=0, max_value=10**20, places=16, allow_nan=False))
def test_parse_e16_matches_decimal(d: Decimal) -> None:
    assert e16_to_decimal(parse_e16(format(d, "f"))) == d


@given(st.decimals(min_value=0, max_value=10**12, places=8, allow_nan=False))
def test_parse_matches_decimal(d: Decimal) -> None:
    text = format(d, "f")
    assert e8_to_decimal(parse_e8(text)) == d
    assert decimal_to_e8(d) == parse_e8(text)


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_format_round_trips(v: int) -> None:
    assert decimal_to_e8(Decimal(format_e8(v))) == v
    assert Decimal(format_e16(v)) == e16_to_decimal(v)
    assert e8_to_decimal(v) == Decimal(format_e8(v))


@pytest.mark.parametrize(
    ("n", "d", "q"),
    [(5, 2, 2), (7, 2, 4), (-5, 2, -2), (-7, 2, -4), (1, 3, 0), (2, 3, 1), (10, 4, 2), (14, 4, 4)],
)
def test_div_half_even(n: int, d: int, q: int) -> None:
    assert div_half_even(n, d) == q


@given(st.integers(0, 10**36), st.integers(1, 10**20))
def test_vwap_is_decimal_half_even(quote_e16: int, volume_e8: int) -> None:
    exact = Decimal(quote_e16).scaleb(-16) / Decimal(volume_e8).scaleb(-8)
    # Decimal division at default precision may round; compute exactly with a wide context.
    from decimal import localcontext

    with localcontext() as ctx:
        ctx.prec = 100
        exact = Decimal(quote_e16).scaleb(-16) / Decimal(volume_e8).scaleb(-8)
    assert e8_to_decimal(vwap_e8(quote_e16, volume_e8)) == quantize8(exact)
