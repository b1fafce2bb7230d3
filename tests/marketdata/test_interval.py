import itertools

import pytest

from marketdata.interval import ALL_INTERVALS, Interval
from marketdata.timeutil import format_ms, parse_time

T0 = parse_time("2025-03-14T00:00:00Z")


@pytest.mark.parametrize(
    ("label", "ts", "expected_open"),
    [
        ("1m", "2025-03-14T00:00:00Z", "2025-03-14T00:00:00Z"),  # on a boundary stays put
        ("1m", "2025-03-14T00:00:59.999Z", "2025-03-14T00:00:00Z"),
        ("1m", "2025-03-14T00:01:00Z", "2025-03-14T00:01:00Z"),
        ("5m", "2025-03-14T00:04:59.999Z", "2025-03-14T00:00:00Z"),
        ("5m", "2025-03-14T00:05:00Z", "2025-03-14T00:05:00Z"),
        ("15m", "2025-03-14T00:29:00Z", "2025-03-14T00:15:00Z"),
        ("1h", "2025-03-14T13:59:59.999Z", "2025-03-14T13:00:00Z"),
        ("4h", "2025-03-14T03:59:59Z", "2025-03-14T00:00:00Z"),
        ("4h", "2025-03-14T04:00:00Z", "2025-03-14T04:00:00Z"),
        ("4h", "2025-03-14T23:00:00Z", "2025-03-14T20:00:00Z"),
        ("1d", "2025-03-14T23:59:59.999Z", "2025-03-14T00:00:00Z"),
        ("1d", "2025-03-15T00:00:00Z", "2025-03-15T00:00:00Z"),
        ("1m", "1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"),
    ],
)
def test_floor(label: str, ts: str, expected_open: str) -> None:
    iv = Interval.parse(label)
    assert format_ms(iv.floor(parse_time(ts))) == expected_open


def test_window_is_half_open() -> None:
    start, end = Interval.M5.window(T0 + 299_999)
    assert (start, end) == (T0, T0 + 300_000)
    assert Interval.M5.window(end)[0] == end


def test_labels_and_sizes() -> None:
    assert [i.label for i in ALL_INTERVALS] == ["1m", "5m", "15m", "1h", "4h", "1d"]
    for finer, coarser in itertools.pairwise(ALL_INTERVALS):
        assert coarser.ms % finer.ms == 0


def test_parse_rejects_unknown_with_the_choices() -> None:
    with pytest.raises(ValueError, match="1m, 5m, 15m, 1h, 4h, 1d"):
        Interval.parse("2m")


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2025-03-14T00:00:00Z", 1_741_910_400_000),
        ("2025-03-14T00:00:00+00:00", 1_741_910_400_000),
        ("2025-03-14T01:00:00+01:00", 1_741_910_400_000),
        ("2025-03-14", 1_741_910_400_000),
        ("1741910400000", 1_741_910_400_000),
        ("2025-03-14T00:00:00.123Z", 1_741_910_400_123),
        ("2025-03-14T00:00:00", 1_741_910_400_000),  # no zone: UTC
        # seconds, ms and µs told apart by size, as ingest does
        ("1741910400", 1_741_910_400_000),
        ("1741910400123", 1_741_910_400_123),
        ("1741910400123999", 1_741_910_400_123),
        ("1741953600000000", 1_741_953_600_000),  # a 2025 kline open time in µs
        ("4102444800", 4_102_444_800_000),  # 2100-01-01 in seconds: the last accepted
        ("100000000000", 100_000_000_000),  # the smallest ms: 1973-03-03
        ("0", 0),
        (" 1741910400 ", 1_741_910_400_000),
    ],
)
def test_parse_time(text: str, ms: int) -> None:
    assert parse_time(text) == ms


def test_parse_time_error_says_what_to_use() -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("yesterday", "bad --start 'yesterday': use ISO 8601"),
        ("-1741910400000", "bad --start"),
        ("1.5e12", "bad --start"),
        ("100000000000000000", "too large for seconds, ms or µs"),
        ("4102444800001", "out of range: times from 1970 to 2100 only"),
        ("9999-12-31T23:59:59Z", "out of range"),
        ("0001-01-01T00:00:00+01:00", "out of range"),
        ("", "bad --start"),
        ("١٧٤١٩١٠٤٠٠", "bad --start"),  # Arabic-Indic digits
    ],
)
def test_parse_time_refuses_in_one_line(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as exc:
        parse_time(text, "--start")
    assert "\n" not in str(exc.value)
