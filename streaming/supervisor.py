"""Starting, stopping and watching the long-running flows as OS processes.

Flows (``candles``, ``metrics``, ``archive``) run as ``python -m cryptopipe stream
run NAME``, and the feeds as ``python -m cryptopipe feed <feed>`` (any registered
feed, :data:`streaming.feeds.FEEDS`; the simulator unless told otherwise), in their
own sessions, so they outlive
whatever started them (a Dagster run, the command line). One feed runs as the process
``feed``; several feeds side by side (``cryptopipe up --feed binance,coinbase``) run
one process each, ``feed-<feed>`` (:func:`feed_process_names`), each with its own
heartbeat, pid file, restarts and crash-loop limit. The supervisor keeps:

* a pid file per flow under ``<home>/run/`` (with the process start time, so a
  recycled pid is never mistaken for the flow);
* in Redis, per flow, the desired state (``running``/``stopped``: a flow a user
  stopped is not restarted), the restart history and a ``failed`` mark with its
  reason once the crash-loop limit is hit (docs/architecture.md section 7).

:meth:`Supervisor.decide` is the one place that decides what to do about a flow
(start it, restart it, or give up on a crash loop); whoever supervises (Dagster's
health sensor) carries the decision out and shows it.

Liveness comes from the process table and from the heartbeat hash each flow
writes (:mod:`streaming.heartbeat`).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from marketdata.settings import Settings
from redisstore.conn import text
from redisstore.keys import control_key, restarts_key
from redisstore.streamids import parse_id
from streaming import proctable
from streaming.feeds import DEFAULT_FEED, FEEDS, feed_named
from streaming.feeds.base import FEED_PROCESS_ENV
from streaming.heartbeat import read_heartbeat
from streaming.owner import OWNER_ENV

FLOWS = ("candles", "metrics", "archive")
#: The feed process when one feed runs (today's single feed).
FEED = "feed"
ALL = (*FLOWS, FEED)
#: The feeds a supervisor runs (the replay feed needs files: run it by hand).
SUPERVISED_FEEDS = tuple(f for f in FEEDS if f != "replay")
#: Each feed's process when several feeds run side by side: ``feed-<feed>``.
FEED_PROCESSES = tuple(f"{FEED}-{f}" for f in SUPERVISED_FEEDS)
#: Every name the supervisor can run: the flows, ``feed`` and the ``feed-<feed>`` ones.
PROCESSES = (*ALL, *FEED_PROCESSES)

#: A heartbeat older than this means the flow is stalled (docs/architecture.md section 7).
STALE_AFTER_S = 15.0
#: More than this many restarts inside the window stops the restarts.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
#: A flow just started gets this long to write its first heartbeat.
START_GRACE_S = 30.0
#: A flow wanted this long ago and still not started is ``overdue`` (unhealthy).
PENDING_GRACE_S = 30.0
#: States in which a flow is as it should be (a flow stopped on purpose is healthy).
HEALTHY_STATES = ("running", "starting", "pending", "stopped")


@dataclass(frozen=True)
class FlowStatus:
    """What the supervisor knows of one flow.

    Attributes:
        name: the flow.
        state: ``running``, ``starting`` (no heartbeat yet), ``stalled`` (process up,
            heartbeat stale, or input pending and no read back for 15 s), ``dead``
            (should run, process gone), ``pending`` (wanted, not started yet),
            ``overdue`` (wanted more than ``PENDING_GRACE_S`` ago and still not
            started: unhealthy), ``stopped`` (not wanted), or ``failed`` (crash loop:
            restarts stopped until cleared).
        pid: the process id when running.
        desired: ``running`` or ``stopped``.
        heartbeat_age_s: seconds since the last heartbeat, if any.
        restarts_in_window: restarts in the last ``RESTART_WINDOW_S``.
        reason: why the state is what it is.
        heartbeat: the heartbeat hash as written by the flow.
    """

    name: str
    state: str
    pid: int | None
    desired: str
    heartbeat_age_s: float | None
    restarts_in_window: int
    reason: str
    heartbeat: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)

    @property
    def needs_restart(self) -> bool:
        """Dead or stalled while it should run, and not failed."""
        return self.desired == "running" and self.state in ("dead", "stalled")

    @property
    def needs_start(self) -> bool:
        """Wanted and never started (a first start is not a restart)."""
        return self.desired == "running" and self.state in ("pending", "overdue")

    @property
    def healthy(self) -> bool:
        """Running, on its way, or stopped on purpose (:data:`HEALTHY_STATES`)."""
        return self.state in HEALTHY_STATES


@dataclass(frozen=True)
class Decision:
    """What to do about one flow now (:meth:`Supervisor.decide`).

    Attributes:
        action: ``start`` (wanted, never started), ``restart`` (dead or stalled),
            ``failed`` (just marked failed: too many restarts in the window) or
            ``none``.
        run_key: names this incident (or start request) once: the flow, the action
            and a generation counter that grows with each restart (or request), so
            a scheduler that dedupes by key starts one run per incident.
        reason: why, in words (the state seen, or the crash-loop message).
        status: the flow's status after the decision.
    """

    action: str
    run_key: str
    reason: str
    status: FlowStatus


#: Each supervised process's port above ``CRYPTOPIPE_METRICS_PORT_BASE``; ten apart, so a
#: flow of several processes (process *i* serves on its port + *i*) has room. The feed
#: processes take the ten from ``FEED``'s: the *i*-th of them +30 + *i*.
METRICS_PORT_OFFSETS = {"candles": 0, "metrics": 10, "archive": 20, FEED: 30}


def feed_process_names(feeds: Sequence[str]) -> list[str]:
    """The process of each feed, in order: ``feed`` for one, ``feed-<feed>`` for several.

    One feed keeps the name it always had (its heartbeat, pid file, Dagster asset and
    status row stay ``feed``); several need a name each (docs/operations.md).

    Raises:
        ValueError: a feed that is not registered, the replay feed, or one given twice.

    """
    for name in feeds:
        feed_named(name)  # an unknown feed fails here, naming the known ones
        if name not in SUPERVISED_FEEDS:
            msg = f"feed {name!r} cannot be supervised: use {', '.join(SUPERVISED_FEEDS)}"
            raise ValueError(msg)
    twice = sorted({f for f in feeds if list(feeds).count(f) > 1})
    if twice:
        msg = f"feed {', '.join(twice)} given twice: each feed runs at most once"
        raise ValueError(msg)
    if not feeds:
        msg = "no feed given"
        raise ValueError(msg)
    return [FEED] if len(feeds) == 1 else [f"{FEED}-{f}" for f in feeds]


def is_feed_process(name: str) -> bool:
    """Whether ``name`` is a feed's process (``feed`` or ``feed-<feed>``), not a flow."""
    return name == FEED or name in FEED_PROCESSES


