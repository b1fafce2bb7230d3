"""``cryptopipe feed replay``: recorded exchange data into the raw log.

Formats:

* ``binance-ws``: JSON lines, one websocket message per line (plain ``@trade``
  payloads or combined-stream envelopes), as recorded from the stream.
* ``binance-ws``'s messages may be ``trade`` or ``aggTrade`` events (an aggregate
  counts as ``last - first + 1`` trades in the candles).
* ``binance-csv`` (also ``binance-trades``): Binance's public daily trade dumps
  (``BTCUSDT-trades-2025-03-14.csv`` or the ``.zip`` holding it), spot without a
  header, USD-M with one; the symbol is ``--symbol`` or taken from the file name.
* ``binance-aggtrades``: Binance's aggregate trade dumps
  (``BTCUSDT-aggTrades-2025-03-14.csv``), spot or USD-M, the same way.
* ``coinbase-ws``: JSON lines, one frame of Coinbase Exchange's websocket per line
  (``match`` and ``last_match`` frames carry the trades; the exchange is ``coinbase``
  unless ``--exchange`` says otherwise). The protocol's own frames in a capture
  (``subscriptions``, ``heartbeat``) are not written: the live feed turns heartbeats
  into progress marks, and a replay marks progress at the recorded time it reached;
  the summary counts them.

Nothing is replayed in silence. Before anything is written, each file is read up to
its first message that parses as a trade: a file with none (a capture of ``kline``
or ``depthUpdate`` messages, a dump none of whose rows parse) is refused in one line
saying what it holds, by event type or by reason with the first examples. When only
some of a websocket capture's messages carry no trade, it is replayed, and a warning
at the end counts them by event type (they go to the DLQ as the candles flow rejects
them).

Several files are merged by their recorded time, so symbols interleave as they did
in the market. The exchange gets progress marks at the recorded time reached
(:class:`~streaming.feeds.pacing.PacedWriter`), at least every second, and while a
paced replay waits through a quiet stretch. Lines are written exactly as read
(without the line break); the candles flow validates them, so a bad line ends up in
the DLQ, not lost.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import IO, NamedTuple

import orjson

from marketdata.binance_dump import (
    FORMAT_AGGTRADES,
    FORMAT_TRADES,
    coin_m_reason,
    is_header,
    open_dump,
    sniff,
    symbol_from_filename,
)
from marketdata.parsing import (
    COINBASE_TRADE_TYPES,
    FORMAT_AGG_CSV,
    FORMAT_COINBASE_WS,
    FORMAT_CSV,
    FORMAT_TRADES_ALIAS,
    FORMAT_WS,
    FORMATS,
    TRADE_EVENTS,
    iso_utc_ms,
    normalize_symbol,
    parse_message,
)
from marketdata.rawmessage import RawMessage
from marketdata.settings import Settings
from marketdata.timeutil import MICROS_THRESHOLD
from marketdata.trade import Trade
from redisstore.keys import DLQ_STREAM
from streaming.feeds.base import feed_writer
from streaming.feeds.pacing import PacedWriter, Progress, parse_speed, write_chunks
from streaming.rawlog import PayloadChunk, RawLogWriter

#: What ``--format`` takes: the raw-log formats and ``binance-trades`` (= ``binance-csv``).
REPLAY_FORMATS = (*FORMATS, FORMAT_TRADES_ALIAS)
#: CSV formats -> the column of the trade time.
_CSV_TIME_COLUMN = {FORMAT_CSV: 4, FORMAT_AGG_CSV: 5}
#: The event type counted for a websocket line that is not JSON.
NOT_JSON = "not JSON"
#: Websocket formats (JSON lines) -> the message types that carry trades.
WS_TRADE_KINDS = {FORMAT_WS: TRADE_EVENTS, FORMAT_COINBASE_WS: COINBASE_TRADE_TYPES}
#: Coinbase's protocol frames: never trades, not written by a replay (counted).
COINBASE_PROTOCOL = ("subscriptions", "heartbeat")
#: The exchange a format's messages come from unless ``--exchange`` says otherwise.
DEFAULT_EXCHANGE = {FORMAT_COINBASE_WS: "coinbase"}


def _unwrap(obj: object) -> object:
    """A websocket message's event: the combined-stream wrapper's ``data``, as the parser."""
    if isinstance(obj, dict) and isinstance(obj.get("data"), dict) and "s" not in obj:
        return obj["data"]
    return obj


def _kind(obj: object) -> str:
    """A decoded websocket message's event type (``trade`` when it has none)."""
    if not isinstance(obj, dict):
        return "not an object"
    return str(obj.get("e", "trade"))[:40]


