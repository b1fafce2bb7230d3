"""The latest metrics of a symbol, read from Redis (``cryptopipe metrics``)."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from redisstore.conn import text
from redisstore.keys import metrics_key


def read_metrics(client: redis.Redis, symbol: str, exchange: str) -> dict[str, Any] | None:
    """The latest metrics of one (exchange, symbol), typed as written, or ``None``."""
    raw = client.hgetall(metrics_key(exchange, symbol))
    if not raw:
        return None
    return {text(k): orjson.loads(v) for k, v in raw.items()}


def metrics_exchanges(client: redis.Redis, symbol: str) -> list[str]:
    """Exchanges with latest metrics for ``symbol``."""
    prefix = metrics_key("", symbol)
    out = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        rest = text(key)[len(prefix) :]
        if rest and ":" not in rest:
            out.append(rest)
    return sorted(out)