def metrics_port(settings: Settings, name: str, feeds: Sequence[str] = (FEED,)) -> int | None:
    """The Prometheus port of supervised process ``name`` (``None``: metrics are off).

    ``feeds`` are the feed processes that run, in order: the *i*-th serves on the feed
    port + *i* (one feed: the feed port, as ever; a feed process not among them: after
    them).
    """
    if settings.metrics_port_base is None:
        return None
    if is_feed_process(name):
        index = list(feeds).index(name) if name in feeds else len(feeds)
        return settings.metrics_port_base + METRICS_PORT_OFFSETS[FEED] + index
    return settings.metrics_port_base + METRICS_PORT_OFFSETS[name]


def metrics_args(settings: Settings, name: str, feeds: Sequence[str] = (FEED,)) -> list[str]:
    """``--metrics-port P`` for process ``name``'s command line (none: metrics are off)."""
    port = metrics_port(settings, name, feeds)
    return [] if port is None else ["--metrics-port", str(port)]


class Supervisor:
    """Starts, stops and inspects flows of one ``--home`` and Redis."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        *,
        stale_after_s: float = STALE_AFTER_S,
        max_restarts: int = MAX_RESTARTS,
        window_s: float = RESTART_WINDOW_S,
        flow_args: dict[str, list[str]] | None = None,
        feed: str = DEFAULT_FEED,
    ) -> None:
        feed_named(feed)  # an unknown feed fails here, naming the known ones
        self.settings = settings
        self.feed = feed
        self.client = client
        self.stale_after_s = stale_after_s
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.flow_args = flow_args or {}
        self.run_dir = settings.run_dir
        self.log_dir = settings.run_dir / "logs"

    # ---- processes -----------------------------------------------------------------

    def argv(self, name: str) -> list[str]:
        """The command that runs flow (or feed process) ``name`` in the foreground."""
        if name not in PROCESSES:
            msg = f"unknown flow {name!r}: use one of {', '.join(PROCESSES)}"
            raise ValueError(msg)
        if is_feed_process(name):
            prom = metrics_args(self.settings, name, self.feed_processes())
            return [sys.executable, "-m", "cryptopipe", "feed", *self.feed_args(name), *prom]
        prom = metrics_args(self.settings, name)
        extra = [*self.settings.scale(name).args, *self.flow_args.get(name, [])]
        return [sys.executable, "-m", "cryptopipe", "stream", "run", name, *extra, *prom]

    def set_feed(self, args: list[str], name: str = FEED) -> None:
        """What feed process ``name`` runs: ``cryptopipe feed <args>``.

        Kept in the process's control hash in Redis, so whoever starts it (a Dagster
        run of the health sensor) starts the feed ``cryptopipe up --feed`` asked for,
        with its options.

        Raises:
            ValueError: ``args[0]`` is not a feed, or ``name`` is no feed process.

        """
        feed_named(args[0])
        if not is_feed_process(name):
            msg = f"{name!r} is not a feed process: use {', '.join((FEED, *FEED_PROCESSES))}"
            raise ValueError(msg)
        self.client.hset(control_key(name), "spec", json.dumps(args))

    def set_feeds(self, feeds: Sequence[list[str]]) -> list[str]:
        """The feeds that run, each ``cryptopipe feed <args>``; returns their processes.

        Names each feed's process (:func:`feed_process_names`), stores what each runs
        (:meth:`set_feed`) and the list of them (:meth:`feed_processes`) in Redis, where
        Dagster's processes (the health sensor, its runs) read them. An empty list
        forgets the list: the one ``feed`` process, as before several feeds existed.

        Raises:
            ValueError: an unknown, unsupervisable or repeated feed.

        """
        names = feed_process_names([args[0] for args in feeds]) if feeds else []
        for name, args in zip(names, feeds, strict=True):
            self.set_feed(args, name)
        self.list_feeds(names)
        return names

    def list_feeds(self, names: Sequence[str]) -> None:
        """Record which feed processes run (``[]`` or ``[feed]``: the one ``feed``).

        Without their commands: ``cryptopipe up --no-dagster`` runs its feeds itself,
        and ``cryptopipe status`` still shows each.
        """
        if list(names) in ([], [FEED]):
            self.client.hdel(control_key(FEED), "processes")
        else:
            self.client.hset(control_key(FEED), "processes", json.dumps(list(names)))

    def feed_processes(self) -> list[str]:
        """The feed processes that run (:meth:`set_feeds`); ``[feed]`` unless told otherwise.

        Kept in the ``feed`` control hash (field ``processes``): the health sensor
        watches these and the flows, ``cryptopipe status`` shows them.
        """
        raw = self.client.hget(control_key(FEED), "processes")
        if not raw:
            return [FEED]
        return [str(n) for n in json.loads(text(raw)) if is_feed_process(str(n))] or [FEED]

    def feed_args(self, name: str = FEED) -> list[str]:
        """The arguments of ``cryptopipe feed`` for feed process ``name``.

        What :meth:`set_feed` stored, else this supervisor's feed (``feed``) or the
        process's own (``feed-<feed>``), and its ``flow_args``.
        """
        raw = self.client.hget(control_key(name), "spec")
        if raw:
            return [str(a) for a in json.loads(text(raw))]
        feed = self.feed if name == FEED else name.removeprefix(f"{FEED}-")
        return [feed, *self.flow_args.get(name, [])]

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """Pid of the running flow, or ``None`` (a stale pid file is removed)."""
        path = self._pid_file(name)
        try:
            pid_text, ticks = path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if proctable.start_ticks(pid) != ticks:
            path.unlink(missing_ok=True)
            return None
        state = proctable.state(pid)
        if state is None:
            return None
        if state == "Z":  # a zombie child of ours: reap it
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped = pid  # not our child: its parent reaps it
            if reaped == 0:
                # A thread-group leader shows Z while its other threads still exit and
                # cannot be reaped yet: the process is still there (stop() waits on).
                return pid
            path.unlink(missing_ok=True)
            return None
        return pid

    def want(self, name: str) -> None:
        """Ask for the flow to run; whoever supervises (the health sensor) starts it."""
        pipe = self.client.pipeline()
        pipe.hset(control_key(name), "desired", "running")
        pipe.hdel(control_key(name), "started_at_ms")
        pipe.hset(control_key(name), "wanted_at_ms", int(time.time() * 1000))
        pipe.hincrby(control_key(name), "wants", 1)  # a new request: a new run key
        pipe.execute()
        self.clear_failed(name)

    def desired(self, name: str) -> str:
        """``running`` or ``stopped``: what was last asked of the flow."""
        raw = self.client.hget(control_key(name), "desired")
        return text(raw) if raw else "stopped"

    def unwant(self, name: str) -> None:
        """Mark the flow stopped on purpose, before stopping it (nothing restarts it)."""
        self.client.hset(control_key(name), "desired", "stopped")

    def stop_stray(self, name: str, timeout: float = 20.0, *, owner: str | None = None) -> bool:
        """Stop a process of this flow that its heartbeat names but no pid file tracks.

        A start racing with a shutdown (a Dagster run finishing after the daemon was
        stopped) can leave one. The pid is trusted only if its command line runs this
        flow and, with ``owner``, only if it was started under that owner token
        (:data:`streaming.owner.OWNER_ENV` in its environment): clean-up stops only
        what its own ``cryptopipe up`` started.
        """
        hb = read_heartbeat(self.client, name) or {}
        try:
            pid = int(hb.get("pid", "0"))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (ValueError, OSError):
            return False
        ours = (is_feed_process(name) and " feed " in f" {cmdline} ") or (
            f"flows.{name}:" in cmdline
        )
        if pid <= 0 or pid == os.getpid() or not ours:
            return False
        if owner is not None and f"{OWNER_ENV}={owner}".encode() not in environ:
            return False
        return proctable.terminate(
            lambda sig: os.kill(pid, sig), lambda: Path(f"/proc/{pid}").exists(), timeout
        )

    def start(self, name: str) -> int:
        """Start the flow in the background unless it runs already; returns its pid.

        One start at a time per flow and home: the check and the spawn hold an
        exclusive lock on ``<run_dir>/<name>.lock``, so two starters (a Dagster run and
        ``stream start``) never launch the flow twice.
        """
        self.client.hset(control_key(name), "desired", "running")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / f"{name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._start_locked(name)

    def _start_locked(self, name: str) -> int:
        running = self.pid(name)
        if running is not None:
            return running
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.env()}
        if is_feed_process(name):
            env[FEED_PROCESS_ENV] = name  # it beats under the name it is supervised as
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                self.argv(name),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # outlives the caller (Dagster, a shell)
                close_fds=True,
            )
        ticks = proctable.start_ticks(proc.pid) or "0"
        tmp = self._pid_file(name).with_suffix(".tmp")
        tmp.write_text(f"{proc.pid} {ticks}\n")
        tmp.replace(self._pid_file(name))
        self.client.hset(
            control_key(name), mapping={"started_at_ms": int(time.time() * 1000), "pid": proc.pid}
        )
        return proc.pid

    def stop(self, name: str, timeout: float = 20.0, *, desired: str = "stopped") -> bool:
        """Stop the flow (SIGTERM, then SIGKILL after ``timeout``); True if it was running."""
        self.client.hset(control_key(name), "desired", desired)
        pid = self.pid(name)
        if pid is None:
            return False
        was_running = proctable.terminate_group(
            pid, timeout, also_alive=lambda: self.pid(name) is not None
        )
        self._pid_file(name).unlink(missing_ok=True)
        return was_running

    def restart(self, name: str, *, reason: str = "manual") -> int:
        """Stop (if running) and start again, recording the restart."""
        self.stop(name, desired="running")
        self.record_restart(name, reason)
        return self.start(name)

    # ---- crash-loop accounting -------------------------------------------------------

    def record_restart(self, name: str, reason: str) -> int:
        """Note a restart now; returns the restarts inside the window."""
        now = int(time.time() * 1000)
        self.client.hincrby(control_key(name), "restarts_total", 1)
        pipe = self.client.pipeline()  # one key: one Redis Cluster slot
        pipe.zadd(restarts_key(name), {f"{now}:{os.urandom(4).hex()}:{reason}": now})
        pipe.zremrangebyscore(restarts_key(name), 0, now - int(self.window_s * 1000))
        pipe.zcard(restarts_key(name))
        return int(pipe.execute()[-1])

    def restarts_in_window(self, name: str) -> int:
        """Restarts of ``name`` in the last ``window_s`` seconds."""
        now = int(time.time() * 1000)
        return int(self.client.zcount(restarts_key(name), now - int(self.window_s * 1000), now))

    def mark_failed(self, name: str, reason: str) -> None:
        """Stop restarting ``name``; shown as failed with ``reason`` until cleared."""
        self.client.hset(control_key(name), mapping={"failed": "1", "failed_reason": reason})

    def clear_failed(self, name: str) -> None:
        """Forget a crash loop (a manual start or restart does this)."""
        self.client.hdel(control_key(name), "failed", "failed_reason")
        self.client.delete(restarts_key(name))

    def generation(self, name: str, counter: str = "restarts_total") -> str:
        """A counter of the flow's control hash: ``restarts_total`` or ``wants``.

        With the retry count after a dot once a request was retried
        (:meth:`retry_request`), so the retried request has a run key of its own.
        """
        raw, attempts = self.client.hmget(control_key(name), [counter, "attempts"])
        base = text(raw) if raw else "0"
        return f"{base}.{text(attempts)}" if attempts else base

    def retry_request(self, name: str) -> None:
        """The run carrying out the last decision failed or was cancelled: ask again.

        Bumps the flow's ``attempts`` counter, which is part of the next decision's run
        key, so a scheduler that dedupes by key launches a new run.
        """
        self.client.hincrby(control_key(name), "attempts", 1)

    def decide(self, name: str) -> Decision:
        """What to do about ``name`` now; marks it failed when the crash loop is hit.

        A flow that should run but is dead or stalled is restarted unless it was
        restarted ``max_restarts`` times inside ``window_s``: then it is marked failed
        (restarts stop until a person starts it again, which clears the mark).
        """
        st = self.status(name)
        if st.needs_start:
            return Decision("start", f"start:{name}:{self.generation(name, 'wants')}", "wanted", st)
        if not st.needs_restart:
            return Decision("none", "", st.reason, st)
        done = self.restarts_in_window(name)
        if done >= self.max_restarts:
            reason = (
                f"{done} restarts in the last {self.window_s / 60:.0f} min; "
                f"last seen {st.state}: {st.reason}. Fix the cause (see the flow's log), "
                "then run start_flows to clear it."
            )
            self.mark_failed(name, reason)
            return Decision("failed", "", reason, self.status(name))
        return Decision("restart", f"restart:{name}:{self.generation(name)}", st.state, st)

    # ---- status ----------------------------------------------------------------------

    def _outside(self, hb: dict[str, str], age: float | None) -> bool:
        """A fresh heartbeat from a live process no pid file of ours tracks (started by hand)."""
        try:
            pid = int(hb.get("pid", "0"))
        except ValueError:
            return False
        fresh = age is not None and age <= self.stale_after_s
        return fresh and pid > 0 and proctable.state(pid) not in (None, "Z")

    def _no_progress(self, hb: dict[str, str]) -> str | None:
        """Why a flow whose heartbeat is fresh makes no progress, or ``None``.

        Liveness from progress, not from the heartbeat thread: a worker stuck (on a
        half-open socket, say) while its heartbeat thread beats on. Stalled when a
        stream it reads has entries after the flow's position there and no read of
        that stream has come back for ``stale_after_s`` (docs/architecture.md 7).
        """
        try:
            streams = json.loads(hb.get("streams") or "{}")
        except ValueError:
            return None
        now_ms = time.time() * 1000
        for stream, st in sorted(streams.items()):
            read_at = st.get("read_at")
            if not isinstance(read_at, int) or now_ms - read_at <= self.stale_after_s * 1000:
                continue
            try:
                info = self.client.xinfo_stream(stream)
            except redis.ResponseError:  # the stream is gone: nothing pending
                continue
            tip = text(info.get("last-generated-id") or b"0-0")
            if parse_id(tip) > parse_id(st.get("last_id") or "0-0"):
                return (
                    f"no progress: {stream} has entries after {st.get('last_id')} and no "
                    f"read came back for {(now_ms - read_at) / 1000:.0f}s"
                )
        return None

    def status(self, name: str) -> FlowStatus:
        """Current state of one flow."""
        control = {text(k): text(v) for k, v in self.client.hgetall(control_key(name)).items()}
        desired = control.get("desired", "stopped")
        pid = self.pid(name)
        hb = read_heartbeat(self.client, name)
        age = None
        if hb and hb.get("heartbeat_at"):
            age = max(0.0, time.time() - int(hb["heartbeat_at"]) / 1000)
        restarts = self.restarts_in_window(name)
        if control.get("failed") == "1":
            state, reason = "failed", control.get("failed_reason", "crash loop")
        elif pid is None and desired == "running" and "started_at_ms" not in control:
            waited = time.time() - int(control.get("wanted_at_ms", "0") or 0) / 1000
            if "wanted_at_ms" in control and waited > PENDING_GRACE_S:
                state = "overdue"
                reason = f"wanted {waited:.0f}s ago, still not started (see the start run)"
            else:
                state, reason = "pending", "wanted, not started yet"
        elif pid is None and hb and self._outside(hb, age):
            pid = int(hb["pid"])
            state, reason = "running", "started outside the supervisor"
        elif pid is None:
            state = "dead" if desired == "running" else "stopped"
            reason = "process is gone" if desired == "running" else "not started"
        elif hb is None or str(hb.get("pid")) != str(pid):
            started = int(control.get("started_at_ms", "0")) / 1000
            if time.time() - started < max(START_GRACE_S, self.stale_after_s):
                state, reason = "starting", "no heartbeat yet"
            else:
                state, reason = "stalled", "no heartbeat from this process"
        elif age is not None and age > self.stale_after_s:
            state, reason = "stalled", f"heartbeat {age:.0f}s old"
        elif stuck := self._no_progress(hb):
            state, reason = "stalled", stuck
        else:
            state, reason = "running", "ok"
        return FlowStatus(
            name=name,
            state=state,
            pid=pid,
            desired=desired,
            heartbeat_age_s=age,
            restarts_in_window=restarts,
            reason=reason,
            heartbeat=hb or {},
        )
