"""The grammar of a row of Binance's trade dumps, as the fast paths accept it.

A row is ``id,price,qty,quoteQty,time,isBuyerMaker[,isBestMatch]``. The domain parser
(:func:`marketdata.parsing.parse_message`, format ``binance-csv``) is the authority on
every row; two fast paths skip it for rows that are beyond doubt and must give the
parser's result exactly: the speed layer's (:mod:`streaming.fastparse`, Python ``re``
over raw-log entries) and the lake import's (:mod:`batch.dump_import`, one RE2
expression over a block of lines, through Arrow). Both build their expression here,
so they accept the same rows. A row outside this grammar is not rejected by it: it
goes to the parser, which accepts or rejects it with its reason.

The limits keep every value inside the domain's ranges and inside int64 in 1e-8
units, so a fast path can convert without a range check that could overflow: trade
ids of at most 18 digits (< 2^63), prices and quantities of at most 10 integer digits
and 8 fractional ones, times of at most 16 digits (ms, or µs since 2025). Ignored
columns (quoteQty, isBestMatch) are printable ASCII without commas or spaces.
"""

from __future__ import annotations

from marketdata.decimals import MAX_PRICE_E8, MAX_QUANTITY_E8, SCALE_DIGITS

TRADE_ID_DIGITS = 18
WHOLE_DIGITS = 10
TIME_DIGITS = 16
#: Printable ASCII except the comma (and so no whitespace, no line ends).
IGNORED = r"[\x21-\x2b\x2d-\x7e]*"
MAKER = r"true|false|True|False"
#: The values of the maker column that mean "the buyer was the maker".
MAKER_TRUE = ("true", "True")

assert 10**TRADE_ID_DIGITS <= 2**63 - 1
assert 10**WHOLE_DIGITS * 10**SCALE_DIGITS <= min(MAX_PRICE_E8, MAX_QUANTITY_E8)
assert 10 ** (WHOLE_DIGITS + SCALE_DIGITS) <= 2**63 - 1


def row_pattern(*, capture: bool, exact_fraction: bool) -> str:
    """The row (without its line end) as a regular expression (Python ``re`` and RE2).

    Args:
        capture: group the trade id, price whole (and fraction, when exact),
            quantity whole (and fraction), time and maker, in that order; else no
            groups.
        exact_fraction: prices and quantities with exactly 8 fractional digits (how
            Binance writes them; a fast path converting ``whole + fraction`` as one
            integer needs it); else 1 to 8 of them, or none.

    """
    g = "(" if capture else "(?:"
    frac = f"[0-9]{{{SCALE_DIGITS}}}" if exact_fraction else f"[0-9]{{1,{SCALE_DIGITS}}}"
    whole = f"{g}[0-9]{{1,{WHOLE_DIGITS}}})"
    decimal = rf"{whole}\.{g}{frac})" if exact_fraction else rf"{whole}(?:\.{frac})?"
    return (
        f"{g}[0-9]{{1,{TRADE_ID_DIGITS}}}),{decimal},{decimal},{IGNORED},"
        f"{g}[0-9]{{1,{TIME_DIGITS}}}),{g}{MAKER})(?:,{IGNORED})?"
    )