def _ws_time(line: bytes, last: int) -> tuple[int, str | None, str]:
    """A websocket line's time (or ``last``), symbol and event type (:func:`_kind`)."""
    try:
        obj = _unwrap(orjson.loads(line))
    except orjson.JSONDecodeError:
        return last, None, NOT_JSON
    if not isinstance(obj, dict):
        return last, None, _kind(obj)
    t = obj.get("T", obj.get("E"))
    sym = obj.get("s")
    if isinstance(t, int) and not isinstance(t, bool):
        last = t // 1000 if t >= MICROS_THRESHOLD else t
    return last, sym if isinstance(sym, str) else None, _kind(obj)


def _ws_times(
    lines: list[bytes],
    last: int,
    times: list[int],
    symbols: list[str | None],
    not_trades: Counter[str],
) -> int:
    """:func:`_ws_time` of every line, appended to ``times`` and ``symbols``; the last time.

    Event types other than trades are counted in ``not_trades``. A plain trade message
    (a JSON object with no ``data`` key, a string ``s``, an integer time, ``e`` a trade
    event) is read here without :func:`_ws_time`'s function calls; any other line
    goes through it.
    """
    loads, decode_error, events = orjson.loads, orjson.JSONDecodeError, TRADE_EVENTS
    for line in lines:
        try:
            obj = loads(line)
        except decode_error:
            obj = None
        if type(obj) is dict and "data" not in obj:
            t = obj.get("T", obj.get("E"))
            sym = obj.get("s")
            if type(t) is int and type(sym) is str and obj.get("e") in events:
                last = t // 1000 if t >= MICROS_THRESHOLD else t
                times.append(last)
                symbols.append(sym)
                continue
        last, sym, kind = _ws_time(line, last)
        times.append(last)
        symbols.append(sym)
        if kind not in events:
            not_trades[kind] += 1
    return last


def _coinbase_kind(obj: object) -> str:
    """A decoded Coinbase frame's type."""
    if not isinstance(obj, dict):
        return "not an object"
    return str(obj.get("type"))[:40]


def _coinbase_times(
    lines: list[bytes],
    last: int,
    times: list[int],
    symbols: list[str | None],
    tally: FileTally,
) -> tuple[list[bytes], int]:
    """The Coinbase frames to write of ``lines`` (protocol frames counted, left out).

    Appends each written frame's time (its ``time``, else ``last``) and product to
    ``times`` and ``symbols``; returns the frames and the last time.
    """
    out: list[bytes] = []
    for line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj, kind = None, NOT_JSON
        else:
            kind = _coinbase_kind(obj)
        if kind in COINBASE_PROTOCOL:
            tally.protocol[kind] += 1
            continue
        if isinstance(obj, dict):
            t = iso_utc_ms(obj.get("time"))
            last = last if t is None else t
            sym = obj.get("product_id")
        else:
            sym = None
        if kind not in COINBASE_TRADE_TYPES:
            tally.not_trades[kind] += 1
        out.append(line)
        times.append(last)
        symbols.append(sym if isinstance(sym, str) else None)
    return out, last


def format_exchange(fmt: str) -> str:
    """The exchange a format's messages are written as unless told (``binance``)."""
    return DEFAULT_EXCHANGE.get(fmt, "binance")


def _csv_time(line: bytes, last: int, column: int = 4) -> int:
    parts = line.split(b",", column + 1)
    if len(parts) > column and parts[column].strip().isdigit():
        t = int(parts[column])
        return t // 1000 if t >= MICROS_THRESHOLD else t
    return last


