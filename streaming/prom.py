"""Prometheus metrics of a flow or feed process, on loopback (docs/operations.md).

``cryptopipe stream run NAME --metrics-port P`` and ``cryptopipe feed ... --metrics-port
P`` serve ``/metrics`` on ``127.0.0.1:P`` (a flow's process *i* of ``--processes N`` on
``P + i``) with the standard client library. The figures are the process's own
counters, read when scraped (a collector, not a second set of counters kept beside
them), so they agree with the heartbeat and the flow's exactly-once counters:

* every flow: ``cryptopipe_flow_entries_read_total``, ``..._records_written_total``,
  ``..._lag_entries``, ``..._lag_seconds``, ``..._lost_entries_total`` (label ``flow``);
* the candles flow, from its exactly-once counters (label ``stream``):
  ``cryptopipe_trades_accepted_total``, ``cryptopipe_trades_rejected_total`` (label
  ``reason``), ``cryptopipe_trades_duplicate_total``, ``cryptopipe_trades_late_total``,
  ``cryptopipe_candles_closed_total``; and ``cryptopipe_candle_close_delay_seconds``, a
  histogram of window end + lateness -> written;
* every sink: ``cryptopipe_sink_retries_total``;
* every flow's stateful step: ``cryptopipe_snapshot_seconds`` (a histogram of the time
  its state takes to serialise for a bytewax snapshot) and ``cryptopipe_snapshot_bytes``
  (label ``flow``);
* a feed: ``cryptopipe_feed_messages_written_total``, ``cryptopipe_feed_reconnects_total``,
  ``cryptopipe_feed_gaps_filled_total`` (label ``feed``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

ENV_METRICS_PORT = "CRYPTOPIPE_METRICS_PORT"

#: This process's registry (not the library's global one: no process/platform noise
#: registered twice by tests running several flows in one process).
REGISTRY = CollectorRegistry()

SINK_RETRIES = Counter(
    "cryptopipe_sink_retries", "Writes a sink retried (Redis away)", ["sink"], registry=REGISTRY
)
CLOSE_DELAY = Histogram(
    "cryptopipe_candle_close_delay_seconds",
    "From a window's end plus the allowed lateness to its closed candle written",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600, float("inf")),
    registry=REGISTRY,
)
SNAPSHOT_SECONDS = Histogram(
    "cryptopipe_snapshot_seconds",
    "Time a flow's stateful step took to serialise its state for a bytewax snapshot",
    ["flow"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, float("inf")),
    registry=REGISTRY,
)
SNAPSHOT_BYTES = Gauge(
    "cryptopipe_snapshot_bytes",
    "Size of a flow's stateful step's last snapshot",
    ["flow"],
    registry=REGISTRY,
)
FEED_WRITTEN = Counter(
    "cryptopipe_feed_messages_written",
    "Messages a feed wrote to the raw log",
    ["feed"],
    registry=REGISTRY,
)
FEED_RECONNECTS = Counter(
    "cryptopipe_feed_reconnects", "Reconnections of a feed's socket", ["feed"], registry=REGISTRY
)
FEED_GAPS = Counter(
    "cryptopipe_feed_gaps_filled",
    "Trades a feed filled from REST (missed by its socket)",
    ["feed"],
    registry=REGISTRY,
)


class _ThisProcess:
    """What this process is, as its metrics say it.

    Attributes:
        feed: the feed it runs (``cryptopipe feed NAME``), the feed counters' label;
            ``None`` in a flow.
        port: the port it serves ``/metrics`` on, once it does (its heartbeat says it).
    """

    feed: str | None = None
    port: int | None = None


_PROCESS = _ThisProcess()

Source = Callable[[], Iterable[Metric]]


def observe_snapshot(flow: str, started: float, data: bytes) -> bytes:
    """Record a snapshot of ``flow`` begun at ``started`` (``time.perf_counter()``)."""
    SNAPSHOT_SECONDS.labels(flow).observe(time.perf_counter() - started)
    SNAPSHOT_BYTES.labels(flow).set(len(data))
    return data


def count_feed(counter: Counter, n: int = 1) -> None:
    """Add ``n`` to a feed counter of this process's feed (none: not a feed process)."""
    if _PROCESS.feed is not None and n:
        counter.labels(_PROCESS.feed).inc(n)


