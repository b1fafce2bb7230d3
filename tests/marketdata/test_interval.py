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
