"""The archive flow's logic without bytewax or Redis: buckets, watermark, trim point.

A model lake (file name -> rows, last write wins, partial versions removed) stands
in for the sink, so that crashes (restore an earlier snapshot, read again from its
position) can be replayed many times with different batchings and idle ticks.
"""

from __future__ import annotations

import pickle
import random
import re
from collections import Counter
from dataclasses import replace

import pytest

from lake.arrow import trades_from_table
from lake.layout import SourceRange
from marketdata.parsing import FORMAT_WS
from marketdata.rawmessage import ProgressMark, RawMessage
from marketdata.simulator import KIND_MALFORMED, SimConfig, simulate
from marketdata.trade import Trade
from marketdata.watermark import NEVER, Watermark
from redisstore.streamids import id_ms, join_id, parse_id
from streaming import archive as archive_module
from streaming.archive import (
    ArchiveClock,
    ArchiveConfig,
    ArchiveWork,
    PartitionArchiver,
    _Chunk,
)
from streaming.candleagg import ShardAggregator, WindowConfig
from streaming.fastparse import FastParser

STREAM = "md:trades:raw"
T0 = 1_741_996_000_000  # 2025-03-14T23:46:40Z


def flat_mark(mark: ProgressMark) -> list[bytes]:
    out: list[bytes] = []
    for k, v in mark.to_fields().items():
        out += [k, v]
    return out


def flat(msg: RawMessage) -> list[bytes]:
    out: list[bytes] = []
    for k, v in msg.to_fields().items():
        out += [k, v]
    return out


def entries_of(cfg: SimConfig, id_offset_ms: int = 0) -> tuple[list[bytes], list[list[bytes]]]:
    """Raw-log entries of a simulated market, ids from arrival times (as Redis would)."""
    ids: list[bytes] = []
    fields: list[list[bytes]] = []
    last = (0, -1)
    for m in simulate(cfg):
        ms = m.arrival_ms + id_offset_ms
        nxt = (ms, 0) if ms > last[0] else (last[0], last[1] + 1)
        last = nxt
        ids.append(join_id(*nxt))
        fields.append(
            flat(
                RawMessage(
                    payload=m.payload,
                    exchange=m.exchange,
                    recv_ms=m.arrival_ms,
                    fmt=FORMAT_WS,
                    symbol=m.symbol,
                )
            )
        )
    return ids, fields


def market(seed: int = 1, rate: float = 20.0, duration: float = 400.0) -> SimConfig:
    return SimConfig(
        symbols=("BTCUSDT", "ETHUSDT"),
        rate=rate,
        start_ms=T0,
        duration_s=duration,
        seed=seed,
        out_of_order=0.05,
        duplicates=0.05,
        late=0.01,
        malformed=0.02,
        first_trade_id=T0 * 10,
    )


