"""Every Redis key of the pipeline, in one place (docs/storage.md says what each holds).

Every key that holds one symbol's data carries the ``{SYMBOL}`` hash tag, so all of
a symbol's keys live in one Redis Cluster slot (docs/architecture.md section 6).
Add a new key here, document it in docs/storage.md, and import it from here: no
``md:`` literal lives anywhere else.
"""

from __future__ import annotations

from redis.crc import key_slot

from marketdata.interval import Interval
from marketdata.rawmessage import shard_of

# ---- the raw log and the streams beside it -----------------------------------------

#: The raw log: every message as a feed received it (or its shards, below).
RAW_STREAM = "md:trades:raw"
#: Rejected raw-log entries, with their reason and payload.
DLQ_STREAM = "md:trades:dlq"
#: Trades that came after their window closed, with the window keys.
LATE_STREAM = "md:trades:late"


def raw_stream_names(shards: int) -> list[str]:
    """Names of the raw-log streams: one, or ``md:trades:raw:<n>`` per shard.

    The names are the contract's (docs/architecture.md section 6). On a Redis Cluster
    each shard's slot is the CRC16 of its name: ``raw_shard_slots`` tells where they
    fall (docs/storage.md, *Redis Cluster*, has the table for 2 to 8 shards).
    """
    if shards <= 1:
        return [RAW_STREAM]
    return [f"{RAW_STREAM}:{n}" for n in range(shards)]


def raw_shard_slots(shards: int) -> list[int]:
    """The Redis Cluster slot of each raw-log stream."""
    return [key_slot(name.encode()) for name in raw_stream_names(shards)]


def is_raw_shard(name: str) -> bool:
    """Whether ``name`` is a shard of the raw log: ``md:trades:raw:<n>``."""
    return name.startswith(f"{RAW_STREAM}:") and name[len(RAW_STREAM) + 1 :].isdigit()


#: SCAN pattern of every raw-log shard.
RAW_SHARD_PATTERN = f"{RAW_STREAM}:*"


def raw_stream_of(symbol: str | None, shards: int) -> str:
    """The raw-log stream (shard) that carries ``symbol``'s messages."""
    return raw_stream_names(shards)[shard_of(symbol, shards)]


def _beside(stream: str, suffix: str) -> str:
    """A key in ``stream``'s Cluster slot: ``{<stream>}:<suffix>``.

    ``<stream>:<suffix>`` when the stream's name has a hash tag of its own (the key
    then shares it).
    """
    opening = stream.find("{")
    if opening >= 0 and stream.find("}", opening + 2) > 0:
        return f"{stream}:{suffix}"
    return f"{{{stream}}}:{suffix}"


def spilled_key(stream: str) -> str:
    """String: the last entry id of ``stream`` copied to the lake (same slot as the stream)."""
    return _beside(stream, "spilled")


def spill_lock_key(stream: str) -> str:
    """String: held (SET NX PX) by the one process copying ``stream`` to the lake."""
    return _beside(stream, "spill-lock")


def written_key(stream: str) -> str:
    """Sorted set of what was appended to ``stream`` (same Cluster slot as the stream)."""
    return _beside(stream, "written")


# ---- candles --------------------------------------------------------------------------

#: Stream of closed-candle events, read by the metrics flow.
CLOSED_EVENTS_STREAM = "md:candles:closed"
#: Set of ``exchange:SYMBOL`` that have candles (global).
SYMBOLS_KEY = "md:candles:symbols"
#: SCAN pattern matching every key above and below in this section (candles of every
#: series, their indexes, live candles, the closed-candle events, the symbol set).
CANDLES_PATTERN = "md:candles*"


def series_key(exchange: str, symbol: str, interval: Interval | str) -> str:
    """Hash of the closed candles of one (exchange, symbol, interval)."""
    return f"md:candles:{{{symbol}}}:{exchange}:{interval}"


def index_key(exchange: str, symbol: str, interval: Interval | str) -> str:
    """Sorted set of the open times of the closed candles of one series."""
    return series_key(exchange, symbol, interval) + ":idx"


def trimmed_key(exchange: str, symbol: str, interval: Interval | str) -> str:
    """Sorted set of the UTC days (start, ms) the candle retention trimmed from one series."""
    return series_key(exchange, symbol, interval) + ":trimmed"


