"""``cryptopipe up``: the main job on one machine.

Starts a local Redis when none answers at the URL, the simulated feed, and
Dagster's webserver (127.0.0.1:3000) and daemon, whose health sensor starts the
flows. Ctrl-C stops everything it started, newest first (Dagster before the flows,
so nothing restarts them), and nothing is left running.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from cryptopipe.dagster_home import prepare
from cryptopipe.localredis import ensure_redis
from cryptopipe.procs import ProcessGroup
from cryptopipe.signals import stop_event_on_signals
from marketdata.settings import Settings
from redisstore.conn import connect_settings, redact
from streaming.feeds.simulate import SimulatedMarket
from streaming.supervisor import FLOWS, Supervisor

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
        "--no-dagster", action="store_true", help="do not start Dagster (and so no flows)"
    )
    up.add_argument(
        "--dagster-host",
        default="127.0.0.1",
        help="webserver address (default 127.0.0.1: this machine only)",
    )
    up.add_argument("--dagster-port", type=int, default=3000, help="webserver port (default 3000)")
    up.add_argument(
        "--for",
        dest="run_for",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop by itself after this many seconds (default: until Ctrl-C)",
    )
    up.set_defaults(func=cmd_up)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cryptopipe", *args]


def _dagster_bin(name: str) -> str:
    # The console scripts live beside this interpreter in the virtual environment.
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def _start_dagster(
    group: ProcessGroup, settings: Settings, host: str, port: int, env: dict[str, str]
) -> None:
    dagster_home, workspace = prepare(settings)
    denv = {**env, "DAGSTER_HOME": str(dagster_home)}
    group.start(
        "dagster-webserver",
        [_dagster_bin("dagster-webserver"), "-h", host, "-p", str(port), "-w", str(workspace)],
        denv,
    )
    group.start(
        "dagster-daemon", [_dagster_bin("dagster-daemon"), "run", "-w", str(workspace)], denv
    )
    print(f"dagster: http://{host}:{port} (DAGSTER_HOME={dagster_home})")


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Start the local stack and wait for Ctrl-C."""
    stop = stop_event_on_signals()
    settings.home.mkdir(parents=True, exist_ok=True)
    local = ensure_redis(settings.redis_url, settings.redis_dir)
    group = ProcessGroup(settings.run_dir / "logs")
    env = settings.env()
    sup = Supervisor(settings, connect_settings(settings))
    try:
        where = f"started here, data in {settings.redis_dir}" if local else "existing"
        print(f"redis: {redact(settings.redis_url)} ({where})")
        if not args.no_feed:
            feed = SimulatedMarket.name  # its options: --symbols, --rate
            group.start(
                f"feed-{feed}",
                _cli("feed", feed, "--symbols", args.symbols, "--rate", str(args.rate)),
                env,
            )
            print(f"feed: simulated market, {args.rate:g} trades/s of {args.symbols}")
        if not args.no_dagster:
            for name in FLOWS:
                sup.want(name)  # the health sensor starts them
            _start_dagster(group, settings, args.dagster_host, args.dagster_port, env)
            print(f"flows: {', '.join(FLOWS)} (started by Dagster's flow health sensor)")
        print(f"home: {settings.home}\nlogs: {group.log_dir}\nCtrl-C stops everything.")
        deadline = None if args.run_for is None else time.monotonic() + args.run_for
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            for child in group.children:
                if not child.alive():
                    log.error(
                        "%s exited with status %s; see %s",
                        child.name,
                        child.proc.returncode,
                        child.log_path,
                    )
                    return 1
            stop.wait(0.5)
        return 0
    finally:
        print("stopping ...", file=sys.stderr)
        if not args.no_dagster:
            for name in FLOWS:
                sup.unwant(name)  # a run still in flight must not start it again
        group.stop_all()  # Dagster first (newest), so the sensor restarts nothing
        if not args.no_dagster:
            for name in FLOWS:
                sup.stop(name)
                sup.stop_stray(name)
        if local is not None:
            local.stop()
