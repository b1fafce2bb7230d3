"""The archive sink against a real Redis: trimming keeps up with a busy raw log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
