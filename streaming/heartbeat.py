"""Per-flow heartbeat hashes in Redis (DESIGN.md sections 6 and 7).

Key ``md:flow:<name>:heartbeat``; fields ``pid``, ``started_at`` and
``heartbeat_at`` (ms since the epoch), ``items_in``, ``items_out``,
``last_source_id``, ``lag`` (entries behind the stream tip) and ``restarts``.
"""

from __future__ import annotations

import redis


def heartbeat_key(name: str) -> str:
    """Redis key of the heartbeat hash of flow ``name``."""
    return f"md:flow:{name}:heartbeat"


def read_heartbeat(client: redis.Redis, name: str) -> dict[str, str] | None:
    """The heartbeat hash of ``name`` as strings, or ``None`` if it never beat."""
    raw = client.hgetall(heartbeat_key(name))
    if not raw:
        return None
    return {k.decode(): v.decode() for k, v in raw.items()}