@dataclass
class FileTally:
    """What one replayed file held: its messages, and the websocket ones carrying no trade.

    Attributes:
        path: the file.
        messages: the messages (non-blank lines, header aside) written from it.
        not_trades: websocket messages that carry no trade (no ``trade`` or
            ``aggTrade`` of Binance, no ``match`` or ``last_match`` of Coinbase), by
            type (``not JSON`` for lines that are not JSON): written, the DLQ gets them.
        protocol: Coinbase's protocol frames (``subscriptions``, ``heartbeat``), by
            type: not written.
        taken: the message types that carry trades.

    """

    path: Path
    messages: int = 0
    not_trades: Counter[str] = field(default_factory=Counter)
    protocol: Counter[str] = field(default_factory=Counter)
    taken: tuple[str, ...] = TRADE_EVENTS

    def warning(self) -> str | None:
        """One line about the messages that carry no trade, or ``None`` when all do."""
        if not self.not_trades:
            return None
        n = sum(self.not_trades.values())
        kinds = ", ".join(f"{k} {c:,}" for k, c in self.not_trades.most_common())
        return (
            f"{self.path.name}: {n:,} of its {self.messages:,} messages carry no trade "
            f"({kinds}); only {' and '.join(self.taken)} messages are taken, the others "
            f"go to the DLQ ({DLQ_STREAM})"
        )

    def note(self) -> str | None:
        """One line about the protocol frames left out, or ``None`` when there were none."""
        if not self.protocol:
            return None
        kinds = ", ".join(f"{k} {c:,}" for k, c in self.protocol.most_common())
        return f"{self.path.name}: not written: {kinds} (the protocol's frames, no trades)"


#: How much of a file is read at a time (about 7,000 to 13,000 messages of Binance's).
BLOCK_BYTES = 1 << 20


class _Block(NamedTuple):
    """Consecutive messages of one file: payloads, timeline times, symbols.

    ``symbols`` is each payload's symbol (websocket lines), or ``None`` when the
    file's symbol is every payload's (CSV rows).
    """

    payloads: list[bytes]
    times: list[int]
    symbols: list[str | None] | None
    consumed: int


def _lines(f: IO[bytes]) -> Iterator[tuple[list[bytes], int]]:
    r"""A file's lines, :data:`BLOCK_BYTES` at a time, with the bytes read for them.

    The lines are those iterating the file gives, ``rstrip(b"\r\n")``-ed. A line
    longer than a block is gathered block by block, each read once.
    """
    parts: list[bytes] = []  # the line begun and not ended yet
    size = 0
    while block := f.read(BLOCK_BYTES):
        size += len(block)
        parts.append(block)
        if b"\n" not in block:
            continue
        data = b"".join(parts)
        lines = data.split(b"\n")
        parts = [lines.pop()]
        if b"\r" in data:
            lines = [line.rstrip(b"\r") for line in lines]
        yield lines, size
        size = 0
    rest = b"".join(parts)
    if rest or size:
        yield ([rest.rstrip(b"\r")] if rest else []), size


def _file_blocks(path: Path, fmt: str, tally: FileTally) -> Iterator[_Block]:
    """A file's messages (non-blank lines, a CSV header aside), a block at a time.

    A message's timeline time is its recorded time (:func:`_ws_time`, :func:`_csv_time`),
    or the previous message's when it has none (0 before the first).
    """
    t = 0
    first = True
    column = _CSV_TIME_COLUMN.get(fmt)
    with open_dump(path)[0] as f:
        for lines, consumed in _lines(f):
            if first and lines:
                first = False
                if column is not None and lines[0].strip() and is_header(1, lines[0]):
                    lines = lines[1:]  # a header line (futures dumps have one): not data
            payloads = [line for line in lines if line.strip()]
            times: list[int] = []
            if column is not None:
                for line in payloads:
                    t = _csv_time(line, t, column)
                    times.append(t)
                tally.messages += len(payloads)
                yield _Block(payloads, times, None, consumed)
                continue
            symbols: list[str | None] = []
            if fmt == FORMAT_COINBASE_WS:
                payloads, t = _coinbase_times(payloads, t, times, symbols, tally)
            else:
                t = _ws_times(payloads, t, times, symbols, tally.not_trades)
            tally.messages += len(payloads)
            yield _Block(payloads, times, symbols, consumed)


