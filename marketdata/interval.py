"""Candle intervals, aligned to the Unix epoch in UTC."""

from __future__ import annotations

from enum import Enum


class Interval(Enum):
    """A candle interval. Windows are ``[open_time, open_time + ms)``, epoch-aligned, UTC."""

    M1 = ("1m", 60_000)
    M5 = ("5m", 300_000)
    M15 = ("15m", 900_000)
    H1 = ("1h", 3_600_000)
    H4 = ("4h", 14_400_000)
    D1 = ("1d", 86_400_000)

    def __init__(self, label: str, ms: int) -> None:
        self.label = label
        self.ms = ms

    def __str__(self) -> str:
        return self.label

    def floor(self, ts_ms: int) -> int:
        """Open time of the window holding ``ts_ms``; a time on a boundary stays put."""
        return ts_ms - ts_ms % self.ms

    def window(self, ts_ms: int) -> tuple[int, int]:
        """``(open_time, close_time)`` of the window holding ``ts_ms``; close is exclusive."""
        start = self.floor(ts_ms)
        return start, start + self.ms

    @classmethod
    def parse(cls, label: str) -> Interval:
        """Interval from its label (``"1m"``, ``"5m"``, ... ``"1d"``).

        Raises:
            ValueError: naming the accepted labels.

        """
        for member in cls:
            if member.label == label:
                return member
        msg = f"unknown interval {label!r}: use one of {', '.join(i.label for i in cls)}"
        raise ValueError(msg)


ALL_INTERVALS: tuple[Interval, ...] = tuple(Interval)
INTERVAL_LABELS: tuple[str, ...] = tuple(i.label for i in Interval)
