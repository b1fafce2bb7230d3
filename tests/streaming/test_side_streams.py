"""The DLQ and late streams, bounded: copied to the lake, then trimmed (real Redis)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import redis

from batch.reconcile import late_trades_for_day
from lake.layout import DLQ_DIR, LATE_DIR, Lake
from lake.sidestreams import read_side_entries
from marketdata.timeutil import day_start_ms
from marketdata.trade import Rejection, Trade
from redisstore.keys import DLQ_STREAM, spill_lock_key, spilled_key
from streaming.candleagg import LateTrade, RejectedEntry
from streaming.candlestore import CandleStore, CandleWrites
from streaming.spill import SideStreamSpiller

DAY = date(2025, 3, 14)
T0 = day_start_ms(DAY)


def rejects(n: int, start: int = 0) -> list[RejectedEntry]:
    return [
        RejectedEntry(
            Rejection("malformed_json", b"{bad %d \xff" % i, "binance", "not JSON"),
            "md:trades:raw",
            b"%d-0" % (T0 + i),
            T0 + i,
        )
        for i in range(start, start + n)
    ]


def lates(n: int, day: date = DAY) -> list[LateTrade]:
    t0 = day_start_ms(day)
    out = []
    for i in range(n):
        t = Trade("binance", "BTCUSDT", i, (100 + i) * 10**8, 10**7, t0 + i * 1000, False)
        windows = {"1m": t0 + (i * 1000) // 60_000 * 60_000, "1d": t0}
        out.append(LateTrade(t, windows, t0 + 10**6, "md:trades:raw", b"%d-1" % (t0 + i)))
    return out


def everything(client: redis.Redis, stream: str) -> dict[bytes, dict[bytes, bytes]]:
    return dict(client.xrange(stream))


def test_entries_are_copied_to_the_lake_before_redis_keeps_only_the_newest(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    store = CandleStore(redis_client)
    store.write([CandleWrites("md:trades:raw", rejects=rejects(250))])
    before = everything(redis_client, DLQ_STREAM)
    assert len(before) == 250
    spiller = SideStreamSpiller(redis_client, tmp_path / "lake", maxlen=100, chunk=60)
    dlq, late = spiller.run()
    assert (dlq.copied, dlq.files, dlq.trimmed) == (250, 5, 150)
    assert (late.copied, late.trimmed) == (0, 0)
    # Every entry in the lake once, fields byte for byte; Redis keeps the newest 100.
    assert dict(read_side_entries(tmp_path / "lake", DLQ_DIR)) == before
    assert list(everything(redis_client, DLQ_STREAM)) == list(before)[-100:]
    # A second pass has nothing to do.
    again = spiller.run()[0]
    assert (again.copied, again.trimmed) == (0, 0)
    # More rejections: copied, and the stream is back to 100.
    store.write([CandleWrites("md:trades:raw", rejects=rejects(30, start=250))])
    more = spiller.run()[0]
    assert (more.copied, more.trimmed) == (30, 30)
    assert len(dict(read_side_entries(tmp_path / "lake", DLQ_DIR))) == 280
    assert redis_client.xlen(DLQ_STREAM) == 100


def test_a_crash_between_the_file_and_the_mark_never_copies_twice(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    store = CandleStore(redis_client)
    lake = tmp_path / "lake"
    spiller = SideStreamSpiller(redis_client, lake, maxlen=1_000, chunk=50)
    store.write([CandleWrites("md:trades:raw", rejects=rejects(40))])
    spiller.run()
    mark = redis_client.get(spilled_key(DLQ_STREAM))
    store.write([CandleWrites("md:trades:raw", rejects=rejects(20, start=40))])
    spiller.run()
    # The process died after writing the second file, before raising the mark.
    redis_client.set(spilled_key(DLQ_STREAM), mark)
    store.write([CandleWrites("md:trades:raw", rejects=rejects(5, start=60))])
    spiller.run()
    (today,) = Lake(lake).list_days(DLQ_DIR)
    files = Lake(lake).list_files(Lake(lake).side_dir(DLQ_DIR, today))
    assert len(files) == 2  # the second run's file replaced by a longer one
    copied = list(read_side_entries(lake, DLQ_DIR))
    assert [i for i, _ in copied] == list(everything(redis_client, DLQ_STREAM))
    assert len(copied) == 65


def test_nothing_is_trimmed_that_is_not_in_the_lake(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    CandleStore(redis_client).write([CandleWrites("md:trades:raw", rejects=rejects(30))])
    not_a_directory = tmp_path / "lake"
    not_a_directory.write_text("a file where the lake should be")
    spiller = SideStreamSpiller(redis_client, not_a_directory, maxlen=0)
    with pytest.raises(OSError):
        spiller.run()
    assert redis_client.xlen(DLQ_STREAM) == 30
    assert redis_client.get(spilled_key(DLQ_STREAM)) is None
    # Once the lake is there, the copy happens, then the trim (maxlen 0: all of it).
    not_a_directory.unlink()
    assert spiller.run()[0].trimmed == 30
    assert len(list(read_side_entries(not_a_directory, DLQ_DIR))) == 30


def test_a_file_holds_one_day_of_entries(redis_client: redis.Redis, tmp_path: Path) -> None:
    ids = [f"{T0 - 2}-0", f"{T0 - 1}-0", f"{T0}-0", f"{T0 + 1}-0"]
    for i in ids:
        redis_client.xadd(DLQ_STREAM, {"reason": "x", "payload": i}, id=i)
    SideStreamSpiller(redis_client, tmp_path, maxlen=10).run()
    lake = Lake(tmp_path)
    assert lake.list_days(DLQ_DIR) == [date(2025, 3, 13), DAY]
    assert lake.list_files(lake.side_dir(DLQ_DIR, DAY)) == [f"{T0}-0.parquet"]
    got = list(read_side_entries(tmp_path, DLQ_DIR, since=DAY))
    assert [i.decode() for i, _ in got] == ids[2:]


def test_reconciliation_reads_late_trades_from_the_lake_and_redis_each_once(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    store = CandleStore(redis_client)
    late = lates(40)
    store.write([CandleWrites("md:trades:raw", late=late[:30])])
    spiller = SideStreamSpiller(redis_client, tmp_path, maxlen=10)
    assert spiller.run()[1].trimmed == 20  # 20 only in the lake, 10 in both
    store.write([CandleWrites("md:trades:raw", late=late[30:])])  # 10 only in Redis
    lake = Lake(tmp_path)
    got = late_trades_for_day(redis_client, DAY, lake=lake)
    assert sorted(lt.trade.trade_id for lt in got) == list(range(40))
    assert sorted((lt.trade, lt.windows) for lt in got) == [(lt.trade, lt.windows) for lt in late]
    assert len(late_trades_for_day(redis_client, DAY)) == 20  # Redis alone lost 20
    assert late_trades_for_day(redis_client, date(2025, 3, 15), lake=lake) == []
    assert len(list(read_side_entries(tmp_path, LATE_DIR))) == 30


def test_two_spillers_copy_once(redis_client: redis.Redis, tmp_path: Path) -> None:
    CandleStore(redis_client).write([CandleWrites("md:trades:raw", rejects=rejects(10))])
    first = SideStreamSpiller(redis_client, tmp_path, maxlen=0)
    second = SideStreamSpiller(redis_client, tmp_path, maxlen=0)
    redis_client.set(spill_lock_key(DLQ_STREAM), "another process", px=60_000)
    assert first.run()[0].skipped and second.run()[0].skipped
    assert redis_client.xlen(DLQ_STREAM) == 10
    redis_client.delete(spill_lock_key(DLQ_STREAM))
    assert first.run()[0].copied == 10
    assert second.run()[0].copied == 0
    assert len(list(read_side_entries(tmp_path, DLQ_DIR))) == 10


def test_redis_bounds_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    from marketdata.settings import Settings
    from redisstore.keys import written_key
    from streaming.flows.archive import ArchiveFlowConfig
    from streaming.flows.candles import CandlesFlowConfig

    monkeypatch.setenv("CRYPTOPIPE_SIDE_STREAM_MAXLEN", "5000")
    monkeypatch.setenv("CRYPTOPIPE_CLOSED_EVENTS_MAXLEN", "20000")
    monkeypatch.setenv("CRYPTOPIPE_APPEND_DEDUPE_MS", "3600000")
    settings = Settings.from_env()
    assert (
        settings.side_stream_maxlen,
        settings.closed_events_maxlen,
        settings.append_dedupe_ms,
    ) == (5000, 20000, 3_600_000)
    env = settings.env()
    assert env["CRYPTOPIPE_SIDE_STREAM_MAXLEN"] == "5000"
    assert env["CRYPTOPIPE_APPEND_DEDUPE_MS"] == "3600000"
    candles = CandlesFlowConfig.from_settings(settings)
    assert (candles.closed_events_maxlen, candles.append_dedupe_ms) == (20000, 3_600_000)
    assert ArchiveFlowConfig.from_settings(settings).side_stream_maxlen == 5000
    for var, value, least in (
        ("CRYPTOPIPE_SIDE_STREAM_MAXLEN", "-1", 0),
        ("CRYPTOPIPE_CLOSED_EVENTS_MAXLEN", "10", 1000),
        ("CRYPTOPIPE_APPEND_DEDUPE_MS", "1000", 600000),
    ):
        monkeypatch.setenv(var, value)
        with pytest.raises(ValueError, match=f"{var}={value}: must be at least {least}"):
            Settings.from_env()
        monkeypatch.delenv(var)
    # The store forgets identities older than its dedupe time, and only those.
    store = CandleStore(redis_client, dedupe_ms=3_600_000)
    written = written_key(DLQ_STREAM)
    now = int(redis_client.time()[0]) * 1000
    redis_client.zadd(written, {"old": now - 3_700_000, "recent": now - 3_500_000})
    store.write([CandleWrites("md:trades:raw", rejects=rejects(1))])
    assert redis_client.zscore(written, "old") is None
    assert redis_client.zscore(written, "recent") is not None
