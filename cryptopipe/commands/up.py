"""``cryptopipe up``: the main job on one machine, left running.

In order (docs/operations.md, *What runs when*):

1. a local Redis when none answers at the URL (started here, watched, restarted);
2. the stack's lease on that Redis (:mod:`cryptopipe.stack`): a second ``up``
   against the same Redis is refused, naming this one, before it touches anything;
3. Dagster's instance initialised alone (:mod:`orchestration.instance`), so the
   webserver and daemon never race to create it; a broken one is repaired or
   explained;
4. the webserver and daemon, then a wait until the code location loaded (or its
   error printed, exit 1);
5. the flows and the feed are asked for (``want``): the daemon's health sensor
   starts them and restarts them when they die or stall.

Every child (local Redis, webserver, daemon, the HTTP API of ``cryptopipe serve``;
the feed with ``--no-dagster``) that
exits is restarted with back-off and a log line; the flows keep running meanwhile.
Everything started here carries this process's owner token
(:data:`streaming.owner.OWNER_ENV`) and dies with it: ``up`` killed even by SIGKILL
leaves nothing behind. Ctrl-C stops everything it started, Dagster first (so nothing
restarts the flows), and only that.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batch.connect_server import DEFAULT_PORT as CONNECT_PORT
from batch.connect_server import ConnectServer, ConnectServerError, warm_up_argv
from batch.spark import SPARK_MASTER_ENV
from cryptopipe.commands.serve import DEFAULT_HOST, DEFAULT_PORT
from cryptopipe.dagster_home import prepare
from cryptopipe.errors import CommandError
from cryptopipe.localredis import LocalRedis, ensure_redis
from cryptopipe.procs import ProcessGroup, die_with_parent
from cryptopipe.signals import stop_event_on_signals
from cryptopipe.stack import StackLease
from marketdata.settings import Settings
from redisstore.conn import connect_settings, redact
from streaming.feeds import DEFAULT_FEED, FEEDS
from streaming.owner import OWNER_ENV, owner_token
from streaming.supervisor import FEED, FLOWS, Supervisor, metrics_args, metrics_port

log = logging.getLogger(__name__)

#: Seconds to wait before restarting a child that exited: 1, 2, 4, ... up to 60.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
#: A child that ran this long without exiting starts its back-off afresh.
STABLE_AFTER_S = 60.0
#: How long ``up`` waits for Dagster's code location to load.
CODE_LOCATION_TIMEOUT_S = 180.0
#: The feeds ``up`` can supervise (the replay feed needs files: run it by hand).
UP_FEEDS = tuple(f for f in FEEDS if f != "replay")


#: Where ``up`` puts the supervised processes' Prometheus ports (docs/operations.md).
DEFAULT_METRICS_PORT_BASE = 9400


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``up`` command."""
    up = sub.add_parser(
        "up", parents=[common], help="run everything locally: Redis, a feed, the flows, Dagster"
    )
    up.add_argument(
        "--feed",
        choices=UP_FEEDS,
        default=DEFAULT_FEED,
        help=f"where trades come from (default {DEFAULT_FEED}: a simulated market)",
    )
    up.add_argument(
        "--symbols",
        default="BTCUSDT,ETHUSDT,SOLUSDT",
        help="symbols of the feed (default BTCUSDT,ETHUSDT,SOLUSDT)",
    )
    up.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="with --feed simulate: trades per second (default 20)",
    )
    up.add_argument(
        "--feed-option",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for 'cryptopipe feed FEED', e.g. --feed-option=--market=um "
        "(repeatable)",
    )
    up.add_argument("--no-feed", action="store_true", help="do not start a feed")
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
        "--api-host",
        default=DEFAULT_HOST,
        help=f"address of the HTTP API and chart (default {DEFAULT_HOST})",
    )
    up.add_argument(
        "--api-port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port of the HTTP API and chart (default {DEFAULT_PORT})",
    )
    up.add_argument("--no-api", action="store_true", help="do not start cryptopipe serve")
    up.add_argument(
        "--metrics-port-base",
        type=int,
        default=DEFAULT_METRICS_PORT_BASE,
        metavar="PORT",
        help="Prometheus /metrics of the flows and the feed on 127.0.0.1 from this port: "
        f"candles +0, metrics +10, archive +20, feed +30 (default {DEFAULT_METRICS_PORT_BASE}; "
        "'cryptopipe status --format json' lists them)",
    )
    up.add_argument("--no-metrics", action="store_true", help="serve no Prometheus metrics")
    up.add_argument(
        "--spark-connect",
        action="store_true",
        help="keep a local Spark Connect server warm for Dagster's batch runs (about 1.5 GB "
        "of memory while up runs; each run then starts no JVM of its own)",
    )
    up.add_argument(
        "--spark-connect-port",
        type=int,
        default=CONNECT_PORT,
        metavar="PORT",
        help=f"its gRPC port on 127.0.0.1 (default {CONNECT_PORT})",
    )
    up.add_argument(
        "--for",
        dest="run_for",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop by itself after this many seconds (default: until Ctrl-C)",
    )
    up.set_defaults(func=cmd_up)


