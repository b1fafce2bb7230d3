"""What the raw log holds right now (for status displays)."""

from __future__ import annotations

from typing import Any

import redis

from redisstore.conn import text
from redisstore.keys import RAW_SHARD_PATTERN, RAW_STREAM, is_raw_shard


def raw_log_summary(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Per raw-log stream (``md:trades:raw`` and shards present): length, first and last id."""
    names = [RAW_STREAM]
    for key in client.scan_iter(match=RAW_SHARD_PATTERN, count=1000, _type="stream"):
        name = text(key)
        if is_raw_shard(name):
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
