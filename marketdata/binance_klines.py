"""Binance's own 1m candles (klines): their rows, and how ours are compared with them.

A kline dump (``BTCUSDT-1m-2025-03-14.csv``) has 12 columns: ``open_time, open, high,
low, close, volume, close_time, quote_volume, count, taker_buy_volume,
taker_buy_quote_volume, ignore``; spot dumps have no header and times in µs since
2025 (ms before), USD-M dumps a header line and ms. They are the exchange's account
of the same trades, kept apart from trades as a third witness: ``cryptopipe
reconcile --against klines`` compares the batch layer's 1m candles with them
(:func:`compare_klines`).

The comparison rules:

* open, high, low, close, volume, trade count and taker buy volume are equal,
  exactly;
* quote volume: Binance sums each trade's quote quantity as it stores it, rounded
  to the quote asset's 8 decimals, while ours is the exact sum of price x quantity.
  Each trade can move the sum by less than one unit of the 8th decimal, so the two
  may differ by at most ``trade_count`` x 0.00000001 (:data:`QUOTE_VOLUME_RULE`);
* a kline of a minute without trades (count 0, volume 0: Binance writes one for
  every minute) is an empty minute, not a missing candle;
* the taker buy quote volume is not compared: candles do not carry it.
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
)
from marketdata.timeutil import MAX_EVENT_TIME_MS, MICROS_THRESHOLD, MIN_EVENT_TIME_MS
from marketdata.trade import Rejection

MINUTE_MS = 60_000
#: One unit of the 8th decimal, in the 1e-16 units of a candle's quote volume.
QUOTE_UNIT_E16 = 10**8
QUOTE_VOLUME_RULE = (
    "quote_volume within trade_count x 0.00000001: Binance sums each trade's quote "
    "quantity rounded to 8 decimals, ours is the exact sum of price x quantity"
)
#: Fields compared exactly, in the order a difference lists them.
EXACT_FIELDS = ("open", "high", "low", "close", "volume", "trade_count", "taker_buy_volume")

Key = tuple[str, str, int]  # (exchange, symbol, open_time)


class Kline(NamedTuple):
    """One of Binance's 1m klines, exact (decimals in 1e-8 units)."""

    exchange: str
    symbol: str
    open_time: int
    open_e8: int
    high_e8: int
    low_e8: int
    close_e8: int
    volume_e8: int
    quote_volume_e8: int
    trade_count: int
    taker_buy_volume_e8: int
    taker_buy_quote_volume_e8: int

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


def _time(text: str, name: str) -> int:
    t = text.strip()
    if not t.isascii() or not t.isdigit() or len(t) > 17:
        raise _Bad(f"bad_timestamp:{name}", f"{name} {t[:30]!r} is not a time")
    v = int(t)
    ms = v // 1000 if v >= MICROS_THRESHOLD else v
    if not MIN_EVENT_TIME_MS <= ms < MAX_EVENT_TIME_MS:
        raise _Bad(f"bad_timestamp:{name}", f"{name} {v} outside 2009..2100")
    return ms


def _dec(text: str, name: str, *, positive: bool, maximum: int | None = None) -> int:
    try:
        v = parse_e8(text.strip())
    except DecimalFormatError as exc:
        raise _Bad(f"{exc.kind}:{name}", f"{name}={text[:40]!r}") from None
    if v < 0 or (positive and v == 0):
        raise _Bad(f"non_positive:{name}", f"{name}={text[:40]!r}")
    if maximum is not None and v >= maximum:
        raise _Bad(f"bad_number:{name}", f"{name}={text[:40]!r} is out of range")
    return v


def parse_kline_row(row: bytes, *, exchange: str, symbol: str) -> Kline | Rejection:
    """One CSV row of a kline dump (without its line end); never raises on bad input."""
    try:
        line = row.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection("malformed_csv", row, exchange, "row is not UTF-8")
    cols = line.strip().split(",")
    if len(cols) != 12:
        return Rejection("malformed_csv", row, exchange, f"{len(cols)} columns, klines have 12")
    try:
        open_ms = _time(cols[0], "open_time")
        close_ms = _time(cols[6], "close_time")
        if open_ms % MINUTE_MS:
            raise _Bad("bad_kline:open_time", "open_time is not on a minute")
        if close_ms != open_ms + MINUTE_MS - 1:
            raise _Bad("bad_kline:close_time", "close_time is not open_time + 59.999 s")
        o, h, lo, c = (
            _dec(cols[k], n, positive=True, maximum=MAX_PRICE_E8)
            for k, n in ((1, "open"), (2, "high"), (3, "low"), (4, "close"))
        )
        volume = _dec(cols[5], "volume", positive=False)
        quote = _dec(cols[7], "quote_volume", positive=False)
        count_text = cols[8].strip()
        if not count_text.isascii() or not count_text.isdigit() or len(count_text) > 18:
            raise _Bad("bad_number:trade_count", f"count={count_text[:20]!r}")
        taker = _dec(cols[9], "taker_buy_volume", positive=False)
        taker_quote = _dec(cols[10], "taker_buy_quote_volume", positive=False)
        if not (lo <= min(o, c) and h >= max(o, c)):
            raise _Bad("bad_kline:range", "high/low do not enclose open and close")
        if taker > volume:
            raise _Bad("bad_kline:taker_buy_volume", "taker buy volume exceeds the volume")
    except _Bad as bad:
        return Rejection(bad.reason, row, exchange, bad.detail)
    return Kline(
        exchange, symbol, open_ms, o, h, lo, c, volume, quote, int(count_text), taker, taker_quote
    )


# --------------------------------------------------------------------------- comparison


def _candle_values(c: Candle) -> dict[str, Any]:
    return {
        "open": format_e8(c.open_e8),
        "high": format_e8(c.high_e8),
        "low": format_e8(c.low_e8),
        "close": format_e8(c.close_e8),
        "volume": format_e8(c.volume_e8),
        "trade_count": c.trade_count,
        "taker_buy_volume": format_e8(c.taker_buy_volume_e8),
        "quote_volume": format_e16(c.quote_volume_e16),
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
        "quote_volume": format_e8(k.quote_volume_e8),
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
    #: (exchange, symbol) with batch candles but no klines that day: not compared.
    series_without_klines: list[tuple[str, str]] = field(default_factory=list)

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


def compare_klines(batch: Mapping[Key, Candle], klines: Mapping[Key, Kline]) -> KlineComparison:
    """Compare 1m candles with klines, minute by minute (the module docstring's rules).

    Args:
        batch: the batch's 1m candles keyed by (exchange, symbol, open_time).
        klines: the imported klines, keyed the same way.

    """
    out = KlineComparison()
    with_klines = {(k[0], k[1]) for k in klines}
    out.series_without_klines = sorted({(k[0], k[1]) for k in batch} - with_klines)
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
        ours, theirs = _candle_values(c), _kline_values(k)
        differing = [f for f in EXACT_FIELDS if ours[f] != theirs[f]]
        gap = abs(c.quote_volume_e16 - k.quote_volume_e8 * QUOTE_UNIT_E16)
        if gap > c.trade_count * QUOTE_UNIT_E16:
            differing.append("quote_volume")
        if differing:
            out.counts["mismatch"] += 1
            out.differences.append(
                KlineDifference("mismatch", key, tuple(differing), ours, theirs, gap)
            )
        else:
            out.counts["match"] += 1
    return out
