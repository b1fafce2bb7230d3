"""Parsing and validation of raw trade messages (docs/architecture.md section 2).

The wire formats:

* ``binance-ws``: a Binance ``<symbol>@trade`` or ``<symbol>@aggTrade`` message,
  plain or wrapped in a combined-stream envelope ``{"stream": ..., "data": {...}}``;
  extra fields are ignored. An ``aggTrade`` (``a`` aggregate id, ``f``/``l`` first
  and last trade id) is one :class:`Trade` with ``trade_id = f`` and ``span = l - f
  + 1``: it counts as that many trades (futures publish trades only this way).
* ``binance-csv`` (also called ``binance-trades``): a row of Binance's public daily
  trade dumps, ``trade id, price, qty, quoteQty, time, isBuyerMaker[, isBestMatch]``;
  ``time`` is in microseconds since 2025 and milliseconds before.
* ``binance-aggtrades``: a row of Binance's aggregate trade dumps, ``aggregate id,
  price, qty, first trade id, last trade id, time, isBuyerMaker[, isBestMatch]``,
  read like an ``aggTrade`` message.
* ``coinbase-ws``: a frame of Coinbase Exchange's websocket ``matches`` channel, of
  type ``match`` or ``last_match``: ``product_id`` (the symbol, e.g. ``BTC-USD``),
  ``trade_id``, ``price`` and ``size`` as decimal strings, ``time`` in ISO 8601 UTC
  with microseconds (floored to ms), and ``side``, the *maker's* side: ``buy`` means
  the maker bought, so ``is_buyer_maker`` is ``side == "buy"`` and a taker buy is
  ``side == "sell"``. Other keys (``sequence``, order ids, the ``source`` of a trade
  the feed filled from REST) are ignored; any other frame type is
  ``unsupported_event``.

Every function here returns a :class:`Trade` or a :class:`Rejection`; none raises
on bad input. Reason codes use the domain field names (``price``, ``quantity``,
``event_time``, ``trade_id``, ``symbol``, ``is_buyer_maker``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from datetime import date
from typing import Any

import orjson

from marketdata.decimals import MAX_PRICE_E8, MAX_QUANTITY_E8, DecimalFormatError, parse_e8
from marketdata.timeutil import (
    DAY_MS,
    MAX_EVENT_TIME_MS,
    MICROS_THRESHOLD,
    MIN_EVENT_TIME_MS,
)
from marketdata.trade import Rejection, Trade

#: Payloads larger than this are rejected before any parsing (``oversized``).
MAX_PAYLOAD_BYTES = 64 * 1024
#: An event time more than this far ahead of the receive time is ``bad_timestamp``.
MAX_FUTURE_MS = DAY_MS
#: Largest trade id accepted (Binance ids are signed 64-bit).
MAX_TRADE_ID = 2**63 - 1

FORMAT_WS = "binance-ws"
FORMAT_CSV = "binance-csv"
FORMAT_AGG_CSV = "binance-aggtrades"
#: Coinbase Exchange's websocket ``matches`` channel: one frame per trade.
FORMAT_COINBASE_WS = "coinbase-ws"
FORMATS = (FORMAT_WS, FORMAT_CSV, FORMAT_AGG_CSV, FORMAT_COINBASE_WS)
#: What the command line also calls ``binance-csv``.
FORMAT_TRADES_ALIAS = "binance-trades"
#: Event types of ``binance-ws`` messages that carry trades.
TRADE_EVENTS = ("trade", "aggTrade")

#: A venue's symbol: letters and digits, with single inner hyphens (Coinbase's products,
#: ``BTC-USD``); 2 to 30 characters.
_SYMBOL_RE = re.compile(r"(?=.{2,30}$)[A-Z0-9]+(?:-[A-Z0-9]+)*")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
#: Coinbase frame types that carry a trade.
COINBASE_TRADE_TYPES = ("match", "last_match")
#: ISO 8601 in UTC as Coinbase writes it: ``2014-11-07T08:19:27.028459Z``.
_ISO_UTC_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?Z"
)
# Coinbase field -> domain field, in the order they are checked.
_COINBASE_FIELDS = (
    ("product_id", "symbol"),
    ("trade_id", "trade_id"),
    ("price", "price"),
    ("size", "quantity"),
    ("time", "event_time"),
    ("side", "is_buyer_maker"),
)
#: Coinbase's ``side`` is the maker order's: a maker buy is a taker sell.
_MAKER_BOUGHT = {"buy": True, "sell": False}
_EXCHANGE_RE = re.compile(r"[a-z0-9_.-]{1,32}")

# Binance field -> domain field, in the order they are checked.
_WS_FIELDS = (
    ("s", "symbol"),
    ("t", "trade_id"),
    ("p", "price"),
    ("q", "quantity"),
    ("T", "event_time"),
    ("m", "is_buyer_maker"),
)
# The same for an aggTrade: ``f`` is the first trade id, ``l`` the last one.
_AGG_FIELDS = (
    ("s", "symbol"),
    ("f", "trade_id"),
    ("l", "last_trade_id"),
    ("p", "price"),
    ("q", "quantity"),
    ("T", "event_time"),
    ("m", "is_buyer_maker"),
)


class _Reject(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def normalize_exchange(exchange: str) -> str | None:
    """Lower-case exchange name, or ``None`` when it is not a plausible name."""
    ex = exchange.strip().lower()
    return ex if _EXCHANGE_RE.fullmatch(ex) else None


def normalize_symbol(symbol: str) -> str | None:
    """Upper-case symbol, or ``None`` when it is not a plausible symbol."""
    sym = symbol.strip().upper()
    return sym if sym.isascii() and _SYMBOL_RE.fullmatch(sym) else None


def _symbol(value: Any, known: Collection[str] | None, *, hyphens: bool = False) -> str:
    """The symbol of a message; Binance's have no hyphens (``hyphens``: Coinbase's do)."""
    if not isinstance(value, str):
        raise _Reject("unknown_symbol", "symbol is not a string")
    sym = normalize_symbol(value)
    if sym is None or (not hyphens and "-" in sym):
        raise _Reject("unknown_symbol", f"malformed symbol {value[:40]!r}")
    if known is not None and sym not in known:
        raise _Reject("unknown_symbol", f"{sym} is not a configured symbol")
    return sym


def iso_utc_ms(text: Any) -> int | None:
    """``YYYY-MM-DDTHH:MM:SS[.fraction]Z`` as ms since the epoch (floored), else ``None``.

    The form Coinbase writes its times in (microseconds); any other form, an
    impossible date or time, or a value that is not a string gives ``None``.
    """
    if not isinstance(text, str):
        return None
    m = _ISO_UTC_RE.fullmatch(text)
    if m is None:
        return None
    y, mo, d, h, mi, sec, frac = m.groups()
    try:
        days = date(int(y), int(mo), int(d)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None
    if int(h) > 23 or int(mi) > 59 or int(sec) > 59:
        return None
    ms = ((days * 24 + int(h)) * 60 + int(mi)) * 60_000 + int(sec) * 1000
    return ms + (int((frac + "00")[:3]) if frac else 0)


def _e8(value: Any, field: str, maximum: int) -> int:
    # Binance sends decimals as JSON strings; a JSON number has already been
    # through a binary float (or is an int we cannot tell from a typo), so it is
    # refused rather than guessed at.
    if not isinstance(value, str):
        raise _Reject(f"bad_number:{field}", f"{field} must be a decimal string")
    try:
        e8 = parse_e8(value)
    except DecimalFormatError as exc:
        reason = exc.kind
        if value.startswith("-") and _is_plain_decimal(value[1:]):
            reason = "non_positive"
        raise _Reject(f"{reason}:{field}", f"{field}={value[:40]!r}") from None
    if e8 <= 0:
        raise _Reject(f"non_positive:{field}", f"{field}={value[:40]!r}")
    if e8 >= maximum:
        raise _Reject(f"bad_number:{field}", f"{field}={value[:40]!r} is out of range")
    return e8


def _is_plain_decimal(text: str) -> bool:
    try:
        parse_e8(text)
    except DecimalFormatError:
        return False
    return True


def _trade_id(value: Any, field: str = "trade_id") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Reject(f"bad_number:{field}", f"{field} must be an integer")
    if value < 0 or value > MAX_TRADE_ID:
        raise _Reject(f"bad_number:{field}", f"{field} {value} out of range")
    return value


def _span(first: int, last: int) -> int:
    """Trades an aggregate of ids ``first .. last`` stands for."""
    if last < first:
        raise _Reject("bad_number:last_trade_id", f"last trade id {last} < first {first}")
    return last - first + 1


def normalize_event_time(value: Any, recv_ms: int | None = None) -> int:
    """Validate a trade time and return it in ms (µs input is floored to ms).

    Raises:
        _Reject: ``bad_timestamp`` for non-integers, times before 2009-01-03, after
            2100, or more than a day after the receive time.

    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Reject("bad_timestamp", "event_time must be an integer")
    ts = value // 1000 if value >= MICROS_THRESHOLD else value
    if ts < MIN_EVENT_TIME_MS or ts >= MAX_EVENT_TIME_MS:
        raise _Reject("bad_timestamp", f"event_time {value} outside 2009..2100")
    if recv_ms is not None and ts > recv_ms + MAX_FUTURE_MS:
        raise _Reject("bad_timestamp", f"event_time {value} is over a day after receipt")
    return ts


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise _Reject("malformed_json", "not valid JSON (or not UTF-8)") from None


