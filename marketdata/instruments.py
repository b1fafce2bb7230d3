"""Canonical instruments, and which series' prices may be compared.

docs/architecture.md, "Instruments and spreads", says the same for users.

A *series* is one venue's symbol, ``(exchange, symbol)``, named ``exchange:SYMBOL``
(``binance:BTCUSDT``, ``coinbase:BTC-USD``); candles and metrics stay per series. Its
*instrument* is what it trades, a base currency priced in a quote currency
(``BTC/USDT``, ``BTC/USD``):

* an explicit entry of the configuration (``CRYPTOPIPE_INSTRUMENTS``) wins: for one
  series (``kraken:XBTUSD=BTC/USD``) or for a symbol on every exchange
  (``XBTUSD=BTC/USD``; the series' own entry wins over it);
* else a symbol with one inner hyphen is ``BASE-QUOTE`` (Coinbase's ``BTC-USD``);
* else a Binance-style symbol is split at the longest known quote asset it ends with
  (:data:`QUOTE_ASSETS`; ``ETHBUSD`` is ETH/BUSD, not ETHB/USD);
* else the series has no instrument: never guessed, and never in a spread.

A spread compares two series' latest closed 1m closes (``a - b``, exact). Two series
are comparable (:meth:`SpreadRules.comparable`) when:

* the configuration declares them (``CRYPTOPIPE_SPREADS``, ``a~b``, the spread being
  ``a - b``): the same base is required, the quotes may differ (USDT against USD is
  the user's choice, and the spread names both quotes); or
* without a declaration, they are the same instrument (same base, same quote) on two
  exchanges (``binance:BTCUSDT`` and ``kraken:BTCUSDT``), ordered by name.

Pure: no I/O; the settings (:mod:`marketdata.settings`) parse the variables with
:meth:`Instruments.parse` and :func:`parse_comparisons` and check them with
:meth:`SpreadRules.build`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from marketdata.parsing import normalize_exchange, normalize_symbol

#: Quote assets a Binance-style symbol (``BASEQUOTE``, no separator) may end with, the
#: longest match winning. From Binance's spot ``exchangeInfo`` (each symbol's
#: ``quoteAsset``): its stablecoins, the fiat currencies it quotes in, and the crypto
#: assets it quotes other coins in; Binance's USD-M futures quote in USDT and USDC, which
#: are here too. A symbol of another venue, or one these miss, needs an entry in
#: ``CRYPTOPIPE_INSTRUMENTS``.
QUOTE_ASSETS: tuple[str, ...] = (
    # stablecoins
    "USDT",
    "USDC",
    "FDUSD",
    "BUSD",
    "TUSD",
    "USDP",
    "DAI",
    "USDS",
    "USD1",
    "UST",
    "PAX",
    "VAI",
    "IDRT",
    "BIDR",
    "BVND",
    "BKRW",
    # fiat
    "USD",
    "EUR",
    "GBP",
    "TRY",
    "BRL",
    "JPY",
    "AUD",
    "ARS",
    "MXN",
    "PLN",
    "RON",
    "UAH",
    "ZAR",
    "RUB",
    "NGN",
    "COP",
    "CZK",
    # crypto
    "BTC",
    "ETH",
    "BNB",
    "XRP",
    "TRX",
    "DOGE",
    "DOT",
)

_ASSET_RE = re.compile(r"[A-Z0-9]{1,30}")

#: The variables, named in the errors.
INSTRUMENTS_VAR = "CRYPTOPIPE_INSTRUMENTS"
SPREADS_VAR = "CRYPTOPIPE_SPREADS"


class InstrumentError(ValueError):
    """A configured instrument or comparison that cannot be used; says what to write."""


@dataclass(frozen=True, order=True)
class Instrument:
    """A base currency priced in a quote currency, e.g. BTC/USDT."""

    base: str
    quote: str

    def __str__(self) -> str:
        return f"{self.base}/{self.quote}"

    @classmethod
    def parse(cls, text: str) -> Instrument:
        """``BASE/QUOTE`` (case-insensitive); :class:`InstrumentError` otherwise."""
        base, slash, quote = text.strip().upper().partition("/")
        if not slash or not _ASSET_RE.fullmatch(base) or not _ASSET_RE.fullmatch(quote):
            msg = f"bad instrument {text.strip()!r}: write BASE/QUOTE, e.g. BTC/USD"
            raise InstrumentError(msg)
        if base == quote:
            msg = f"bad instrument {text.strip()!r}: the base and the quote are the same"
            raise InstrumentError(msg)
        return cls(base, quote)


@dataclass(frozen=True, order=True)
class Series:
    """One venue's symbol: what candles and metrics are kept per."""

    exchange: str
    symbol: str

    @property
    def name(self) -> str:
        """``exchange:SYMBOL``, as the spreads and the settings name it."""
        return f"{self.exchange}:{self.symbol}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str) -> Series:
        """``exchange:SYMBOL`` (exchange lower-cased, symbol upper-cased)."""
        exchange, colon, symbol = text.strip().partition(":")
        series = cls(exchange.strip().lower(), symbol.strip().upper())
        if not colon or normalize_exchange(exchange) is None or not _symbol_ok(symbol):
            msg = (
                f"bad series {text.strip()!r}: write exchange:SYMBOL, e.g. binance:BTCUSDT "
                "or coinbase:BTC-USD"
            )
            raise InstrumentError(msg)
        return series


