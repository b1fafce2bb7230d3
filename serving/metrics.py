"""The latest metrics and spreads of a symbol, read from Redis (``cryptopipe metrics``)."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from marketdata.instruments import Series, SpreadRules
from redisstore.conn import text
from redisstore.keys import history_key, metrics_key, spread_key


def read_metrics(client: redis.Redis, symbol: str, exchange: str) -> dict[str, Any] | None:
    """The latest metrics of one (exchange, symbol), typed as written, or ``None``."""
    raw = client.hgetall(metrics_key(exchange, symbol))
    if not raw:
        return None
    return {text(k): orjson.loads(v) for k, v in raw.items()}


def read_history(
    client: redis.Redis,
    symbol: str,
    exchange: str,
    *,
    start: int | None = None,
    end: int | None = None,
) -> list[dict[str, Any]]:
    """The metrics of each closed 1m candle of (exchange, symbol) kept in the history.

    In open-time order; ``start`` inclusive, ``end`` exclusive.
    """
    lo = "-inf" if start is None else start
    hi = "+inf" if end is None else f"({end}"
    rows: list[Any] = client.zrangebyscore(history_key(exchange, symbol), lo, hi)
    return [orjson.loads(r) for r in rows]


def metrics_exchanges(client: redis.Redis, symbol: str) -> list[str]:
    """Exchanges with latest metrics for ``symbol``."""
    prefix = metrics_key("", symbol)
    out = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        rest = text(key)[len(prefix) :]
        if rest and ":" not in rest:
            out.append(rest)
    return sorted(out)


#: Closed 1m candles each indicator needs before it has a value (TA-Lib's warm-up):
#: EMA n needs n; RSI 14 needs 14 changes, so 15 closes; the MACD signal is an EMA 9
#: of the MACD, which starts with EMA 26: 26 + 9 - 1.
WARM_UP_CANDLES = {"ema_12": 12, "ema_26": 26, "macd": 26, "rsi_14": 15, "macd_signal": 34}


def candles_seen(client: redis.Redis, symbol: str, exchange: str) -> int:
    """How many closed candles the metrics of (exchange, symbol) have seen.

    Counted in the history, which keeps far more than any warm-up needs.
    """
    return int(client.zcard(history_key(exchange, symbol)))


def warming_up(metrics: dict[str, Any], seen: int) -> dict[str, int]:
    """Indicators still without a value: name -> closed candles it needs in all."""
    return {k: n for k, n in WARM_UP_CANDLES.items() if metrics.get(k) is None and seen < n}


def read_spreads(
    client: redis.Redis, rules: SpreadRules, symbol: str, exchanges: list[str]
) -> list[dict[str, Any]]:
    """The latest spreads the series ``exchange:symbol`` of each of ``exchanges`` is in.

    Spreads live per base currency (``md:spread:{BASE}``); the series' base comes from
    ``rules`` (the settings' instruments, as the metrics flow's). Ordered by ``a``,
    then ``b``; a series with no instrument has none.
    """
    names = {Series(ex, symbol).name for ex in exchanges}
    bases = {b for ex in exchanges if (b := rules.base_of(Series(ex, symbol))) is not None}
    out = []
    for base in sorted(bases):
        for field, value in client.hgetall(spread_key(base)).items():
            a, _, b = text(field).partition("|")
            if a in names or b in names:
                out.append(orjson.loads(value))
    return sorted(out, key=lambda s: (s["a"], s["b"]))
