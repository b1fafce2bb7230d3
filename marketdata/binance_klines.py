"""Binance's own 1m candles (klines): their rows, and how ours are compared with them.

A kline dump (``BTCUSDT-1m-2025-03-14.csv``) has 12 columns: ``open_time, open, high,
low, close, volume, close_time, quote_volume, count, taker_buy_volume,
taker_buy_quote_volume, ignore``; spot dumps have no header and times in µs since
2025 (ms before), USD-M dumps a header line and ms. They are the exchange's account
of the same trades, kept apart from trades as a third witness: ``cryptopipe
reconcile --against klines`` compares the batch layer's 1m candles with them
(:func:`compare_klines`).

Every value is kept exactly: prices and base volumes in 1e-8 units, the two quote
volumes in 1e-16 units (USD-M futures write exact sums of price x quantity, which can
have more than 8 fractional digits).

The comparison rules:

* open, high, low, close, volume, trade count and taker buy volume are equal,
  exactly;
* quote volume (:data:`QUOTE_VOLUME_RULE`): Binance sums each trade's quote quantity
  as it stores it, cut to the quote asset's 8 decimals, while ours is the exact sum
  of price x quantity. Each trade moves the sum by less than one unit of the 8th
  decimal, so the two may differ by at most ``trade_count`` x 0.00000001. Binance's
  published trades show the cut is a truncation (0.000627 x 3.558 = 0.002230866 is
  written 0.00223086), not a rounding, so half a unit per trade would be too tight;
  the bound holds for either direction;
* taker buy quote volume (:data:`TAKER_BUY_QUOTE_RULE`): candles do not carry it,
  so it is checked against what our candle allows: between low and high times the
  taker buy volume, and the rest of the quote volume between low and high times the
  maker volume, each widened by the same per-trade allowance;
* a kline of a minute without trades (count 0, volume 0: Binance writes one for
  every minute) is an empty minute, not a missing candle;
* a series (exchange, symbol) with batch candles but no klines that day is not
  compared (:attr:`KlineComparison.symbols_without_klines`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from marketdata.candle import Candle
from marketdata.decimals import (
    MAX_PRICE_E8,
    DecimalFormatError,
    format_e8,
    format_e16,
    parse_e8,
    parse_e16,
)
from marketdata.timeutil import MAX_EVENT_TIME_MS, MICROS_THRESHOLD, MIN_EVENT_TIME_MS
from marketdata.trade import Rejection

MINUTE_MS = 60_000
#: A minute in µs (spot dumps since 2025 write their times in µs).
MINUTE_US = 60_000_000
#: One unit of the 8th decimal, in the 1e-16 units of a quote volume.
QUOTE_UNIT_E16 = 10**8
#: Volumes (1e-8 units) and quote volumes (1e-16 units) must fit the lake's
#: ``decimal(38, 8)`` and ``decimal(38, 16)``: fewer than 38 digits.
MAX_VOLUME_E8 = 10**38
MAX_QUOTE_E16 = 10**38
#: Columns of a kline row.
COLUMNS = 12

QUOTE_VOLUME_RULE = (
    "quote_volume matches when |ours - theirs| <= trade_count x 0.00000001: Binance sums "
    "each trade's quote quantity cut to the quote asset's 8 decimals (truncated, as its "
    "published trades show), ours is the exact sum of price x quantity, and each trade "
    "moves the sum by less than 0.00000001"
)
TAKER_BUY_QUOTE_RULE = (
    "taker_buy_quote_volume (not in our candles) matches when it lies between low and high "
    "x taker_buy_volume and leaves quote_volume minus it between low and high x the maker "
    "volume (volume - taker_buy_volume), each bound widened by trade_count x 0.00000001"
)
#: Fields compared exactly, in the order a difference lists them.
EXACT_FIELDS = ("open", "high", "low", "close", "volume", "trade_count", "taker_buy_volume")

Key = tuple[str, str, int]  # (exchange, symbol, open_time)


class Kline(NamedTuple):
    """One of Binance's 1m klines, exact.

    Prices and base volumes are in 1e-8 units, the quote volumes in 1e-16 units;
    ``open_time`` is ms since the epoch (µs input floored).
    """

    exchange: str
    symbol: str
    open_time: int
    open_e8: int
    high_e8: int
    low_e8: int
    close_e8: int
    volume_e8: int
    quote_volume_e16: int
    trade_count: int
    taker_buy_volume_e8: int
    taker_buy_quote_volume_e16: int

    @property
    def key(self) -> Key:
        """(exchange, symbol, open_time)."""
        return (self.exchange, self.symbol, self.open_time)

    @property
    def empty(self) -> bool:
        """A minute without trades (Binance writes a kline for every minute)."""
        return self.trade_count == 0 and self.volume_e8 == 0


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _digits(text: str, name: str, most: int, reason: str) -> int:
    t = text.strip()
    if not t.isascii() or not t.isdigit() or len(t) > most:
        raise _Bad(reason, f"{name}={t[:30]!r} is not a whole number")
    return int(t)


def _open_ms(open_text: str, close_text: str) -> int:
    """The open time in ms, after checking both times (same unit, one minute apart)."""
    o = _digits(open_text, "open_time", 17, "bad_timestamp:open_time")
    c = _digits(close_text, "close_time", 17, "bad_timestamp:close_time")
    micros = o >= MICROS_THRESHOLD
    ms = o // 1000 if micros else o
    if not MIN_EVENT_TIME_MS <= ms < MAX_EVENT_TIME_MS:
        raise _Bad("bad_timestamp:open_time", f"open_time {o} outside 2009..2100")
    minute = MINUTE_US if micros else MINUTE_MS
    if o % minute:
        raise _Bad("bad_kline:open_time", f"open_time {o} is not on a minute")
    if c != o + minute - 1:
        unit = "µs" if micros else "ms"
        raise _Bad(
            "bad_kline:close_time",
            f"close_time {c} is not open_time + {minute - 1} ({unit}, as the open time)",
        )
    return ms


def _dec(text: str, name: str, *, positive: bool, below: int, e16: bool = False) -> int:
    try:
        v = parse_e16(text.strip()) if e16 else parse_e8(text.strip())
    except DecimalFormatError as exc:
        raise _Bad(f"{exc.kind}:{name}", f"{name}={text[:40]!r}") from None
    if positive and v == 0:
        raise _Bad(f"non_positive:{name}", f"{name}={text[:40]!r}")
    if v >= below:
        raise _Bad(f"bad_number:{name}", f"{name}={text[:40]!r} is out of range")
    return v


def parse_kline_row(row: bytes, *, exchange: str, symbol: str) -> Kline | Rejection:
    """One CSV row of a kline dump (without its line end); never raises on bad input.

    A row is valid when it has the 12 columns, its open time is on a minute (ms, or
    µs since 2025) and its close time 59.999 s later in the same unit, its prices are
    positive and high and low enclose open and close, its volumes and trade count are
    non-negative numbers and the taker buy volume is not above the volume.

    Returns:
        The kline, or a :class:`Rejection` with a reason (``malformed_csv``,
        ``bad_timestamp:<col>``, ``bad_number:<col>``, ``too_precise:<col>``,
        ``non_positive:<col>``, ``bad_kline:open_time|close_time|range|taker_buy_volume``).

    """
    try:
        line = row.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection("malformed_csv", row, exchange, "row is not UTF-8")
    cols = line.strip().split(",")
    if len(cols) != COLUMNS:
        return Rejection(
            "malformed_csv", row, exchange, f"{len(cols)} columns, klines have {COLUMNS}"
        )
    try:
        open_ms = _open_ms(cols[0], cols[6])
        o, h, lo, c = (
            _dec(cols[k], n, positive=True, below=MAX_PRICE_E8)
            for k, n in ((1, "open"), (2, "high"), (3, "low"), (4, "close"))
        )
        volume = _dec(cols[5], "volume", positive=False, below=MAX_VOLUME_E8)
        quote = _dec(cols[7], "quote_volume", positive=False, below=MAX_QUOTE_E16, e16=True)
        count = _digits(cols[8], "count", 18, "bad_number:trade_count")
        taker = _dec(cols[9], "taker_buy_volume", positive=False, below=MAX_VOLUME_E8)
        taker_quote = _dec(
            cols[10], "taker_buy_quote_volume", positive=False, below=MAX_QUOTE_E16, e16=True
        )
        if not (lo <= min(o, c) and h >= max(o, c)):
            raise _Bad("bad_kline:range", "high/low do not enclose open and close")
        if taker > volume:
            raise _Bad("bad_kline:taker_buy_volume", "taker buy volume exceeds the volume")
    except _Bad as bad:
        return Rejection(bad.reason, row, exchange, bad.detail)
    return Kline(exchange, symbol, open_ms, o, h, lo, c, volume, quote, count, taker, taker_quote)


# --------------------------------------------------------------------------- comparison


def taker_buy_quote_bounds(c: Candle) -> tuple[int, int]:
    """Where the taker buy quote volume of ``c``'s trades can lie, in 1e-16 units.

    Every trade's price is within ``[low, high]``: the taker buy part of the quote
    volume is within low..high x the taker buy volume, and the rest (the maker part)
    within low..high x the remaining volume. Both bounds are widened by
    ``trade_count`` units of the 8th decimal, the exchange's per-trade cut.
    """
    slack = c.trade_count * QUOTE_UNIT_E16
    taker = c.taker_buy_volume_e8
    maker = c.volume_e8 - taker
    low = max(c.low_e8 * taker, c.quote_volume_e16 - c.high_e8 * maker)
    high = min(c.high_e8 * taker, c.quote_volume_e16 - c.low_e8 * maker)
    return low - slack, high + slack


def _candle_values(c: Candle) -> dict[str, Any]:
    low, high = taker_buy_quote_bounds(c)
    return {
        "open": format_e8(c.open_e8),
        "high": format_e8(c.high_e8),
        "low": format_e8(c.low_e8),
        "close": format_e8(c.close_e8),
        "volume": format_e8(c.volume_e8),
        "trade_count": c.trade_count,
        "taker_buy_volume": format_e8(c.taker_buy_volume_e8),
        "quote_volume": format_e16(c.quote_volume_e16),
        "taker_buy_quote_volume_bounds": [format_e16(max(low, 0)), format_e16(high)],
    }


def _kline_values(k: Kline) -> dict[str, Any]:
    return {
        "open": format_e8(k.open_e8),
        "high": format_e8(k.high_e8),
        "low": format_e8(k.low_e8),
        "close": format_e8(k.close_e8),
        "volume": format_e8(k.volume_e8),
        "trade_count": k.trade_count,
        "taker_buy_volume": format_e8(k.taker_buy_volume_e8),
        "quote_volume": format_e16(k.quote_volume_e16),
        "taker_buy_quote_volume": format_e16(k.taker_buy_quote_volume_e16),
    }


@dataclass
class KlineDifference:
    """A minute where our 1m candle and the exchange's kline disagree (or one is missing)."""

    outcome: str  # mismatch | missing_in_klines | missing_in_batch
    key: Key
    differing: tuple[str, ...] = ()
    ours: dict[str, Any] | None = None
    theirs: dict[str, Any] | None = None
    #: |ours - theirs| of the quote volume, in 1e-16 units (0 when not compared).
    quote_gap_e16: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        """JSON form: key fields, what differs, both sides' values."""
        return {
            "outcome": self.outcome,
            "exchange": self.key[0],
            "symbol": self.key[1],
            "open_time": self.key[2],
            "differing": list(self.differing),
            "ours": self.ours,
            "theirs": self.theirs,
            "quote_volume_gap": format_e16(self.quote_gap_e16),
        }