def live_key(exchange: str, symbol: str) -> str:
    """Hash interval -> newest open window's candle of one (exchange, symbol)."""
    return f"md:candles:{{{symbol}}}:{exchange}:live"


def exchanges_key(symbol: str) -> str:
    """Set of the exchanges that have candles of ``symbol``."""
    return f"md:candles:{{{symbol}}}:exchanges"


# ---- metrics --------------------------------------------------------------------------

#: Stream of detected anomalies.
ANOMALIES_STREAM = "md:anomalies"


def metrics_key(exchange: str, symbol: str) -> str:
    """Hash of the latest metrics of one (exchange, symbol)."""
    return f"md:metrics:{{{symbol}}}:{exchange}"


def history_key(exchange: str, symbol: str) -> str:
    """Sorted set of recent metrics of one (exchange, symbol), by open_time."""
    return f"{metrics_key(exchange, symbol)}:history"


def spread_key(base: str) -> str:
    """Hash of the latest spreads between series of one base currency (e.g. ``BTC``).

    Field ``<a>|<b>`` (series names, ``binance:BTCUSDT|coinbase:BTC-USD``), value the
    spread as JSON (docs/architecture.md, "Instruments and spreads").
    """
    return f"md:spread:{{{base}}}"


# ---- flows and their supervision ------------------------------------------------------

#: String (JSON, with a lease TTL): the ``cryptopipe up`` that runs the stack on this
#: Redis (pid, host, home, UI URL); one stack per Redis.
STACK_KEY = "md:stack"


def heartbeat_key(name: str) -> str:
    """Hash: the heartbeat of flow (or feed) ``name``."""
    return f"md:flow:{name}:heartbeat"


def control_key(name: str) -> str:
    """Hash: the supervisor's state of one flow (desired state, restarts, failure)."""
    return f"md:flow:{name}:control"


def restarts_key(name: str) -> str:
    """Sorted set of the restart times (ms) of one flow."""
    return f"md:flow:{name}:restarts"


def flow_pattern(name: str) -> str:
    """SCAN pattern matching every key of flow ``name`` (heartbeat, control, counts ...)."""
    return f"md:flow:{name}:*"


def counts_key(flow: str, source_stream: str) -> str:
    """Hash of a flow's exactly-once counters for one source partition."""
    return f"md:flow:{flow}:counts:{source_stream}"


# ---- the archive ----------------------------------------------------------------------

#: The archive flow's watermark, ms since the epoch (a decimal string). Set only
#: after the trades up to it are durable in the lake; with several raw-log shards, the
#: minimum over the shards. A day D is sealed once it is at or past D+1 00:00 plus the
#: allowed lateness.
ARCHIVE_WATERMARK_KEY = "md:archive:watermark"
#: String: the generation of the partitions snapshot :data:`ARCHIVE_WATERMARK_KEY` was
#: last set from (same Cluster slot as it): an older snapshot never overwrites it.
ARCHIVE_WATERMARK_GEN_KEY = "{" + ARCHIVE_WATERMARK_KEY + "}:gen"
#: Hash: raw-log stream -> that partition's archive watermark (ms); ``@<stream>`` its
#: archived position; ``@@generation`` counts the updates.
ARCHIVE_PARTITIONS_KEY = "md:archive:partitions"
#: Hash: raw-log stream -> JSON progress (archived id, trim point, files, counts).
ARCHIVE_PROGRESS_KEY = "md:archive:progress"

# ---- reconciliation -------------------------------------------------------------------

#: The last reconciliation's summary (JSON).
RECONCILE_LAST_KEY = "md:reconcile:last"
#: Hash: day -> that day's reconciliation counts per outcome (JSON).
RECONCILE_DAYS_KEY = "md:reconcile:days"

# ---- feeds ----------------------------------------------------------------------------

#: Hash (suffixed ``:<websocket host:port>``): symbol -> the Binance trade id up to
#: which every trade is in the raw log (the feed resumes from it after a restart).
BINANCE_RESUME_KEY = "md:feed:binance:resume"
#: Hash (suffixed ``:<websocket host:port>``): product -> the Coinbase Exchange trade id
#: up to which every trade is in the raw log (the feed resumes from it after a restart).
COINBASE_RESUME_KEY = "md:feed:coinbase:resume"
