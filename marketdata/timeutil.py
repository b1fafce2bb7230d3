"""UTC time helpers: ISO 8601 or epoch seconds, ms or µs input, always timezone-aware."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

#: 2009-01-03T00:00:00Z, the Bitcoin genesis block: no crypto trade is older.
MIN_EVENT_TIME_MS = 1_230_940_800_000
#: 2100-01-01T00:00:00Z: anything later is a unit error (ns) or garbage.
MAX_EVENT_TIME_MS = 4_102_444_800_000
#: Timestamps at or above this many units are microseconds, not milliseconds.
MICROS_THRESHOLD = 10**14
#: A number of time units below this is seconds (10^11 s is in the year 5138; as ms
#: it is 1973-03-03), at or above it ms, and from :data:`MICROS_THRESHOLD` on µs.
SECONDS_THRESHOLD = 10**11
#: Numbers at or above this are not a time any command takes (ns, or garbage).
NANOS_THRESHOLD = 10**17
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


_TIME_FORMS = (
    "use ISO 8601 in UTC like 2025-03-14T00:00:00Z (or 2025-03-14), or seconds, ms or µs "
    "since the epoch (told apart by size: below 10^11 seconds, below 10^14 ms, else µs)"
)


def parse_time(text: str, what: str = "time") -> int:
    """A time given to a command, in ms since the epoch (every command's one rule).

    Accepted: ISO 8601 (``"2025-03-14T00:00:00Z"``, ``"2025-03-14"`` for midnight UTC;
    a time without a zone is UTC, other zones are converted) or a whole number of
    seconds, ms or µs since the epoch, told apart by magnitude as ingest does:
    below :data:`SECONDS_THRESHOLD` seconds, below :data:`MICROS_THRESHOLD` ms, below
    :data:`NANOS_THRESHOLD` µs (µs floored to ms). So ``1741910400``,
    ``1741910400000`` and ``1741910400000000`` are the same instant. Times from 1970
    to 2100 (:data:`MAX_EVENT_TIME_MS`) only.

    Args:
        text: the argument.
        what: its name in the error (``--start``).

    Raises:
        ValueError: one line naming ``what`` and the accepted forms.

    """
    raw = text.strip()
    if raw.isascii() and raw.isdigit():
        n = int(raw)
        if n >= NANOS_THRESHOLD:
            msg = f"{what} {text!r} is too large for seconds, ms or µs: {_TIME_FORMS}"
            raise ValueError(msg)
        if n < SECONDS_THRESHOLD:
            ms = n * 1000
        elif n < MICROS_THRESHOLD:
            ms = n
        else:
            ms = n // 1000
    else:
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            msg = f"bad {what} {text!r}: {_TIME_FORMS}"
            raise ValueError(msg) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            ms = datetime_to_ms(dt)
        except OverflowError:
            ms = -1
    if not 0 <= ms <= MAX_EVENT_TIME_MS:
        msg = f"{what} {text!r} is out of range: times from 1970 to 2100 only"
        raise ValueError(msg)
    return ms


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
    """UTC day holding ``ms``.

    Raises:
        ValueError: ``ms`` is outside the years 1..9999 (never an ``OverflowError``).

    """
    try:
        return date(1970, 1, 1) + timedelta(days=ms // DAY_MS)
    except OverflowError:
        msg = f"time {ms} ms is outside the years 1..9999"
        raise ValueError(msg) from None


def now_ms() -> int:
    """Current wall-clock time in ms since the epoch (UTC)."""
    return datetime_to_ms(datetime.now(tz=UTC))