OUTCOMES = ("match", "mismatch", "missing_in_klines", "missing_in_batch")


@dataclass
class KlineComparison:
    """The outcome of comparing a day's 1m candles with the exchange's klines."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    differences: list[KlineDifference] = field(default_factory=list)
    #: Klines of minutes without trades (not compared: we store no empty candles).
    empty_klines: int = 0
    #: Exchanges whose klines were compared.
    exchanges: list[str] = field(default_factory=list)
    #: (exchange, symbol) with batch candles but no klines that day: not compared.
    symbols_without_klines: list[tuple[str, str]] = field(default_factory=list)
    #: (exchange, symbol) with klines but no batch candles at all (its trades are
    #: probably not imported): every traded minute of it is ``missing_in_batch``.
    symbols_without_candles: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every compared minute matched."""
        return not self.differences

    def worst(self, n: int) -> list[KlineDifference]:
        """The ``n`` worst differences: mismatches in many fields first, then by key."""
        return sorted(
            self.differences,
            key=lambda d: (d.outcome != "mismatch", -len(d.differing), -d.quote_gap_e16, d.key),
        )[:n]


def compare_kline(c: Candle, k: Kline) -> tuple[tuple[str, ...], int]:
    """The fields in which candle ``c`` and kline ``k`` of one minute differ, and the quote gap.

    Returns:
        The differing fields (:data:`EXACT_FIELDS` in order, then ``quote_volume`` and
        ``taker_buy_quote_volume`` when outside their rules), and ``|ours - theirs|``
        of the quote volume in 1e-16 units.

    """
    exact = (
        (c.open_e8, k.open_e8),
        (c.high_e8, k.high_e8),
        (c.low_e8, k.low_e8),
        (c.close_e8, k.close_e8),
        (c.volume_e8, k.volume_e8),
        (c.trade_count, k.trade_count),
        (c.taker_buy_volume_e8, k.taker_buy_volume_e8),
    )
    differing = [f for f, (a, b) in zip(EXACT_FIELDS, exact, strict=True) if a != b]
    gap = abs(c.quote_volume_e16 - k.quote_volume_e16)
    if gap > c.trade_count * QUOTE_UNIT_E16:
        differing.append("quote_volume")
    low, high = taker_buy_quote_bounds(c)
    if not low <= k.taker_buy_quote_volume_e16 <= high:
        differing.append("taker_buy_quote_volume")
    return tuple(differing), gap