def _read_file(
    path: Path,
    fmt: str,
    exchange: str,
    symbol: str | None,
    consumed: list[int],
    tally: FileTally,
) -> Iterator[tuple[int, RawMessage]]:
    """A file's messages one at a time, with their timeline times."""
    # RawMessage(payload, exchange, recv_ms, fmt, symbol) is built positionally here:
    # once per line of a replay, where keywords would double its cost.
    for block in _file_blocks(path, fmt, tally):
        consumed[0] += block.consumed
        syms = block.symbols or [symbol] * len(block.payloads)
        for t, payload, sym in zip(block.times, block.payloads, syms, strict=True):
            yield t, RawMessage(payload, exchange, 0, fmt, sym)


def _chunks(
    files: list[tuple[Path, str | None, FileTally]],
    fmt: str,
    exchange: str,
    consumed: list[int],
) -> Iterator[tuple[PayloadChunk, int | None]]:
    """The files' messages merged by time, in chunks, each with its largest timeline time.

    One file is written a block at a time as read; several are merged message by
    message exactly as :func:`replay_files` merges them for a paced replay (by time,
    the earlier file first on a tie), then cut into chunks of :data:`CHUNK_MESSAGES`.
    """
    stamp = time.time
    if len(files) == 1:
        path, symbol, tally = files[0]
        for block in _file_blocks(path, fmt, tally):
            consumed[0] += block.consumed
            chunk = PayloadChunk(
                block.payloads, exchange, int(stamp() * 1000), fmt, block.symbols or symbol
            )
            yield chunk, max(block.times) if block.times else None
        return
    streams = [_read_file(p, fmt, exchange, s, consumed, tally) for p, s, tally in files]
    merged = heapq.merge(*streams, key=itemgetter(0))
    while batch := list(islice(merged, CHUNK_MESSAGES)):
        chunk = PayloadChunk(
            [m.payload for _, m in batch],
            exchange,
            int(stamp() * 1000),
            fmt,
            [m.symbol for _, m in batch],
        )
        yield chunk, max(t for t, _ in batch)


#: Messages per chunk when several files are merged.
CHUNK_MESSAGES = 10_000


#: Lines whose format is sniffed before a CSV replay starts.
SNIFF_LINES = 20
#: Examples of rejected rows in the message refusing a CSV file.
EXAMPLES = 3
#: What the CSV formats are called in :func:`marketdata.binance_dump.sniff`.
_SNIFF_NAME = {FORMAT_CSV: FORMAT_TRADES, FORMAT_AGG_CSV: FORMAT_AGGTRADES}


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n:,}" for k, n in counter.most_common())


def _check_csv_kind(path: Path, fmt: str) -> None:
    """Refuse a COIN-M dump, or a dump whose first lines look like another format."""
    head: list[bytes] = []
    with open_dump(path)[0] as f:
        for raw in f:
            line = raw.rstrip(b"\r\n")
            if line.strip():
                head.append(line)
                if len(head) >= SNIFF_LINES:
                    break
    if not head:
        return
    why = coin_m_reason(path, head[0])
    if why:
        raise ValueError(why)
    looks = sniff(head)
    if looks is not None and looks != _SNIFF_NAME[fmt]:
        msg = f"{path.name} does not look like {fmt}: it looks like {looks}"
        hint = {FORMAT_TRADES: FORMAT_CSV, FORMAT_AGGTRADES: FORMAT_AGG_CSV}.get(looks)
        raise ValueError(msg + (f"; pass --format {hint}" if hint else ""))


