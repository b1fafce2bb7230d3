import itertools
from collections import Counter

import pytest

from marketdata.parsing import parse_message
from marketdata.simulator import SimConfig, simulate
from marketdata.trade import Trade

START = 1_741_910_400_000


def test_same_seed_same_market_other_seed_other_market() -> None:
    cfg = SimConfig(rate=100, duration_s=30, seed=5, duplicates=0.1, malformed=0.05)
    assert list(simulate(cfg)) == list(simulate(cfg))
    other = SimConfig(rate=100, duration_s=30, seed=6, duplicates=0.1, malformed=0.05)
    assert [m.payload for m in simulate(cfg)] != [m.payload for m in simulate(other)]


def test_rate_duration_and_order() -> None:
    cfg = SimConfig(rate=200, duration_s=300, seed=1)
    msgs = list(simulate(cfg))
    assert 0.85 * 60_000 < len(msgs) < 1.15 * 60_000
    assert all(a.arrival_ms <= b.arrival_ms for a, b in itertools.pairwise(msgs))
    assert all(START <= m.trade.event_time < START + 300_000 for m in msgs if m.trade)
    # Bursty: per-second counts vary much more than a plain Poisson process would.
    per_s = Counter((m.arrival_ms - START) // 1000 for m in msgs)
    counts = [per_s.get(s, 0) for s in range(300)]
    mean = sum(counts) / len(counts)
    var = sum((c - mean) ** 2 for c in counts) / len(counts)
    assert var > 2 * mean


def test_trades_are_valid_with_increasing_ids_per_symbol() -> None:
    cfg = SimConfig(
        symbols=("BTCUSDT", "DOGEUSDT"),
        exchanges=("binance", "kraken"),
        rate=100,
        duration_s=120,
        seed=2,
    )
    last: dict[tuple[str, str], int] = {}
    for m in simulate(cfg):
        t = parse_message(m.payload, exchange=m.exchange)
        assert isinstance(t, Trade) and t == m.trade
        key = (t.exchange, t.symbol)
        assert t.trade_id == last.get(key, cfg.first_trade_id - 1) + 1
        last[key] = t.trade_id
    assert set(last) == {(e, s) for e in cfg.exchanges for s in cfg.symbols}


def test_fault_semantics() -> None:
    lateness = 5_000
    cfg = SimConfig(
        rate=100,
        duration_s=600,
        seed=3,
        out_of_order=0.05,
        duplicates=0.05,
        late=0.02,
        malformed=0.02,
        lateness_ms=lateness,
    )
    msgs = list(simulate(cfg))
    kinds = Counter(m.kind for m in msgs)
    trades = kinds["trade"] + kinds["out_of_order"] + kinds["late"]
    for kind, share in (
        ("out_of_order", 0.05),
        ("duplicate", 0.05),
        ("late", 0.02),
        ("malformed", 0.02),
    ):
        assert share * 0.7 < kinds[kind] / trades < share * 1.3, kind
    max_seen = 0
    for m in msgs:
        if m.kind == "malformed":
            assert not isinstance(parse_message(m.payload), Trade)
            continue
        t = m.trade
        assert t is not None
        window_end = t.event_time - t.event_time % 60_000 + 60_000
        if m.kind == "late":
            # Its 1m window had closed: the event-time watermark passed its end.
            assert max_seen - lateness >= window_end
        elif m.kind in ("trade", "out_of_order"):
            # Not late: its window was still open when it arrived.
            assert max_seen - lateness < window_end
            if m.kind == "trade":
                assert m.arrival_ms == t.event_time
        max_seen = max(max_seen, t.event_time)


@pytest.mark.parametrize("bad", [{"rate": 0}, {"late": 1.5}, {"symbols": ()}])
def test_bad_config_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        SimConfig(**bad)
