import pickle

import pytest

from marketdata.watermark import NEVER, VenueClocks, Watermark

LATE = 5_000  # allowed lateness, ms
HOLD = 120_000  # how long a silent venue holds its windows open, ms
T0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z, a minute boundary


def test_no_watermark_before_a_trade_and_no_arrival_moves_it() -> None:
    mark = Watermark()
    assert (mark.value, mark.cutoff) == (NEVER, NEVER)
    assert not mark.arrive(T0, T0 + 10 * HOLD, LATE, HOLD)  # nothing is late yet
    mark.advance(T0 + 100 * HOLD, LATE, HOLD)
    assert (mark.value, mark.cutoff) == (NEVER, NEVER)


def test_largest_event_time_minus_lateness_floored_to_the_minute_for_the_cutoff() -> None:
    mark = Watermark()
    mark.observe(T0 + 65_000, T0 + 65_000, LATE)
    assert mark.value == T0 + 60_000
    assert mark.cutoff == T0 + 60_000
    mark.observe(T0 + 64_000, T0 + 66_000, LATE)  # an earlier time does not move it
    assert (mark.e_max, mark.r_at_max, mark.value) == (T0 + 65_000, T0 + 65_000, T0 + 60_000)


@pytest.mark.parametrize(
    ("event_time", "late"),
    [
        (T0 + 59_999, True),  # its 1m window [T0, T0 + 60 s) closed
        (T0 + 60_000, False),  # on the cutoff: the oldest open window
        (T0 + 61_000, False),
    ],
)
def test_a_trade_of_a_closed_window_is_late(event_time: int, late: bool) -> None:
    mark = Watermark()
    mark.observe(T0 + 65_000, T0 + 65_000, LATE)
    assert mark.arrive(event_time, T0 + 65_001, LATE, HOLD) is late


@pytest.mark.parametrize(
    ("clock", "value"),
    [
        (T0 + HOLD, T0 - LATE),  # silent within the hold: stays
        (T0 + HOLD + 1, T0 - LATE + 1),  # past it: follows the arrival clock
        (T0 + HOLD + 90_000, T0 - LATE + 90_000),
    ],
)
def test_a_venue_silent_past_the_hold_follows_the_arrival_clock(clock: int, value: int) -> None:
    mark = Watermark()
    mark.observe(T0, T0, LATE)
    mark.advance(clock, LATE, HOLD)
    assert mark.value == value
    assert mark.cutoff == value - value % 60_000


def test_it_never_goes_back() -> None:
    mark = Watermark()
    mark.observe(T0, T0, LATE)
    mark.advance(T0 + HOLD + 60_000, LATE, HOLD)
    high = mark.value
    mark.observe(T0 + 1_000, T0 + 1_000 + HOLD + 60_000, LATE)  # later e_max, lower value
    assert mark.value == high
    mark.raise_to(high - 1)
    assert mark.value == high
    mark.advance(T0, LATE, HOLD)  # an arrival clock stepping back
    assert mark.value == high


@pytest.mark.parametrize(
    ("e_max", "event_time", "clock", "refused"),
    [
        (T0, T0 + 2_000, T0, False),  # exactly max_ahead after the clock: taken
        (T0, T0 + 2_001, T0, True),  # further: refused
        (T0, T0 + 2_001, T0 + 1, False),  # ... unless the arrival clock is later
        (NEVER, T0 + 2_001, T0, True),  # a venue's first trade: against the arrival
        (T0 + 3_600_000, T0 + 3_601_000, T0, False),  # a venue running ahead (speed-up)
        (T0, 4_070_908_800_000, T0, True),  # dated 2099
    ],
)
def test_an_event_time_too_far_ahead_of_the_clock_and_the_arrival_is_refused(
    e_max: int, event_time: int, clock: int, refused: bool
) -> None:
    mark = Watermark()
    if e_max != NEVER:
        mark.observe(e_max, clock, LATE)
    assert mark.too_far_ahead(event_time, clock, 2_000) is refused


def test_the_state_pickles_as_four_integers() -> None:
    mark = Watermark()
    mark.observe(T0 + 65_000, T0 + 70_000, LATE)
    assert mark.__getstate__() == (T0 + 65_000, T0 + 70_000, T0 + 60_000, T0 + 60_000)
    back = pickle.loads(pickle.dumps(mark))
    assert back.__getstate__() == mark.__getstate__()


def test_each_venue_is_judged_by_its_own_clock_and_the_arrival_clock_moves_them_all() -> None:
    clocks = VenueClocks()
    fast, late = clocks.arrive("binance", T0 + 3_600_000, T0, LATE, HOLD)
    assert not late
    fast.observe(T0 + 3_600_000, T0, LATE)
    # kraken an hour behind binance: on time by kraken's clock, which starts now
    slow, late = clocks.arrive("kraken", T0, T0 + 1, LATE, HOLD)
    assert not late and slow is not fast and slow.value == NEVER
    slow.observe(T0, T0 + 1, LATE)
    assert clocks.low() == T0 - LATE and clocks.cutoffs()["binance"] > T0
    # a trade for binance's closed windows is late; kraken's own minute is still open
    assert clocks.arrive("binance", T0, T0 + 2, LATE, HOLD)[1]
    assert not clocks.arrive("kraken", T0 + 1, T0 + 3, LATE, HOLD)[1]
    # kraken's event time stalls: arrivals of binance's trades move kraken's clock on
    clocks.arrive("binance", T0 + 3_600_001, T0 + 1 + HOLD + 60_000, LATE, HOLD)
    assert slow.value == T0 - LATE + 60_000
    restored = pickle.loads(pickle.dumps(clocks))
    assert restored.cutoffs() == clocks.cutoffs() and restored.low() == clocks.low()


def test_a_venue_silent_past_the_hold_does_not_hold_back_what_the_partition_completed() -> None:
    """kraken's history of a year ago replayed next to binance's live trades: while
    kraken's replay runs it holds the partition back; once it has been silent for the
    hold it counts as caught up with the arrival clock (minus hold and lateness)."""
    now = T0 + 365 * 86_400_000
    clocks = VenueClocks()
    live, _ = clocks.arrive("binance", now, now, LATE, HOLD)
    live.observe(now, now, LATE)
    old, _ = clocks.arrive("kraken", T0, now + 1, LATE, HOLD)
    old.observe(T0, now + 1, LATE)
    assert clocks.low() == T0 - LATE  # the replay is running: it holds sealing back
    for k in range(1, 200):  # binance goes on live; kraken's replay has ended
        t = now + k * 1_000
        mark, _ = clocks.arrive("binance", t, t, LATE, HOLD)
        mark.observe(t, t, LATE)
    later = now + 199_000
    assert old.value < T0 + 86_400_000  # kraken's own clock: a year behind still
    assert clocks.low() == later - HOLD - LATE
    restored = pickle.loads(pickle.dumps(clocks))
    assert restored.low() == clocks.low()