def compare_klines(batch: Mapping[Key, Candle], klines: Mapping[Key, Kline]) -> KlineComparison:
    """Compare 1m candles with klines, minute by minute (the module docstring's rules).

    Args:
        batch: the batch's 1m candles keyed by (exchange, symbol, open_time).
        klines: the imported klines, keyed the same way.

    """
    out = KlineComparison()
    with_klines = {(k[0], k[1]) for k in klines}
    with_candles = {(k[0], k[1]) for k in batch}
    out.exchanges = sorted({e for e, _ in with_klines})
    out.symbols_without_klines = sorted(with_candles - with_klines)
    out.symbols_without_candles = sorted(with_klines - with_candles)
    for key in sorted(set(batch) | set(klines)):
        if (key[0], key[1]) not in with_klines:
            continue
        c, k = batch.get(key), klines.get(key)
        if k is not None and k.empty and c is None:
            # An empty minute on both sides (a candle where Binance saw no trade is
            # compared below, and mismatches).
            out.empty_klines += 1
            continue
        if c is None:
            assert k is not None
            out.counts["missing_in_batch"] += 1
            out.differences.append(
                KlineDifference("missing_in_batch", key, theirs=_kline_values(k))
            )
            continue
        if k is None:
            out.counts["missing_in_klines"] += 1
            out.differences.append(
                KlineDifference("missing_in_klines", key, ours=_candle_values(c))
            )
            continue
        differing, gap = compare_kline(c, k)
        if differing:
            out.counts["mismatch"] += 1
            out.differences.append(
                KlineDifference(
                    "mismatch", key, differing, _candle_values(c), _kline_values(k), gap
                )
            )
        else:
            out.counts["match"] += 1
    return out
