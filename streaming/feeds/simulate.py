"""``cryptopipe feed simulate``: the simulated market into the raw log."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator

from marketdata.rawmessage import RawMessage
from marketdata.simulator import SimConfig, simulate
from streaming.feeds.pacing import PacedWriter, Progress
from streaming.rawlog import RawLogWriter

log = logging.getLogger(__name__)


def run_simulation(
    writer: RawLogWriter,
    cfg: SimConfig,
    speed: float | None,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Progress | None = None,
) -> Counter[str]:
    """Write the simulated market to the raw log; returns counts per message kind.

    The receive time of each message is its simulated arrival time, so a run is
    reproducible whatever the speed.
    """
    kinds: Counter[str] = Counter()

    def items() -> Iterator[tuple[int, RawMessage]]:
        for m in simulate(cfg):
            kinds[m.kind] += 1
            yield m.arrival_ms, RawMessage(m.payload, m.exchange, m.arrival_ms, symbol=m.symbol)

    paced = PacedWriter(writer, speed, should_stop=should_stop)
    written = paced.run(items(), on_batch=progress.update if progress else None)
    if progress:
        progress.finish(written)
    log.info("simulated %d messages: %s", written, dict(kinds))
    return kinds
