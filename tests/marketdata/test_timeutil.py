"""Times given to commands: one rule (ISO 8601 UTC, or s, ms or µs told apart by size)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from marketdata.timeutil import (
    MAX_COMMAND_TIME_MS,
    MICROS_THRESHOLD,
    NANOS_THRESHOLD,
    SECONDS_THRESHOLD,
    day_of_ms,
    format_ms,
    ms_to_datetime,
    parse_day,
    parse_time,
)

T = 1_741_910_400_000  # 2025-03-14T00:00:00Z


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        # ISO 8601: Z, offsets, a bare day (midnight), no zone (UTC), fractions floored
        ("2025-03-14T00:00:00Z", T),
        ("2025-03-14T00:00:00z", T),
        ("2025-03-14T00:00:00+00:00", T),
        ("2025-03-14T01:00:00+01:00", T),
        ("2025-03-13T19:00:00-05:00", T),
        ("2025-03-14", T),
        ("2025-03-14T00:00:00", T),
        ("2025-03-14 00:00:00", T),
        ("2025-03-14T00:00:00.123Z", T + 123),
        ("2025-03-14T00:00:00.123999Z", T + 123),
        ("1970-01-01T00:00:00Z", 0),
        ("2286-11-20T17:46:39.999Z", MAX_COMMAND_TIME_MS - 1),
        # seconds, ms and µs told apart by size, as ingest tells ms from µs
        ("1741910400", T),
        ("1741910400123", T + 123),
        ("1741910400123999", T + 123),
        ("1741953600000000", 1_741_953_600_000),  # a 2025 kline open time in µs
        ("0", 0),
        ("9999999999", 9_999_999_999_000),  # the largest number of seconds
        (str(SECONDS_THRESHOLD), SECONDS_THRESHOLD),  # the smallest ms: 1973-03-03
        ("9999999999999", MAX_COMMAND_TIME_MS - 1),  # the largest ms
        (str(MICROS_THRESHOLD), MICROS_THRESHOLD // 1000),  # the smallest µs: 1973-03-03
        ("9999999999999999", MAX_COMMAND_TIME_MS - 1),  # the largest µs
        (" 1741910400 ", T),
    ],
)
def test_parse_time_takes_every_form(text: str, ms: int) -> None:
    assert parse_time(text) == ms


def test_the_same_instant_in_every_form() -> None:
    for t in (T, 1_262_304_000_000, 4_102_444_800_000, 9_999_999_999_000):
        forms = [format_ms(t), str(t // 1000), str(t), str(t * 1000)]
        assert {parse_time(f) for f in forms} == {t}, forms


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("yesterday", "bad --start 'yesterday': use ISO 8601"),
        ("-1741910400000", "bad --start"),
        ("-1", "bad --start"),
        ("1.5e12", "bad --start"),
        ("1741910400.5", "bad --start"),
        ("+1741910400", "bad --start"),
        ("0x10", "bad --start"),
        ("", "bad --start"),
        ("   ", "bad --start"),
        ("2025-13-01", "bad --start"),
        ("2025-03-14T25:00:00Z", "bad --start"),
        ("١٧٤١٩١٠٤٠٠", "bad --start"),  # Arabic-Indic digits
        (str(NANOS_THRESHOLD), "too large for seconds, ms or µs"),  # ns
        ("1741910400000000000", "too large for seconds, ms or µs"),  # a 2025 time in ns
        ("9" * 40, "too large for seconds, ms or µs"),
        ("10000000000", "out of range"),  # 10^10 s: 2286-11-20T17:46:40Z
        (str(SECONDS_THRESHOLD - 1), "out of range"),  # the largest seconds: year 5138
        ("10000000000000", "out of range"),  # 10^13 ms
        ("10000000000000000", "out of range"),  # 10^16 µs
        ("41029999999999999", "out of range"),
        ("2286-11-20T17:46:40Z", "out of range"),
        ("9999-12-31T23:59:59Z", "out of range"),
        ("1969-12-31T23:59:59.999Z", "out of range"),
        ("0001-01-01T00:00:00+01:00", "out of range"),  # before year 1 in UTC
    ],
)
def test_parse_time_refuses_in_one_line_naming_the_argument(text: str, says: str) -> None:
    with pytest.raises(ValueError, match="--start") as exc:
        parse_time(text, "--start")
    message = str(exc.value)
    assert says in message and "\n" not in message
    assert "ISO 8601" in message and "µs" in message  # the accepted forms


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("2025-03-14", date(2025, 3, 14)),
        (" 2025-03-14 ", date(2025, 3, 14)),
        ("1970-01-01", date(1970, 1, 1)),
        ("2286-11-19", date(2286, 11, 19)),
    ],
)
def test_parse_day(text: str, day: date) -> None:
    assert parse_day(text) == day


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("2025-13-01", "bad --from '2025-13-01': use YYYY-MM-DD"),
        ("2025-02-30", "bad --from"),
        ("20250314", "bad --from"),
        ("2025-W11-5", "bad --from"),
        ("1741910400000", "bad --from"),
        ("", "bad --from"),
        ("1969-12-31", "out of range: days from 1970-01-01 to 2286-11-19"),
        ("2286-11-20", "out of range"),
        ("9999-12-31", "out of range"),
    ],
)
def test_parse_day_refuses_in_one_line_naming_the_argument(text: str, says: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_day(text, "--from")
    assert says in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("ms", [10**15, 10**17, 10**20, 10**40, -(10**20), 2**63, -(2**63)])
def test_no_int_overflows(ms: int) -> None:
    for f in (day_of_ms, ms_to_datetime, format_ms):
        with pytest.raises(ValueError, match=r"outside the years 1\.\.9999"):
            f(ms)


def test_ms_to_datetime_is_exact() -> None:
    assert ms_to_datetime(T + 1) == datetime(2025, 3, 14, 0, 0, 0, 1000, tzinfo=UTC)
    assert ms_to_datetime(-1) == datetime(1969, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    assert format_ms(9_999_999_999_999) == "2286-11-20T17:46:39.999Z"
    assert day_of_ms(-1) == date(1969, 12, 31)