def check_replayable(
    path: Path, fmt: str, *, symbol: str | None = None, exchange: str | None = None
) -> None:
    """Refuse a file none of whose messages this format can replay as a trade.

    The file is read up to its first message that parses as a trade
    (:func:`marketdata.parsing.parse_message`), so a good file costs one line and a
    file with none is read whole. Everything a replay writes goes to the raw log and
    from there, when it is no trade, to the DLQ: a file with no trade at all is a
    mistake (a capture of ``kline`` or ``depthUpdate`` messages, a dump in another
    format than ``fmt``), refused before anything is written.

    Args:
        path: the file (or a ``.zip`` holding it).
        fmt: ``binance-ws``, ``binance-csv`` or ``binance-aggtrades``.
        symbol: the symbol of a CSV file's rows.
        exchange: the exchange the messages are replayed as.

    Raises:
        ValueError: one line: for a websocket capture, how many messages of which
            event types it holds (and why its trade messages, if any, were
            rejected); for a CSV dump, the format it looks like, or the reasons
            its rows were rejected with the first examples (line number, reason).

    """
    taken = WS_TRADE_KINDS.get(fmt)
    if taken is None:
        _check_csv_kind(path, fmt)
    lines = 0
    kinds: Counter[str] = Counter()  # websocket: event types
    reasons: Counter[str] = Counter()  # why rows / trade messages were rejected
    examples: list[str] = []
    exchange = exchange or format_exchange(fmt)
    kind_of = _coinbase_kind if fmt == FORMAT_COINBASE_WS else (lambda o: _kind(_unwrap(o)))
    with open_dump(path)[0] as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\r\n")
            if not line.strip() or (taken is None and is_header(lineno, line)):
                continue
            lines += 1
            if taken is not None:
                try:
                    kind = kind_of(orjson.loads(line))
                except orjson.JSONDecodeError:
                    kind = NOT_JSON
                kinds[kind] += 1
                if kind not in taken:
                    continue
            res = parse_message(line, fmt=fmt, exchange=exchange, symbol=symbol)
            if isinstance(res, Trade):
                return
            reasons[res.reason] += 1
            if len(examples) < EXAMPLES:
                examples.append(f"line {lineno}: {res.reason}")
    if lines == 0:
        msg = f"{path.name} holds no messages: nothing to replay"
        raise ValueError(msg)
    if taken is not None:
        names = " and ".join(taken)
        rejected = f"; the {names} messages were rejected: {_counts(reasons)}" if reasons else ""
        msg = (
            f"{path.name}: none of its {lines:,} messages is a trade (by event type: "
            f"{_counts(kinds)}{rejected}); only {names} messages are taken: nothing replayed"
        )
        raise ValueError(msg)
    msg = (
        f"{path.name}: none of its {lines:,} rows is a trade as {fmt} ({_counts(reasons)}; "
        f"e.g. {', '.join(examples)}): nothing replayed"
    )
    raise ValueError(msg)


