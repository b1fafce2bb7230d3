"""What every flow process shares: its heartbeat, progress counters and how it stops.

One :class:`FlowHeartbeat` per flow and process. Source partitions report reads to
it, sinks report writes; a thread writes the flow's heartbeat hash
(:mod:`streaming.heartbeat`, docs/architecture.md section 7) every second.

In bytewax's multi-process mode every process but the first writes its own hash
(``md:flow:<name>:heartbeat:p<i>``, expiring); the first adds those up into the
flow's hash, whose ``pid`` is the process the supervisor started
(``CRYPTOPIPE_FLOW_PID``), so liveness checks see one flow.

Stopping: :func:`install_stop_handlers` makes SIGTERM (what the supervisor and
``cryptopipe stream stop`` send) and a first SIGINT end the input of every
:class:`StoppableSource` of the process; bytewax then closes the epoch, takes a final
snapshot and exits 0 within a poll interval. Flows see :func:`stop_requested` at end
of input and leave their open windows and buckets to the snapshot instead of
flushing them. A second SIGINT interrupts at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import bytewax.operators as op
import redis
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import StatefulSourcePartition

from marketdata.settings import env_int
from redisstore.conn import connect, text
from redisstore.keys import heartbeat_key
from streaming.heartbeat import HeartbeatWriter
from streaming.memory import fix_mmap_threshold, tune_gc
from streaming.prom import add_source, heartbeat_families, serve_from_env
from streaming.rejectlog import RejectionLog
from streaming.signals import stop_on_signals
from streaming.sources import PartitionObserver, RawBatch, RedisStreamSource, StreamPosition

log = logging.getLogger(__name__)

ENV_FLOW_PID = "CRYPTOPIPE_FLOW_PID"
ENV_PROCESS_ID = "CRYPTOPIPE_PROCESS_ID"
ENV_PROCESSES = "CRYPTOPIPE_PROCESSES"
ENV_WORKERS = "CRYPTOPIPE_WORKERS"
_PROC_TTL_S = 30


def process_key(name: str, process_id: int) -> str:
    """Heartbeat hash of one process of a multi-process flow."""
    return f"{heartbeat_key(name)}:p{process_id}"


class FlowHeartbeat(HeartbeatWriter, PartitionObserver):
    """A flow process's heartbeat, fed by its source partitions and sinks.

    Fields beyond :mod:`streaming.heartbeat`'s: ``lag_ms`` (age of the oldest unread
    entry's position behind the tip, ms), ``lost_entries`` (entries trimmed before
    they were read), ``last_error``, ``streams`` (JSON: per partition, last id and
    lag), ``workers`` and ``processes``.
    """

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        *,
        pid: int | None = None,
        process_id: int = 0,
        processes: int = 1,
        workers: int = 1,
        interval_s: float = 1.0,
    ) -> None:
        super().__init__(client, name, interval_s=interval_s)
        self.pid = pid or os.getpid()
        self.process_id = process_id
        self.processes = processes
        self.workers = workers
        self._streams: dict[str, dict[str, Any]] = {}
        self._last_stream = ""
        self._last_error = ""
        self._started = False
        self._start_lock = threading.Lock()
        self._rejection_logs: list[RejectionLog] = []

    @classmethod
    def from_env(cls, client: redis.Redis, name: str) -> FlowHeartbeat:
        """Pid, process index and counts as ``cryptopipe stream run`` sets them."""
        return cls(
            client,
            name,
            pid=env_int(ENV_FLOW_PID, os.getpid()),
            process_id=this_process(),
            processes=env_int(ENV_PROCESSES, 1),
            workers=env_int(ENV_WORKERS, 1),
        )

    def ensure_started(self) -> None:
        """Start the writer thread once (from the first partition that reports)."""
        if self._started:
            return
        with self._start_lock:
            if not self._started:
                self._started = True
                self.start()

    # -- reports --------------------------------------------------------------------

    def on_read(self, stream: str, n: int, pos: StreamPosition, lag: int, lag_ms: int) -> None:
        """A partition read ``n`` entries (or none)."""
        self.ensure_started()
        with self._lock:
            self._fields["items_in"] += n
            self._streams[stream] = {
                "last_id": pos.last_id.decode(),
                "lag": lag,
                "lag_ms": lag_ms,
                "lost": pos.lost,
                # when a read last came back: the supervisor's proof of progress
                "read_at": int(time.time() * 1000),
            }
            if n:
                self._last_stream = stream

    def on_loss(self, stream: str, lost: int, detail: str) -> None:
        """Entries were trimmed before a partition read them."""
        with self._lock:
            self._last_error = detail

    def on_written(self, n: int) -> None:
        """A sink wrote ``n`` records."""
        self.add(items_out=n)

    def watch(self, rejections: RejectionLog) -> RejectionLog:
        """Tick ``rejections`` every beat, so that its summary is due also while idle."""
        with self._lock:
            self._rejection_logs.append(rejections)
        return rejections

    def tick(self) -> None:
        """Every beat: the summaries of the rejection logs that are due (never raises)."""
        with self._lock:
            logs = list(self._rejection_logs)
        for rejections in logs:
            try:
                rejections.tick()
            except Exception:  # a log line must not stop the heartbeat
                log.exception("%s: the rejection summary failed", self.name)

    # -- writing --------------------------------------------------------------------

    def _own_fields(self) -> dict[str, Any]:
        with self._lock:
            streams = {k: dict(v) for k, v in self._streams.items()}
            fields = dict(self._fields)
            last_error = self._last_error
            last_stream = self._last_stream
        last = streams.get(last_stream, {}).get("last_id", "")
        return {
            "items_in": fields["items_in"],
            "items_out": fields["items_out"],
            "last_source_id": last,
            "lag": sum(s["lag"] for s in streams.values()),
            "lag_ms": max((s["lag_ms"] for s in streams.values()), default=0),
            "lost_entries": sum(s["lost"] for s in streams.values()),
            "last_error": last_error,
            "streams": json.dumps(streams, sort_keys=True),
        }

    def _others(self) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for i in range(1, self.processes):
            pipe.hgetall(process_key(self.name, i))
        out = []
        for raw in pipe.execute():
            if raw:
                out.append({text(k): text(v) for k, v in raw.items()})
        return out

    def collect(self) -> dict[str, Any] | None:
        """This process's fields; the first process adds up the others' (see module doc).

        Every process but the first writes its own expiring hash here and returns
        ``None``: only the first writes the flow's heartbeat.
        """
        fields = self._own_fields()
        if self.processes > 1 and self.process_id > 0:
            key = process_key(self.name, self.process_id)
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
            pipe.expire(key, _PROC_TTL_S)
            pipe.execute()
            return None
        if self.processes > 1:
            streams = json.loads(fields["streams"])
            for other in self._others():
                for k in ("items_in", "items_out", "lag", "lost_entries"):
                    fields[k] += int(other.get(k, 0))
                fields["lag_ms"] = max(fields["lag_ms"], int(other.get("lag_ms", 0)))
                streams.update(json.loads(other.get("streams", "{}")))
                fields["last_error"] = fields["last_error"] or other.get("last_error", "")
            fields["streams"] = json.dumps(streams, sort_keys=True)
        return fields

    def extra(self) -> dict[str, Any]:
        """The flow's parallelism."""
        return {"workers": self.workers, "processes": self.processes}


