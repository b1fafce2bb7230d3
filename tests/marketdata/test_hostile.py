"""100,000 hostile payloads through the parser: 0 crashes, the expected outcome for each."""

from collections import Counter

from marketdata.hostile import GENERATORS, hostile_messages
from marketdata.parsing import parse_message
from marketdata.trade import Rejection, Trade


def test_hundred_thousand_hostile_payloads() -> None:
    outcomes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    wrong = []
    n = 100_000
    for kind, payload, expected in hostile_messages(n, seed=11):
        kinds[kind] += 1
        result = parse_message(payload)
        got = "trade" if isinstance(result, Trade) else result.reason
        if isinstance(result, Rejection):
            assert result.payload == payload
        outcomes[got] += 1
        if got != expected:
            wrong.append((kind, expected, got, payload[:120]))
    assert wrong == []
    assert sum(outcomes.values()) == n
    assert set(kinds) == set(GENERATORS)  # every kind was exercised
    assert outcomes["trade"] > 0 and outcomes["oversized"] > 0
