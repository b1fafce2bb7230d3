"""What the raw log holds right now (for status displays), and shards left under old names."""

from __future__ import annotations

from typing import Any

import redis

from redisstore.conn import RedisUnavailableError, text
from redisstore.keys import RAW_SHARD_PATTERN, RAW_STREAM, is_raw_shard, legacy_raw_shard


def raw_log_summary(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Per raw-log stream (``md:trades:raw`` and shards present): length, first and last id."""
    names = [RAW_STREAM]
    for key in client.scan_iter(match=RAW_SHARD_PATTERN, count=1000, _type="stream"):
        name = text(key)
        if is_raw_shard(name) or legacy_raw_shard(name):
            names.append(name)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(names)):
        if not client.exists(name):
            continue
        info = client.xinfo_stream(name)
        first, last = info.get("first-entry"), info.get("last-entry")
        out[name] = {
            "length": int(info["length"]),
            "first_id": first[0].decode() if first else None,
            "last_id": last[0].decode() if last else None,
        }
    return out


def refuse_legacy_shards(client: redis.Redis) -> None:
    """Refuse to run while shards named ``md:trades:raw:<n>`` (before hash tags) hold entries.

    The shards are ``md:trades:raw:<n>{<tag>}`` now (docs/storage.md): the flows no
    longer read the old streams, so what they still hold would be left behind.

    Raises:
        RedisUnavailableError: naming the streams and what to do.

    """
    left = {
        name: n
        for key in client.scan_iter(match=RAW_SHARD_PATTERN, count=1000, _type="stream")
        if legacy_raw_shard(name := text(key)) and (n := int(client.xlen(name)))
    }
    if left:
        listed = ", ".join(f"{k} ({v} entries)" for k, v in sorted(left.items()))
        msg = (
            f"the raw log's shards are named {RAW_STREAM}:<n>{{<tag>}} now, but {listed} "
            "still hold entries under the old names: run the previous version's candles "
            "and archive flows with --exit-when-idle until they have read them (the "
            "archive watermark past their last entry), then delete those streams"
        )
        raise RedisUnavailableError(msg)
