"""``cryptopipe up``: the main job on one machine.

Starts a local Redis when none answers at the URL, the simulated feed, and
(once orchestration lands) Dagster's webserver and daemon. Ctrl-C stops
everything it started, newest first, and nothing is left running.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from cryptopipe.localredis import ensure_redis
from cryptopipe.procs import ProcessGroup
from cryptopipe.signals import stop_event_on_signals
from marketdata.settings import Settings
from streaming.redisconn import redact

log = logging.getLogger(__name__)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``up`` command."""
    up = sub.add_parser(
        "up", parents=[common], help="run everything locally: Redis, a simulated feed, Dagster"
    )
    up.add_argument(
        "--symbols",
        default="BTCUSDT,ETHUSDT,SOLUSDT",
        help="symbols of the simulated feed (default BTCUSDT,ETHUSDT,SOLUSDT)",
    )
    up.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="trades per second of the simulated feed (default 20)",
    )
    up.add_argument("--no-feed", action="store_true", help="do not start the simulated feed")
    up.add_argument(
        "--for",
        dest="run_for",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop by itself after this many seconds (default: until Ctrl-C)",
    )
    up.set_defaults(func=cmd_up)  # fmt: skip


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cryptopipe", *args]


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Start the local stack and wait for Ctrl-C."""
    stop = stop_event_on_signals()
    settings.home.mkdir(parents=True, exist_ok=True)
    local = ensure_redis(settings.redis_url, settings.redis_dir)
    group = ProcessGroup(settings.run_dir / "logs")
    env = settings.env()
    try:
        print(
            f"redis: {redact(settings.redis_url)} "
            + ("(started here, data in " + str(settings.redis_dir) + ")" if local else "(existing)")
        )
        if not args.no_feed:
            group.start(
                "feed-simulate",
                _cli("feed", "simulate", "--symbols", args.symbols, "--rate", str(args.rate)),
                env,
            )
            print(f"feed: simulated market, {args.rate:g} trades/s of {args.symbols}")
        print(f"home: {settings.home}\nlogs: {group.log_dir}\nCtrl-C stops everything.")
        deadline = None if args.run_for is None else time.monotonic() + args.run_for
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            for child in group.children:
                if not child.alive():
                    log.error(
                        "%s exited with status %s; see %s",
                        child.name, child.proc.returncode, child.log_path,
                    )  # fmt: skip
                    return 1
            stop.wait(0.5)
        return 0
    finally:
        print("stopping ...", file=sys.stderr)
        group.stop_all()
        if local is not None:
            local.stop()
