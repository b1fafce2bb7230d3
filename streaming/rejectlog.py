"""Loud rejections: a flow logs what it rejected and what came late, at most every 10 s.

A rejected entry is never lost (the DLQ keeps it with its reason and payload, the
counters count it), but a user watching ``cryptopipe stream run`` should not have to
look there to learn that a feed sends something the pipeline cannot read. Each flow
process has one :class:`RejectionLog` per flow; its sink (every worker's) hands it
each batch's rejections and late trades, and the flow's heartbeat thread ticks it
every second. It logs one warning line with the counts by reason since its last
line, when there is anything new, at most once per interval, e.g.::

    candles: rejected 94 in the last 10 s: bad_number:price 90, unsupported_event 4
    (DLQ md:trades:dlq); late 3 (md:trades:late)

(one line), and once more when the flow ends. Nothing is logged while nothing is
rejected. Totals since the flow began are in its counters and in ``cryptopipe
status``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

from redisstore.keys import DLQ_STREAM, LATE_STREAM

log = logging.getLogger("cryptopipe.rejections")

#: Seconds between two summary lines at the most.
INTERVAL_S = 10.0


class RejectionLog:
    """Summaries of new rejections and late trades, per flow, at most every ``interval_s``.

    Thread-safe: a flow's workers observe, its heartbeat thread ticks.

    Args:
        flow: the flow's name, first on every line.
        interval_s: the least time between two lines.
        clock: monotonic seconds (tests pass their own).
        emit: where a line goes (default: a warning of ``cryptopipe.rejections``).
        kept: where the rejected entries are kept, as the line says it.
        late_kept: where the late trades are kept, as the line says it.

    """

    def __init__(
        self,
        flow: str,
        *,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] | None = None,
        kept: str = f"DLQ {DLQ_STREAM}",
        late_kept: str = LATE_STREAM,
    ) -> None:
        self.flow = flow
        self.interval_s = interval_s
        self.clock = clock
        self.emit = emit or log.warning
        self.kept = kept
        self.late_kept = late_kept
        self._reasons: Counter[str] = Counter()
        self._late = 0
        self._last = clock()
        self._lock = threading.Lock()

    def observe(self, reasons: Iterable[str], late: int = 0) -> str | None:
        """Note one batch's rejections (their reasons) and late trades; maybe log.

        Returns:
            The line logged, if the interval has passed and there is anything new.

        """
        with self._lock:
            self._reasons.update(reasons)
            self._late += late
        return self.tick()

    def tick(self) -> str | None:
        """Log what is new, if anything is and the interval has passed since the last line.

        After a quiet spell longer than the interval, the first rejection is logged at
        the next tick.

        Returns:
            The line logged, or ``None``.

        """
        with self._lock:
            if not self._reasons and not self._late:
                return None
            if self.clock() - self._last < self.interval_s:
                return None
        return self.flush()

    def flush(self) -> str | None:
        """Log what is new since the last line now, if anything is.

        Returns:
            The line logged, or ``None`` when nothing is new.

        """
        with self._lock:
            now = self.clock()
            if not self._reasons and not self._late:
                return None
            since = f"in the last {max(1, round(now - self._last))} s"
            parts = []
            if self._reasons:
                listed = ", ".join(f"{k} {n:,}" for k, n in self._reasons.most_common())
                total = sum(self._reasons.values())
                parts.append(f"rejected {total:,} {since}: {listed} ({self.kept})")
            if self._late:
                late = f"late {self._late:,}" + ("" if parts else f" {since}")
                parts.append(f"{late} ({self.late_kept})")
            line = f"{self.flow}: {'; '.join(parts)}"
            self._reasons.clear()
            self._late = 0
            self._last = now
        self.emit(line)
        return line