class _Sources(Collector):
    """The families of every registered source, read at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: list[Source] = []

    def add(self, source: Source) -> None:
        with self._lock:
            self._sources.append(source)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            sources = list(self._sources)
        for source in sources:
            try:
                yield from source()
            except Exception:  # a scrape must not break the flow
                log.exception("metrics: a source failed")


_SOURCES = _Sources()
REGISTRY.register(_SOURCES)


def add_source(source: Source) -> None:
    """Families computed from this process's state when ``/metrics`` is scraped."""
    _SOURCES.add(source)


def served_port() -> int | None:
    """The port of this process's ``/metrics``, or ``None`` when it serves none."""
    return _PROCESS.port


def serve_feed(feed: str, port: int) -> int | None:
    """A feed process: label its counters with ``feed`` and serve ``/metrics`` on ``port``."""
    _PROCESS.feed = feed
    return serve(port)


def serve(port: int) -> int | None:
    """Serve ``/metrics`` on ``127.0.0.1:port``; ``None`` (and one error line) if taken.

    A taken port costs the metrics, never the process: a flow that exited for it
    would be restarted into the same port until its crash-loop cap.
    """
    try:
        start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
    except OSError as exc:
        log.error("metrics: cannot serve on 127.0.0.1:%d (%s): no /metrics here", port, exc)
        return None
    _PROCESS.port = port
    log.info("metrics: http://127.0.0.1:%d/metrics", port)
    return port


def serve_from_env(process_id: int = 0) -> int | None:
    """Serve ``/metrics`` on loopback at ``CRYPTOPIPE_METRICS_PORT`` + ``process_id``."""
    raw = os.environ.get(ENV_METRICS_PORT, "").strip()
    if not raw:
        return None
    return serve(int(raw) + process_id)


def heartbeat_families(flow: str, fields: dict[str, Any]) -> list[Metric]:
    """A flow's heartbeat counters as metric families (label ``flow``)."""
    out: list[Metric] = []
    for name, key, doc, kind in (
        ("entries_read", "items_in", "Entries the flow read", CounterMetricFamily),
        ("records_written", "items_out", "Records the flow wrote", CounterMetricFamily),
        ("lost_entries", "lost_entries", "Entries trimmed before read", CounterMetricFamily),
        ("lag_entries", "lag", "Entries behind the stream tips", GaugeMetricFamily),
    ):
        fam = kind(f"cryptopipe_flow_{name}", doc, labels=["flow"])
        fam.add_metric([flow], float(fields.get(key, 0) or 0))
        out.append(fam)
    lag = GaugeMetricFamily(
        "cryptopipe_flow_lag_seconds", "Age of the oldest unread entry", labels=["flow"]
    )
    lag.add_metric([flow], float(fields.get("lag_ms", 0) or 0) / 1000)
    out.append(lag)
    return out


def candle_counter_families(partitions: dict[str, dict[str, Any]]) -> list[Metric]:
    """The candles flow's exactly-once counters, per partition (label ``stream``)."""
    simple = {
        "entries": ("cryptopipe_entries_read", "Raw-log entries the candles flow consumed"),
        "trades": ("cryptopipe_trades_accepted", "Trades folded into candles"),
        "duplicates": ("cryptopipe_trades_duplicate", "Trades dropped as duplicates"),
        "late": ("cryptopipe_trades_late", "Trades that arrived after their window closed"),
        "closed": ("cryptopipe_candles_closed", "Candles closed"),
    }
    fams = {k: CounterMetricFamily(n, d, labels=["stream"]) for k, (n, d) in simple.items()}
    rejected = CounterMetricFamily(
        "cryptopipe_trades_rejected",
        "Entries rejected, by reason (in the DLQ)",
        labels=["stream", "reason"],
    )
    for stream, counters in sorted(partitions.items()):
        for key, fam in fams.items():
            fam.add_metric([stream], float(counters.get(key, 0) or 0))
        for key, value in counters.items():
            if str(key).startswith("rejected:"):
                rejected.add_metric([stream, str(key).removeprefix("rejected:")], float(value))
    return [*fams.values(), rejected]