def _find_duplicate_key(payload: bytes) -> str | None:
    found: list[str] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                found.append(k)
            seen.add(k)
        return dict(pairs)

    json.loads(payload, object_pairs_hook=hook)
    return found[0] if found else None


def _key_count(obj: dict[str, Any]) -> int:
    n = len(obj)
    for v in obj.values():
        if isinstance(v, dict):
            n += _key_count(v)
    return n


def _check_duplicate_keys(payload: bytes, obj: dict[str, Any]) -> None:
    # orjson keeps the last of duplicate keys silently. A trade whose price
    # appears twice is ambiguous, so it is refused. Counting '":' is a cheap
    # upper bound on the number of keys; only when it disagrees with the parsed
    # key count (duplicates, or '":' inside a string value, or whitespace before
    # the colon) do we pay for the exact, slow check.
    if payload.count(b'":') == _key_count(obj):
        return
    dup = _find_duplicate_key(payload)
    if dup is not None:
        field = dict(_WS_FIELDS).get(dup, dup)
        raise _Reject(f"duplicate_key:{field[:40]}", f"key {dup[:40]!r} appears twice")


def _parse_ws(
    payload: bytes, exchange: str, recv_ms: int | None, known: Collection[str] | None
) -> Trade:
    obj = _loads(payload)
    if not isinstance(obj, dict):
        raise _Reject("malformed_json", "payload is not a JSON object")
    _check_duplicate_keys(payload, obj)
    if "data" in obj and "s" not in obj:
        obj = obj["data"]
        if not isinstance(obj, dict):
            raise _Reject("malformed_json", "combined-stream 'data' is not an object")
    event = obj.get("e", "trade")
    if event not in TRADE_EVENTS:
        raise _Reject(
            "unsupported_event", f"event type {str(event)[:40]!r} is not 'trade' or 'aggTrade'"
        )
    agg = event == "aggTrade"
    for wire, field in _AGG_FIELDS if agg else _WS_FIELDS:
        if wire not in obj:
            raise _Reject(f"missing_field:{field}", f"Binance field {wire!r} is missing")
    maker = obj["m"]
    if not isinstance(maker, bool):
        raise _Reject("bad_bool:is_buyer_maker", "m must be true or false")
    symbol = _symbol(obj["s"], known)
    if agg:
        trade_id = _trade_id(obj["f"])
        span = _span(trade_id, _trade_id(obj["l"], "last_trade_id"))
    else:
        trade_id, span = _trade_id(obj["t"]), 1
    return Trade(
        exchange=exchange,
        symbol=symbol,
        trade_id=trade_id,
        price_e8=_e8(obj["p"], "price", MAX_PRICE_E8),
        quantity_e8=_e8(obj["q"], "quantity", MAX_QUANTITY_E8),
        event_time=normalize_event_time(obj["T"], recv_ms),
        is_buyer_maker=maker,
        span=span,
    )


