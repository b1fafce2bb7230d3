"""Per-flow heartbeat hashes in Redis (docs/architecture.md sections 6 and 7).

Key ``md:flow:<name>:heartbeat``; fields ``pid``, ``started_at`` and
``heartbeat_at`` (ms since the epoch), ``items_in``, ``items_out``,
``last_source_id``, ``lag`` (entries behind the stream tip), ``throughput``
(items in per second over the last interval), ``restarts`` (as counted by the
supervisor) and, when the process serves Prometheus metrics, ``metrics_port``.

The thread also watches the process's owner (:mod:`streaming.owner`): when the
``cryptopipe up`` that started the stack is gone (killed by SIGKILL, say), it sends
its own process SIGTERM once, which stops a flow or feed the way ``stream stop``
does (a snapshot, then exit), so nothing outlives the stack it belonged to.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import redis

from redisstore.conn import text
from redisstore.keys import control_key, heartbeat_key
from redisstore.retry import OutageLog
from streaming.owner import OWNER_ENV, owner_gone
from streaming.prom import served_port

log = logging.getLogger(__name__)

#: How often a heartbeat is written; docs/architecture.md asks for at least every 2 s.
INTERVAL_S = 1.0
#: How long a process whose owner is gone gets to stop by itself after its SIGTERM.
OWNERLESS_GRACE_S = 20.0


def read_heartbeat(client: redis.Redis, name: str) -> dict[str, str] | None:
    """The heartbeat hash of ``name`` as strings, or ``None`` if it never beat."""
    raw = client.hgetall(heartbeat_key(name))
    if not raw:
        return None
    return {text(k): text(v) for k, v in raw.items()}


class HeartbeatWriter:
    """Writes a flow's heartbeat from a daemon thread every ``interval_s``.

    The flow updates counters with :meth:`update` (cheap: no I/O); the thread
    writes them. A Redis outage is logged once and retried, never raised: the
    heartbeat going stale is how the supervisor learns of it.
    """

    def __init__(self, client: redis.Redis, name: str, interval_s: float = INTERVAL_S) -> None:
        self.client = client
        self.name = name
        self.pid = os.getpid()
        self.interval_s = interval_s
        self.started_at = int(time.time() * 1000)
        self._fields: dict[str, Any] = {"items_in": 0, "items_out": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_in = 0
        self._last_t = time.monotonic()
        self._outage = OutageLog(f"heartbeat of {name}", log)

    def update(self, **fields: Any) -> None:
        """Set fields (``items_in``, ``items_out``, ``last_source_id``, ``lag``, ...)."""
        with self._lock:
            self._fields.update(fields)

    def add(self, items_in: int = 0, items_out: int = 0) -> None:
        """Add to the item counters."""
        with self._lock:
            self._fields["items_in"] += items_in
            self._fields["items_out"] += items_out

    def collect(self) -> dict[str, Any] | None:
        """The counters to write (a subclass adds its own, or writes elsewhere: ``None``)."""
        with self._lock:
            return dict(self._fields)

    def extra(self) -> dict[str, Any]:
        """Fields a subclass adds to every beat."""
        return {}

    def beat(self) -> None:
        """Write the heartbeat now: the counters, pid, times, throughput, restarts."""
        fields = self.collect()
        if fields is None:
            return
        now = time.monotonic()
        rate = (fields["items_in"] - self._last_in) / max(now - self._last_t, 1e-6)
        self._last_in, self._last_t = fields["items_in"], now
        restarts = self.client.hget(control_key(self.name), "restarts_total")
        fields.update(
            pid=self.pid,
            started_at=self.started_at,
            heartbeat_at=int(time.time() * 1000),
            throughput=f"{rate:.1f}",
            restarts=int(text(restarts)) if restarts else 0,
            **self.extra(),
        )
        if (port := served_port()) is not None:
            fields["metrics_port"] = port
        self.client.hset(heartbeat_key(self.name), mapping={k: str(v) for k, v in fields.items()})

    def tick(self) -> None:
        """Work done after every beat, whether Redis answered or not (none here)."""

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if owner_gone():
                log.error(
                    "%s: the cryptopipe up that started it (%s %s) is gone: stopping",
                    self.name,
                    OWNER_ENV,
                    os.environ.get(OWNER_ENV),
                )
                os.kill(os.getpid(), signal.SIGTERM)  # a graceful stop, as stream stop does
                if not self._stop.wait(OWNERLESS_GRACE_S):
                    # Still here: stuck on what died with the owner (its local Redis).
                    # As stream stop would, end it; the last snapshot stands.
                    log.error(
                        "%s: not stopped %.0f s after SIGTERM: exiting",
                        self.name,
                        OWNERLESS_GRACE_S,
                    )
                    logging.shutdown()
                    os._exit(1)
                return
            try:
                self.beat()
            except redis.RedisError as exc:
                self._outage.failed(exc)
            else:
                self._outage.ok()
            self.tick()

    def start(self) -> HeartbeatWriter:
        """Write a first beat and start the thread."""
        try:
            self.beat()
        except redis.RedisError as exc:
            self._outage.failed(exc)
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread after a last beat."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.beat()
        except redis.RedisError:
            pass