class ModelLake:
    """What the sink leaves behind: file name -> (trades, rejections), and the keys."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[list[Trade], list[tuple[str, str, bytes]]]] = {}
        self.watermark = NEVER
        self.trimmed = (0, 0)
        self.written_through = (0, 0)

    def apply(self, works: list[ArchiveWork]) -> None:
        for w in works:
            if w.source is not None:
                rejects = [
                    (i, r.reason, r.payload)
                    for i, r in zip(w.rejection_ids, w.rejections, strict=True)
                ]
                name = w.source.file_name
                self.files[name] = (trades_from_table(w.trades), rejects)
                # As the sink: an earlier, partial write of the same bucket goes.
                start = name[: name.rindex("~") + 1]
                for other in [n for n in self.files if n.startswith(start) and n != name]:
                    del self.files[other]
                self.written_through = max(self.written_through, parse_id(w.source.last))
            if w.watermark is not None:
                self.watermark = max(self.watermark, w.watermark)
            if w.trim_minid is not None:
                minid = parse_id(w.trim_minid)
                # Never past what is written.
                assert minid <= (self.written_through[0], self.written_through[1] + 1)
                self.trimmed = max(self.trimmed, minid)

    def trades(self) -> Counter[Trade]:
        return Counter(t for ts, _ in self.files.values() for t in ts)

    def rejects(self) -> Counter[tuple[str, str, bytes]]:
        return Counter(r for _, rs in self.files.values() for r in rs)


def run(
    ids: list[bytes],
    fields: list[list[bytes]],
    cfg: ArchiveConfig,
    rng: random.Random | None,
    *,
    crashes: int = 0,
) -> ModelLake:
    """Feed the entries in random batches with idle ticks; crash and restore ``crashes`` times.

    With ``rng=None``: one batch, no ticks (the clean run).
    """
    lake = ModelLake()
    arch = PartitionArchiver(STREAM, cfg)
    if rng is None:
        lake.apply(arch.process(ids, fields))
        lake.apply(arch.finish(write_open=True))
        return lake
    snapshots: list[tuple[bytes, int]] = [(arch.dumps(), 0)]
    crash_at = sorted(rng.sample(range(1, len(ids)), crashes)) if crashes else []
    pos = 0
    now = 0.0
    while pos < len(ids):
        n = rng.choice([1, 3, 17, 50, 400])
        end = min(len(ids), pos + n)
        lake.apply(arch.process(ids[pos:end], fields[pos:end], None, now))
        pos = end
        now += 0.3
        if rng.random() < 0.3:
            # An idle tick: Redis TIME between this entry and the next one.
            hi = id_ms(ids[pos]) if pos < len(ids) else id_ms(ids[-1]) + 10_000
            lake.apply(arch.process([], [], rng.randint(id_ms(ids[pos - 1]), hi), now))
        if rng.random() < 0.2:
            arch.note_snapshot()
            snapshots.append((arch.dumps(), pos))
        if crash_at and pos >= crash_at[0]:
            crash_at.pop(0)
            # Restored from a committed snapshot (not necessarily the last one).
            k = max(0, len(snapshots) - 1 - rng.randint(0, 1))
            data, pos = snapshots[k]
            del snapshots[k + 1 :]
            arch = PartitionArchiver.loads(data, cfg)
    lake.apply(arch.finish(write_open=True))
    return lake


def expected(cfg: SimConfig) -> tuple[Counter[Trade], Counter[bytes]]:
    msgs = list(simulate(cfg))
    trades = Counter(m.trade for m in msgs if m.kind != KIND_MALFORMED and m.trade is not None)
    bad = Counter(m.payload for m in msgs if m.kind == KIND_MALFORMED)
    return trades, bad


@pytest.mark.parametrize("bucket_ms", [1_000, 10_000, 60_000])
def test_files_do_not_depend_on_batching_ticks_or_crashes(bucket_ms: int) -> None:
    sim = market()
    ids, fields = entries_of(sim)
    cfg = ArchiveConfig(bucket_ms=bucket_ms, trim_guard_snapshots=0)
    clean = run(ids, fields, cfg, None)
    trades, bad = expected(sim)
    assert clean.trades() == trades
    assert Counter(p for _, _, p in clean.rejects()) == bad
    assert sum(trades.values()) > len(set(trades))  # duplicates are kept, once per entry
    # Every bucket is one file, named by its first and last ids.
    buckets = {id_ms(i) // bucket_ms for i in ids}
    assert len(clean.files) == len(buckets)
    for seed in range(6):
        rng = random.Random(seed)
        other = run(ids, fields, cfg, rng, crashes=seed % 4)
        assert other.files.keys() == clean.files.keys(), seed
        for name, (ts, rs) in clean.files.items():
            assert Counter(other.files[name][0]) == Counter(ts)
            assert other.files[name][1] == rs
        assert other.watermark >= clean.watermark  # idle ticks may only add


def test_a_bucket_written_in_slices_is_the_bucket_written_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The flush decodes and parses a bucket a slice at a time (bounded memory); the
    # files, the watermark and the trim points must not depend on the slice size,
    # with crashes and partial writes at end of input in between.
    sim = market(seed=4, rate=60.0, duration=300)
    ids, fields = entries_of(sim)
    cfg = ArchiveConfig(bucket_ms=60_000, trim_guard_snapshots=0)
    whole = run(ids, fields, cfg, random.Random(9), crashes=2)
    for size in (1, 7, 500):
        monkeypatch.setattr(archive_module, "FLUSH_SLICE", size)
        sliced = run(ids, fields, cfg, random.Random(9), crashes=2)
        assert sliced.files == whole.files, size
        assert (sliced.watermark, sliced.trimmed) == (whole.watermark, whole.trimmed)
    assert max(len(ts) for ts, _ in whole.files.values()) > 1_000  # several slices


@pytest.mark.parametrize("cap", [7, 1_000, 50_000])
def test_a_bucket_is_cut_into_files_of_at_most_max_file_entries(cap: int) -> None:
    # A busy bucket is written as consecutive ranges of ``cap`` entries, each as soon
    # as it is full, the same under any batching, ticks and crashes.
    sim = market(seed=5, rate=40.0, duration=150)
    ids, fields = entries_of(sim)
    cfg = ArchiveConfig(bucket_ms=60_000, trim_guard_snapshots=0, max_file_entries=cap)
    clean = run(ids, fields, cfg, None)
    trades, bad = expected(sim)
    assert clean.trades() == trades
    assert Counter(p for _, _, p in clean.rejects()) == bad
    names = set()
    buckets = {id_ms(i) // 60_000 for i in ids}
    for b in sorted(buckets):
        in_bucket = [i for i in ids if id_ms(i) // 60_000 == b]
        for k in range(0, len(in_bucket), cap):
            part = in_bucket[k : k + cap]
            names.add(SourceRange.stream(STREAM, part[0], part[-1]).file_name)
    assert clean.files.keys() == names
    assert len(names) > len(buckets) if cap < 2_000 else len(names) == len(buckets)
    for seed in range(4):
        other = run(ids, fields, cfg, random.Random(seed), crashes=seed)
        assert other.files.keys() == clean.files.keys(), seed
        for name, (ts, rs) in clean.files.items():
            assert Counter(other.files[name][0]) == Counter(ts)
            assert other.files[name][1] == rs
    # The state never holds more than a file's worth of entries.
    arch = PartitionArchiver(STREAM, cfg)
    for k in range(0, len(ids), 333):
        arch.process(ids[k : k + 333], fields[k : k + 333])
        assert arch.open_entries < cap


@pytest.mark.parametrize("cap", [500, 50_000])
def test_end_of_input_writes_the_open_bucket_and_a_later_run_supersedes_it(cap: int) -> None:
    sim = market(duration=120)
    ids, fields = entries_of(sim)
    cfg = ArchiveConfig(bucket_ms=60_000, trim_guard_snapshots=0, max_file_entries=cap)
    clean = run(ids, fields, cfg, None)
    lake = ModelLake()
    arch = PartitionArchiver(STREAM, cfg)
    cut = [len(ids) // 5, len(ids) // 2, len(ids)]
    pos = 0
    for c in cut:
        lake.apply(arch.process(ids[pos:c], fields[pos:c]))
        works = arch.finish(write_open=True)  # --exit-when-idle, then a new run
        assert all(not w.complete for w in works)
        lake.apply(works)
        arch = PartitionArchiver.loads(arch.dumps(), cfg)
        pos = c
    assert lake.files.keys() == clean.files.keys()
    assert lake.trades() == clean.trades()
    # A stop by signal writes nothing: the open bucket stays in the state.
    assert arch.finish(write_open=False) == []
    assert arch.open_entries > 0
    # Killed after writing the open bucket at end of input, before the final snapshot
    # was committed: the restored state knows nothing of that write; the later write
    # of the whole bucket still removes it.
    lake = ModelLake()
    arch = PartitionArchiver(STREAM, cfg)
    lake.apply(arch.process(ids[: len(ids) // 3], fields[: len(ids) // 3]))
    saved = arch.dumps()
    lake.apply(
        arch.process(ids[len(ids) // 3 : len(ids) // 2], fields[len(ids) // 3 : len(ids) // 2])
    )
    lake.apply(arch.finish(write_open=True))
    arch = PartitionArchiver.loads(saved, cfg)
    lake.apply(arch.process(ids[len(ids) // 3 :], fields[len(ids) // 3 :]))
    lake.apply(arch.finish(write_open=True))
    assert lake.files.keys() == clean.files.keys()
    assert lake.trades() == clean.trades()


def test_clock_equals_the_candles_flow_watermark() -> None:
    rng = random.Random(7)
    # A quiet market (gaps beyond the hold) with faults; trades dated far ahead of
    # their venue's clock, some duplicated; progress marks of the market's venue and
    # of a second one, some far ahead. Both refuse the same entries.
    sim = replace(market(seed=3, rate=0.08, duration=8_000), late=0.05)
    ids, fields = entries_of(sim)
    for k in rng.sample(range(len(ids)), 30):
        msg = RawMessage.from_fields(dict(zip(fields[k][::2], fields[k][1::2], strict=True)))
        if msg.payload.startswith(b'{"e":"trade"'):
            t = int(re.search(rb'"T":(\d+)', msg.payload).group(1))  # type: ignore[union-attr]
            ahead = msg.payload.replace(b'"T":%d' % t, b'"T":%d' % (t + 200_000))
            fields[k] = flat(msg._replace(payload=ahead))
            if k + 1 < len(ids):
                fields[k + 1] = fields[k]  # its duplicate, received later
    for k in rng.sample(range(len(ids)), 60):
        venue = rng.choice(["binance", "kraken"])
        ahead = rng.choice([0, 0, 0, 500_000])
        fields[k] = flat_mark(ProgressMark(venue, id_ms(ids[k]) - 3_000 + ahead, id_ms(ids[k])))
    window = WindowConfig(hold_ms=30_000)
    agg = ShardAggregator(STREAM, window)
    clock = ArchiveClock()
    parser = FastParser()
    pos = 0
    refused: list[bytes] = []
    rejected: list[bytes] = []
    while pos < len(ids):
        end = min(len(ids), pos + rng.choice([1, 2, 5, 40]))
        out = agg.process(ids[pos:end], fields[pos:end])
        rejected += [r.entry_id for r in out.rejects if "too far ahead" in r.rejection.detail]
        pb = parser.parse_batch(fields[pos:end])
        refused += [
            ids[pos + i] for i, _ in clock.feed(ids[pos:end], fields[pos:end], pb, 0, window)
        ]
        assert clock.watermark == agg.watermark, pos
        assert clock.clocks.cutoffs() == agg.clocks.cutoffs(), pos
        pos = end
        if rng.random() < 0.3:
            hi = id_ms(ids[pos]) if pos < len(ids) else id_ms(ids[-1]) + 60_000
            tick = rng.randint(id_ms(ids[pos - 1]), hi)
            agg.process([], [], tick)
            clock.tick(tick, window)
            assert clock.watermark == agg.watermark, pos
    assert clock.watermark > NEVER
    assert set(agg.clocks.clocks) == {"binance", "kraken"}
    assert len(refused) > 20 and refused == rejected
    assert agg.counters["marks"] == 60


def test_archive_watermark_never_passes_the_candles_flow_watermark() -> None:
    """What the archive publishes is at most what the candles flow had at that position."""
    sim = market(seed=5, rate=2.0, duration=900)
    ids, fields = entries_of(sim)
    cfg = ArchiveConfig(bucket_ms=5_000, trim_guard_snapshots=0)
    arch = PartitionArchiver(STREAM, cfg)
    agg = ShardAggregator(STREAM, cfg.window)
    rng = random.Random(2)
    pos = 0
    while pos < len(ids):
        end = min(len(ids), pos + rng.choice([1, 7, 30]))
        agg.process(ids[pos:end], fields[pos:end])
        for w in arch.process(ids[pos:end], fields[pos:end]):
            assert w.watermark is None or w.watermark <= agg.watermark
        pos = end
        hi = id_ms(ids[pos]) if pos < len(ids) else id_ms(ids[-1]) + 30_000
        tick = rng.randint(id_ms(ids[pos - 1]), hi)
        agg.process([], [], tick)
        for w in arch.process([], [], tick, float(pos)):
            assert w.watermark is None or w.watermark <= agg.watermark


def test_idle_partitions_advance_with_the_arrival_clock() -> None:
    cfg = ArchiveConfig(bucket_ms=1_000, close_margin_ms=500, trim_guard_snapshots=0)
    lateness, idle = cfg.window.lateness_ms, cfg.window.hold_ms
    # Never carried a trade: follows Redis TIME.
    empty = PartitionArchiver("md:trades:raw:1", cfg)
    (w,) = empty.process([], [], T0, 0.0)
    assert w.watermark == T0 - lateness - idle and w.source is None
    # Caught up after a trade at T0 (arrived at T0): the bucket closes once TIME passes
    # its end plus the margin; the watermark then follows TIME after the hold.
    arch = PartitionArchiver(STREAM, cfg)
    trade = RawMessage(
        b'{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1.00000000","q":"1.00000000",'
        + f'"T":{T0},"m":false,"M":true}}'.encode(),
        "binance",
        T0,
    )
    assert arch.process([join_id(T0, 0)], [flat(trade)], T0 + 1_000, 0.0) == []
    (w,) = arch.process([], [], T0 + 1_500, 1.0)
    assert w.source is not None and w.watermark == T0 - lateness
    later = T0 + idle + 60_000
    (w,) = arch.process([], [], later, 2.0)
    assert w.source is None and w.watermark == later - idle - lateness
    # Not more often than progress_interval_s.
    assert arch.process([], [], later + 5_000, 2.5) == []


def test_trim_point_never_passes_what_is_written_nor_the_guarded_snapshot() -> None:
    sim = market(seed=9, duration=200)
    ids, fields = entries_of(sim)
    cfg = ArchiveConfig(bucket_ms=1_000, retention_ms=0, trim_guard_snapshots=2)
    arch = PartitionArchiver(STREAM, cfg)
    lake = ModelLake()
    snaps: list[int] = []
    pos = 0
    while pos < len(ids):
        end = min(len(ids), pos + 37)
        works = arch.process(ids[pos:end], fields[pos:end])
        lake.apply(works)  # asserts: never past what is written
        for w in works:
            if w.trim_minid is not None:
                # Never past the position of the snapshot two back.
                assert len(snaps) >= 2
                g_ms, g_seq = parse_id(ids[snaps[-2] - 1])
                assert parse_id(w.trim_minid) <= (g_ms, g_seq + 1)
        pos = end
        if pos % 3 == 0:
            arch.note_snapshot()
            snaps.append(pos)
    assert lake.trimmed > (0, 0)
    # With an hour of retention, nothing of these 200 s goes.
    keep = PartitionArchiver(STREAM, replace(cfg, retention_ms=3_600_000, trim_guard_snapshots=0))
    works = keep.process(ids, fields) + keep.finish(write_open=True)
    assert all(w.trim_minid is None or parse_id(w.trim_minid) <= (T0, 0) for w in works)


def test_open_bucket_state_is_compact_and_exact() -> None:
    ids, fields = entries_of(market(duration=30))
    chunk = _Chunk(list(ids), [list(f) for f in fields])
    data = pickle.dumps(chunk)
    back = pickle.loads(data)
    assert back.entries() == (ids, fields)
    assert len(data) < 1.2 * sum(len(b) for f in fields for b in f) + 16 * len(ids)
    # Payloads with separators and binary junk survive too.
    odd_ids = [b"1-0", b"2-0"]
    odd = [[b"payload", b"a b\x00\xff\n", b"exchange", b""], [b"payload", b" "]]
    assert pickle.loads(pickle.dumps(_Chunk(odd_ids, odd))).entries() == (odd_ids, odd)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="divisor of a day"):
        ArchiveConfig(bucket_ms=7_000)
    with pytest.raises(ValueError, match="retention_ms"):
        ArchiveConfig(retention_ms=-1)
    assert SourceRange.stream(STREAM, b"1-0", b"2-3").file_name == (
        "stream~md_trades_raw~1-0~2-3.parquet"
    )


def test_a_venue_appearing_with_older_trades_holds_its_partition_back() -> None:
    """kraken's trades of an hour before binance's, written after them: the partition's
    watermark (what sealing reads) goes back to kraken's clock, then follows it."""
    cfg = ArchiveConfig(bucket_ms=1_000, trim_guard_snapshots=0)
    arch = PartitionArchiver(STREAM, cfg)
    b_ids, b_fields = entries_of(market(seed=1, duration=300))
    works = arch.process(b_ids, b_fields)
    works += arch.process([], [], id_ms(b_ids[-1]) + 5_000, 1.0)
    high = max(w.watermark for w in works if w.watermark is not None)
    assert high > T0 + 200_000
    k_start = T0 - 3_600_000
    k_sim = replace(market(seed=2, duration=60), exchanges=("kraken",), start_ms=k_start)
    k_ids, k_fields = entries_of(k_sim, id_offset_ms=id_ms(b_ids[-1]) + 10_000 - k_start)
    works = arch.process(k_ids, k_fields)
    works += arch.process([], [], id_ms(k_ids[-1]) + 5_000, 2.0)
    marks = [w.watermark for w in works if w.watermark is not None]
    assert marks and min(marks) < k_start + 60_000 and max(marks) < high
    assert arch.watermark == arch.clock.clocks.of("kraken").value