def _parse_coinbase(
    payload: bytes, exchange: str, recv_ms: int | None, known: Collection[str] | None
) -> Trade:
    obj = _loads(payload)
    if not isinstance(obj, dict):
        raise _Reject("malformed_json", "payload is not a JSON object")
    _check_duplicate_keys(payload, obj)
    kind = obj.get("type")
    if kind not in COINBASE_TRADE_TYPES:
        raise _Reject(
            "unsupported_event", f"frame type {str(kind)[:40]!r} is not 'match' or 'last_match'"
        )
    for wire, field in _COINBASE_FIELDS:
        if wire not in obj:
            raise _Reject(f"missing_field:{field}", f"Coinbase field {wire!r} is missing")
    maker = _MAKER_BOUGHT.get(obj["side"]) if isinstance(obj["side"], str) else None
    if maker is None:
        raise _Reject("bad_bool:is_buyer_maker", "side must be 'buy' or 'sell'")
    symbol = _symbol(obj["product_id"], known, hyphens=True)
    ms = iso_utc_ms(obj["time"])
    if ms is None:
        raise _Reject("bad_timestamp", f"time {str(obj['time'])[:40]!r} is not ISO 8601 UTC")
    return Trade(
        exchange=exchange,
        symbol=symbol,
        trade_id=_trade_id(obj["trade_id"]),
        price_e8=_e8(obj["price"], "price", MAX_PRICE_E8),
        quantity_e8=_e8(obj["size"], "quantity", MAX_QUANTITY_E8),
        event_time=normalize_event_time(ms, recv_ms),
        is_buyer_maker=maker,
    )


