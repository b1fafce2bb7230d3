"""The flows' rejection summaries: at most one line per interval, only when there is news."""

from __future__ import annotations

from streaming.rejectlog import RejectionLog


def test_one_line_per_interval_with_the_counts_since_the_last() -> None:
    now = [0.0]
    lines: list[str] = []
    rl = RejectionLog("candles", clock=lambda: now[0], emit=lines.append)
    assert rl.observe(["bad_number:price"] * 90 + ["unsupported_event"] * 4, late=2) is None
    now[0] = 5.0
    assert rl.observe(["bad_number:price"]) is None  # within 10 s: quiet
    now[0] = 10.0
    line = rl.observe([])
    assert line == lines[-1]
    assert "rejected 95 (bad_number:price 91, unsupported_event 4; kept in md:trades:dlq)" in line
    assert "late 2 (kept in md:trades:late)" in line
    now[0] = 25.0
    assert rl.observe([]) is None and len(lines) == 1  # nothing new: nothing said
    now[0] = 26.0
    rl.observe([], late=1)
    assert rl.flush() is not None and lines[-1].endswith("late 1 (kept in md:trades:late)")
    assert rl.flush() is None