def _symbol_ok(symbol: str) -> bool:
    """A symbol as the parser takes them (:func:`marketdata.parsing.normalize_symbol`)."""
    return normalize_symbol(symbol) is not None


def split_symbol(symbol: str) -> Instrument | None:
    """The instrument a symbol's own spelling tells, or ``None`` (never guessed).

    ``BASE-QUOTE`` (one inner hyphen) is read as written; a symbol without a hyphen
    is split at the longest quote asset of :data:`QUOTE_ASSETS` it ends with, leaving
    a non-empty base. Anything else (two hyphens, no known quote) has none.
    """
    sym = symbol.strip().upper()
    if "-" in sym:
        parts = sym.split("-")
        if len(parts) != 2 or not all(_ASSET_RE.fullmatch(p) for p in parts):
            return None
        return Instrument(parts[0], parts[1]) if parts[0] != parts[1] else None
    if not _ASSET_RE.fullmatch(sym):
        return None
    for quote in _QUOTES_LONGEST_FIRST:
        if sym.endswith(quote) and len(sym) > len(quote):
            return Instrument(sym[: -len(quote)], quote)
    return None


_QUOTES_LONGEST_FIRST = tuple(sorted(QUOTE_ASSETS, key=len, reverse=True))


@dataclass(frozen=True)
class Instruments:
    """The instrument of each series: explicit entries, then :func:`split_symbol`.

    Attributes:
        entries: ``(exchange, SYMBOL, instrument)``; exchange ``None`` for every
            exchange (a series' own entry wins over it).
    """

    entries: tuple[tuple[str | None, str, Instrument], ...] = ()

    def of(self, series: Series) -> Instrument | None:
        """The instrument of ``series``, or ``None`` when nothing says what it trades."""
        anywhere = None
        for exchange, symbol, inst in self.entries:
            if symbol == series.symbol:
                if exchange == series.exchange:
                    return inst
                if exchange is None:
                    anywhere = inst
        return anywhere or split_symbol(series.symbol)

    @classmethod
    def parse(cls, text: str, var: str = INSTRUMENTS_VAR) -> Instruments:
        """``[exchange:]SYMBOL=BASE/QUOTE,...`` (blank: no entries).

        Raises:
            InstrumentError: naming ``var``, the entry and what to write.

        """
        entries: list[tuple[str | None, str, Instrument]] = []
        seen: dict[tuple[str | None, str], str] = {}
        for item in _items(text):
            where, eq, what = item.partition("=")
            try:
                if not eq:
                    msg = "missing '='"
                    raise InstrumentError(msg)
                if ":" in where:
                    series = Series.parse(where)
                    exchange: str | None = series.exchange
                    symbol = series.symbol
                else:
                    symbol = where.strip().upper()
                    exchange = None
                    if not _symbol_ok(symbol):
                        msg = f"bad symbol {where.strip()!r}"
                        raise InstrumentError(msg)
                inst = Instrument.parse(what)
            except InstrumentError as exc:
                msg = (
                    f"{var}: {item!r}: {exc}; write [exchange:]SYMBOL=BASE/QUOTE, "
                    "e.g. coinbase:BTC-USD=BTC/USD, entries separated by commas"
                )
                raise InstrumentError(msg) from None
            if (exchange, symbol) in seen:
                first = seen[exchange, symbol]
                msg = f"{var}: {item!r}: {where.strip()} is given twice (also {first!r})"
                raise InstrumentError(msg)
            seen[exchange, symbol] = item
            entries.append((exchange, symbol, inst))
        return cls(tuple(entries))

    def text(self) -> str:
        """The entries as :meth:`parse` reads them (for a child process's environment)."""
        return ",".join(
            f"{'' if ex is None else ex + ':'}{sym}={inst}" for ex, sym, inst in self.entries
        )