def replay_files(
    writer: RawLogWriter,
    files: list[Path],
    fmt: str,
    *,
    symbol: str | None = None,
    exchange: str | None = None,
    speed: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: bool = True,
    tallies: list[FileTally] | None = None,
) -> int:
    """Replay recorded files into the raw log; returns the number of messages written.

    Every file is checked (:func:`check_replayable`) before anything is written.

    Args:
        writer: the raw log.
        files: the files, merged by their recorded time.
        fmt: one of :data:`REPLAY_FORMATS`.
        symbol: the symbol of CSV rows (default: from Binance's file names).
        exchange: the exchange the messages are written as (default: the format's,
            :func:`format_exchange`).
        speed: a factor of the recorded timing, or ``None`` for as fast as possible.
        should_stop: stops the replay when it turns true.
        progress: show a progress bar.
        tallies: when given, one :class:`FileTally` per file is appended to it,
            complete once the replay returns.

    Raises:
        ValueError: unknown format, a CSV file whose symbol cannot be known, or a
            file with no message that parses as a trade (one line saying why).
        FileNotFoundError: a missing file.

    """
    if fmt == FORMAT_TRADES_ALIAS:
        fmt = FORMAT_CSV
    if fmt not in FORMATS:
        msg = f"unknown --format {fmt!r}: use one of {', '.join(REPLAY_FORMATS)}"
        raise ValueError(msg)
    exchange = exchange or format_exchange(fmt)
    consumed = [0]
    checked: list[tuple[Path, str | None, FileTally]] = []
    for path in files:
        sym = normalize_symbol(symbol) if symbol else None
        if fmt in _CSV_TIME_COLUMN:
            sym = sym or symbol_from_filename(path)
            if sym is None:
                msg = (
                    f"{path}: cannot tell the symbol from the file name; pass --symbol "
                    "(Binance names dumps like BTCUSDT-trades-2025-03-14.csv)"
                )
                raise ValueError(msg)
        if not path.exists():
            msg = f"{path}: no such file"
            raise FileNotFoundError(msg)
        check_replayable(path, fmt, symbol=sym, exchange=exchange)
        tally = FileTally(path, taken=WS_TRADE_KINDS.get(fmt, TRADE_EVENTS))
        if tallies is not None:
            tallies.append(tally)
        checked.append((path, sym, tally))
    total = sum(p.stat().st_size for p in files)
    bar = Progress("replay", total) if progress else None
    on_batch = (lambda c: bar.update(c, consumed[0])) if bar else None
    if speed is None:
        # As fast as Redis takes it: chunks of payloads, packed and pipelined by the writer.
        n = write_chunks(
            writer,
            _chunks(checked, fmt, exchange, consumed),
            venues=(exchange,),
            should_stop=should_stop,
            on_batch=on_batch,
        )
        if bar:
            bar.finish(n)
        return n
    streams = [_read_file(p, fmt, exchange, s, consumed, tally) for p, s, tally in checked]
    merged = heapq.merge(*streams, key=itemgetter(0))

    def stamped() -> Iterator[tuple[int, RawMessage]]:
        # The receive time is when the feed wrote it: wall clock, per batch.
        for t, msg in merged:
            yield t, msg._replace(recv_ms=int(time.time() * 1000))

    paced = PacedWriter(writer, speed, should_stop=should_stop, venues=(exchange,))
    n = paced.run(stamped(), on_batch=on_batch)
    if bar:
        bar.finish(n)
    return n


class DumpReplay:
    """``cryptopipe feed replay``: recorded Binance data (see the module docstring)."""

    name = "replay"
    help = "recorded Binance data"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The files, their format, symbol and exchange, and the replay speed."""
        parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
        parser.add_argument("--format", required=True, choices=REPLAY_FORMATS, dest="fmt")
        parser.add_argument(
            "--symbol", default=None, help="symbol of CSV files (default: from Binance's file name)"
        )
        parser.add_argument(
            "--exchange",
            default=None,
            help="the exchange written (default: binance; coinbase for coinbase-ws)",
        )
        parser.add_argument(
            "--speed", default="max", help="'max' (default) or a factor of the recorded timing"
        )

    def run(self, args: argparse.Namespace, settings: Settings, stop: threading.Event) -> int:
        """Replay the files into the raw log; warn about messages that carry no trade."""
        speed = parse_speed(args.speed)
        tallies: list[FileTally] = []
        with feed_writer(settings, stop) as writer:
            started = time.monotonic()
            n = replay_files(
                writer,
                list(args.files),
                args.fmt,
                symbol=args.symbol,
                exchange=args.exchange,
                speed=speed,
                should_stop=stop.is_set,
                tallies=tallies,
            )
        took = max(time.monotonic() - started, 1e-9)
        print(
            f"replay: wrote {n} messages and {writer.marks_written} progress marks "
            f"to {', '.join(writer.streams)} in {took:.2f} s ({n / took:,.0f} messages/s)"
        )
        for tally in tallies:
            warning = tally.warning()
            if warning:
                print(f"replay: warning: {warning}", file=sys.stderr)
            note = tally.note()
            if note:
                print(f"replay: {note}", file=sys.stderr)
        return 0