_HEARTBEATS: dict[tuple[str, str], FlowHeartbeat] = {}
_LOCK = threading.Lock()


def this_process() -> int:
    """This process's index in its flow (0 in a one-process flow)."""
    return env_int(ENV_PROCESS_ID, 0)


def flow_heartbeat(name: str, redis_url: str) -> FlowHeartbeat:
    """This process's heartbeat of flow ``name`` (created on first use, started lazily)."""
    with _LOCK:
        hb = _HEARTBEATS.get((name, redis_url))
        if hb is None:
            hb = FlowHeartbeat.from_env(connect(redis_url, check=False), name)
            _HEARTBEATS[(name, redis_url)] = hb
            beat: FlowHeartbeat = hb
            add_source(lambda: heartbeat_families(beat.name, beat._own_fields()))
        return hb


def stop_heartbeats() -> None:
    """Stop every heartbeat of this process (tests running several flows in one process)."""
    with _LOCK:
        beats = list(_HEARTBEATS.values())
        _HEARTBEATS.clear()
    for hb in beats:
        if hb._started:
            hb.stop()


# --------------------------------------------------------------------------- stopping

_STOP = threading.Event()


def request_stop() -> None:
    """End this process's flow input: final snapshot, then exit 0 (what SIGTERM does)."""
    _STOP.set()


def stop_requested() -> bool:
    """Whether a stop was requested (by a signal or :func:`request_stop`)."""
    return _STOP.is_set()


ENV_LOG_LEVEL = "CRYPTOPIPE_LOG_LEVEL"


