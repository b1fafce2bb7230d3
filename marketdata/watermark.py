"""The event-time clocks of the speed layer (docs/architecture.md section 4).

A :class:`Watermark` is one venue's clock in one raw-log partition;
:class:`VenueClocks` holds a partition's, one per venue. One implementation, used by
the candles flow (:class:`streaming.candleagg.ShardAggregator`,
which decides what is late) and the archive (:class:`streaming.archive.ArchiveClock`,
which tells the batch layer when a day is sealed): both must reach the same value on
the same entries, whatever the batching.

The rule: a venue's clock is the largest event time it has shown (a trade that was
not late, or a feed's progress mark: "everything of this venue up to T is
delivered"), minus the allowed lateness. A venue that shows nothing new (no trade
with a later time, no later mark) is *silent*: its windows stay open for
``hold_ms`` of arrival time, then the *arrival clock* (the ms part of the stream
ids, or Redis ``TIME`` when the stream is idle) moves its clock on, by as much as
the arrival clock moves. It never goes back. The 1m window whose end it passed is
closed: ``cutoff`` is the open time of the oldest 1m window still open, and a trade
of a closed window is late (:meth:`Watermark.arrive`).

An event time more than ``max_ahead_ms`` after the venue's largest event time and
after the arrival clock (:meth:`Watermark.too_far_ahead`) is refused: the trade is
rejected (``bad_timestamp``), a mark ignored, and the clock does not move, so one
bad row can never close a venue's windows.

Both users feed it entry by entry in their exact paths (:meth:`VenueClocks.arrive`,
:meth:`Watermark.observe`); the candles flow's fast path applies the same rule to a
whole batch at once (a running maximum), and its tests compare the two paths.
"""

from __future__ import annotations

from typing import Any

from marketdata.interval import Interval

#: Below every real time: "no watermark yet".
NEVER = -(1 << 62)
MINUTE_MS = Interval.M1.ms


class Watermark:
    """A venue's clock in a partition and what it was derived from.

    Attributes:
        e_max: the largest event time (trade or mark) that moved it (``NEVER`` before any).
        r_at_max: the arrival clock (ms) when ``e_max`` arrived: the venue is silent
            since then.
        value: the watermark, ms (``NEVER`` before any).
        cutoff: open time of the oldest open 1m window (``value`` floored to the minute).
    """

    __slots__ = ("cutoff", "e_max", "r_at_max", "value")

    def __init__(
        self, e_max: int = NEVER, r_at_max: int = 0, value: int = NEVER, cutoff: int = NEVER
    ) -> None:
        self.e_max = e_max
        self.r_at_max = r_at_max
        self.value = value
        self.cutoff = cutoff

    def __getstate__(self) -> tuple[int, int, int, int]:
        return (self.e_max, self.r_at_max, self.value, self.cutoff)

    def __setstate__(self, state: tuple[int, int, int, int]) -> None:
        self.e_max, self.r_at_max, self.value, self.cutoff = state

    def __repr__(self) -> str:
        return f"Watermark(e_max={self.e_max}, r_at_max={self.r_at_max}, value={self.value})"

    def raise_to(self, wm: int) -> None:
        """Move to ``wm`` if that is later (a watermark never goes back)."""
        if wm > self.value:
            self.value = wm
            self.cutoff = wm - wm % MINUTE_MS

    def advance(self, clock: int, lateness_ms: int, hold_ms: int) -> None:
        """The arrival clock reads ``clock``: move on if the venue is silent past the hold."""
        self.arrive(NEVER, clock, lateness_ms, hold_ms)

    def arrive(self, event_time: int, clock: int, lateness_ms: int, hold_ms: int) -> bool:
        """A trade arrives at ``clock``: the watermark moves on, then is the trade late?

        It moves on if the venue has been silent longer than the hold (see the module
        docstring). The trade is late when its 1m window is closed: it is before
        ``cutoff`` (a minute boundary). A late trade must not be given to
        :meth:`observe`. Called once per entry in the exact paths, hence one method
        for both steps.
        """
        if self.e_max != NEVER:
            ahead = clock - self.r_at_max - hold_ms
            if ahead > 0:
                self.raise_to(self.e_max - lateness_ms + ahead)
        return event_time < self.cutoff

    def too_far_ahead(self, event_time: int, clock: int, max_ahead_ms: int) -> bool:
        """Is ``event_time`` more than ``max_ahead_ms`` after the clock and the arrival?

        After both this clock's largest event time and the arrival clock ``clock``:
        such a time is refused and must not move the clock. The arrival clock counts
        so that a venue's first trade, or live data after a replay of old history, is
        judged against the time it was written.
        """
        return event_time > max(self.e_max, clock) + max_ahead_ms

    def observe(self, event_time: int, clock: int, lateness_ms: int) -> None:
        """A trade (not late, not too far ahead) or a mark arrived at ``clock``."""
        if event_time > self.e_max:
            self.e_max = event_time
            self.r_at_max = clock
            self.raise_to(event_time - lateness_ms)


