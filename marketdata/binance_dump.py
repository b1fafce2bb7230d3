"""Binance's public dumps: their files (names, zips, header, kinds) and their rows' grammar.

Files are named ``<SYMBOL>-<kind>-<YYYY-MM-DD>.csv`` (a day) or
``<SYMBOL>-<kind>-<YYYY-MM>.csv`` (a month), often inside a ``.zip`` of the same
name, where the kind is ``trades``, ``aggTrades`` or a kline interval (``1m``);
futures dumps start with a header line. ``cryptopipe feed replay``
(:mod:`streaming.feeds.replay`) and ``cryptopipe lake import``
(:mod:`batch.dump_import`) read them alike through this module.

The three formats (the names the command line uses):

* ``binance-trades`` (also ``binance-csv``): ``id,price,qty,quoteQty,time,
  isBuyerMaker[,isBestMatch]``; USD-M futures: the header
  ``id,price,qty,quote_qty,time,is_buyer_maker``.
* ``binance-aggtrades``: ``aggId,price,qty,firstId,lastId,time,isBuyerMaker
  [,isBestMatch]`` (spot, 8 columns); USD-M: 7 columns after the header
  ``agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,
  is_buyer_maker``.
* ``binance-klines``: Binance's 12-column klines (``open_time,open,high,low,close,
  volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,
  ignore``).

COIN-M futures dumps (symbols like ``BTCUSD_PERP``, trades with a ``base_qty``
column) count quantity in contracts, not in the base asset: they are refused
(:func:`coin_m_reason`). :func:`sniff` tells which format a file's first lines are in,
so a file imported in the wrong format gets a message naming the right one.

A trade row is ``id,price,qty,quoteQty,time,isBuyerMaker[,isBestMatch]``. The domain parser
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

#: The command line's format names.
FORMAT_TRADES = "binance-trades"
FORMAT_TRADES_ALIAS = "binance-csv"
FORMAT_AGGTRADES = "binance-aggtrades"
FORMAT_KLINES = "binance-klines"
IMPORT_FORMATS = (FORMAT_TRADES, FORMAT_AGGTRADES, FORMAT_KLINES, FORMAT_TRADES_ALIAS)
#: Format -> the kind an import of it is filed under (``lake.layout.ImportSource``).
KIND_OF_FORMAT = {
    FORMAT_TRADES: "trades",
    FORMAT_TRADES_ALIAS: "trades",
    FORMAT_AGGTRADES: "aggtrades",
    FORMAT_KLINES: "klines",
}

_DUMP_NAME = re.compile(
    r"^([A-Za-z0-9_]+)-(trades|aggTrades|\d+[smhdwM])-(\d{4})-(\d{2})(?:-(\d{2}))?(?![0-9])"
)
_COIN_M_SYMBOL = re.compile(r"^[A-Z0-9]+_(?:PERP|\d{6})$")


def _name_match(path: Path) -> re.Match[str] | None:
    return _DUMP_NAME.match(path.name)


def symbol_from_filename(path: Path) -> str | None:
    """``BTCUSDT-trades-2025-03-14.csv`` -> ``BTCUSDT`` (Binance's dump naming)."""
    m = _name_match(path)
    return normalize_symbol(m.group(1)) if m else None


def format_from_filename(path: Path) -> str | None:
    """The format a Binance dump's name says: ``-trades-``, ``-aggTrades-``, ``-1m-``.

    Klines of another interval (``-5m-``) say ``binance-klines`` too; the klines
    import refuses them with its own message.
    """
    m = _name_match(path)
    if not m:
        return None
    kind = m.group(2)
    if kind == "trades":
        return FORMAT_TRADES
    if kind == "aggTrades":
        return FORMAT_AGGTRADES
    return FORMAT_KLINES


def kline_interval_from_filename(path: Path) -> str | None:
    """``BTCUSDT-1m-2025-03-14.zip`` -> ``1m``; ``None`` for other names."""
    m = _name_match(path)
    return m.group(2) if m and m.group(2) not in ("trades", "aggTrades") else None


def coin_m_reason(path: Path, first_line: bytes = b"") -> str | None:
    """Why a dump is a COIN-M futures dump (refused), or ``None``.

    COIN-M symbols are ``<BASE><QUOTE>_PERP`` or ``..._<YYMMDD>`` and their trade
    dumps have a ``base_qty`` column: quantities are contracts of a fixed USD
    value, not the base asset, so their candles would not mean what ours mean.
    """
    m = _name_match(path)
    if (m and _COIN_M_SYMBOL.match(m.group(1).upper())) or b"base_qty" in first_line.lower():
        return (
            f"{path.name} is a COIN-M futures dump: its quantities are contracts, not the "
            "base asset, which the pipeline does not support (spot and USD-M only)"
        )
    return None


def covered_days(path: Path) -> tuple[date, date] | None:
    """``[first, last]`` UTC days a Binance dump covers by its name, if it says.

    ``X-trades-2025-03-14`` covers that day, ``X-trades-2025-03`` the whole month
    (the same for ``aggTrades`` and kline dumps).
    """
    m = _name_match(path)
    if not m:
        return None
    y, mo, d = int(m.group(3)), int(m.group(4)), m.group(5)
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
    """Whether a CSV line is a header (futures dumps): the first line, naming a column."""
    if line_number != 1:
        return False
    low = line.lower()
    return b"price" in low or b"open_time" in low


_BOOL = (b"true", b"false")


def _looks_numeric(col: bytes) -> bool:
    c = col.strip()
    return bool(c) and c.replace(b".", b"", 1).isdigit()


def sniff_line(line: bytes) -> str | None:
    """The format one CSV line (a header or a row) is in, or ``None`` when none fits.

    Returns one of :data:`FORMAT_TRADES`, :data:`FORMAT_AGGTRADES`,
    :data:`FORMAT_KLINES`, or ``"coin-m"`` for a COIN-M trades header.
    """
    low = line.strip().lower()
    if b"base_qty" in low:
        return "coin-m"
    if low.startswith(b"agg_trade_id"):
        return FORMAT_AGGTRADES
    if low.startswith(b"open_time"):
        return FORMAT_KLINES
    if low.startswith(b"id,price"):
        return FORMAT_TRADES
    cols = low.split(b",")
    n = len(cols)
    bools = [c.strip() in _BOOL for c in cols]
    if n == 12 and all(_looks_numeric(c) for c in cols[:11]):
        return FORMAT_KLINES
    if n in (6, 7) and bools[5] and all(_looks_numeric(c) for c in cols[:5]):
        return FORMAT_TRADES
    if n in (7, 8) and bools[6] and all(_looks_numeric(c) for c in cols[:6]):
        return FORMAT_AGGTRADES
    return None


def sniff(lines: list[bytes]) -> str | None:
    """The format most of a file's first non-blank lines are in (see :func:`sniff_line`)."""
    votes: dict[str, int] = {}
    for line in lines:
        if line.strip():
            f = sniff_line(line)
            if f is not None:
                votes[f] = votes.get(f, 0) + 1
    return max(votes, key=lambda f: votes[f]) if votes else None


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


def row_pattern(*, capture: bool, exact_fraction: bool, aggregate: bool = False) -> str:
    """The row (without its line end) as a regular expression (Python ``re`` and RE2).

    Args:
        capture: group the trade id, price whole (and fraction, when exact),
            quantity whole (and fraction), time and maker, in that order; else no
            groups. With ``aggregate``, the first and last trade ids come after
            the quantity instead of the ignored quote quantity (both grouped), and
            the aggregate id in front is not grouped.
        aggregate: the row of an aggregate trade dump instead of a trade dump.
        exact_fraction: prices and quantities with exactly 8 fractional digits (how
            Binance writes them; a fast path converting ``whole + fraction`` as one
            integer needs it); else 1 to 8 of them, or none.

    """
    g = "(" if capture else "(?:"
    frac = f"[0-9]{{{SCALE_DIGITS}}}" if exact_fraction else f"[0-9]{{1,{SCALE_DIGITS}}}"
    whole = f"{g}[0-9]{{1,{WHOLE_DIGITS}}})"
    decimal = rf"{whole}\.{g}{frac})" if exact_fraction else rf"{whole}(?:\.{frac})?"
    tid = f"[0-9]{{1,{TRADE_ID_DIGITS}}}"
    tail = f"{g}[0-9]{{1,{TIME_DIGITS}}}),{g}{MAKER})(?:,{IGNORED})?"
    if aggregate:
        return f"{tid},{decimal},{decimal},{g}{tid}),{g}{tid}),{tail}"
    return f"{g}{tid}),{decimal},{decimal},{IGNORED},{tail}"