def setup_flow_process(flow: str) -> None:
    """What a flow process needs before its dataflow is built (``get_flow`` calls it).

    Logging to stderr with time, level and logger, as the ``cryptopipe`` command logs
    (``python -m bytewax.run`` configures none, so warnings alone would show, bare),
    at ``CRYPTOPIPE_LOG_LEVEL`` (default INFO; ``stream run -v`` sets DEBUG); the
    stop handlers of :func:`install_stop_handlers`; a fixed ``mmap`` threshold, so
    that large transient buffers do not make the C heap creep, and the garbage
    collector set for large batches (:mod:`streaming.memory`).
    """
    fix_mmap_threshold()
    tune_gc()
    level = os.environ.get(ENV_LOG_LEVEL, "").strip().upper() or "INFO"
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_stop_handlers(flow)
    serve_from_env(env_int(ENV_PROCESS_ID, 0))  # /metrics, with --metrics-port


def install_stop_handlers(flow: str) -> None:
    """SIGTERM and a first SIGINT end the input; a second SIGINT interrupts at once.

    Only in the main thread (bytewax runs ``get_flow`` there); elsewhere a no-op.
    """

    def said(signum: int) -> None:
        log.warning(
            "%s: %s received; stopping after a final snapshot", flow, signal.Signals(signum).name
        )

    stop_on_signals(_STOP, said)


class _StoppablePartition(StatefulSourcePartition[tuple[str, RawBatch], StreamPosition]):
    """A source partition whose input ends when a stop is requested."""

    def __init__(
        self,
        inner: StatefulSourcePartition[tuple[str, RawBatch], StreamPosition],
        should_stop: Callable[[], bool],
    ) -> None:
        self.inner = inner
        self.should_stop = should_stop

    def next_batch(self) -> Iterable[tuple[str, RawBatch]]:
        if self.should_stop():
            raise StopIteration
        return self.inner.next_batch()

    def next_awake(self) -> datetime | None:
        if self.should_stop():
            return datetime.now(UTC)
        return self.inner.next_awake()

    def snapshot(self) -> StreamPosition:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class StoppableSource(RedisStreamSource):
    """A :class:`RedisStreamSource` whose input ends when ``should_stop()`` turns true."""

    def __init__(
        self, *args: Any, should_stop: Callable[[], bool] = stop_requested, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.should_stop = should_stop

    def build_part(  # type: ignore[override]
        self, step_id: str, for_part: str, resume_state: StreamPosition | None
    ) -> _StoppablePartition:
        """The partition of :class:`RedisStreamSource`, ending on a stop."""
        inner = super().build_part(step_id, for_part, resume_state)
        return _StoppablePartition(inner, self.should_stop)


# --------------------------------------------------------------------------- set-up


class InputConfig(Protocol):
    """What :func:`flow_input` reads of a flow's configuration."""

    @property
    def name(self) -> str:
        """The flow's name (its heartbeat, its dataflow)."""
        ...

    @property
    def redis_url(self) -> str:
        """The Redis of the streams it reads."""
        ...

    @property
    def batch_size(self) -> int:
        """Entries per read."""
        ...

    @property
    def poll_s(self) -> float:
        """Pause between reads of a caught-up stream."""
        ...

    @property
    def exit_when_idle(self) -> float | None:
        """End the input after this many idle seconds (``None``: run forever)."""
        ...


def flow_input(
    cfg: InputConfig,
    streams: Iterable[str],
    should_stop: Callable[[], bool] = stop_requested,
) -> tuple[Dataflow, Stream[tuple[str, RawBatch]], FlowHeartbeat]:
    """What every flow starts with: its dataflow, its input and its heartbeat.

    The input reads ``streams`` (one partition each) with a :class:`StoppableSource`
    (``cfg``'s batch size, poll interval and idle exit) that reports to the process's
    heartbeat and ends when ``should_stop()`` turns true. The flow's sink reports its
    writes with ``heartbeat.on_written``.
    """
    heartbeat = flow_heartbeat(cfg.name, cfg.redis_url)
    flow = Dataflow(cfg.name)
    source = StoppableSource(
        cfg.redis_url,
        list(streams),
        batch_size=cfg.batch_size,
        poll_s=cfg.poll_s,
        exit_when_idle=cfg.exit_when_idle,
        observer=heartbeat,
        should_stop=should_stop,
        process=(heartbeat.process_id, heartbeat.processes, heartbeat.workers),
    )
    if heartbeat.processes > 1:
        log.info(
            "%s flow, process %d of %d: reads and folds %s",
            cfg.name,
            heartbeat.process_id,
            heartbeat.processes,
            ", ".join(source.list_parts()) or "no stream (the others' workers fold them all)",
        )
    return flow, op.input("raw", flow, source), heartbeat
