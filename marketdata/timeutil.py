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
#: The first instant a command takes: 1970-01-01T00:00:00Z.
MIN_COMMAND_TIME_MS = 0
#: The first instant a command no longer takes: 2286-11-20T17:46:40Z, 10^10 seconds
#: (10^13 ms, 10^16 µs). Seconds have at most 10 digits, ms 13 and µs 16, so from
#: 1973-03-03 (10^11 ms) to here each form is told apart from the others by its size.
MAX_COMMAND_TIME_MS = 10**13
DAY_MS = 86_400_000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms_to_datetime(ms: int) -> datetime:
    """Milliseconds since the epoch to an aware UTC datetime (exact, no float).

    Raises:
        ValueError: ``ms`` is outside the years 1..9999 (never an ``OverflowError``).

    """
    try:
        return _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        msg = f"time {ms} ms is outside the years 1..9999"
        raise ValueError(msg) from None


def datetime_to_ms(dt: datetime) -> int:
    """Aware datetime to milliseconds since the epoch; naive datetimes are refused."""
    if dt.tzinfo is None:
        msg = f"naive datetime {dt.isoformat()}: give a timezone (UTC, e.g. 'Z')"
        raise ValueError(msg)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


#: What every time argument takes, as error messages say it.
TIME_FORMS = (
    "use ISO 8601 in UTC like 2025-03-14T00:00:00Z (or 2025-03-14), or seconds, ms or µs "
    "since the epoch (told apart by size: below 10^11 seconds, below 10^14 ms, below 10^17 µs)"
)
_RANGE = "times from 1970-01-01 up to 2286-11-20T17:46:40Z only"


def parse_time(text: str, what: str = "time") -> int:
    """A time given to a command, in ms since the epoch (every command's one rule).

    Accepted:

    * ISO 8601: ``"2025-03-14T00:00:00Z"``, ``"2025-03-14"`` (midnight UTC), with
      an offset (``+01:00``, converted to UTC) or without one (then it is UTC);
      fractions of a ms are floored.
    * A whole number of seconds, ms or µs since the epoch, told apart by magnitude
      as ingest tells ms from µs: below :data:`SECONDS_THRESHOLD` (10^11) seconds,
      below :data:`MICROS_THRESHOLD` (10^14) ms, below :data:`NANOS_THRESHOLD`
      (10^17) µs, floored to ms. So ``1741910400``, ``1741910400000`` and
      ``1741910400000000`` are the same instant (a Binance kline's µs open time
      works as it is). From 1973-03-03 (10^11 ms) to the end of the range every
      form is unambiguous; an ms or µs value before 1973-03-03 would be read as the
      next coarser unit (give such times in ISO).

    The range is 1970-01-01 (:data:`MIN_COMMAND_TIME_MS`) up to, not including,
    2286-11-20T17:46:40Z (:data:`MAX_COMMAND_TIME_MS`, 10^10 seconds).

    Args:
        text: the argument.
        what: its name in the error (``--start``).

    Returns:
        Milliseconds since the epoch, within the range.

    Raises:
        ValueError: one line naming ``what`` and the accepted forms; never an
            ``OverflowError``.

    """
    raw = text.strip()
    if raw.isascii() and raw.isdigit():
        n = int(raw)
        if n >= NANOS_THRESHOLD:
            msg = f"{what} {text!r} is too large for seconds, ms or µs: {TIME_FORMS}"
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
            msg = f"bad {what} {text!r}: {TIME_FORMS}"
            raise ValueError(msg) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            ms = datetime_to_ms(dt)
        except OverflowError:  # year 1 with a positive offset: before year 1 in UTC
            ms = -1
    if not MIN_COMMAND_TIME_MS <= ms < MAX_COMMAND_TIME_MS:
        msg = f"{what} {text!r} is out of range ({_RANGE}): {TIME_FORMS}"
        raise ValueError(msg)
    return ms


def format_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC with a ``Z`` suffix.

    Raises:
        ValueError: ``ms`` is outside the years 1..9999.

    """
    dt = ms_to_datetime(ms)
    if ms % 1000:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


#: The first and the last day a ``--date`` (or ``--from``, ``--to``) takes: the days
#: whose times :func:`parse_time` takes whole.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(2286, 11, 19)


def parse_day(text: str, what: str = "--date") -> date:
    """A UTC day ``YYYY-MM-DD``, given to a command (``--date``, ``--from``, ``--to``).

    Days from 1970-01-01 to 2286-11-19 (:data:`FIRST_DAY`, :data:`LAST_DAY`), the
    days :func:`parse_time` takes whole.

    Args:
        text: the argument.
        what: its name in the error.

    Raises:
        ValueError: one line naming ``what`` and the form to use.

    """
    raw = text.strip()
    try:
        if not (len(raw) == 10 and raw[4] == "-" and raw[7] == "-"):
            raise ValueError(raw)
        day = date.fromisoformat(raw)
    except ValueError:
        msg = f"bad {what} {text!r}: use YYYY-MM-DD (a UTC day, e.g. 2025-03-14)"
        raise ValueError(msg) from None
    if not FIRST_DAY <= day <= LAST_DAY:
        msg = f"{what} {text!r} is out of range: days from {FIRST_DAY} to {LAST_DAY} only"
        raise ValueError(msg)
    return day


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
