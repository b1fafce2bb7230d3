"""100,000 hostile payloads through the real candles flow process (slow).

The corpus of :mod:`marketdata.hostile` (truncated and invalid JSON, NaN and Infinity,
huge numbers, exponents, underscores, wrong types, missing and duplicate keys,
non-UTF-8 bytes, far-future and pre-2009 timestamps, µs versus ms, unknown symbols,
payloads over 64 KiB, other event types), plus re-sent valid payloads, written to the
raw log as a feed would, then ``cryptopipe stream run candles --exit-when-idle``:

* the process exits 0 (no crash);
* every entry is accounted for exactly once: a trade folded into the candles, a
  duplicate, or a DLQ entry carrying the expected reason and the payload byte for
  byte, keyed by its raw-log id;
* the candles equal the candles of the valid trades, folded independently;
* the flow's counters add up: entries = trades + duplicates + late + rejected, and
  the per-reason counters equal the DLQ's;
* then the archive flow, with ``CRYPTOPIPE_SIDE_STREAM_MAXLEN=1000``, copies the whole
  DLQ to the lake (``dlq/``) and trims Redis to its newest 1,000 entries; the
  counters keep the totals.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest
import redis

from lake.layout import DLQ_DIR
from lake.sidestreams import read_side_entries
from marketdata.candle import fold_trades
from marketdata.hostile import GENERATORS, hostile_messages
from marketdata.interval import Interval
from marketdata.parsing import parse_message
from marketdata.rawmessage import RawMessage
from marketdata.trade import Trade
from redisstore.keys import DLQ_STREAM, LATE_STREAM, RAW_STREAM, counts_key
from serving.stream import StreamCandleReader
from streaming.rawlog import RawLogWriter
from tests.processes import cryptopipe_ok

pytestmark = pytest.mark.slow
N = 100_000


def test_hundred_thousand_hostile_payloads_through_the_candles_flow(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    rng = random.Random(7)
    messages: list[RawMessage] = []
    expected: list[str] = []  # per raw-log entry: "trade", "duplicate" or a reason
    valid: list[Trade] = []
    kinds: Counter[str] = Counter()
    resend: list[tuple[int, RawMessage]] = []
    for kind, payload, outcome in hostile_messages(N, seed=23):
        kinds[kind] += 1
        # Arrival stamped like the event time of the entry's trade id: a live feed.
        recv = 1_741_910_400_000 + len(messages)
        msg = RawMessage(payload, "binance", recv)
        messages.append(msg)
        expected.append(outcome)
        if outcome == "trade":
            t = parse_message(payload)
            assert isinstance(t, Trade)
            valid.append(t)
            if rng.random() < 0.02:  # the feed sends it again a little later
                resend.append((len(messages) + rng.randrange(1, 50), msg))
        while resend and resend[0][0] <= len(messages):
            _, again = resend.pop(0)
            messages.append(again._replace(recv_ms=recv))
            expected.append("duplicate")
    messages += [m for _, m in resend]
    expected += ["duplicate"] * len(resend)
    assert set(kinds) == set(GENERATORS) and kinds["oversized"] > 0

    writer = RawLogWriter(redis_client)
    ids: list[bytes] = []
    for i in range(0, len(messages), 5_000):
        ids += writer.write(messages[i : i + 5_000])
    assert len(ids) == len(messages) > N

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    env |= {"REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path / "home")}
    cryptopipe_ok(env, "stream", "run", "candles", "--exit-when-idle", "2", timeout=600)

    # The DLQ: one entry per rejected payload, by raw-log id, reason and bytes.
    dlq = {
        f[b"source_id"]: (f[b"reason"].decode(), f[b"payload"])
        for _, f in redis_client.xrange(DLQ_STREAM)
    }
    want = {
        i: (outcome, m.payload)
        for i, m, outcome in zip(ids, messages, expected, strict=True)
        if outcome not in ("trade", "duplicate")
    }
    assert len(dlq) == redis_client.xlen(DLQ_STREAM)  # no entry twice
    wrong = [
        (i, want.get(i, ("(accepted)",))[0], dlq.get(i, ("(missing)",))[0])
        for i in want.keys() | dlq.keys()
        if want.get(i) != dlq.get(i)
    ]
    assert wrong[:10] == [] and len(wrong) == 0
    assert redis_client.xlen(LATE_STREAM) == 0

    # The candles: exactly those of the valid trades.
    symbols = {t.symbol for t in valid}
    reader = StreamCandleReader(redis_client)
    stored = {
        rec.candle.key: rec.candle.fields()
        for sym in sorted(symbols)
        for iv in Interval
        for rec in reader.read(sym, iv)
    }
    folded = {}
    for iv in Interval:
        folded.update({k: c.fields() for k, c in fold_trades(valid, iv).items()})
    assert stored == folded

    # The counters add up.
    counts = {
        k.decode(): v.decode()
        for k, v in redis_client.hgetall(counts_key("candles", RAW_STREAM)).items()
    }
    outcomes = Counter(expected)
    assert int(counts["entries"]) == len(messages)
    assert int(counts["trades"]) == len(valid) == outcomes["trade"]
    assert int(counts["duplicates"]) == outcomes["duplicate"] > 0
    assert int(counts.get("late", 0)) == 0
    assert int(counts["rejected"]) == len(want) == len(dlq)
    by_reason = Counter(reason for reason, _ in dlq.values())
    assert {
        k.removeprefix("rejected:"): int(v) for k, v in counts.items() if k.startswith("rejected:")
    } == by_reason
    assert int(counts["entries"]) == sum(
        int(counts.get(k, 0)) for k in ("trades", "duplicates", "late", "rejected")
    )

    # Bounded: the archive flow copies the DLQ to the lake, then Redis keeps 1,000.
    whole = dict(redis_client.xrange(DLQ_STREAM))
    env["CRYPTOPIPE_SIDE_STREAM_MAXLEN"] = "1000"
    cryptopipe_ok(env, "stream", "run", "archive", "--exit-when-idle", "2", timeout=600)
    assert dict(read_side_entries(tmp_path / "home" / "lake", DLQ_DIR)) == whole
    assert list(dict(redis_client.xrange(DLQ_STREAM))) == list(whole)[-1000:]
    assert int(redis_client.hget(counts_key("candles", RAW_STREAM), "rejected")) == len(whole)