_CSV_BOOL = {"true": True, "false": False, "True": True, "False": False}


def _csv_int(text: str, reason: str) -> int:
    t = text.strip()
    if not t or not t.isascii() or not t.isdigit() or len(t) > 20:
        raise _Reject(reason, f"{t[:40]!r} is not a non-negative integer")
    return int(t)


def _csv_columns(
    payload: bytes, names: tuple[str, ...], symbol: str | None
) -> tuple[list[str], bool]:
    """A CSV row's columns and its maker flag; rejects what does not have that shape.

    The row is ``names``, the maker flag, then one optional column.
    """
    try:
        line = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _Reject("malformed_csv", "row is not UTF-8") from None
    cols = line.strip().split(",")
    need = len(names) + 1
    if len(cols) < need:
        missing = names[len(cols)] if len(cols) < len(names) else "is_buyer_maker"
        raise _Reject(f"missing_field:{missing}", f"{len(cols)} columns, need {need} or {need + 1}")
    if len(cols) > need + 1:
        raise _Reject("malformed_csv", f"{len(cols)} columns, need {need} or {need + 1}")
    if symbol is None:
        raise _Reject("missing_field:symbol", "CSV rows need the symbol from the file or --symbol")
    maker = _CSV_BOOL.get(cols[need - 1].strip())
    if maker is None:
        raise _Reject("bad_bool:is_buyer_maker", f"{cols[need - 1][:20]!r} is not true/false")
    return cols, maker


