"""Settings shared by every layer, from the command line or the environment.

Pure configuration: paths under ``--home`` and names of Redis keys. Nothing here
opens a connection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

from marketdata.instruments import (
    INSTRUMENTS_VAR,
    SPREADS_VAR,
    Comparison,
    Instruments,
    SpreadRules,
    parse_comparisons,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_HOME = "./.cryptopipe"
#: Allowed lateness of the candles flow, ms (docs/architecture.md section 4).
DEFAULT_LATENESS_MS = 5_000
#: How long a silent venue's windows stay open, ms (docs/architecture.md section 4).
DEFAULT_HOLD_MS = 120_000
#: How far ahead of its venue's clock an event time may be, ms (section 4).
DEFAULT_MAX_AHEAD_MS = 60_000
#: How long closed candles stay in Redis, behind the newest one written to their key.
DEFAULT_CANDLE_RETENTION_MS = 7 * 86_400_000
#: A day's stream candles are copied to the lake (the ``stream_candles`` asset) once
#: the day is sealed (next midnight plus lateness) and its batch has run; a day's
#: first candle must outlive that: the day itself, plus this allowance for the seal,
#: the batch and the snapshot (lateness is added to it).
CANDLE_RETENTION_SNAPSHOT_ALLOWANCE_MS = 86_400_000
#: Entries the dead-letter and late streams each keep in Redis once copied to the lake.
DEFAULT_SIDE_STREAM_MAXLEN = 100_000
#: Closed-candle events kept (approximately) in their stream for the metrics flow.
DEFAULT_CLOSED_EVENTS_MAXLEN = 100_000
#: How long the candles flow's appends remember what they appended: a flow down for
#: longer than this and then replaying from its snapshot could append twice.
DEFAULT_APPEND_DEDUPE_MS = 2 * 86_400_000

#: Where ``lake fetch`` downloads Binance's public dumps from.
DEFAULT_BINANCE_DATA_URL = "https://data.binance.vision"

#: Flows whose processes and workers are settings (``CRYPTOPIPE_<FLOW>_PROCESSES`` and
#: ``_WORKERS``). Their partitions are the raw log's shards; the metrics flow reads one
#: stream (the closed-candle events), so more of it would only wait.
SCALABLE_FLOWS = ("candles", "archive")
#: Processes of one flow on one machine: each serves Prometheus on its flow's port + its
#: index, and the flows' ports are ten apart (:data:`streaming.supervisor.METRICS_PORT_OFFSETS`).
MAX_FLOW_PROCESSES = 10
#: Workers (threads) of one flow process; past the cores the GIL makes more useless.
MAX_FLOW_WORKERS = 64


@dataclass(frozen=True)
class FlowScale:
    """How many bytewax processes, and workers in each, run one flow.

    Every worker of every process takes some of the flow's partitions (the raw log's
    shards); more workers than shards leave some idle.
    """

    processes: int = 1
    workers: int = 1

    @property
    def args(self) -> list[str]:
        """``cryptopipe stream run`` options for this scale (none for one worker)."""
        out = []
        if self.processes != 1:
            out += ["--processes", str(self.processes)]
        if self.workers != 1:
            out += ["--workers", str(self.workers)]
        return out


def _env_scales(environ: Mapping[str, str] | None = None) -> tuple[tuple[str, FlowScale], ...]:
    """The scale of every flow of :data:`SCALABLE_FLOWS` that is not one worker."""
    out = []
    for flow in SCALABLE_FLOWS:
        values = {}
        for what, most in (("processes", MAX_FLOW_PROCESSES), ("workers", MAX_FLOW_WORKERS)):
            var = f"CRYPTOPIPE_{flow.upper()}_{what.upper()}"
            value = env_int(var, 1, environ, unit=what)
            if not 1 <= value <= most:
                msg = f"{var}={value}: give 1 to {most}"
                raise ValueError(msg)
            values[what] = value
        scale = FlowScale(**values)
        if scale != FlowScale():
            out.append((flow, scale))
    return tuple(out)


@overload
def env_int(
    name: str, default: int, environ: Mapping[str, str] | None = None, *, unit: str = ""
) -> int: ...


@overload
def env_int(
    name: str, default: None, environ: Mapping[str, str] | None = None, *, unit: str = ""
) -> int | None: ...


def env_int(
    name: str, default: int | None, environ: Mapping[str, str] | None = None, *, unit: str = ""
) -> int | None:
    """Integer variable ``name`` of ``environ`` (the process's environment by default).

    The one parser of integer settings from the environment: surrounding blanks are
    ignored; unset or blank gives ``default`` (``None``: the caller keeps its own).

    Args:
        name: the variable.
        default: its value when unset or blank.
        environ: where to look (tests pass a dict).
        unit: what the number counts (``"milliseconds"``), for the error message.

    Raises:
        ValueError: naming the variable, its value and what it should be.

    """
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        what = f"a whole number of {unit}" if unit else "a whole number"
        msg = f"{name}={raw!r}: expected {what} (or leave it unset for the default)"
        raise ValueError(msg) from None


def min_candle_retention_ms(lateness_ms: int) -> int:
    """The shortest candle retention under which every day reaches the lake first.

    A day's first candle (00:00) must still be in Redis when the day is sealed (next
    midnight plus ``lateness_ms``) and its batch has snapshotted the stream candles:
    one day, the lateness, and :data:`CANDLE_RETENTION_SNAPSHOT_ALLOWANCE_MS`.
    """
    return 86_400_000 + lateness_ms + CANDLE_RETENTION_SNAPSHOT_ALLOWANCE_MS


def _env_symbols() -> frozenset[str] | None:
    raw = os.environ.get("CRYPTOPIPE_SYMBOLS", "").strip()
    if not raw:
        return None
    return frozenset(s.strip().upper() for s in raw.split(",") if s.strip())


@dataclass(frozen=True)
class Settings:
    """Where things live and how the pipeline is tuned.

    Attributes:
        redis_url: ``redis://[user:pass@]host:port/db`` or ``rediss://`` for TLS.
        home: the project's working directory: lake, recovery, Redis data, Dagster.
        raw_shards: number of raw-log shards (1 = the single stream ``md:trades:raw``).
        lateness_ms: allowed lateness of the candles flow.
        hold_ms: how long a silent venue (no trades, no progress marks) holds its
            windows open before the arrival clock closes them.
        max_ahead_ms: an event time more than this ahead of its venue's clock (or of
            the arrival clock, whichever is later) is rejected as ``bad_timestamp``.
        known_symbols: when set, other symbols are rejected as ``unknown_symbol``.
        lake_uri: where the Parquet lake is (default ``<home>/lake``).
        candle_retention_ms: closed candles older than this behind the newest one of
            their key are trimmed from Redis (``CRYPTOPIPE_CANDLE_RETENTION_MS``).
        binance_data_url: the root of Binance's public dumps, in the data.binance.vision
            layout, that ``lake fetch`` downloads from.
        side_stream_maxlen: entries the DLQ and the late stream each keep in Redis;
            older ones are trimmed once the archive flow has copied them to the lake
            (``CRYPTOPIPE_SIDE_STREAM_MAXLEN``).
        closed_events_maxlen: closed-candle events kept for the metrics flow
            (``CRYPTOPIPE_CLOSED_EVENTS_MAXLEN``).
        append_dedupe_ms: how long the candles flow's stream appends remember their
            identities (``CRYPTOPIPE_APPEND_DEDUPE_MS``).
        metrics_port_base: when set, the supervised flows and feed serve Prometheus
            ``/metrics`` on ports from this one (``CRYPTOPIPE_METRICS_PORT_BASE``; the
            supervisor gives each its offset).
        flow_scales: processes and workers of the supervised flows that are not
            one of each (``CRYPTOPIPE_CANDLES_PROCESSES`` and the rest: see
            :data:`SCALABLE_FLOWS`); read with :meth:`scale`.
        instruments: explicit instruments of series or symbols
            (``CRYPTOPIPE_INSTRUMENTS``, ``[exchange:]SYMBOL=BASE/QUOTE,...``); other
            symbols are split by their spelling (:mod:`marketdata.instruments`).
        spreads: the declared spreads (``CRYPTOPIPE_SPREADS``,
            ``exchange:SYMBOL~exchange:SYMBOL,...``), checked against the instruments;
            the same instrument on two exchanges is compared without one. Read both
            with :attr:`spread_rules`.

    """

    redis_url: str = DEFAULT_REDIS_URL
    home: Path = field(default_factory=lambda: Path(DEFAULT_HOME))
    raw_shards: int = 1
    lateness_ms: int = DEFAULT_LATENESS_MS
    hold_ms: int = DEFAULT_HOLD_MS
    max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS
    known_symbols: frozenset[str] | None = None
    lake_uri: str | None = None
    candle_retention_ms: int = DEFAULT_CANDLE_RETENTION_MS
    binance_data_url: str = DEFAULT_BINANCE_DATA_URL
    side_stream_maxlen: int = DEFAULT_SIDE_STREAM_MAXLEN
    closed_events_maxlen: int = DEFAULT_CLOSED_EVENTS_MAXLEN
    append_dedupe_ms: int = DEFAULT_APPEND_DEDUPE_MS
    metrics_port_base: int | None = None
    flow_scales: tuple[tuple[str, FlowScale], ...] = ()
    instruments: Instruments = field(default_factory=Instruments)
    spreads: tuple[Comparison, ...] = ()

    @property
    def spread_rules(self) -> SpreadRules:
        """Which series the metrics flow compares (docs/architecture.md, "Instruments...")."""
        return SpreadRules.build(self.instruments, self.spreads)

    def scale(self, flow: str) -> FlowScale:
        """How many processes and workers run ``flow`` (one of each unless set)."""
        return dict(self.flow_scales).get(flow, FlowScale())

    @classmethod
    def from_env(cls, redis_url: str | None = None, home: str | Path | None = None) -> Settings:
        """Settings from explicit values, else ``REDIS_URL``/``CRYPTOPIPE_*``, else defaults."""
        shards = env_int("CRYPTOPIPE_RAW_SHARDS", 1, unit="shards")
        if shards < 1:
            msg = f"CRYPTOPIPE_RAW_SHARDS={shards}: need at least 1"
            raise ValueError(msg)
        times = {}
        for name, default in (
            ("LATENESS", DEFAULT_LATENESS_MS),
            ("HOLD", DEFAULT_HOLD_MS),
            ("MAX_AHEAD", DEFAULT_MAX_AHEAD_MS),
        ):
            var = f"CRYPTOPIPE_{name}_MS"
            value = env_int(var, default, unit="milliseconds")
            if value < 0:
                msg = f"{var}={value}: must not be negative"
                raise ValueError(msg)
            times[name] = value
        retention = env_int(
            "CRYPTOPIPE_CANDLE_RETENTION_MS", DEFAULT_CANDLE_RETENTION_MS, unit="milliseconds"
        )
        floor = min_candle_retention_ms(times["LATENESS"])
        if retention < floor:
            msg = (
                f"CRYPTOPIPE_CANDLE_RETENTION_MS={retention}: must be at least {floor} "
                "(a day, plus the seal's lateness and a day for the batch to copy the "
                "day's stream candles to the lake before Redis drops them)"
            )
            raise ValueError(msg)
        bounds = {}
        for var, default, least, unit in (
            ("CRYPTOPIPE_SIDE_STREAM_MAXLEN", DEFAULT_SIDE_STREAM_MAXLEN, 0, "entries"),
            ("CRYPTOPIPE_CLOSED_EVENTS_MAXLEN", DEFAULT_CLOSED_EVENTS_MAXLEN, 1_000, "entries"),
            ("CRYPTOPIPE_APPEND_DEDUPE_MS", DEFAULT_APPEND_DEDUPE_MS, 600_000, "milliseconds"),
        ):
            value = env_int(var, default, unit=unit)
            if value < least:
                msg = f"{var}={value}: must be at least {least}"
                raise ValueError(msg)
            bounds[var] = value
        port_base = env_int("CRYPTOPIPE_METRICS_PORT_BASE", 0, unit="port") or None
        if port_base is not None and not 1024 <= port_base <= 65_000:
            msg = f"CRYPTOPIPE_METRICS_PORT_BASE={port_base}: give a port from 1024 to 65000"
            raise ValueError(msg)
        # InstrumentError is a ValueError naming the variable and what to write.
        instruments = Instruments.parse(os.environ.get(INSTRUMENTS_VAR, ""))
        spreads = SpreadRules.build(
            instruments, parse_comparisons(os.environ.get(SPREADS_VAR, ""))
        ).declared
        return cls(
            redis_url=redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
            home=Path(home or os.environ.get("CRYPTOPIPE_HOME") or DEFAULT_HOME).absolute(),
            raw_shards=shards,
            lateness_ms=times["LATENESS"],
            hold_ms=times["HOLD"],
            max_ahead_ms=times["MAX_AHEAD"],
            known_symbols=_env_symbols(),
            lake_uri=os.environ.get("CRYPTOPIPE_LAKE_URI") or None,
            candle_retention_ms=retention,
            binance_data_url=os.environ.get("CRYPTOPIPE_BINANCE_DATA_URL", "").strip()
            or DEFAULT_BINANCE_DATA_URL,
            side_stream_maxlen=bounds["CRYPTOPIPE_SIDE_STREAM_MAXLEN"],
            closed_events_maxlen=bounds["CRYPTOPIPE_CLOSED_EVENTS_MAXLEN"],
            append_dedupe_ms=bounds["CRYPTOPIPE_APPEND_DEDUPE_MS"],
            metrics_port_base=port_base,
            flow_scales=_env_scales(),
            instruments=instruments,
            spreads=spreads,
        )

    def env(self) -> dict[str, str]:
        """Environment variables that reproduce these settings in a child process."""
        out = {
            "REDIS_URL": self.redis_url,
            "CRYPTOPIPE_HOME": str(self.home),
            "CRYPTOPIPE_RAW_SHARDS": str(self.raw_shards),
            "CRYPTOPIPE_LATENESS_MS": str(self.lateness_ms),
            "CRYPTOPIPE_HOLD_MS": str(self.hold_ms),
            "CRYPTOPIPE_MAX_AHEAD_MS": str(self.max_ahead_ms),
        }
        if self.candle_retention_ms != DEFAULT_CANDLE_RETENTION_MS:
            out["CRYPTOPIPE_CANDLE_RETENTION_MS"] = str(self.candle_retention_ms)
        for var, value, default in (
            ("CRYPTOPIPE_SIDE_STREAM_MAXLEN", self.side_stream_maxlen, DEFAULT_SIDE_STREAM_MAXLEN),
            (
                "CRYPTOPIPE_CLOSED_EVENTS_MAXLEN",
                self.closed_events_maxlen,
                DEFAULT_CLOSED_EVENTS_MAXLEN,
            ),
            ("CRYPTOPIPE_APPEND_DEDUPE_MS", self.append_dedupe_ms, DEFAULT_APPEND_DEDUPE_MS),
        ):
            if value != default:
                out[var] = str(value)
        if self.known_symbols is not None:
            out["CRYPTOPIPE_SYMBOLS"] = ",".join(sorted(self.known_symbols))
        if self.lake_uri:
            out["CRYPTOPIPE_LAKE_URI"] = self.lake_uri
        if self.binance_data_url != DEFAULT_BINANCE_DATA_URL:
            out["CRYPTOPIPE_BINANCE_DATA_URL"] = self.binance_data_url
        if self.metrics_port_base is not None:
            out["CRYPTOPIPE_METRICS_PORT_BASE"] = str(self.metrics_port_base)
        for flow, scale in self.flow_scales:
            out[f"CRYPTOPIPE_{flow.upper()}_PROCESSES"] = str(scale.processes)
            out[f"CRYPTOPIPE_{flow.upper()}_WORKERS"] = str(scale.workers)
        if self.instruments.entries:
            out[INSTRUMENTS_VAR] = self.instruments.text()
        if self.spreads:
            out[SPREADS_VAR] = ",".join(c.name for c in self.spreads)
        return out

    @property
    def lake(self) -> str:
        """The lake's root (a local path or any Spark-readable URI)."""
        return self.lake_uri or str(self.home / "lake")

    @property
    def recovery_dir(self) -> Path:
        """Root of the bytewax recovery directories, one per flow."""
        return self.home / "recovery"

    @property
    def redis_dir(self) -> Path:
        """Data directory of the local redis-server that ``cryptopipe`` starts."""
        return self.home / "redis"

    @property
    def dagster_home(self) -> Path:
        """``DAGSTER_HOME`` for ``cryptopipe up``."""
        return self.home / "dagster"

    @property
    def run_dir(self) -> Path:
        """Pid files and logs of processes started in the background."""
        return self.home / "run"
