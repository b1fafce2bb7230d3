"""``cryptopipe feed simulate|replay|binance``: trades into the raw log."""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from cryptopipe.signals import stop_event_on_signals
from marketdata.parsing import FORMATS, normalize_exchange, normalize_symbol
from marketdata.settings import Settings
from marketdata.simulator import SimConfig
from marketdata.timeutil import now_ms, parse_time
from redisstore.conn import connect_settings
from streaming.feeds.pacing import Progress, parse_speed
from streaming.feeds.replay import replay_files
from streaming.feeds.simulate import run_simulation
from streaming.heartbeat import HeartbeatWriter
from streaming.rawlog import RawLogWriter

log = logging.getLogger(__name__)


def _split_list(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(p for p in v.replace(",", " ").split() if p)
    return out


def _symbols(values: list[str]) -> tuple[str, ...]:
    out = []
    for raw in _split_list(values):
        sym = normalize_symbol(raw)
        if sym is None:
            msg = f"bad symbol {raw!r}: use letters and digits like BTCUSDT"
            raise ValueError(msg)
        out.append(sym)
    return tuple(dict.fromkeys(out))


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        msg = f"{text}: a share between 0 and 1"
        raise argparse.ArgumentTypeError(msg)
    return value


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``feed`` command group."""
    feed = sub.add_parser("feed", help="bring trades into the raw log", parents=[common])
    fsub = feed.add_subparsers(dest="feed", metavar="FEED")
    fsub.required = True

    sim = fsub.add_parser(
        "simulate", parents=[common], help="a simulated market with optional fault injection"
    )
    sim.add_argument(
        "--symbols",
        nargs="+",
        default=["BTCUSDT,ETHUSDT,SOLUSDT"],
        help="symbols, comma or space separated (default BTCUSDT,ETHUSDT,SOLUSDT)",
    )
    sim.add_argument(
        "--exchanges",
        nargs="+",
        default=["binance"],
        help="exchanges quoting every symbol (default binance)",
    )
    sim.add_argument(
        "--rate",
        type=float,
        default=50.0,
        help="average trades per second, all symbols together (default 50)",
    )
    sim.add_argument(
        "--start",
        default=None,
        help="event time of the first trade, ISO 8601 UTC or ms (default now)",
    )
    sim.add_argument(
        "--duration",
        type=float,
        default=None,
        help="simulated seconds (default: run until stopped)",
    )
    sim.add_argument("--speed", default="1", help="'max' or a factor of real time (default 1)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument(
        "--out-of-order",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of trades arriving out of order, inside the lateness",
    )
    sim.add_argument(
        "--duplicates",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of trades delivered twice",
    )
    sim.add_argument(
        "--late",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of trades arriving after their 1m window closed",
    )
    sim.add_argument(
        "--malformed",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="extra invalid messages, as a share of trades",
    )
    sim.add_argument(
        "--first-trade-id",
        type=int,
        default=None,
        help="first trade id per symbol (default: derived from --start)",
    )
    sim.set_defaults(func=cmd_simulate)  # fmt: skip

    rep = fsub.add_parser("replay", parents=[common], help="recorded Binance data")
    rep.add_argument("files", nargs="+", type=Path, metavar="FILE")
    rep.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    rep.add_argument(
        "--symbol", default=None, help="symbol of CSV files (default: from Binance's file name)"
    )
    rep.add_argument("--exchange", default="binance")
    rep.add_argument(
        "--speed", default="max", help="'max' (default) or a factor of the recorded timing"
    )
    rep.set_defaults(func=cmd_replay)

    bn = fsub.add_parser("binance", parents=[common], help="live Binance trade streams")
    bn.add_argument("--symbols", nargs="+", required=True, help="symbols, e.g. BTCUSDT,ETHUSDT")
    bn.add_argument("--ws-url", default="wss://stream.binance.com:9443")
    bn.add_argument("--rest-url", default="https://api.binance.com")
    bn.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start from the live stream alone: do not fetch the trades missed since the "
        "last run from REST",
    )
    bn.set_defaults(func=cmd_binance)


def _feed_writer(settings: Settings) -> tuple[RawLogWriter, threading.Event]:
    """The raw-log writer of a feed (beating as flow ``feed``) and its stop event."""
    client = connect_settings(settings)
    stop = stop_event_on_signals()
    writer = RawLogWriter(
        client, settings.raw_shards, HeartbeatWriter(client, "feed"), should_stop=stop.is_set
    )
    return writer, stop


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    """Run the simulator into the raw log."""
    speed = parse_speed(args.speed)
    start = parse_time(args.start) if args.start else now_ms()
    exchanges = []
    for raw in _split_list(args.exchanges):
        ex = normalize_exchange(raw)
        if ex is None:
            msg = f"bad exchange name {raw!r}"
            raise ValueError(msg)
        exchanges.append(ex)
    cfg = SimConfig(
        symbols=_symbols(args.symbols),
        exchanges=tuple(exchanges),
        rate=args.rate,
        start_ms=start,
        duration_s=args.duration,
        seed=args.seed,
        out_of_order=args.out_of_order,
        duplicates=args.duplicates,
        late=args.late,
        malformed=args.malformed,
        lateness_ms=settings.lateness_ms,
        # Ids grow from the start time so that consecutive runs never reuse one.
        first_trade_id=args.first_trade_id if args.first_trade_id is not None else start * 10,
    )
    writer, stop = _feed_writer(settings)
    with writer:
        kinds = run_simulation(
            writer, cfg, speed, should_stop=stop.is_set, progress=Progress("simulate")
        )
    print(
        f"simulate: wrote {writer.written} messages to {', '.join(writer.streams)} "
        + " ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
    )
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Replay files into the raw log."""
    speed = parse_speed(args.speed)
    writer, stop = _feed_writer(settings)
    with writer:
        n = replay_files(
            writer,
            list(args.files),
            args.fmt,
            symbol=args.symbol,
            exchange=args.exchange,
            speed=speed,
            should_stop=stop.is_set,
        )
    print(f"replay: wrote {n} messages to {', '.join(writer.streams)}")
    return 0


def cmd_binance(args: argparse.Namespace, settings: Settings) -> int:
    """Run the live Binance websocket feed until stopped."""
    from streaming.feeds.binance.feed import run_binance_feed

    stop = stop_event_on_signals()
    return run_binance_feed(
        settings,
        list(_symbols(args.symbols)),
        ws_url=args.ws_url,
        rest_url=args.rest_url,
        stop_event=stop,
        resume=args.resume,
    )
