"""The candles flow on bytewax against a real Redis, run in this process.

Raw-log entries are written with their arrival times as stream ids, the flow runs
until its input has been idle, and what it wrote to Redis is compared with the
independent reference (fold_trades of every on-time trade) and with the faults the
generator injected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import redis
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main
from test_candles_data import T0, Day, gen_day, ref_map

from cryptopipe.commands.stream import ensure_recovery_dir
from marketdata.interval import Interval
from marketdata.trade import Trade
from redisstore.keys import CLOSED_EVENTS_STREAM, DLQ_STREAM, LATE_STREAM, counts_key, live_key
from redisstore.streamids import id_ms, join_id
from serving.stream import StreamCandleReader
from streaming.candleagg import WindowConfig
from streaming.flows.candles import CandlesFlowConfig, build_flow
from streaming.flows.runtime import stop_heartbeats
from streaming.heartbeat import read_heartbeat

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


@pytest.fixture(autouse=True)
def _no_heartbeat_leftovers() -> Iterator[None]:
    yield
    stop_heartbeats()


def run_flow(
    url: str,
    *,
    lateness_ms: int = 5000,
    idle: float = 0.5,
    recovery: Path | None = None,
    streams: tuple[str, ...] = ("md:trades:raw",),
    **kw: object,
) -> None:
    window_kw = {k: kw.pop(k) for k in list(kw) if k.endswith("_ms")}
    window = WindowConfig(lateness_ms=lateness_ms, **window_kw)  # type: ignore[arg-type]
    cfg = CandlesFlowConfig(url, streams, window=window, exit_when_idle=idle, **kw)  # type: ignore[arg-type]
    flow = build_flow(cfg)
    if recovery is None:
        run_main(flow)
        return
    ensure_recovery_dir(recovery)
    run_main(
        flow,
        epoch_interval=timedelta(seconds=1),
        recovery_config=RecoveryConfig(str(recovery), timedelta(seconds=0)),
    )


def stored(client: redis.Redis, symbols: tuple[str, ...] = SYMBOLS) -> dict:
    reader = StreamCandleReader(client)
    out = {}
    for sym in symbols:
        for iv in Interval:
            for rec in reader.read(sym, iv):
                assert rec.closed
                out[rec.candle.key] = rec.candle.fields()
    return out


def late_trades(client: redis.Redis) -> list[tuple[Trade, dict]]:
    out = []
    for _, f in client.xrange(LATE_STREAM):
        d = {k.decode(): v.decode() for k, v in f.items()}
        t = Trade(
            exchange=d["exchange"],
            symbol=d["symbol"],
            trade_id=int(d["trade_id"]),
            price_e8=int(d["price"].replace(".", "")),
            quantity_e8=int(d["quantity"].replace(".", "")),
            event_time=int(d["event_time"]),
            is_buyer_maker=d["is_buyer_maker"] == "true",
        )
        out.append((t, orjson.loads(d["windows"])))
    return out


def test_streamed_candles_of_every_interval_equal_the_reference(
    redis_client: redis.Redis, redis_url: str
) -> None:
    day = gen_day(
        21,
        n=30_000,
        out_of_order=0.08,
        duplicates=0.05,
        malformed=0.02,
        late=0.01,
        exchanges=("binance", "okx"),
    )
    day.write(redis_client)
    run_flow(redis_url)
    assert stored(redis_client) == ref_map(day)
    # Late trades: exactly those that arrived after their window closed, with their
    # window keys; the candles above exclude them.
    late = late_trades(redis_client)
    assert sorted(t for t, _ in late) == sorted(day.late)
    assert all(w == {i.label: i.floor(t.event_time) for i in Interval} for t, w in late)
    # Every rejection is in the DLQ with its reason and payload, once.
    dlq = redis_client.xrange(DLQ_STREAM)
    assert len(dlq) == day.rejected
    payloads = dict(zip(day.stream_ids(), (m.payload for _, m in day.entries), strict=True))
    reasons: dict[str, int] = {}
    for _, f in dlq:
        reasons[f[b"reason"].decode()] = reasons.get(f[b"reason"].decode(), 0) + 1
        assert f[b"payload"] == payloads[f[b"source_id"]]
        assert f[b"source_stream"] == b"md:trades:raw" and f[b"exchange"] in (b"binance", b"okx")
    assert reasons == day.reasons
    # One closed-candle event per candle, carrying the stored candle.
    events = redis_client.xrange(CLOSED_EVENTS_STREAM)
    assert len(events) == len(ref_map(day))
    # Exactly-once counters of the partition.
    counts = {
        k.decode(): v.decode()
        for k, v in redis_client.hgetall(counts_key("candles", "md:trades:raw")).items()
    }
    assert int(counts["trades"]) == len(day.on_time)
    assert int(counts["duplicates"]) == day.duplicates
    assert int(counts["late"]) == len(day.late)
    assert int(counts["rejected"]) == day.rejected
    assert int(counts["entries"]) == len(day.entries)


def test_a_replay_after_recovery_rewrites_the_same_values(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    day = gen_day(22, n=8000, late=0.02, malformed=0.02, duplicates=0.05)
    day.write(redis_client)
    run_flow(redis_url, recovery=tmp_path / "rec")
    before = stored(redis_client)
    lens = [redis_client.xlen(s) for s in (LATE_STREAM, DLQ_STREAM, CLOSED_EVENTS_STREAM)]
    # A second execution without recovery state re-reads and re-writes everything:
    # upserts and remembered appends mean nothing is added twice.
    run_flow(redis_url)
    assert stored(redis_client) == before == ref_map(day)
    assert [redis_client.xlen(s) for s in (LATE_STREAM, DLQ_STREAM, CLOSED_EVENTS_STREAM)] == lens


def test_resumed_flow_continues_after_the_snapshot(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    day = gen_day(23, n=12_000, late=0.01, duplicates=0.05, out_of_order=0.1)
    half = len(day.entries) // 2
    day.write(redis_client, stop=half)
    # The entries carry 2025 arrival times as ids while Redis TIME is now: idle ticks
    # between the two writes would (rightly) close every window; keep them out.
    no_ticks = {"hold_ms": 10**12}
    run_flow(redis_url, recovery=tmp_path / "rec", **no_ticks)
    first = int(redis_client.hget(counts_key("candles", "md:trades:raw"), "entries"))  # type: ignore[arg-type]
    assert first == half
    day.write(redis_client, start=half)
    run_flow(redis_url, recovery=tmp_path / "rec", **no_ticks)
    # Resumed after the snapshot: nothing read twice, nothing counted twice.
    counts = redis_client.hgetall(counts_key("candles", "md:trades:raw"))
    assert int(counts[b"entries"]) == len(day.entries)
    assert int(counts[b"trades"]) == len(day.on_time)
    assert int(counts[b"duplicates"]) == day.duplicates
    assert stored(redis_client) == ref_map(day)
    assert sorted(t for t, _ in late_trades(redis_client)) == sorted(day.late)


def test_trimmed_entries_are_reported_loudly(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    day = gen_day(24, n=3000, duplicates=0, malformed=0, out_of_order=0)
    third = len(day.entries) // 3
    day.write(redis_client, stop=third)
    run_flow(redis_url, recovery=tmp_path / "rec", hold_ms=10**12)
    day.write(redis_client, start=third)
    ids = day.stream_ids()
    # The archive (say) trims past entries the candles flow has not read yet.
    redis_client.xtrim("md:trades:raw", minid=ids[2 * third].decode(), approximate=False)
    with caplog.at_level(logging.ERROR):
        run_flow(redis_url, recovery=tmp_path / "rec", hold_ms=10**12)
    assert any(
        "DATA LOSS" in r.getMessage() and "trimmed" in r.getMessage() for r in caplog.records
    )
    hb = read_heartbeat(redis_client, "candles")
    assert hb is not None
    assert int(hb["lost_entries"]) == third
    assert "trimmed" in hb["last_error"]


def test_live_candles_are_published_while_windows_are_open(
    redis_client: redis.Redis, redis_url: str
) -> None:
    day = Day(trades=[], late_keys=set(), entries=[], rejected=0, duplicates=0, lateness_ms=5000)
    trades = [
        Trade(
            exchange="binance",
            symbol="BTCUSDT",
            trade_id=i,
            price_e8=100 * 10**8 + i,
            quantity_e8=10**8,
            event_time=T0 + 1000 * i,
            is_buyer_maker=False,
        )
        for i in range(1, 6)
    ]
    from marketdata.rawmessage import RawMessage
    from marketdata.simulator import trade_payload

    day.entries = [
        (t.event_time, RawMessage(trade_payload(t), "binance", t.event_time, symbol="BTCUSDT"))
        for t in trades
    ]
    day.trades = trades
    day.write(redis_client)
    seen: dict[bytes, bytes] = {}

    def watch() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen:
            seen.update(redis_client.hgetall(live_key("binance", "BTCUSDT")))  # type: ignore[arg-type]
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    # Redis TIME is now, far after 2025: the idle ticks then close the window, so
    # watch the live candle before that (idle advance well above the exit time).
    run_flow(redis_url, idle=2.0, hold_ms=10**12, live_interval_s=0.2)  # type: ignore[arg-type]
    watcher.join()
    assert set(seen) == {i.label.encode() for i in Interval}
    live = orjson.loads(seen[b"1m"])
    assert live["closed"] is False and live["trade_count"] == 5
    assert live["close"] == "100.00000005" and live["open_time"] == T0


def test_idle_stream_closes_windows_on_arrival_clock_ticks(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """No trade after the last one: Redis TIME ticks of the idle stream close its window."""
    day = gen_day(25, n=50, span_ms=30_000, duplicates=0, malformed=0, out_of_order=0)
    day.write(redis_client)  # ids = arrival times in 2025; Redis TIME is much later
    run_flow(redis_url, idle=3.0, hold_ms=500)
    ended = int(time.time() * 1000)
    events = redis_client.xrange(CLOSED_EVENTS_STREAM)
    assert {
        (e[b"symbol"].decode(), e[b"interval"].decode(), int(e[b"open_time"])) for _, e in events
    } == {(k[1], k[2], k[3]) for k in ref_map(day)}
    # Closed by the ticks while the flow was still waiting for input, not by its end.
    assert all(id_ms(eid) < ended - 2000 for eid, _ in events)
    wm = int(redis_client.hget(counts_key("candles", "md:trades:raw"), "watermark"))  # type: ignore[arg-type]
    assert wm > T0 + 86_400_000


def test_live_candles_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from marketdata.rawmessage import RawMessage
    from marketdata.simulator import trade_payload
    from streaming.flows import candles as flow_mod
    from streaming.sources import RawBatch

    clock = [100.0]
    monkeypatch.setattr(flow_mod.time, "monotonic", lambda: clock[0])
    cfg = CandlesFlowConfig("redis://unused", ("md:trades:raw",), live_interval_s=1.0)
    logic = flow_mod._CandlesLogic(cfg, None)

    def batch(i: int, sym: str = "BTCUSDT") -> RawBatch:
        t = Trade(
            exchange="binance",
            symbol=sym,
            trade_id=i,
            price_e8=10**10 + i,
            quantity_e8=10**8,
            event_time=T0 + i,
            is_buyer_maker=False,
        )
        flat: list[bytes] = []
        for k, v in RawMessage(trade_payload(t), "binance", T0 + i, symbol=sym).to_fields().items():
            flat += [k, v]
        return RawBatch(stream="md:trades:raw", ids=[join_id(T0 + i, 0)], fields=[flat])

    def live(out: object) -> list:
        return [c for w in out[0] for c in w.live]  # type: ignore[index]

    assert len(live(logic.on_batch([batch(1)]))) == len(Interval)  # every interval of BTCUSDT
    clock[0] += 0.3
    assert live(logic.on_batch([batch(2), batch(3, "ETHUSDT")])) == []
    assert logic.notify_at() is not None
    clock[0] += 0.5
    assert live(logic.on_notify()) == []
    clock[0] += 0.3
    got = live(logic.on_notify())
    assert {(c.symbol, c.interval.label) for c in got} == {
        (s, i.label) for s in ("BTCUSDT", "ETHUSDT") for i in Interval
    }
    assert max(c.trade_count for c in got if c.symbol == "BTCUSDT") == 2
    assert logic.notify_at() is None
