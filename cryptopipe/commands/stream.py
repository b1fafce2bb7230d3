"""``cryptopipe stream run|start|stop|restart|status``: the long-running flows.

``stream run NAME`` runs ``python -m bytewax.run "streaming.flows.NAME:get_flow(...)"``
in the foreground with a recovery directory under ``--home`` (created mode 0700 and
initialised on first run) and a snapshot interval, so a restart resumes from the
last snapshot. With one process it *becomes* that process (``exec``), so the pid a
supervisor started is the flow's pid; with ``--processes P`` it starts P bytewax
processes (``-i/-a``) and waits for them, forwarding signals.

``start``, ``stop``, ``restart`` and ``status`` act on background flows (see
:mod:`cryptopipe.commands.flowctl`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from cryptopipe.commands.flowctl import add_control_commands
from cryptopipe.errors import CommandError
from marketdata.settings import Settings
from redisstore.conn import connect_settings
from streaming.prom import ENV_METRICS_PORT
from streaming.supervisor import FLOWS

#: Seconds between snapshots (bytewax's epoch length): what a crash replays at most.
DEFAULT_SNAPSHOT_S = 5
#: Recovery partitions created on first run (the worker count may change later).
RECOVERY_PARTS = 1


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``stream`` command group."""
    stream = sub.add_parser("stream", parents=[common], help="run and control the flows")
    ssub = stream.add_subparsers(dest="stream_command", metavar="ACTION")
    ssub.required = True
    run = ssub.add_parser(
        "run", parents=[common], help="run one flow in the foreground (with recovery)"
    )
    run.add_argument("name", choices=FLOWS, help="the flow")
    run.add_argument("--workers", "-w", type=int, default=1, help="workers per process")
    run.add_argument(
        "--processes",
        type=int,
        default=1,
        help="bytewax processes (multi-process mode on this machine; default 1)",
    )
    run.add_argument(
        "--exit-when-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="end the input after this many idle seconds, closing every open window first",
    )
    run.add_argument(
        "--snapshot-interval",
        type=int,
        default=DEFAULT_SNAPSHOT_S,
        metavar="SECONDS",
        help=f"seconds between recovery snapshots (default {DEFAULT_SNAPSHOT_S})",
    )
    run.add_argument("--batch-size", type=int, default=None, help="entries per read of the raw log")
    run.add_argument(
        "--no-recovery", action="store_true", help="run without recovery (benchmarks only)"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus /metrics on 127.0.0.1:PORT (process i of --processes: PORT+i)",
    )
    run.set_defaults(func=cmd_run)
    add_control_commands(ssub, common)


def flow_module(name: str) -> str:
    """The module of flow ``name``, which must define ``get_flow(**kwargs)``.

    Raises:
        CommandError: when the flow is not built (yet).

    """
    module = f"streaming.flows.{name}"
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        msg = f"the {name} flow is not built yet ({module} does not exist)"
        raise CommandError(msg)
    return module


def ensure_recovery_dir(path: Path, parts: int = RECOVERY_PARTS) -> bool:
    """Create and initialise a recovery directory (mode 0700) unless it exists.

    Returns:
        True when it was created now (a first run).

    """
    if path.is_dir() and any(path.iterdir()):
        check_recovery_dir(path)
        return False
    from bytewax.recovery import init_db_dir

    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    init_db_dir(path, parts)
    return True


def check_recovery_dir(path: Path) -> None:
    """Refuse a recovery directory someone else could have written; tighten a readable one.

    bytewax keeps the flows' state there as pickles, which it loads (runs) on resume:
    a directory (or a file in it) owned by another user, or writable by anyone, is
    refused; group or other bits short of that (a umask of 002) are taken away.

    Raises:
        CommandError: what is wrong and what to do.

    """
    for item in (path, *path.iterdir()):
        st = item.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o002:
            msg = (
                f"the recovery directory {path} is not safe to load: {item} is owned by uid "
                f"{st.st_uid} with mode {st.st_mode & 0o777:o} (bytewax loads pickled state "
                f"from it). If you trust it: chown -R {os.getuid()} {path} && chmod -R go-rwx "
                f"{path}; otherwise move it away (the flow starts afresh from the raw log)"
            )
            raise CommandError(msg)
        if st.st_mode & 0o077:
            os.chmod(item, st.st_mode & 0o700)


def bytewax_argv(args: argparse.Namespace, settings: Settings) -> list[str]:
    """``python -m bytewax.run ...`` for the flow of ``args`` (without -i/-a)."""
    for name in ("workers", "processes", "snapshot_interval"):
        if getattr(args, name) < 1:
            msg = f"--{name.replace('_', '-')} must be at least 1"
            raise CommandError(msg)
    module = flow_module(args.name)
    kwargs: dict[str, object] = {}
    if args.exit_when_idle is not None:
        kwargs["exit_when_idle"] = float(args.exit_when_idle)
    if args.batch_size is not None:
        kwargs["batch_size"] = int(args.batch_size)
    call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    argv = [sys.executable, "-m", "bytewax.run", f"{module}:get_flow({call})"]
    argv += ["-w", str(args.workers), "-s", str(args.snapshot_interval)]
    if not args.no_recovery:
        recovery = settings.recovery_dir / args.name
        ensure_recovery_dir(recovery)
        argv += ["-r", str(recovery), "-b", "0"]
    return argv


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one flow in the foreground."""
    connect_settings(settings, writer=True).close()  # reachable, and never evicting
    argv = bytewax_argv(args, settings)
    env = {
        **os.environ,
        **settings.env(),
        "CRYPTOPIPE_WORKERS": str(args.workers),
        "CRYPTOPIPE_PROCESSES": str(args.processes),
    }
    if getattr(args, "verbose", False):
        env["CRYPTOPIPE_LOG_LEVEL"] = "DEBUG"
    if args.metrics_port is not None:
        env[ENV_METRICS_PORT] = str(args.metrics_port)
    if args.processes == 1:
        env.pop("CRYPTOPIPE_FLOW_PID", None)
        env.pop("CRYPTOPIPE_PROCESS_ID", None)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)  # becomes the flow: same pid
    return _run_processes(argv, env, args.processes)


def _run_processes(argv: list[str], env: dict[str, str], processes: int) -> int:
    from cryptopipe.localredis import free_port
    from cryptopipe.procs import killed_with_parent

    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    env = {**env, "CRYPTOPIPE_FLOW_PID": str(os.getpid())}
    # The processes are one flow, known by this pid: a SIGKILL of it (a supervisor
    # restarting a stalled flow) kills them too, as it would kill a one-process flow.
    children = [
        subprocess.Popen(
            [*argv, "-i", str(i), "-a", addresses],
            env={**env, "CRYPTOPIPE_PROCESS_ID": str(i)},
            preexec_fn=killed_with_parent,
        )
        for i in range(processes)
    ]

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    status = 0
    pending = list(children)
    while pending:
        for child in list(pending):
            try:
                code = child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            pending.remove(child)
            if code != 0:
                status = status or (code if code > 0 else 128 - code)
                forward(signal.SIGTERM, None)  # one process failed: the cluster cannot go on
    return status