def test_history_written_into_an_idle_partition_is_not_sealed_before_it_is_archived() -> None:
    """An archive flow idle for a while (its watermark following Redis TIME), then old
    history written at full speed: the first file out must not carry a watermark past
    what is written (it used to: the first venue started from the idle ticks' clock,
    which sealed every day of the history before the rest of it was archived)."""
    cfg = ArchiveConfig(bucket_ms=60_000, trim_guard_snapshots=0, max_file_entries=500)
    arch = PartitionArchiver(STREAM, cfg)
    now = T0 + 400 * 86_400_000  # the history is 400 days old
    (idle,) = arch.process([], [], now, 0.0)
    assert idle.watermark == now - cfg.window.lateness_ms - cfg.window.hold_ms
    # Two hours of history, written in half a second (ids at "now").
    ids, fields = entries_of(market(seed=4, rate=2.0, duration=7_200), id_offset_ms=now - T0)
    ids = [join_id(now + i // 4_000, i % 4_000) for i in range(len(ids))]
    works = arch.process(ids, fields)
    written = [w for w in works if w.source is not None]
    assert written and arch.open_entries > 0  # files out, the rest of the bucket open
    for w in written:
        newest = max(trades_from_table(w.trades), key=lambda t: t.event_time).event_time
        assert w.watermark is not None and w.watermark <= newest, "sealed past the files"
    # Once the bucket is written too, the clock is the history's, still not "now".
    (last,) = arch.process([], [], now + 70_000, 1.0)[-1:]
    assert last.watermark is not None and last.watermark < T0 + 7_200_000
    # A bucket not cut at all: written at once all the same (partial, superseded by the
    # complete bucket later), so the venues' clocks replace the idle one now.
    whole = PartitionArchiver(STREAM, replace(cfg, max_file_entries=100_000))
    whole.process([], [], now, 0.0)
    (early,) = whole.process(ids, fields)
    assert early.source is not None and not early.complete and early.entries == len(ids)
    assert early.watermark is not None and early.watermark < T0 + 7_200_000
    # A snapshot taken before this change (the idle ticks in the template) restores with
    # them as the idle floor, and a venue appearing afterwards starts from its own trades.
    old = ArchiveClock()
    old.clocks.template = Watermark()
    old.clocks.template.raise_to(now)
    clock = ArchiveClock()
    clock.__setstate__((old.clocks.__getstate__(),))
    assert clock.idle == now and clock.clocks.template is None
