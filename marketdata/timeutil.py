"""UTC time helpers: ISO 8601 or epoch-millisecond input, always timezone-aware."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

#: 2009-01-03T00:00:00Z, the Bitcoin genesis block: no crypto trade is older.
MIN_EVENT_TIME_MS = 1_230_940_800_000
#: 2100-01-01T00:00:00Z: anything later is a unit error (ns) or garbage.
MAX_EVENT_TIME_MS = 4_102_444_800_000
#: Timestamps at or above this many units are microseconds, not milliseconds.
MICROS_THRESHOLD = 10**14
DAY_MS = 86_400_000


def ms_to_datetime(ms: int) -> datetime:
    """Milliseconds since the epoch to an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).replace(microsecond=(ms % 1000) * 1000)


def datetime_to_ms(dt: datetime) -> int:
    """Aware datetime to milliseconds since the epoch; naive datetimes are refused."""
    if dt.tzinfo is None:
        msg = f"naive datetime {dt.isoformat()}: give a timezone (UTC, e.g. 'Z')"
        raise ValueError(msg)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def parse_time(text: str) -> int:
    """Parse a time given as ms since the epoch or ISO 8601 in UTC.

    ``"2025-03-14T00:00:00Z"``, ``"2025-03-14"`` (midnight UTC), ``"1741910400000"``.
    An ISO time without a zone is taken as UTC; other zones are converted.

    Raises:
        ValueError: saying which formats are accepted.

    """
    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        msg = (
            f"bad time {text!r}: use ISO 8601 in UTC like 2025-03-14T00:00:00Z "
            "or milliseconds since the epoch"
        )
        raise ValueError(msg) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return datetime_to_ms(dt)


def format_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC with a ``Z`` suffix."""
    dt = ms_to_datetime(ms)
    if ms % 1000:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_day(text: str) -> date:
    """A UTC day ``YYYY-MM-DD``."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        msg = f"bad date {text!r}: use YYYY-MM-DD (a UTC day)"
        raise ValueError(msg) from None


def day_start_ms(day: date) -> int:
    """00:00:00 UTC of ``day`` in ms since the epoch."""
    return datetime_to_ms(datetime(day.year, day.month, day.day, tzinfo=UTC))


def day_bounds(day: date) -> tuple[int, int]:
    """``[start, end)`` of a UTC day in ms."""
    start = day_start_ms(day)
    return start, start + DAY_MS


def day_of_ms(ms: int) -> date:
    """UTC day holding ``ms``."""
    return date(1970, 1, 1) + timedelta(days=ms // DAY_MS)


def now_ms() -> int:
    """Current wall-clock time in ms since the epoch (UTC)."""
    return datetime_to_ms(datetime.now(tz=UTC))