def feed_args(args: argparse.Namespace) -> list[str]:
    """``cryptopipe feed`` arguments for ``up``'s options (checked by the feed's parser).

    Raises:
        CommandError: the feed's own parser refuses them.

    """
    out = [args.feed, "--symbols", args.symbols]
    if args.feed == "simulate":
        out += ["--rate", str(args.rate)]
    out += list(args.feed_option)
    from cryptopipe.cli import build_parser  # the command line's own rules, late: no cycle

    parser = build_parser()
    try:
        parser.parse_args(["feed", *out])
    except SystemExit as exc:  # argparse said why on stderr
        msg = f"the feed's options are refused: cryptopipe feed {' '.join(out)}"
        raise CommandError(msg) from exc
    return out


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cryptopipe", *args]


def _dagster_bin(name: str) -> str:
    # The console scripts live beside this interpreter in the virtual environment.
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


@dataclass
class Backoff:
    """Restart timing of one child: 1, 2, 4 ... :data:`BACKOFF_MAX_S` seconds."""

    failures: int = 0
    due: float | None = None
    started: float = field(default_factory=time.monotonic)

    def exited(self, now: float) -> float:
        """Note an exit; the delay before the restart."""
        if now - self.started >= STABLE_AFTER_S:
            self.failures = 0
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**self.failures)
        self.failures += 1
        self.due = now + delay
        return delay

    def restarted(self, now: float) -> None:
        """Note the restart."""
        self.due = None
        self.started = now