class VenueClocks:
    """One :class:`Watermark` per venue: time comes from the venues.

    A venue is a trade's ``exchange`` (a venue with several markets names each its own
    way, e.g. ``binance`` and ``binance-um``). Each venue's clock moves with its own
    trades and progress marks (and the arrival clock when it is silent past the
    hold), so one venue that lags, or a
    second venue's history written after the first's, is never late because of
    another. What a partition has completed is the slowest of its venues
    (:meth:`low`).

    Args:
        template: the clock a venue starts from when it first appears (a copy); by
            default a new clock. A snapshot from when a partition had one clock
            restores as the template, so every venue continues from it.

    """

    __slots__ = ("clocks", "floor", "silent_before", "template")

    def __init__(self, template: Watermark | None = None) -> None:
        self.clocks: dict[str, Watermark] = {}
        self.template = template
        #: A venue whose clock last moved at an arrival before this is silent past the
        #: hold (the latest arrival clock minus the hold) ...
        self.silent_before = NEVER
        #: ... and counts as having reached this in :meth:`low` (that, minus lateness).
        self.floor = NEVER

    def __getstate__(self) -> tuple[Any, ...]:
        t = self.template.__getstate__() if self.template is not None else None
        clocks = {v: m.__getstate__() for v, m in self.clocks.items()}
        return clocks, t, self.silent_before, self.floor

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        clocks, t = state[:2]
        self.clocks = {v: Watermark(*s) for v, s in clocks.items()}
        self.template = Watermark(*t) if t is not None else None
        self.silent_before, self.floor = state[2:] if len(state) > 2 else (NEVER, NEVER)

    def __repr__(self) -> str:
        return f"VenueClocks({self.clocks!r})"

    def of(self, venue: str) -> Watermark:
        """The clock of ``venue`` (started now if it is new)."""
        mark = self.clocks.get(venue)
        if mark is None:
            t = self.template
            mark = Watermark(*t.__getstate__()) if t is not None else Watermark()
            self.clocks[venue] = mark
        return mark

    def _arrival(self, clock: int, lateness_ms: int, hold_ms: int) -> None:
        if clock - hold_ms > self.silent_before:
            self.silent_before = clock - hold_ms
            self.floor = clock - hold_ms - lateness_ms

    def advance(self, clock: int, lateness_ms: int, hold_ms: int) -> None:
        """The arrival clock reads ``clock``: every venue silent past the hold moves."""
        self._arrival(clock, lateness_ms, hold_ms)
        for mark in self.clocks.values():
            mark.advance(clock, lateness_ms, hold_ms)
        if self.template is not None:
            self.template.advance(clock, lateness_ms, hold_ms)

    def arrive(
        self, venue: str, event_time: int, clock: int, lateness_ms: int, hold_ms: int
    ) -> tuple[Watermark, bool]:
        """A trade of ``venue`` arrives at ``clock``: its clock, and is the trade late?

        The arrival clock moves every venue's clock on (:meth:`Watermark.advance`); the
        trade meets its own venue's (:meth:`Watermark.arrive`). Each clock moves once.
        """
        self._arrival(clock, lateness_ms, hold_ms)
        for v, mark in self.clocks.items():
            if v != venue:
                mark.advance(clock, lateness_ms, hold_ms)
        if self.template is not None:
            self.template.advance(clock, lateness_ms, hold_ms)
        mark = self.of(venue)
        return mark, mark.arrive(event_time, clock, lateness_ms, hold_ms)

    def low(self) -> int:
        """What the partition has completed: the slowest venue's watermark.

        A venue silent past the hold (a feed stopped for good, a replay of old history
        that ended) counts as having caught up with the arrival clock minus the hold
        and the lateness: its windows are closing by the arrival clock, and it must not
        hold back the sealing of the days after its last trade. Before any venue: the
        template's watermark, or ``NEVER``.
        """
        if self.clocks:
            return min(
                max(m.value, self.floor) if m.r_at_max < self.silent_before else m.value
                for m in self.clocks.values()
            )
        return self.template.value if self.template is not None else NEVER

    def cutoffs(self) -> dict[str, int]:
        """Each venue's cutoff (open time of its oldest open 1m window)."""
        return {v: m.cutoff for v, m in self.clocks.items()}
