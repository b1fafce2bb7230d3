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
   starts them and restarts them when they die or stall. ``--feed binance,coinbase``
   runs several feeds, each a process of its own (``feed-binance``,
   ``feed-coinbase``: :func:`streaming.supervisor.feed_process_names`), supervised
   apart, so one venue's crash never restarts another.

Every child (local Redis, webserver, daemon, the HTTP API of ``cryptopipe serve``;
the feeds with ``--no-dagster``) that
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
from streaming.feeds import DEFAULT_FEED, FEEDS, feed_named
from streaming.feeds.base import FEED_PROCESS_ENV
from streaming.owner import OWNER_ENV, owner_token
from streaming.supervisor import (
    FEED,
    FLOWS,
    SUPERVISED_FEEDS,
    Supervisor,
    feed_process_names,
    metrics_args,
    metrics_port,
)

log = logging.getLogger(__name__)

#: Seconds to wait before restarting a child that exited: 1, 2, 4, ... up to 60.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
#: A child that ran this long without exiting starts its back-off afresh.
STABLE_AFTER_S = 60.0
#: How long ``up`` waits for Dagster's code location to load.
CODE_LOCATION_TIMEOUT_S = 180.0
#: The feeds ``up`` can supervise (the replay feed needs files: run it by hand).
UP_FEEDS = SUPERVISED_FEEDS
#: The symbols of the feeds that take ``--symbols``, unless ``--symbols`` says otherwise.
DEFAULT_SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT"


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
        type=feed_list,
        default=[DEFAULT_FEED],
        metavar="FEED[,FEED...]",
        help=f"where trades come from: {', '.join(UP_FEEDS)}, or several comma-separated, "
        "each its own supervised process (default "
        f"{DEFAULT_FEED}: a simulated market)",
    )
    up.add_argument(
        "--symbols",
        default=None,
        help=f"symbols of the feeds that take --symbols (default {DEFAULT_SYMBOLS})",
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
        metavar="[FEED:]ARG",
        help="one more argument for 'cryptopipe feed FEED', e.g. --feed-option=--market=um, "
        "for every feed, or for one: --feed-option=binance:--market=um (repeatable)",
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
        "candles +0, metrics +10, archive +20, feed +30 (several feeds: +30, +31, ...; "
        f"default {DEFAULT_METRICS_PORT_BASE}; "
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


def feed_list(value: str) -> list[str]:
    """``--feed``: one feed or several, comma-separated, each at most once (argparse type)."""
    feeds = [f.strip() for f in value.split(",") if f.strip()]
    if not feeds:
        msg = f"give a feed: one of {', '.join(UP_FEEDS)}, or several comma-separated"
        raise argparse.ArgumentTypeError(msg)
    for feed in feeds:
        if feed not in UP_FEEDS:
            hint = " (it needs files: run it by hand)" if feed == "replay" else ""
            msg = f"feed {feed!r} cannot run under up{hint}: use {', '.join(UP_FEEDS)}"
            raise argparse.ArgumentTypeError(msg)
    try:
        feed_process_names(feeds)  # each at most once
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return feeds


def takes_symbols(feed: str) -> bool:
    """Whether ``cryptopipe feed <feed>`` has a ``--symbols`` option of its own.

    Its own: the option whose value is ``symbols`` (binance, simulate); a feed with
    names of its own (coinbase's ``--products``, which also answers to ``--symbols``)
    keeps its own default unless given them with ``--feed-option=FEED:...``.
    """
    parser = argparse.ArgumentParser(add_help=False)
    feed_named(feed).add_arguments(parser)
    return any(action.dest == "symbols" for action in parser._actions)


def route_feed_option(option: str) -> tuple[str | None, str]:
    """``--feed-option``'s feed and argument: ``binance:--market=um`` is binance's only.

    A prefix before the first ``:`` that names a registered feed routes the argument
    to that feed; anything else (``--market=um``, ``ws://host:1``) goes to every feed.
    """
    name, sep, rest = option.partition(":")
    if sep and name in FEEDS:
        return name, rest
    return None, option


def feed_args(args: argparse.Namespace) -> list[list[str]]:
    """``cryptopipe feed`` arguments of each feed of ``--feed``, checked by its parser.

    ``--symbols`` goes to the feeds that take it (default :data:`DEFAULT_SYMBOLS`),
    ``--rate`` likewise, ``--feed-option=ARG`` to every feed and
    ``--feed-option=FEED:ARG`` to that feed only.

    Raises:
        CommandError: a feed's own parser refuses its options (naming the feed), a
            ``--feed-option`` names a feed ``--feed`` does not run, or ``--symbols`` was
            given and no feed takes it.

    """
    feeds: list[str] = list(args.feed)
    extra: dict[str, list[str]] = {f: [] for f in feeds}
    for option in args.feed_option:
        target, arg = route_feed_option(option)
        if target is not None and target not in extra:
            msg = (
                f"--feed-option={option} is for feed {target}, which --feed "
                f"{','.join(feeds)} does not run"
            )
            raise CommandError(msg)
        for feed in [target] if target is not None else feeds:
            extra[feed].append(arg)
    symbols = [f for f in feeds if takes_symbols(f)]
    if args.symbols is not None and not symbols:
        msg = (
            f"--symbols: feed {','.join(feeds)} takes no --symbols; give its own option with "
            "--feed-option=FEED:ARG (cryptopipe feed FEED --help lists them)"
        )
        raise CommandError(msg)
    from cryptopipe.cli import build_parser  # the command line's own rules, late: no cycle

    parser = build_parser()
    out = []
    for feed in feeds:
        spec = [feed]
        if feed in symbols:
            spec += ["--symbols", args.symbols or DEFAULT_SYMBOLS]
        if feed == "simulate":
            spec += ["--rate", str(args.rate)]
        spec += extra[feed]
        try:
            parser.parse_args(["feed", *spec])
        except SystemExit as exc:  # argparse said why on stderr
            msg = f"the options of feed {feed} are refused: cryptopipe feed {' '.join(spec)}"
            raise CommandError(msg) from exc
        out.append(spec)
    return out


def feed_processes(args: argparse.Namespace) -> dict[str, list[str]]:
    """Each feed process's name and its ``cryptopipe feed`` arguments (none: ``--no-feed``).

    One feed is the process ``feed``; several are ``feed-<feed>`` each
    (:func:`streaming.supervisor.feed_process_names`).
    """
    if args.no_feed:
        return {}
    specs = feed_args(args)
    return dict(zip(feed_process_names([s[0] for s in specs]), specs, strict=True))


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


def metrics_line(settings: Settings, names: list[str], feeds: list[str] | None = None) -> str:
    """Where each process's ``/metrics`` will be, and which of those ports are taken now.

    ``feeds``: the feed processes among ``names``, in order (their ports follow it).
    """
    ports = {n: metrics_port(settings, n, feeds or [FEED]) for n in names}
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

    def start_own(self, feeds: dict[str, list[str]]) -> None:
        """The children up runs itself: the HTTP API, and the feeds under ``--no-dagster``.

        ``feeds``: each feed process's name and its ``cryptopipe feed`` arguments. A feed
        child is ``feed-<feed>`` and beats under its process's name (``feed`` alone).
        """
        if not self.args.no_api:
            host, port = self.args.api_host, str(self.args.api_port)
            self.group.start("api", _cli("serve", "--host", host, "--port", port), self.env)
            print(f"api: http://{host}:{port}/api/candles", flush=True)
        if not self.args.no_dagster:
            return
        for name, spec in feeds.items():
            prom = metrics_args(self.settings, name, list(feeds))
            env = {**self.env, FEED_PROCESS_ENV: name}
            self.group.start(f"feed-{spec[0]}", _cli("feed", *spec, *prom), env)

    def announce(self, feeds: dict[str, list[str]]) -> None:
        """The feeds, the metrics ports, where things are, and how to stop."""
        for name, spec in feeds.items():
            process = "" if len(feeds) == 1 else f" (process {name})"
            print(f"feed: cryptopipe feed {' '.join(spec)}{process}")
        if self.settings.metrics_port_base is not None:
            print(metrics_line(self.settings, [*FLOWS, *feeds], list(feeds)))
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
    feeds = feed_processes(args)
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
    supervised = [] if args.no_dagster else [*FLOWS, *feeds]
    try:
        where = f"started here, data in {settings.redis_dir}" if stack.local else "existing"
        print(f"redis: {redact(settings.redis_url)} ({where})", flush=True)
        stack.start_spark()
        if args.no_dagster:
            sup.list_feeds(list(feeds))  # up runs them itself; status shows them
        else:
            sup.set_feeds(list(feeds.values()))  # what the health sensor starts and watches
        stack.start_own(feeds)
        for name in supervised:
            sup.want(name)  # the health sensor starts them
        if not args.no_dagster:
            if not stack.start_dagster(stop.is_set):
                return 0
            print(f"flows: {', '.join(FLOWS)} (started by Dagster's flow health sensor)")
        stack.wait_spark(stop.is_set)
        stack.announce(feeds)
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
