"""``cryptopipe feed replay``: recorded Binance data into the raw log.

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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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
    FORMAT_AGG_CSV,
    FORMAT_CSV,
    FORMAT_TRADES_ALIAS,
    FORMAT_WS,
    FORMATS,
    TRADE_EVENTS,
    normalize_symbol,
)
from marketdata.rawmessage import RawMessage
from marketdata.settings import Settings
from marketdata.timeutil import MICROS_THRESHOLD
from streaming.feeds.base import feed_writer
from streaming.feeds.pacing import PacedWriter, Progress, parse_speed
from streaming.rawlog import RawLogWriter

#: What ``--format`` takes: the raw-log formats and ``binance-trades`` (= ``binance-csv``).
REPLAY_FORMATS = (*FORMATS, FORMAT_TRADES_ALIAS)
#: CSV formats -> the column of the trade time.
_CSV_TIME_COLUMN = {FORMAT_CSV: 4, FORMAT_AGG_CSV: 5}


def _ws_time(line: bytes, last: int) -> tuple[int, str | None]:
    try:
        obj = orjson.loads(line)
        if isinstance(obj, dict) and isinstance(obj.get("data"), dict):
            obj = obj["data"]
        t = obj.get("T", obj.get("E")) if isinstance(obj, dict) else None
        sym = obj.get("s") if isinstance(obj, dict) else None
    except orjson.JSONDecodeError:
        return last, None
    if isinstance(t, int) and not isinstance(t, bool):
        last = t // 1000 if t >= MICROS_THRESHOLD else t
    return last, sym if isinstance(sym, str) else None


def _csv_time(line: bytes, last: int, column: int = 4) -> int:
    parts = line.split(b",", column + 1)
    if len(parts) > column and parts[column].strip().isdigit():
        t = int(parts[column])
        return t // 1000 if t >= MICROS_THRESHOLD else t
    return last


def _read_file(
    path: Path, fmt: str, exchange: str, symbol: str | None, consumed: list[int]
) -> Iterator[tuple[int, RawMessage]]:
    t = 0
    # RawMessage(payload, exchange, recv_ms, fmt, symbol) is built positionally here:
    # once per line of a replay, where keywords would double its cost.
    with open_dump(path)[0] as f:
        for lineno, raw in enumerate(f):
            consumed[0] += len(raw)
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            if fmt in _CSV_TIME_COLUMN:
                if is_header(lineno + 1, line):
                    continue  # a header line (futures dumps have one): not data
                t = _csv_time(line, t, _CSV_TIME_COLUMN[fmt])
                yield t, RawMessage(line, exchange, 0, fmt, symbol)
            else:
                t, sym = _ws_time(line, t)
                yield t, RawMessage(line, exchange, 0, FORMAT_WS, sym)


#: Lines looked at before a replay starts, to refuse a file in the wrong format.
PEEK_LINES = 1000
#: What the CSV formats are called in :func:`marketdata.binance_dump.sniff`.
_SNIFF_NAME = {FORMAT_CSV: FORMAT_TRADES, FORMAT_AGG_CSV: FORMAT_AGGTRADES}


def _event_type(line: bytes) -> str:
    """A websocket line's event type (``trade`` when it has none), or ``not JSON``."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "not JSON"
    if isinstance(obj, dict) and isinstance(obj.get("data"), dict) and "s" not in obj:
        obj = obj["data"]
    if not isinstance(obj, dict):
        return "not an object"
    return str(obj.get("e", "trade"))[:40]


def check_replayable(path: Path, fmt: str) -> None:
    """Refuse a file whose first lines hold nothing this format can replay.

    A websocket capture of only ``kline`` or ``depthUpdate`` messages, or a dump in
    another format than ``fmt``, would otherwise go to the raw log and from there
    all to the DLQ.

    Raises:
        ValueError: one line saying what the file holds instead.

    """
    head: list[bytes] = []
    with open_dump(path)[0] as f:
        for raw in f:
            line = raw.rstrip(b"\r\n")
            if line.strip():
                head.append(line)
                if len(head) >= PEEK_LINES:
                    break
    if not head:
        return
    if fmt == FORMAT_WS:
        kinds: dict[str, int] = {}
        for line in head:
            k = _event_type(line)
            kinds[k] = kinds.get(k, 0) + 1
        if not any(k in TRADE_EVENTS for k in kinds):
            found = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
            msg = (
                f"{path.name}: none of its first {len(head)} messages is a trade ({found}); "
                f"only {' and '.join(TRADE_EVENTS)} messages carry trades"
            )
            raise ValueError(msg)
        return
    why = coin_m_reason(path, head[0])
    if why:
        raise ValueError(why)
    looks = sniff(head[:20])
    if looks is not None and looks != _SNIFF_NAME[fmt]:
        msg = f"{path.name} does not look like {fmt}: it looks like {looks}"
        hint = {FORMAT_TRADES: FORMAT_CSV, FORMAT_AGGTRADES: FORMAT_AGG_CSV}.get(looks)
        raise ValueError(msg + (f"; pass --format {hint}" if hint else ""))


def replay_files(
    writer: RawLogWriter,
    files: list[Path],
    fmt: str,
    *,
    symbol: str | None = None,
    exchange: str = "binance",
    speed: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: bool = True,
) -> int:
    """Replay recorded files into the raw log; returns the number of messages written.

    Raises:
        ValueError: unknown format, or a CSV file whose symbol cannot be known.
        FileNotFoundError: a missing file.

    """
    if fmt == FORMAT_TRADES_ALIAS:
        fmt = FORMAT_CSV
    if fmt not in FORMATS:
        msg = f"unknown --format {fmt!r}: use one of {', '.join(REPLAY_FORMATS)}"
        raise ValueError(msg)
    consumed = [0]
    streams = []
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
        check_replayable(path, fmt)
        streams.append(_read_file(path, fmt, exchange, sym, consumed))
    total = sum(p.stat().st_size for p in files)
    merged = heapq.merge(*streams, key=lambda item: item[0])

    def stamped() -> Iterator[tuple[int, RawMessage]]:
        # The receive time is when the feed wrote it: wall clock, per batch.
        for t, msg in merged:
            yield t, msg._replace(recv_ms=int(time.time() * 1000))

    bar = Progress("replay", total) if progress else None
    paced = PacedWriter(writer, speed, should_stop=should_stop, venues=(exchange,))
    n = paced.run(stamped(), on_batch=(lambda c: bar.update(c, consumed[0])) if bar else None)
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
        parser.add_argument("--exchange", default="binance")
        parser.add_argument(
            "--speed", default="max", help="'max' (default) or a factor of the recorded timing"
        )

    def run(self, args: argparse.Namespace, settings: Settings, stop: threading.Event) -> int:
        """Replay the files into the raw log."""
        speed = parse_speed(args.speed)
        with feed_writer(settings, stop) as writer:
            n = replay_files(
                writer,
                list(args.files),
                args.fmt,
                symbol=args.symbol,
                exchange=args.exchange,
                speed=speed,
                should_stop=stop.is_set,
            )
        print(
            f"replay: wrote {n} messages and {writer.marks_written} progress marks "
            f"to {', '.join(writer.streams)}"
        )
        return 0
