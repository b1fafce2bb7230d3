"""Raw-log entries to trades, a batch at a time, with exactly the domain parser's outcome.

:func:`parse_raw_message` is the reference: a raw-log entry (:class:`RawMessage`)
through :func:`marketdata.parsing.parse_message`. :class:`FastParser` gives the same
result for every entry, several times faster on the common case, the canonical
Binance ``@trade`` message as the exchange (and the simulator) writes it::

    {"e":"trade","E":...,"s":"BTCUSDT","t":...,"p":"96000.01000000","q":"0.00100000",
     "T":...,"m":false,"M":true}

A whole batch is matched by one regular expression; the rows that match it are
provably valid JSON objects with exactly these keys (no escapes, no duplicates, no
leading zeros), and their values are converted and range-checked column by column
with the domain parser's rules. Every other entry (other key orders, envelopes, CSV
rows, anything that may be a rejection) goes through the reference, so rejections
keep their exact reason. Tests compare the two on the hostile corpus and on
generated messages.

No bytewax import here: the archive flow can use it too.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from operator import add, itemgetter
from typing import Any, cast

from marketdata.binance_dump import MAKER_TRUE, row_pattern
from marketdata.decimals import MAX_PRICE_E8, MAX_QUANTITY_E8
from marketdata.parsing import (
    FORMAT_CSV,
    MAX_TRADE_ID,
    normalize_exchange,
    normalize_symbol,
    parse_message,
)
from marketdata.rawmessage import (
    F_EXCHANGE,
    F_FORMAT,
    F_MARK,
    F_PAYLOAD,
    F_RECV,
    F_SYMBOL,
    ProgressMark,
    RawMessage,
    parse_mark,
    too_many_fields,
)
from marketdata.timeutil import DAY_MS, MAX_EVENT_TIME_MS, MICROS_THRESHOLD, MIN_EVENT_TIME_MS
from marketdata.trade import Rejection, Trade

# Groups: symbol, trade id, price whole/fraction, quantity whole/fraction, time, maker.
# Digit counts keep every value inside the domain's ranges (price < 10^10, quantity
# < 10^12) and inside what orjson parses as an integer.
_TRADE = (
    rb'\{"e":"trade","E":(?:0|[1-9][0-9]{0,17}),"s":"([A-Z0-9]{2,30})",'
    rb'"t":(0|[1-9][0-9]{0,18}),"p":"([0-9]{1,10})\.([0-9]{8})",'
    rb'"q":"([0-9]{1,12})\.([0-9]{8})","T":([1-9][0-9]{0,15}),'
    rb'"m":(true|false),"M":(?:true|false)\}'
)
_ONE = re.compile(_TRADE)
# One match per line: the canonical trade, or anything else (groups empty).
_LINES = re.compile(rb"^(?:" + _TRADE + rb"|.*)$", re.MULTILINE)
_TRUE = b"true"
_COLUMN = [itemgetter(j) for j in range(_ONE.groups)]

# A row of Binance's trade dumps (marketdata.binance_dump, the lake import's grammar too),
# with exactly 8 fractional digits so that whole + fraction converts as one integer.
# Groups: trade id, price whole/fraction, quantity whole/fraction, time, maker.
_CSV = row_pattern(capture=True, exact_fraction=True).encode()
_CSV_ONE = re.compile(_CSV)
_CSV_LINES = re.compile(rb"^(?:" + _CSV + rb"|.*)$", re.MULTILINE)
_CSV_TRUE = frozenset(v.encode() for v in MAKER_TRUE)
_FORMAT_CSV = FORMAT_CSV.encode()

# Entry layouts (RawMessage.to_fields of a binance-ws message, with or without the
# symbol it is sharded by): field names at positions 0, 2, 4 (, 6).
_LAYOUTS = {
    6: (itemgetter(0, 2, 4), (F_PAYLOAD, F_EXCHANGE, F_RECV)),
    8: (itemgetter(0, 2, 4, 6), (F_PAYLOAD, F_EXCHANGE, F_RECV, F_SYMBOL)),
}
# ... and of a binance-csv row: format and symbol fields too.
_CSV_LAYOUT = (
    itemgetter(0, 2, 4, 6, 7, 8),
    (F_PAYLOAD, F_EXCHANGE, F_RECV, F_FORMAT, _FORMAT_CSV, F_SYMBOL),
)
_payload = itemgetter(1)
_exchange = itemgetter(3)
_recv = itemgetter(5)
_csv_symbol = itemgetter(9)
_first = itemgetter(0)


assert MAX_PRICE_E8 >= 10**18 and MAX_QUANTITY_E8 >= 10**20  # the regex's digit limits


def parse_raw_message(
    msg: RawMessage, known_symbols: Collection[str] | None = None
) -> Trade | Rejection:
    """Parse one raw-log entry: the reference semantics of both layers.

    The receive time is the entry's ``recv_ms``; an entry without a usable one
    (``0``, see :meth:`RawMessage.from_fields`) skips the "more than a day after
    receipt" check instead of failing every trade.
    """
    return parse_message(
        msg.payload,
        fmt=msg.fmt,
        exchange=msg.exchange,
        symbol=msg.symbol,
        recv_ms=msg.recv_ms if msg.recv_ms > 0 else None,
        known_symbols=known_symbols,
    )


def _int_or_zero(raw: bytes) -> int:
    try:
        return int(raw)
    except ValueError:
        return 0


def _picker(keep: list[int]) -> Any:
    """A function taking the ``keep`` positions of a sequence, as a tuple (C speed)."""
    if len(keep) == 1:
        k = keep[0]
        return lambda seq: (seq[k],)
    return itemgetter(*keep)


def entry_message(fields: Sequence[bytes]) -> RawMessage:
    """The raw message of a stream entry given as its flat ``[field, value, ...]`` list."""
    return RawMessage.from_fields(dict(zip(fields[::2], fields[1::2], strict=False)))


@dataclass(slots=True)
class ParsedBatch:
    """The trades of a batch as columns, in entry order, and its rejections.

    ``idx[k]`` is the position in the batch of the entry that holds trade ``k``.
    ``recv`` is each trade's receive time (``0`` when unknown). ``marks`` are the
    feeds' progress marks, with their positions, in order.
    """

    idx: list[int] = field(default_factory=list)
    exchange: list[str] = field(default_factory=list)
    symbol: list[str] = field(default_factory=list)
    trade_id: list[int] = field(default_factory=list)
    price: list[int] = field(default_factory=list)
    quantity: list[int] = field(default_factory=list)
    event_time: list[int] = field(default_factory=list)
    maker: list[bool] = field(default_factory=list)
    recv: list[int] = field(default_factory=list)
    #: (position in the batch, rejection, the decoded message)
    rejects: list[tuple[int, Rejection, RawMessage]] = field(default_factory=list)
    #: (position in the batch, the mark)
    marks: list[tuple[int, ProgressMark]] = field(default_factory=list)
    #: Position in the batch -> span, for the aggregate trades (span > 1) only.
    spans: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.idx)

    def rows(self, start: int, stop: int) -> ParsedBatch:
        """Trades ``start:stop`` (positions stay those of the whole batch; no rejects, marks)."""
        return ParsedBatch(
            idx=self.idx[start:stop],
            exchange=self.exchange[start:stop],
            symbol=self.symbol[start:stop],
            trade_id=self.trade_id[start:stop],
            price=self.price[start:stop],
            quantity=self.quantity[start:stop],
            event_time=self.event_time[start:stop],
            maker=self.maker[start:stop],
            recv=self.recv[start:stop],
            spans=self.spans,
        )

    def without(self, positions: set[int]) -> ParsedBatch:
        """The trades but those of the entries at ``positions`` (no rejects, marks)."""
        keep = [k for k, i in enumerate(self.idx) if i not in positions]
        out = ParsedBatch(spans=self.spans)
        if keep:
            pick = _picker(keep)
            out.idx, out.exchange, out.symbol, out.trade_id = (
                list(pick(c)) for c in (self.idx, self.exchange, self.symbol, self.trade_id)
            )
            out.price, out.quantity, out.event_time, out.maker, out.recv = (
                list(pick(c))
                for c in (self.price, self.quantity, self.event_time, self.maker, self.recv)
            )
        return out

    def span(self, k: int) -> int:
        """The span of trade ``k`` (1 but for aggregate trades)."""
        return self.spans.get(self.idx[k], 1) if self.spans else 1

    def trade(self, k: int) -> Trade:
        """Trade ``k`` as a :class:`Trade`."""
        return Trade(
            self.exchange[k],
            self.symbol[k],
            self.trade_id[k],
            self.price[k],
            self.quantity[k],
            self.event_time[k],
            self.maker[k],
            self.span(k),
        )

    def trades(self) -> list[Trade]:
        """The trades as :class:`Trade` (tests, slow paths)."""
        return [
            Trade(ex, sym, tid, p, q, t, m, self.span(k))
            for k, (ex, sym, tid, p, q, t, m) in enumerate(
                zip(
                    self.exchange,
                    self.symbol,
                    self.trade_id,
                    self.price,
                    self.quantity,
                    self.event_time,
                    self.maker,
                    strict=True,
                )
            )
        ]


class FastParser:
    """Parses batches of raw-log entries with the outcome of :func:`parse_raw_message`.

    Keeps small caches of validated symbols and exchanges. Not thread-safe: one per
    partition.
    """

    def __init__(self, known_symbols: Collection[str] | None = None) -> None:
        self.known_symbols = frozenset(known_symbols) if known_symbols is not None else None
        self._symbols: dict[bytes, str | None] = {}
        self._exchanges: dict[bytes, str | None] = {}
        self.fast = 0
        self.slow = 0

    def _symbol(self, raw: bytes) -> str | None:
        if raw in self._symbols:
            return self._symbols[raw]
        sym = normalize_symbol(raw.decode("utf-8", "replace"))
        if sym is not None and self.known_symbols is not None and sym not in self.known_symbols:
            sym = None
        if len(self._symbols) >= 10_000:
            self._symbols.clear()
        self._symbols[raw] = sym
        return sym

    def _exchange(self, raw: bytes) -> str | None:
        if raw in self._exchanges:
            return self._exchanges[raw]
        ex = normalize_exchange(raw.decode("utf-8", "replace"))
        if len(self._exchanges) >= 1024:
            self._exchanges.clear()
        self._exchanges[raw] = ex
        return ex

    # -- the batch ----------------------------------------------------------------

    def parse_batch(self, entries: Sequence[Sequence[bytes]]) -> ParsedBatch:
        """Parse the field lists of a batch of stream entries, in order."""
        out = ParsedBatch()
        if not entries:
            return out
        if F_MARK in map(_first, entries):
            return self._with_marks(entries)
        slow = self._fast(entries, out)
        self.fast += len(out.idx)
        if slow:
            self._slow(entries, slow, out)
        return out

    def _with_marks(self, entries: Sequence[Sequence[bytes]]) -> ParsedBatch:
        """A batch holding progress marks: the marks, and the rest parsed as usual."""
        marks: list[tuple[int, ProgressMark]] = []
        bad: list[tuple[int, Rejection, RawMessage]] = []
        rest: list[int] = []
        for i, e in enumerate(entries):
            if e and e[0] == F_MARK:
                m = too_many_fields(e) or parse_mark(e)
                if isinstance(m, ProgressMark):
                    marks.append((i, m))
                else:
                    bad.append((i, m, RawMessage(m.payload, m.exchange, 0, "mark")))
            else:
                rest.append(i)
        out = self.parse_batch([entries[i] for i in rest]) if rest else ParsedBatch()
        out.idx = [rest[i] for i in out.idx]
        out.spans = {rest[i]: n for i, n in out.spans.items()}
        out.rejects = sorted([(rest[i], r, m) for i, r, m in out.rejects] + bad, key=_first)
        out.marks = marks
        return out

    def _payload_groups(
        self, payloads: list[bytes], lines: re.Pattern[bytes], one: re.Pattern[bytes]
    ) -> list[tuple[bytes, ...]]:
        """Regex groups of each payload (all empty when it does not match ``one``)."""
        n = len(payloads)
        buf = b"\n".join(payloads)
        # When no payload holds a newline, line i is payload i: one regex pass.
        if buf.count(b"\n") == n - 1:
            groups = lines.findall(buf)
            if len(groups) == n:
                return groups
        empty = (b"",) * one.groups
        return [m.groups() if (m := one.fullmatch(p)) else empty for p in payloads]

    def _columns(self, entries: Sequence[Sequence[bytes]]) -> tuple[list[Any], bool] | None:
        """Columns (symbol, trade id, price w/f, quantity w/f, time, maker) of a batch.

        ``None`` when the batch is not all of one layout this parser knows; the
        symbol is ``b""`` in rows that did not match. The flag tells CSV rows.
        """
        lengths = set(map(len, entries))
        if len(lengths) != 1:
            return None
        size = next(iter(lengths))
        payloads = list(map(_payload, entries))
        if size == 10 and set(map(_CSV_LAYOUT[0], entries)) == {_CSV_LAYOUT[1]}:
            groups = self._payload_groups(payloads, _CSV_LINES, _CSV_ONE)
            matched = list(map(_COLUMN[0], groups))
            syms = [
                s if g else b"" for s, g in zip(map(_csv_symbol, entries), matched, strict=True)
            ]
            return [syms, *(list(map(g, groups)) for g in _COLUMN[:7])], True
        layout = _LAYOUTS.get(size)
        if layout is None or set(map(layout[0], entries)) != {layout[1]}:
            return None
        groups = self._payload_groups(payloads, _LINES, _ONE)
        return [list(map(g, groups)) for g in _COLUMN], False

    def _fast(self, entries: Sequence[Sequence[bytes]], out: ParsedBatch) -> list[int]:
        """Fill ``out`` with the canonical trades of the batch; returns the other positions."""
        n = len(entries)
        found = self._columns(entries)
        if found is None:
            return list(range(n))
        cols: list[Sequence[Any]]
        cols, csv_rows = found
        exchanges: Sequence[bytes] = list(map(_exchange, entries))
        try:
            recv_col: Sequence[int] = list(map(int, map(_recv, entries)))
        except ValueError:  # RawMessage.from_fields reads a bad receive time as 0
            recv_col = [_int_or_zero(r) for r in map(_recv, entries)]
        sym_names = {raw: self._symbol(raw) for raw in set(cols[0]) if raw}
        ex_names = {raw: self._exchange(raw) for raw in set(exchanges)}
        idx: Sequence[int] = range(n)
        if b"" in cols[0] or None in ex_names.values() or None in sym_names.values():
            keep = [
                i
                for i, (s, e) in enumerate(zip(cols[0], exchanges, strict=True))
                if s and sym_names[s] is not None and ex_names[e] is not None
            ]
            if not keep:
                return list(range(n))
            pick = _picker(keep)
            cols = [pick(c) for c in cols]
            exchanges, recv_col, idx = pick(exchanges), pick(recv_col), keep
        syms, tids, pw, pf, qw, qf, ts, makers = cols
        recvs = recv_col
        m = len(idx)
        # Every symbol left is valid (rows with an unknown one went to the slow path).
        names = cast(dict[bytes, str], sym_names)
        if len(names) == 1:
            symbols = [next(iter(names.values()))] * m
        else:
            symbols = list(map(names.__getitem__, syms))
        ex_valid = cast(dict[bytes, str], ex_names)
        if len(ex_valid) == 1:
            ex_col = [next(iter(ex_valid.values()))] * m
        else:
            ex_col = list(map(ex_valid.__getitem__, exchanges))
        tid_v = list(map(int, tids))
        price_v = list(map(int, map(add, pw, pf)))
        qty_v = list(map(int, map(add, qw, qf)))
        time_v = list(map(int, ts))
        maker_v = list(map(_CSV_TRUE.__contains__ if csv_rows else _TRUE.__eq__, makers))
        # Whole columns first; only a failing column makes us look row by row.
        ok = (
            max(tid_v) <= MAX_TRADE_ID
            and min(price_v) > 0
            and min(qty_v) > 0
            and min(time_v) >= MIN_EVENT_TIME_MS
            and max(time_v) < MAX_EVENT_TIME_MS
        )
        if ok and not csv_rows:  # dump rows have no receive-time bound
            least = min(recvs)
            if least > 0:
                ok = max(time_v) <= least + DAY_MS
            else:
                ok = all(r <= 0 or t <= r + DAY_MS for t, r in zip(time_v, recvs, strict=True))
        if ok:
            out.idx = list(idx)
            out.exchange = ex_col
            out.symbol = symbols
            out.trade_id = tid_v
            out.price = price_v
            out.quantity = qty_v
            out.event_time = time_v
            out.maker = maker_v
            out.recv = list(recvs)
            return sorted(set(range(n)).difference(idx)) if m < n else []
        slow = set(range(n)).difference(idx)
        for k in range(m):
            t = time_v[k]
            if t >= MICROS_THRESHOLD:
                t //= 1000
            recv = recvs[k]
            if (
                tid_v[k] > MAX_TRADE_ID
                or price_v[k] <= 0
                or qty_v[k] <= 0
                or t < MIN_EVENT_TIME_MS
                or t >= MAX_EVENT_TIME_MS
                or (recv > 0 and t > recv + DAY_MS and not csv_rows)
            ):
                slow.add(idx[k])
                continue
            out.idx.append(idx[k])
            out.exchange.append(ex_col[k])
            out.symbol.append(symbols[k])
            out.trade_id.append(tid_v[k])
            out.price.append(price_v[k])
            out.quantity.append(qty_v[k])
            out.event_time.append(t)
            out.maker.append(maker_v[k])
            out.recv.append(recv)
        return sorted(slow)

    def _slow(self, entries: Sequence[Sequence[bytes]], slow: list[int], out: ParsedBatch) -> None:
        """Parse ``slow`` entries with the reference and merge their trades in order."""
        self.slow += len(slow)
        extra: list[tuple[int, Trade, int]] = []
        for i in slow:
            huge = too_many_fields(entries[i])
            if huge is not None:  # not decoded at all (an entry never fast-parsed)
                out.rejects.append((i, huge, RawMessage(huge.payload, huge.exchange, 0)))
                continue
            msg = entry_message(entries[i])
            res = parse_raw_message(msg, self.known_symbols)
            if isinstance(res, Trade):
                extra.append((i, res, msg.recv_ms))
                if res.span != 1:
                    out.spans[i] = res.span
            else:
                out.rejects.append((i, res, msg))
        if not extra:
            return
        cols_in = (
            out.idx,
            out.exchange,
            out.symbol,
            out.trade_id,
            out.price,
            out.quantity,
            out.event_time,
            out.maker,
            out.recv,
        )
        rows = list(zip(*cols_in, strict=True))
        rows += [(i, *t[:7], recv) for i, t, recv in extra]
        rows.sort(key=itemgetter(0))
        cols = list(zip(*rows, strict=True))
        out.idx, out.exchange, out.symbol, out.trade_id, out.price = map(list, cols[:5])
        out.quantity, out.event_time, out.maker, out.recv = map(list, cols[5:])

    def parse(self, msg: RawMessage) -> Trade | Rejection:
        """One decoded message (tests and tools; the flow parses whole batches)."""
        fields: list[bytes] = []
        for k, v in msg.to_fields().items():
            fields += [k, v]
        batch = self.parse_batch([fields])
        if batch.rejects:
            return batch.rejects[0][1]
        return batch.trades()[0]
