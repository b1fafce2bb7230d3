"""Loud rejections: a flow logs what it rejected and what came late, at most every 10 s.

A rejected entry is never lost (the DLQ keeps it with its reason and payload, the
counters count it), but a user watching ``cryptopipe stream run`` should not have to
look there to learn that a feed sends something the pipeline cannot read. The
candles flow's sink hands each step's rejections and late trades to
:class:`RejectionLog`, which logs one warning line with the reason counts since its
last line, when there is anything new, at most once per interval (and once more
when the flow ends). Totals since the flow began are in its counters and in
``cryptopipe status``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable

from redisstore.keys import DLQ_STREAM, LATE_STREAM

log = logging.getLogger("cryptopipe.rejections")

#: Seconds between two summary lines at the most.
INTERVAL_S = 10.0


class RejectionLog:
    """Summaries of new rejections and late trades, per flow, at most every ``interval_s``."""

    def __init__(
        self,
        flow: str,
        *,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] | None = None,
        dlq: str = DLQ_STREAM,
        late_stream: str = LATE_STREAM,
    ) -> None:
        self.flow = flow
        self.interval_s = interval_s
        self.clock = clock
        self.emit = emit or log.warning
        self.dlq = dlq
        self.late_stream = late_stream
        self._reasons: Counter[str] = Counter()
        self._late = 0
        self._last = clock()

    def observe(self, reasons: Iterable[str], late: int = 0) -> str | None:
        """Note one step's rejections (their reasons) and late trades; maybe log.

        Returns:
            The line logged, if the interval has passed and there is anything new.

        """
        self._reasons.update(reasons)
        self._late += late
        if self.clock() - self._last < self.interval_s:
            return None
        return self.flush()

    def flush(self) -> str | None:
        """Log what is new since the last line now, if anything is."""
        self._last = self.clock()
        if not self._reasons and not self._late:
            return None
        parts = []
        if self._reasons:
            listed = ", ".join(f"{k} {n:,}" for k, n in self._reasons.most_common())
            total = sum(self._reasons.values())
            parts.append(f"rejected {total:,} ({listed}; kept in {self.dlq})")
        if self._late:
            parts.append(f"late {self._late:,} (kept in {self.late_stream})")
        line = f"{self.flow}: since the last report: {'; '.join(parts)}"
        self._reasons.clear()
        self._late = 0
        self.emit(line)
        return line
