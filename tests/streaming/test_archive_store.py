"""The archive sink against a real Redis: trimming keeps up with a busy raw log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lake.arrow import trades_table
from lake.layout import SourceRange
from marketdata.trade import Trade
from redisstore.keys import ARCHIVE_PARTITIONS_KEY, ARCHIVE_WATERMARK_KEY, RAW_STREAM
from redisstore.streamids import join_id
from streaming.archive import ArchiveWork
from streaming.archivestore import ArchiveStore


def test_one_trim_removes_everything_before_the_trim_point(
    redis_client: Any, tmp_path: Path
) -> None:
    # 30,000 entries; trimming to the 25,000th must leave about 5,000 in one call.
    # (With "~" alone Redis stops after 100 nodes, 10,000 entries: a stream fed more
    # than ~170 entries/s, trimmed once a minute, grew without bound; bench/soak.py.)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(30_000):
        pipe.xadd(
            RAW_STREAM, {"payload": b"x" * 150, "exchange": b"binance"}, id=join_id(1000 + i, 0)
        )
    pipe.execute()
    store = ArchiveStore(str(tmp_path / "lake"), redis_client, [RAW_STREAM], durable=False)
    store.publish(
        [ArchiveWork(RAW_STREAM, archived_id=b"28999-0", trim_minid=b"26000-0")], now_ms=0
    )
    left = redis_client.xlen(RAW_STREAM)
    first = redis_client.xrange(RAW_STREAM, count=1)[0][0]
    assert 5_000 <= left <= 5_000 + 100, left  # whole nodes only: at most one node more
    assert first <= b"26000-0"
    assert redis_client.xrange(RAW_STREAM, min="26000-0", count=1)[0][0] == b"26000-0"


def test_a_partition_watermark_follows_the_archived_position(
    redis_client: Any, tmp_path: Path
) -> None:
    """A later position's value replaces the stored one, even lower (a venue appeared
    with older trades); an earlier position's is ignored (a replay after a restore);
    at the same position the value only rises. The archive watermark follows."""
    other = f"{RAW_STREAM}:other"
    store = ArchiveStore(str(tmp_path / "lake"), redis_client, [RAW_STREAM, other], durable=False)

    def publish(stream: str, wm: int, pos: bytes) -> int | None:
        return store.publish([ArchiveWork(stream, archived_id=pos, watermark=wm)], now_ms=0)

    assert publish(RAW_STREAM, 1_000, b"10-0") is None  # the other has published nothing
    assert publish(other, 5_000, b"7-0") == 1_000
    assert publish(RAW_STREAM, 500, b"9-3") == 1_000  # earlier position: a replay
    assert publish(RAW_STREAM, 800, b"10-1") == 800  # later position, lower: held back
    assert publish(RAW_STREAM, 700, b"10-1") == 800  # same position: only rises
    assert publish(RAW_STREAM, 900, b"10-1") == 900
    assert publish(RAW_STREAM, 6_000, b"11-0") == 5_000
    assert int(redis_client.get(ARCHIVE_WATERMARK_KEY)) == 5_000
    assert redis_client.hget(ARCHIVE_PARTITIONS_KEY, f"@{RAW_STREAM}") == b"11-0"


def test_a_lower_watermark_goes_out_before_its_files(redis_client: Any, tmp_path: Path) -> None:
    """Files of older trades are never in the lake under a watermark that says their
    day is sealed: the lowered value is published before the files are written."""
    lake = tmp_path / "lake"
    store = ArchiveStore(str(lake), redis_client, [RAW_STREAM], durable=False)
    assert store.publish([ArchiveWork(RAW_STREAM, archived_id=b"10-0", watermark=9_000)], 0)
    assert int(redis_client.get(ARCHIVE_WATERMARK_KEY)) == 9_000
    lake.mkdir(exist_ok=True)
    (lake / "trades").write_text("not a directory")  # the files cannot be written
    older = ArchiveWork(
        RAW_STREAM,
        source=SourceRange.stream(RAW_STREAM, b"11-0", b"11-0"),
        trades=trades_table([Trade("binance", "BTCUSDT", 1, 10**8, 10**8, 5_000, False)]),
        archived_id=b"11-0",
        watermark=4_000,
    )
    with pytest.raises(OSError):
        store.stage([older])
    # What went out before the files stays: the lower value.
    assert int(redis_client.get(ARCHIVE_WATERMARK_KEY)) == 4_000
    # A higher one waits for its files (publish, after stage).
    assert store.stage([ArchiveWork(RAW_STREAM, archived_id=b"12-0", watermark=20_000)]) == 0
    assert int(redis_client.get(ARCHIVE_WATERMARK_KEY)) == 4_000


def test_two_workers_never_raise_the_watermark_over_a_lowering(
    redis_client: Any, tmp_path: Path
) -> None:
    """Worker A takes the partitions' minimum; worker B then lowers its partition (older
    history arrived) before writing its files; A's minimum, now stale, must not raise
    the archive watermark over B's lowering (it did, for about a second, before)."""
    other = f"{RAW_STREAM}:other"
    streams = [RAW_STREAM, other]
    a = ArchiveStore(str(tmp_path / "lake"), redis_client, streams, durable=False)
    b = ArchiveStore(str(tmp_path / "lake"), redis_client, streams, durable=False)
    a.publish([ArchiveWork(RAW_STREAM, archived_id=b"10-0", watermark=9_000)], 0)
    assert b.publish([ArchiveWork(other, archived_id=b"10-0", watermark=8_000)], 0) == 8_000
    # A's next publication, its snapshot taken now (9,500 and 8,000: minimum 8,000) ...
    stale = a._publish_field(
        keys=[ARCHIVE_PARTITIONS_KEY], args=[RAW_STREAM, 9_500, 11, 0, *streams]
    )
    # ... then B lowers its partition to 3,000 before writing older trades' files ...
    older = ArchiveWork(
        other,
        source=SourceRange.stream(other, b"12-0", b"12-0"),
        archived_id=b"12-0",
        watermark=3_000,
    )
    b.lower_first([older])
    assert int(redis_client.get(ARCHIVE_WATERMARK_KEY)) == 3_000
    # ... and only then does A set the watermark from its snapshot: refused.
    assert a._set_global(stale) == 8_000
    assert int(redis_client.get(ARCHIVE_WATERMARK_KEY)) == 3_000
    # Every later minimum, by either worker, includes B's lowering until its files are in.
    assert a.publish([ArchiveWork(RAW_STREAM, archived_id=b"13-0", watermark=9_900)], 0) == 3_000
    assert b.publish([older], 0) == 3_000
    assert b.publish([ArchiveWork(other, archived_id=b"14-0", watermark=9_000)], 0) == 9_000