@dataclass(frozen=True)
class Comparison:
    """A declared spread: series ``a`` against series ``b`` (the spread is ``a - b``)."""

    a: Series
    b: Series

    @property
    def name(self) -> str:
        """``a~b``, as declared."""
        return f"{self.a.name}~{self.b.name}"

    @classmethod
    def parse(cls, text: str) -> Comparison:
        """``exchange:SYMBOL~exchange:SYMBOL``."""
        left, tilde, right = text.partition("~")
        if not tilde:
            msg = f"{text.strip()!r} has no '~'"
            raise InstrumentError(msg)
        return cls(Series.parse(left), Series.parse(right))


def parse_comparisons(text: str, var: str = SPREADS_VAR) -> tuple[Comparison, ...]:
    """Declared spreads, ``a~b,...`` (blank: none); checked later by :meth:`SpreadRules.build`."""
    out = []
    for item in _items(text):
        try:
            out.append(Comparison.parse(item))
        except InstrumentError as exc:
            msg = (
                f"{var}: {exc}; write exchange:SYMBOL~exchange:SYMBOL, e.g. "
                "binance:BTCUSDT~coinbase:BTC-USD, pairs separated by commas"
            )
            raise InstrumentError(msg) from None
    return tuple(out)


def _items(text: str) -> list[str]:
    return [i.strip() for i in text.split(",") if i.strip()]


@dataclass(frozen=True)
class SpreadRules:
    """Which series are compared, and how: the instruments and the declared spreads.

    Build it with :meth:`build`, which refuses what cannot be compared.
    """

    instruments: Instruments = Instruments()
    declared: tuple[Comparison, ...] = ()

    @classmethod
    def build(
        cls, instruments: Instruments, declared: Sequence[Comparison], var: str = SPREADS_VAR
    ) -> SpreadRules:
        """Check the declarations against the instruments.

        Raises:
            InstrumentError: a series compared with itself, a pair declared twice, a
                series with no instrument (add it to ``CRYPTOPIPE_INSTRUMENTS``), or
                two different bases.

        """
        seen: dict[frozenset[Series], str] = {}
        for c in declared:
            if c.a == c.b:
                msg = f"{var}: {c.name} compares {c.a.name} with itself; name two series"
                raise InstrumentError(msg)
            pair = frozenset((c.a, c.b))
            if pair in seen:
                msg = f"{var}: {c.name} and {seen[pair]} declare the same pair; keep one"
                raise InstrumentError(msg)
            seen[pair] = c.name
            insts = []
            for s in (c.a, c.b):
                inst = instruments.of(s)
                if inst is None:
                    msg = (
                        f"{var}: {c.name}: {s.name} has no instrument (its symbol does not "
                        f"tell its base and quote); add it to {INSTRUMENTS_VAR}, e.g. "
                        f"{s.name}=BASE/QUOTE"
                    )
                    raise InstrumentError(msg)
                insts.append(inst)
            if insts[0].base != insts[1].base:
                msg = (
                    f"{var}: {c.name} compares {insts[0]} with {insts[1]}: a spread compares "
                    "one base currency on two venues; pair series of the same base (or fix "
                    f"their instruments in {INSTRUMENTS_VAR})"
                )
                raise InstrumentError(msg)
        return cls(instruments, tuple(declared))

    def base_of(self, series: Series) -> str | None:
        """The base currency ``series`` trades (every pair it can be in shares it)."""
        inst = self.instruments.of(series)
        return None if inst is None else inst.base

    def comparable(self, x: Series, y: Series) -> tuple[Series, Series] | None:
        """``(a, b)`` when ``x`` and ``y`` are compared (the spread is ``a - b``), else ``None``.

        A declared pair in its declared order; else the same instrument on two
        exchanges, ordered by name.
        """
        if x == y:
            return None
        for c in self.declared:
            if (c.a, c.b) == (x, y) or (c.a, c.b) == (y, x):
                return c.a, c.b
        ix, iy = self.instruments.of(x), self.instruments.of(y)
        if ix is None or ix != iy or x.exchange == y.exchange:
            return None
        return (x, y) if x.name < y.name else (y, x)

    def pairs(
        self, moved: Iterable[Series], known: Iterable[Series]
    ) -> list[tuple[Series, Series]]:
        """Every comparable pair with a series of ``moved`` and one of ``known``, once each."""
        known = list(known)
        out: dict[tuple[Series, Series], None] = {}
        for x in moved:
            for y in known:
                pair = self.comparable(x, y)
                if pair is not None:
                    out[pair] = None
        return sorted(out)
