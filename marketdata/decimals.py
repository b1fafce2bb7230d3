"""Exact decimal handling for prices and quantities.

Prices and quantities are carried as *scaled integers*: the number of 1e-8 units
(``price_e8 = 96000.01 * 10**8``). Integer arithmetic is exact and fast; the
product of a price and a quantity is an integer in units of 1e-16. Conversion to
``decimal.Decimal`` happens only at the edges (JSON output, Parquet, tests).

Floats never appear: parsing goes from the exchange's decimal string straight to
the scaled integer.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, localcontext

SCALE_DIGITS = 8
SCALE = 10**SCALE_DIGITS
#: Product of two e8 values (price x quantity) is in units of 1e-16.
QUOTE_SCALE_DIGITS = 2 * SCALE_DIGITS

#: Largest accepted price (exclusive), per docs/architecture.md: price < 10^10.
MAX_PRICE_E8 = 10**10 * SCALE
#: Largest accepted quantity (exclusive), per docs/architecture.md: quantity < 10^12.
MAX_QUANTITY_E8 = 10**12 * SCALE

_ASCII_DIGITS = frozenset("0123456789")


class DecimalFormatError(ValueError):
    """A string that is not a plain, finite, non-negative decimal number."""

    def __init__(self, kind: str) -> None:
        # kind is "bad_number" or "too_precise": the reason code prefix.
        super().__init__(kind)
        self.kind = kind


def parse_e8(text: str) -> int:
    """Parse a plain decimal string into an integer number of 1e-8 units.

    Accepted: ``"123"``, ``"123.45"``, ``"0.00000001"``, ``".5"`` is rejected.
    Fractional digits beyond the 8th are accepted only when they are zeros
    (``"1.1234567800"`` is exactly representable); otherwise the value is
    ``too_precise``. Signs, exponents, underscores, whitespace, ``NaN`` and
    ``Infinity`` are ``bad_number``: Binance never sends them, and Python's own
    ``Decimal``/``int`` would silently accept some of them.

    Raises:
        DecimalFormatError: with ``kind`` set to ``bad_number`` or ``too_precise``.

    """
    whole, dot, frac = text.partition(".")
    if not whole or len(whole) > 40 or not whole.isascii() or not whole.isdigit():
        raise DecimalFormatError("bad_number")
    if dot:
        if not frac or not frac.isascii() or not frac.isdigit():
            raise DecimalFormatError("bad_number")
        if len(frac) > SCALE_DIGITS:
            if len(frac) > 64:
                raise DecimalFormatError("bad_number")
            if frac[SCALE_DIGITS:].strip("0"):
                raise DecimalFormatError("too_precise")
            frac = frac[:SCALE_DIGITS]
        return int(whole) * SCALE + int(frac.ljust(SCALE_DIGITS, "0"))
    return int(whole) * SCALE


def parse_e16(text: str) -> int:
    """Parse a plain decimal string into an integer number of 1e-16 units.

    The same grammar as :func:`parse_e8` with 16 fractional digits: for amounts that
    are sums of price x quantity (a quote volume), which the exchange may write with
    more than 8 fractional digits. Digits beyond the 16th are accepted only when
    they are zeros.

    Raises:
        DecimalFormatError: with ``kind`` set to ``bad_number`` or ``too_precise``.

    """
    whole, dot, frac = text.partition(".")
    if not whole or len(whole) > 40 or not whole.isascii() or not whole.isdigit():
        raise DecimalFormatError("bad_number")
    if not dot:
        return int(whole) * 10**QUOTE_SCALE_DIGITS
    if not frac or len(frac) > 64 or not frac.isascii() or not frac.isdigit():
        raise DecimalFormatError("bad_number")
    if len(frac) > QUOTE_SCALE_DIGITS:
        if frac[QUOTE_SCALE_DIGITS:].strip("0"):
            raise DecimalFormatError("too_precise")
        frac = frac[:QUOTE_SCALE_DIGITS]
    return int(whole) * 10**QUOTE_SCALE_DIGITS + int(frac.ljust(QUOTE_SCALE_DIGITS, "0"))


def _scaled(value: int, digits: int) -> Decimal:
    # scaleb rounds to the context's precision (28 digits by default): widen it.
    with localcontext() as ctx:
        ctx.prec = max(60, len(str(abs(value))) + 2)
        return Decimal(value).scaleb(-digits)


def e8_to_decimal(value: int) -> Decimal:
    """Scaled integer (1e-8 units) to an exact ``Decimal`` with 8 fractional digits."""
    return _scaled(value, SCALE_DIGITS)


def e16_to_decimal(value: int) -> Decimal:
    """Scaled integer (1e-16 units) to an exact ``Decimal`` with 16 fractional digits."""
    return _scaled(value, QUOTE_SCALE_DIGITS)


def format_e8(value: int) -> str:
    """Scaled integer (1e-8 units) as a decimal string with 8 fractional digits."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), SCALE)
    return f"{sign}{whole}.{frac:08d}"


def format_e16(value: int) -> str:
    """Scaled integer (1e-16 units) as a decimal string with 16 fractional digits."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**QUOTE_SCALE_DIGITS)
    return f"{sign}{whole}.{frac:016d}"


def decimal_to_e8(value: Decimal | str | int) -> int:
    """Exact ``Decimal`` (or its string) to 1e-8 units; raises if not representable."""
    d = Decimal(value)
    if not d.is_finite():
        msg = f"{value!r} is not a finite number"
        raise ValueError(msg)
    # The default context keeps 28 digits and would round wide values silently.
    with localcontext() as ctx:
        ctx.prec = max(60, len(d.as_tuple().digits) + SCALE_DIGITS + 2)
        scaled = d.scaleb(SCALE_DIGITS)
        if scaled != scaled.to_integral_value():
            msg = f"{value!r} is not an exact multiple of 1e-8"
            raise ValueError(msg)
        return int(scaled)


def div_half_even(numerator: int, denominator: int) -> int:
    """Integer division rounded half to even (banker's rounding), exact."""
    if denominator == 0:
        msg = "division by zero"
        raise ZeroDivisionError(msg)
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    q, r = divmod(numerator, denominator)
    twice = 2 * r
    if twice > denominator or (twice == denominator and q % 2 == 1):
        q += 1
    return q


def vwap_e8(quote_e16: int, volume_e8: int) -> int:
    """VWAP = quote_volume / volume, rounded half-even to 8 fractional digits (in e8 units).

    ``quote_e16 / 1e16`` divided by ``volume_e8 / 1e8``, times ``1e8`` to express the
    result in e8 units, is ``quote_e16 / volume_e8`` exactly.
    """
    return div_half_even(quote_e16, volume_e8)


def quantize8(value: Decimal) -> Decimal:
    """Round a ``Decimal`` half-even to 8 fractional digits (reference helper)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return value.quantize(Decimal(1).scaleb(-SCALE_DIGITS), rounding=ROUND_HALF_EVEN)
