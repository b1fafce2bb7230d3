"""Binance's trade dumps: their files (names, zips, header) and their rows' grammar.

Files are named ``<SYMBOL>-trades-<YYYY-MM-DD>.csv`` (a day) or
``<SYMBOL>-trades-<YYYY-MM>.csv`` (a month), often inside a ``.zip`` of the same
name; futures dumps start with a header line. ``cryptopipe feed replay``
(:mod:`streaming.feeds.replay`) and ``cryptopipe lake import``
(:mod:`batch.dump_import`) read them alike through this module.

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

import re
import zipfile
from datetime import date
from pathlib import Path
from typing import IO

from marketdata.decimals import MAX_PRICE_E8, MAX_QUANTITY_E8, SCALE_DIGITS
from marketdata.parsing import normalize_symbol

_DUMP_NAME = re.compile(r"^([A-Za-z0-9]+)-trades-(\d{4})-(\d{2})(?:-(\d{2}))?")


def symbol_from_filename(path: Path) -> str | None:
    """``BTCUSDT-trades-2025-03-14.csv`` -> ``BTCUSDT`` (Binance's dump naming)."""
    m = _DUMP_NAME.match(path.name)
    return normalize_symbol(m.group(1)) if m else None


def covered_days(path: Path) -> tuple[date, date] | None:
    """``[first, last]`` UTC days a Binance dump covers by its name, if it says.

    ``X-trades-2025-03-14`` covers that day, ``X-trades-2025-03`` the whole month.
    """
    m = _DUMP_NAME.match(path.name)
    if not m:
        return None
    y, mo, d = int(m.group(2)), int(m.group(3)), m.group(4)
    try:
        if d is not None:
            day = date(y, mo, int(d))
            return day, day
        first = date(y, mo, 1)
        nxt = date(y + 1, 1, 1) if mo == 12 else date(y, mo + 1, 1)
    except ValueError:
        return None
    return first, date.fromordinal(nxt.toordinal() - 1)


def dump_stem(path: Path) -> str:
    """The input's name without ``.zip`` / ``.csv``: a zip and its csv share it."""
    name = path.name
    for ext in (".zip", ".csv"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name


def open_dump(path: Path) -> tuple[IO[bytes], int]:
    """The file, or the single file inside a ``.zip``, and its uncompressed size."""
    if not path.exists():
        msg = f"{path}: no such file"
        raise FileNotFoundError(msg)
    if path.suffix.lower() == ".zip":
        zf = zipfile.ZipFile(path)
        members = [i for i in zf.infolist() if not i.filename.endswith("/")]
        if len(members) != 1:
            msg = f"{path}: expected one file inside the zip, found {len(members)}"
            raise ValueError(msg)
        return zf.open(members[0]), members[0].file_size
    return path.open("rb"), path.stat().st_size


def is_header(line_number: int, line: bytes) -> bool:
    """Whether a CSV line is a header (futures dumps): the first line, naming ``price``."""
    return line_number == 1 and b"price" in line.lower()


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