def initialise_instance(dagster_home: Path, env: dict[str, str]) -> None:
    """Create, repair and upgrade Dagster's instance, alone; prints what was repaired.

    Raises:
        CommandError: the instance is broken beyond repair (the message says what to do).

    """
    proc = subprocess.run(
        [sys.executable, "-m", "orchestration.instance", str(dagster_home)],
        env={**env, "DAGSTER_HOME": str(dagster_home)},
        capture_output=True,
        text=True,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("repaired"):
            print(f"dagster: {line}")
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        msg = f"dagster: {detail[-1] if detail else 'the instance could not be initialised'}"
        raise CommandError(msg, status=1)


def metrics_line(settings: Settings, names: list[str]) -> str:
    """Where each process's ``/metrics`` will be, and which of those ports are taken now."""
    ports = {n: metrics_port(settings, n) for n in names}
    where = ", ".join(f"{n} {p}" for n, p in ports.items())
    line = f"metrics: http://127.0.0.1:PORT/metrics: {where}"
    taken = [str(p) for p in ports.values() if p is not None and not port_free(p)]
    if taken:
        line += (
            f" (in use now: {', '.join(taken)}; those processes serve no metrics: give "
            "--metrics-port-base another port, or --no-metrics)"
        )
    return line


def port_free(port: int) -> bool:
    """Whether nothing listens on ``127.0.0.1:port`` (the flows bind it after this)."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class Stack:
    """What one ``cryptopipe up`` started, kept alive until it stops."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args = args
        self.settings = settings
        self.local: LocalRedis | None = None
        self.group = ProcessGroup(settings.run_dir / "logs", die_with_parent=True)
        self.owner = owner_token()
        self.env = {**settings.env(), OWNER_ENV: self.owner}
        self.backoff: dict[str, Backoff] = {}
        self.ui = f"http://{args.dagster_host}:{args.dagster_port}"
        self.spark: ConnectServer | None = None
        self.warm_up: subprocess.Popen[bytes] | None = None
        if getattr(args, "spark_connect", False):
            port = args.spark_connect_port
            self.spark = ConnectServer(port, self.group.log_dir / "spark-connect.log")
            self.env[SPARK_MASTER_ENV] = self.spark.url  # Dagster's runs use it

    def start_spark(self) -> None:
        """The warm Spark Connect server, a healed child like the others (not waited for).

        Raises:
            CommandError: no Java, or its port is taken.

        """
        if self.spark is None:
            return
        try:
            self.spark.check_startable()
        except ConnectServerError as exc:
            raise CommandError(f"spark: {exc} (or leave out --spark-connect)", status=1) from None
        self.group.start("spark-connect", self.spark.argv(), self.spark.env())

    def wait_spark(self, stopping: Callable[[], bool]) -> None:
        """Wait until the Connect server answers; say where it is."""
        if self.spark is None:
            return
        child = self.group.child("spark-connect")
        if not self.spark.wait_ready(child.alive, stopping):
            if stopping():
                return
            msg = (
                f"spark: the Spark Connect server did not start (status {child.proc.poll()}); "
                f"its log {child.log_path} ends:\n{self.spark.log_tail()}"
            )
            raise CommandError(msg, status=1)
        print(
            f"spark: Spark Connect server {self.spark.url} (warm for Dagster's batch runs; "
            f"{SPARK_MASTER_ENV} set for them)",
            flush=True,
        )
        # Its first job runs twice as long as the next ones: one on a small generated
        # day now, in the background, so that Dagster's first batch run finds it warm.
        log_path = self.group.log_dir / "spark-warm-up.log"
        with log_path.open("ab") as out:
            self.warm_up = subprocess.Popen(
                warm_up_argv(self.spark.url),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def stop_warm_up(self) -> None:
        """Stop the warm-up if it still runs."""
        if self.warm_up is not None and self.warm_up.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.warm_up.pid, signal.SIGKILL)
            self.warm_up.wait(5)

    # ---- children ---------------------------------------------------------------------

    def start_dagster(self, stopping: Callable[[], bool]) -> bool:
        """Initialise the instance, start the webserver and daemon, wait for the code.

        Returns False when ``stopping()`` turned true while waiting (Ctrl-C).
        """
        dagster_home, workspace = prepare(self.settings)
        initialise_instance(dagster_home, self.env)
        denv = {**self.env, "DAGSTER_HOME": str(dagster_home)}
        host, port = self.args.dagster_host, str(self.args.dagster_port)
        web = _dagster_bin("dagster-webserver")
        self.group.start(
            "dagster-webserver", [web, "-h", host, "-p", port, "-w", str(workspace)], denv
        )
        self.group.start(
            "dagster-daemon", [_dagster_bin("dagster-daemon"), "run", "-w", str(workspace)], denv
        )
        print(f"dagster: {self.ui} (DAGSTER_HOME={dagster_home})", flush=True)
        from orchestration.webserver import CodeLocationError, wait_loaded

        try:
            names = wait_loaded(
                self.ui,
                CODE_LOCATION_TIMEOUT_S,
                alive=lambda: not stopping() and all(c.alive() for c in self.group.children),
            )
        except CodeLocationError as exc:
            if stopping():
                return False
            logs = self.group.log_dir
            msg = (
                f"dagster: {exc}. See {logs}/dagster-webserver.log and dagster-daemon.log; "
                "fix the error (a missing package: ./dev setup) and run cryptopipe up again"
            )
            raise CommandError(msg, status=1) from exc
        print(f"dagster: code location loaded ({', '.join(names)})", flush=True)
        return True

    def start_own(self, feed: list[str] | None) -> None:
        """The children up runs itself: the HTTP API, and the feed under ``--no-dagster``."""
        if not self.args.no_api:
            host, port = self.args.api_host, str(self.args.api_port)
            self.group.start("api", _cli("serve", "--host", host, "--port", port), self.env)
            print(f"api: http://{host}:{port}/api/candles", flush=True)
        if feed and self.args.no_dagster:
            prom = metrics_args(self.settings, FEED)
            self.group.start(f"feed-{feed[0]}", _cli("feed", *feed, *prom), self.env)

    def announce(self, feed: list[str] | None) -> None:
        """The feed, the metrics ports, where things are, and how to stop."""
        if feed:
            print(f"feed: cryptopipe feed {' '.join(feed)}")
        if self.settings.metrics_port_base is not None:
            print(metrics_line(self.settings, [*FLOWS, *([FEED] if feed else [])]))
        print(
            f"home: {self.settings.home}\nlogs: {self.group.log_dir}\nCtrl-C stops everything.",
            flush=True,
        )

    def heal(self, now: float) -> None:
        """Restart children that exited, with back-off; one log line each time."""
        if self.local is not None and not self.local.alive():
            self._due("redis", f"local redis-server exited ({self.local.returncode})", now)
            if self._ready("redis", now):
                assert self.local is not None
                try:
                    self.local.start()
                    log.warning("restarted the local redis-server (port %d)", self.local.port)
                except Exception as exc:
                    log.error("could not restart the local redis-server: %s", exc)
        for child in list(self.group.children):
            if child.alive():
                continue
            self._due(child.name, f"{child.name} exited with status {child.proc.returncode}", now)
            if self._ready(child.name, now):
                new = self.group.restart(child.name)
                log.warning("restarted %s (pid %d); log %s", child.name, new.proc.pid, new.log_path)

    def _due(self, name: str, what: str, now: float) -> None:
        b = self.backoff.setdefault(name, Backoff())
        if b.due is None:
            delay = b.exited(now)
            log.error("%s; restarting it in %.0f s", what, delay)

    def _ready(self, name: str, now: float) -> bool:
        b = self.backoff[name]
        if b.due is not None and now >= b.due:
            b.restarted(now)
            return True
        return False


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Start the local stack and keep it running until Ctrl-C (or ``--for``)."""
    stop = stop_event_on_signals()
    feed = None if args.no_feed else feed_args(args)
    if not args.no_metrics:
        settings = dataclasses.replace(settings, metrics_port_base=args.metrics_port_base)
    settings.home.mkdir(parents=True, exist_ok=True)
    stack = Stack(args, settings)
    stack.local = ensure_redis(settings.redis_url, settings.redis_dir, die_with_parent=True)
    client = connect_settings(settings, writer=True)
    lease = StackLease(
        client,
        home=str(settings.home),
        ui="" if args.no_dagster else stack.ui,
        spark=stack.spark.url if stack.spark else "",
    )
    try:
        lease.acquire()  # refused: nothing of the running stack is touched
    except BaseException:
        if stack.local is not None:
            stack.local.stop()
        raise
    lease.start_renewing()
    sup = Supervisor(settings, client)
    supervised = [] if args.no_dagster else [*FLOWS, *([FEED] if feed else [])]
    try:
        where = f"started here, data in {settings.redis_dir}" if stack.local else "existing"
        print(f"redis: {redact(settings.redis_url)} ({where})", flush=True)
        stack.start_spark()
        stack.start_own(feed)
        if feed and not args.no_dagster:
            sup.set_feed(feed)
        for name in supervised:
            sup.want(name)  # the health sensor starts them
        if not args.no_dagster:
            if not stack.start_dagster(stop.is_set):
                return 0
            print(f"flows: {', '.join(FLOWS)} (started by Dagster's flow health sensor)")
        stack.wait_spark(stop.is_set)
        stack.announce(feed)
        deadline = None if args.run_for is None else time.monotonic() + args.run_for
        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if lease.lost.is_set():
                log.error("another cryptopipe up took this Redis over: stopping")
                return 1
            stack.heal(now)
            stop.wait(0.5)
        return 0
    finally:
        print("stopping ...", file=sys.stderr, flush=True)
        for name in supervised:
            sup.unwant(name)  # a run still in flight must not start it again
        stack.stop_warm_up()
        stack.group.stop_all()  # Dagster first, so the sensor restarts nothing
        for name in supervised:
            sup.stop(name)
            sup.stop_stray(name, owner=stack.owner)
        lease.release()
        if stack.local is not None:
            stack.local.stop()
