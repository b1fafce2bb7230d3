"""Retrying Redis calls through outages: capped exponential backoff with full jitter.

:func:`call_with_retry` retries a call until Redis is back (writers: sinks, the raw
log). Code that must not block and simply tries again later (a source's next read, a
heartbeat's next beat) reports each attempt to an :class:`OutageLog` instead, which
says once that Redis went away and once that it is back.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import redis

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors that mean "Redis is (briefly) not there": retried. Others are raised.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog's variant)."""

    def __init__(self, base_s: float = 0.1, cap_s: float = 5.0, rng: random.Random | None = None):
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self.rng = rng or random.Random()

    def next_delay(self) -> float:
        """The next sleep: uniform in [0, min(cap, base * 2^attempt)]."""
        delay = self.rng.uniform(0, min(self.cap_s, self.base_s * 2**self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Start over after a success."""
        self.attempt = 0


class OutageLog:
    """One warning when Redis goes away, one line when it is back, for callers that retry.

    Args:
        what: names the caller in the log lines (``"md:trades:raw"``, ``"heartbeat of
            candles"``).
        logger: the caller's logger, so that the lines say where they come from.

    """

    def __init__(self, what: str, logger: logging.Logger = log) -> None:
        self.what = what
        self.logger = logger
        #: Whether the last attempt failed.
        self.failing = False

    def failed(self, exc: Exception) -> None:
        """An attempt failed with ``exc``: warn unless already failing."""
        if not self.failing:
            self.logger.warning("%s: Redis unavailable (%s); retrying", self.what, exc)
        self.failing = True

    def ok(self) -> None:
        """An attempt succeeded: say so if it was failing."""
        if self.failing:
            self.logger.info("%s: Redis is back", self.what)
        self.failing = False


#: A flow's sinks retry at least once a second: a flow is back within a second of
#: Redis (live candles are promised within a second), where a feed may wait longer.
SINK_BACKOFF_CAP_S = 1.0


def sink_backoff() -> Backoff:
    """The backoff of a flow's sink: 0.1 s doubling to 1 s, full jitter."""
    return Backoff(cap_s=SINK_BACKOFF_CAP_S)


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    should_stop: Callable[[], bool] = lambda: False,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    give_up_s: float | None = None,
    on_retry: Callable[[], object] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, sleeping with backoff on transient Redis errors.

    ``on_retry`` is called before each retry (a metrics counter).

    Raises:
        InterruptedError: when ``should_stop`` turns true while Redis is still away.
        redis.ConnectionError: (the last error) when Redis stays away past ``give_up_s``:
            a flow then crashes, and its supervisor restarts it from its snapshot.
    """
    backoff = backoff or Backoff()
    failing_since: float | None = None
    while True:
        try:
            result = fn()
        except TRANSIENT as exc:
            if failing_since is None:
                failing_since = time.monotonic()
                log.warning("%s: Redis unavailable (%s); retrying with backoff", what, exc)
            if should_stop():
                msg = f"{what}: stopped while Redis was unavailable"
                raise InterruptedError(msg) from exc
            if give_up_s is not None and time.monotonic() - failing_since > give_up_s:
                raise
            if on_retry is not None:
                on_retry()
            sleep(backoff.next_delay())
            continue
        if failing_since is not None:
            log.info("%s: Redis is back after %.1fs", what, time.monotonic() - failing_since)
        return result