def _parse_csv(
    payload: bytes, exchange: str, symbol: str | None, known: Collection[str] | None
) -> Trade:
    names = ("trade_id", "price", "quantity", "quote_quantity", "event_time")
    cols, maker = _csv_columns(payload, names, symbol)
    assert symbol is not None
    return Trade(
        exchange=exchange,
        symbol=_symbol(symbol, known),
        trade_id=_trade_id(_csv_int(cols[0], "bad_number:trade_id")),
        price_e8=_e8(cols[1].strip(), "price", MAX_PRICE_E8),
        quantity_e8=_e8(cols[2].strip(), "quantity", MAX_QUANTITY_E8),
        event_time=normalize_event_time(_csv_int(cols[4], "bad_timestamp")),
        is_buyer_maker=maker,
    )


def _parse_agg_csv(
    payload: bytes, exchange: str, symbol: str | None, known: Collection[str] | None
) -> Trade:
    names = ("agg_trade_id", "price", "quantity", "trade_id", "last_trade_id", "event_time")
    cols, maker = _csv_columns(payload, names, symbol)
    assert symbol is not None
    _csv_int(cols[0], "bad_number:agg_trade_id")
    sym = _symbol(symbol, known)
    first = _trade_id(_csv_int(cols[3], "bad_number:trade_id"))
    span = _span(first, _trade_id(_csv_int(cols[4], "bad_number:last_trade_id"), "last_trade_id"))
    return Trade(
        exchange=exchange,
        symbol=sym,
        trade_id=first,
        price_e8=_e8(cols[1].strip(), "price", MAX_PRICE_E8),
        quantity_e8=_e8(cols[2].strip(), "quantity", MAX_QUANTITY_E8),
        event_time=normalize_event_time(_csv_int(cols[5], "bad_timestamp")),
        is_buyer_maker=maker,
        span=span,
    )


def parse_message(
    payload: bytes | str,
    *,
    fmt: str = FORMAT_WS,
    exchange: str = "binance",
    symbol: str | None = None,
    recv_ms: int | None = None,
    known_symbols: Collection[str] | None = None,
) -> Trade | Rejection:
    """Parse and validate one raw message. Never raises on bad input.

    Args:
        payload: the message exactly as received.
        fmt: ``"binance-ws"``, ``"binance-csv"`` (or ``"binance-trades"``),
            ``"binance-aggtrades"`` or ``"coinbase-ws"``.
        exchange: the exchange the feed read it from (lower-cased here).
        symbol: for CSV rows, the symbol of the file.
        recv_ms: when the feed received it; event times more than a day later are
            ``bad_timestamp``. ``None`` skips that check (history imports).
        known_symbols: when given, any other symbol is ``unknown_symbol``.

    Returns:
        A :class:`Trade`, or a :class:`Rejection` holding the reason and payload.

    """
    raw = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else payload
    ex = normalize_exchange(exchange) if isinstance(exchange, str) else None
    if ex is None:
        return Rejection("bad_exchange", raw, str(exchange)[:40], "exchange name is not valid")
    if len(raw) > MAX_PAYLOAD_BYTES:
        return Rejection("oversized", raw, ex, f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        if fmt == FORMAT_WS:
            return _parse_ws(raw, ex, recv_ms, known_symbols)
        if fmt in (FORMAT_CSV, FORMAT_TRADES_ALIAS):
            return _parse_csv(raw, ex, symbol, known_symbols)
        if fmt == FORMAT_AGG_CSV:
            return _parse_agg_csv(raw, ex, symbol, known_symbols)
        if fmt == FORMAT_COINBASE_WS:
            return _parse_coinbase(raw, ex, recv_ms, known_symbols)
        return Rejection("unknown_format", raw, ex, f"format {fmt[:40]!r} is not one of {FORMATS}")
    except _Reject as rej:
        return Rejection(rej.reason, raw, ex, rej.detail)
    except RecursionError:
        return Rejection("malformed_json", raw, ex, "nesting too deep")
