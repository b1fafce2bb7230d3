"""``cryptopipe feed simulate``: the simulated market into the raw log."""

from __future__ import annotations

import argparse
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator

from marketdata.rawmessage import RawMessage
from marketdata.settings import Settings
from marketdata.simulator import SimConfig, simulate
from marketdata.timeutil import MIN_EVENT_TIME_MS, format_ms, now_ms, parse_time
from streaming.feeds.base import feed_writer, parse_exchanges, parse_symbols, share
from streaming.feeds.pacing import PacedWriter, Progress, parse_speed
from streaming.rawlog import RawLogWriter

log = logging.getLogger(__name__)


def run_simulation(
    writer: RawLogWriter,
    cfg: SimConfig,
    speed: float | None,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Progress | None = None,
) -> Counter[str]:
    """Write the simulated market to the raw log; returns counts per message kind.

    The receive time of each message is its simulated arrival time, so a run is
    reproducible whatever the speed. Each exchange gets progress marks at the
    simulated time reached (:class:`PacedWriter`), quiet markets included.
    """
    kinds: Counter[str] = Counter()

    def items() -> Iterator[tuple[int, RawMessage]]:
        for m in simulate(cfg):
            kinds[m.kind] += 1
            yield m.arrival_ms, RawMessage(m.payload, m.exchange, m.arrival_ms, symbol=m.symbol)

    paced = PacedWriter(writer, speed, should_stop=should_stop, venues=cfg.exchanges)
    written = paced.run(items(), on_batch=progress.update if progress else None)
    if progress:
        progress.finish(written)
    log.info("simulated %d messages: %s", written, dict(kinds))
    return kinds


class SimulatedMarket:
    """``cryptopipe feed simulate``: a simulated market with optional fault injection."""

    name = "simulate"
    help = "a simulated market with optional fault injection"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The market (symbols, exchanges, rate, start, duration, speed, seed) and faults."""
        parser.add_argument(
            "--symbols",
            nargs="+",
            default=["BTCUSDT,ETHUSDT,SOLUSDT"],
            help="symbols, comma or space separated (default BTCUSDT,ETHUSDT,SOLUSDT)",
        )
        parser.add_argument(
            "--exchanges",
            nargs="+",
            default=["binance"],
            help="exchanges quoting every symbol (default binance)",
        )
        parser.add_argument(
            "--rate",
            type=float,
            default=50.0,
            help="average trades per second, all symbols together (default 50)",
        )
        parser.add_argument(
            "--start",
            default=None,
            help="event time of the first trade: ISO 8601 UTC, or s, ms or µs (default now)",
        )
        parser.add_argument(
            "--duration",
            type=float,
            default=None,
            help="simulated seconds (default: run until stopped)",
        )
        parser.add_argument(
            "--speed", default="1", help="'max' or a factor of real time (default 1)"
        )
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.add_argument(
            "--out-of-order",
            type=share,
            default=0.0,
            metavar="SHARE",
            help="share of trades arriving out of order, inside the lateness",
        )
        parser.add_argument(
            "--duplicates",
            type=share,
            default=0.0,
            metavar="SHARE",
            help="share of trades delivered twice",
        )
        parser.add_argument(
            "--late",
            type=share,
            default=0.0,
            metavar="SHARE",
            help="share of trades arriving after their 1m window closed",
        )
        parser.add_argument(
            "--malformed",
            type=share,
            default=0.0,
            metavar="SHARE",
            help="extra invalid messages, as a share of trades",
        )
        parser.add_argument(
            "--first-trade-id",
            type=int,
            default=None,
            help="first trade id per symbol (default: derived from --start)",
        )

    def run(self, args: argparse.Namespace, settings: Settings, stop: threading.Event) -> int:
        """Run the simulator into the raw log."""
        speed = parse_speed(args.speed)
        start = parse_time(args.start, "--start") if args.start else now_ms()
        if start > now_ms() + settings.max_ahead_ms:
            msg = (
                f"--start {args.start} is in the future: the flows would reject every "
                "trade as bad_timestamp (more than CRYPTOPIPE_MAX_AHEAD_MS="
                f"{settings.max_ahead_ms} ahead of the time it is written); start now or earlier"
            )
            raise ValueError(msg)
        if start < MIN_EVENT_TIME_MS:
            msg = (
                f"--start {args.start} is before {format_ms(MIN_EVENT_TIME_MS)} (the first "
                "Bitcoin block): the flows would reject every trade as bad_timestamp"
            )
            raise ValueError(msg)
        cfg = SimConfig(
            symbols=parse_symbols(args.symbols),
            exchanges=parse_exchanges(args.exchanges),
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
        with feed_writer(settings, stop) as writer:
            kinds = run_simulation(
                writer, cfg, speed, should_stop=stop.is_set, progress=Progress("simulate")
            )
        print(
            f"simulate: wrote {writer.written} messages and {writer.marks_written} progress "
            f"marks to {', '.join(writer.streams)} "
            + " ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
        )
        return 0
