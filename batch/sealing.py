"""When is a day complete enough for the batch layer? (docs/architecture.md section 4).

A UTC day D is *sealed* when one of these holds:

* **by the archive**: the archive flow's watermark (Redis key
  :data:`redisstore.keys.ARCHIVE_WATERMARK_KEY`, ms since the epoch) is at or past
  ``D+1 00:00 + lateness``: every trade of D that the speed layer could still have
  accepted is in the lake;
* **by import**: every trade file of D came from ``cryptopipe lake import`` of a
  dump whose name says it covers D (``BTCUSDT-trades-2025-03-14.csv``, or the
  month's dump), i.e. each file has its ``_IMPORTED~<stem>.json`` marker, and no
  file came from the archive flow. Imported history has no archive watermark; a
  complete daily dump cannot grow later.

:func:`seal_status` does not talk to Redis: the watermark comes from a function the
caller gives. :func:`day_seal` and :func:`require_sealed` are what the command line
and Dagster use: the settings' lake and Redis, and "refuse unless forced" in one place
(each caller turns :class:`DayNotSealedError` into its own kind of error and says how
to force it there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import redis

from lake.layout import Lake, import_marker_name
from marketdata.settings import Settings
from marketdata.timeutil import day_bounds, format_ms
from redisstore.conn import RedisUnavailableError, connect
from redisstore.keys import ARCHIVE_WATERMARK_KEY


class WatermarkUnavailableError(RuntimeError):
    """The archive watermark could not be read (e.g. Redis is down)."""


@dataclass(frozen=True)
class SealStatus:
    """Whether a day is sealed, and why (or why not), in words for the user.

    Attributes:
        day: the UTC day.
        sealed: whether batch jobs may run on it without ``--force``.
        by: ``"import"``, ``"watermark"`` or ``""`` (not sealed).
        reason: one sentence.
        seals_at_ms: ``D+1 00:00 + lateness``, ms.
        watermark_ms: the archive watermark when it was read.

    """

    day: date
    sealed: bool
    by: str
    reason: str
    seals_at_ms: int
    watermark_ms: int | None = None


def seals_at(day: date, lateness_ms: int) -> int:
    """The archive watermark at which ``day`` is sealed: next midnight plus lateness."""
    return day_bounds(day)[1] + lateness_ms


def _import_stem(name: str) -> str | None:
    parts = name.split("~")
    return parts[1] if len(parts) == 4 and parts[0] == "import" else None


def import_seal(lake: Lake, day: date) -> tuple[bool, str]:
    """Whether ``day``'s trades all come from imported dumps that cover the whole day."""
    directory = lake.trades_dir(day)
    names = lake.list_files(directory, hidden=True)
    data = [n for n in names if n.endswith(".parquet") and not n.startswith((".", "_"))]
    if not data:
        return False, "the lake has no trades for it"
    markers = {n for n in names if n.startswith("_IMPORTED~")}
    stems = {n: _import_stem(n) for n in data}
    archived = sorted(n for n, s in stems.items() if s is None)
    if archived:
        return False, f"{len(archived)} of its trade files come from the archive flow"
    unmarked = sorted({s for s in stems.values() if s and import_marker_name(s) not in markers})
    if unmarked:
        return False, (
            f"imported from {', '.join(unmarked[:3])}{', ...' if len(unmarked) > 3 else ''}, "
            "whose name does not say it covers the whole day (Binance names daily dumps like "
            "BTCUSDT-trades-2025-03-14.csv)"
        )
    return True, f"all {len(data)} trade files come from complete imported daily dumps"


def seal_status(
    lake: Lake,
    day: date,
    *,
    lateness_ms: int,
    watermark: Callable[[], int | None],
) -> SealStatus:
    """Is ``day`` sealed? Imported history first (no Redis needed), then the watermark.

    Args:
        lake: the lake.
        day: the UTC day.
        lateness_ms: the candles flow's allowed lateness.
        watermark: returns the archive watermark (ms), ``None`` when it is not
            set; may raise :class:`WatermarkUnavailableError`. Called only when the
            day is not sealed by import.

    """
    at = seals_at(day, lateness_ms)
    ok, why = import_seal(lake, day)
    if ok:
        return SealStatus(day=day, sealed=True, by="import", reason=why, seals_at_ms=at)
    try:
        wm = watermark()
    except WatermarkUnavailableError as exc:
        return SealStatus(
            day=day,
            sealed=False,
            by="",
            reason=f"{why}, and the archive watermark is unknown: {exc}",
            seals_at_ms=at,
        )
    if wm is None:
        reason = (
            f"{why}, and the archive flow has not set its watermark "
            f"({ARCHIVE_WATERMARK_KEY}): nothing says the day's trades are all archived"
        )
        return SealStatus(day=day, sealed=False, by="", reason=reason, seals_at_ms=at)
    if wm >= at:
        reason = f"the archive watermark {format_ms(wm)} is past {format_ms(at)}"
        return SealStatus(
            day=day, sealed=True, by="watermark", reason=reason, seals_at_ms=at, watermark_ms=wm
        )
    reason = (
        f"the archive watermark is at {format_ms(wm)}; {day.isoformat()} seals when it "
        f"reaches {format_ms(at)} (next midnight plus the allowed lateness of "
        f"{lateness_ms / 1000:g} s)"
    )
    return SealStatus(day=day, sealed=False, by="", reason=reason, seals_at_ms=at, watermark_ms=wm)


def parse_watermark(raw: bytes | str | None) -> int | None:
    """The value of :data:`ARCHIVE_WATERMARK_KEY` as ms (``None`` when unset).

    Raises:
        WatermarkUnavailableError: the key holds something else than an integer.

    """
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        return int(text.strip())
    except ValueError:
        msg = f"{ARCHIVE_WATERMARK_KEY} holds {text[:40]!r}, not milliseconds"
        raise WatermarkUnavailableError(msg) from None


def watermark_from_redis(url: str) -> int | None:
    """The archive watermark in the Redis at ``url`` (connect, read, close).

    Raises:
        WatermarkUnavailableError: Redis cannot be reached or holds no number.

    """
    try:
        client = connect(url, socket_connect_timeout=2, socket_timeout=5)
        try:
            return parse_watermark(client.get(ARCHIVE_WATERMARK_KEY))
        finally:
            client.close()
    except (RedisUnavailableError, redis.RedisError) as exc:
        raise WatermarkUnavailableError(str(exc)) from None


def day_seal(settings: Settings, day: date) -> SealStatus:
    """Whether ``day`` is sealed in the settings' lake; Redis is read only if needed."""
    return seal_status(
        Lake(settings.lake),
        day,
        lateness_ms=settings.lateness_ms,
        watermark=lambda: watermark_from_redis(settings.redis_url),
    )


class DayNotSealedError(RuntimeError):
    """A batch job was asked for a day that is not sealed, without force."""

    def __init__(self, status: SealStatus) -> None:
        super().__init__(f"{status.day.isoformat()} is not sealed: {status.reason}")
        self.status = status


def require_sealed(settings: Settings, day: date, *, force: bool) -> SealStatus:
    """The day's seal; refuses an unsealed day unless ``force``.

    Raises:
        DayNotSealedError: the day is not sealed and ``force`` is false.

    """
    status = day_seal(settings, day)
    if not status.sealed and not force:
        raise DayNotSealedError(status)
    return status
