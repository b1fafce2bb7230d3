"""Redis Cluster: ``REDIS_URL`` pointing at one node of a real 3-master cluster just works.

The cluster is real (``tests/rediscluster.py``: redis-server in cluster mode,
``redis-cli --cluster create``). The end-to-end test (slow) runs replay -> candles ->
metrics -> archive -> batch -> reconcile on it with raw-log shards on every node,
and reads the result through ``cryptopipe candles`` and Dagster.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import pytest
import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import CrossSlotTransactionError
from test_candles_cli import flow_env, stored
from test_venue_clocks import DAY, SYMBOLS, recording

from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.settings import Settings
from redisstore.cluster import is_cluster, node_connection, primaries
from redisstore.conn import RedisUnavailableError, connect, connect_settings
from redisstore.keys import (
    RAW_STREAM,
    metrics_key,
    raw_shard_slots,
    raw_stream_names,
    written_key,
)
from tests.processes import cryptopipe_ok
from tests.rediscluster import LocalCluster


def master_of(slot: int, masters: int = 3) -> int:
    """Which of ``masters`` equal slot ranges (``redis-cli --cluster create``'s) holds ``slot``."""
    return min(masters - 1, slot * masters // REDIS_CLUSTER_HASH_SLOTS)


@pytest.mark.parametrize("shards", [4, 6, 8, 9])
def test_the_raw_log_shards_spread_over_the_primaries(shards: int) -> None:
    names = raw_stream_names(shards)
    # The contract's names (md:trades:raw:<n>), each in the slot of its own name ...
    assert names == [f"{RAW_STREAM}:{n}" for n in range(shards)]
    slots = raw_shard_slots(shards)
    assert slots == [key_slot(n.encode()) for n in names]
    # ... which from 4 shards on puts one on every primary of a 3-master cluster
    assert {master_of(s) for s in slots} == {0, 1, 2}
    # and what goes beside a stream shares its slot
    for name in [*names, "md:trades:dlq", "md:candles:closed"]:
        assert key_slot(written_key(name).encode()) == key_slot(name.encode())


def test_a_cluster_node_is_detected_and_served_like_one_redis(
    redis_cluster: LocalCluster, redis_url: str
) -> None:
    client = connect(redis_cluster.url)
    assert is_cluster(client) and not is_cluster(connect(redis_url))
    assert len(primaries(client)) == 3
    # a transaction must stay in one slot: one that does not fails loudly
    pipe = client.pipeline()
    pipe.set("{a}:x", 1).incr("{a}:y", 2)
    assert pipe.execute()[-1] == 2
    pipe = client.pipeline()
    pipe.set("a", 1).set("b", 2)
    with pytest.raises(CrossSlotTransactionError):
        pipe.execute()
    # scripts run in a non-transactional pipeline on whichever node serves their keys
    script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    keys = [f"k{i}" for i in range(12)]
    assert len({redis_cluster.port_of(k) for k in keys}) == 3
    pipe = client.pipeline(transaction=False)
    for k in keys:
        script(keys=[k], args=[5], client=pipe)
    assert pipe.execute() == [5] * 12
    assert sorted(client.scan_iter(match="k*")) == sorted(k.encode() for k in keys)
    # the node connection of a key talks to its node, and says when a key is elsewhere
    stream = raw_stream_names(2)[1]
    node = node_connection(connect(redis_cluster.url), stream)
    node.xadd(stream, {"f": "v"})
    assert node.connection_pool.get_connection().port == redis_cluster.port_of(stream)
    other = next(k for k in keys if redis_cluster.port_of(k) != redis_cluster.port_of(stream))
    with pytest.raises(redis.ConnectionError, match="served by another node"):
        node.get(other)
    node.close()


def test_a_node_connection_follows_its_slot_to_another_node(redis_cluster: LocalCluster) -> None:
    key = "{follow}:stream"
    node = node_connection(connect(redis_cluster.url), key)
    assert node.xlen(key) == 0
    home = next(n for n in redis_cluster.nodes if n.port == redis_cluster.port_of(key))
    away = next(n for n in redis_cluster.nodes if n is not home)
    redis_cluster.move_slot(key, away)
    try:
        # MOVED: an outage to the caller (as the stream source takes it), the
        # connection dropped; the next call finds the new node and the write lands there
        with pytest.raises(redis.ConnectionError, match="served by another node"):
            node.xadd(key, {"f": "v"})
        node.xadd(key, {"f": "v"})
        assert connect(away.url, cluster=False).xlen(key) == 1
    finally:
        node.delete(key)
        redis_cluster.move_slot(key, home)
    node.close()


def test_every_primary_must_never_evict(redis_cluster: LocalCluster) -> None:
    settings = Settings(redis_url=redis_cluster.url)
    connect_settings(settings, writer=True).close()
    last = redis_cluster.nodes[2]
    plain = connect(last.url, cluster=False)
    plain.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(RedisUnavailableError, match=f":{last.port}, has maxmemory-policy"):
            connect_settings(settings, writer=True)
    finally:
        plain.config_set("maxmemory-policy", "noeviction")


@pytest.mark.slow
def test_replay_to_reconciliation_on_a_cluster_is_exact(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    """Every layer against one node's URL; the raw log's shards on every node."""
    began = time.monotonic()
    # 9 shards: BTCUSDT's is shard 3, ETHUSDT's shard 0, on two different primaries
    # (the others carry only marks)
    env = flow_env(redis_cluster.url, tmp_path / "home", CRYPTOPIPE_RAW_SHARDS="9")
    trades = recording(tmp_path / "day.jsonl", seconds=150, per_second=8, seed=18)
    cryptopipe_ok(env, "feed", "replay", str(tmp_path / "day.jsonl"), "--format", "binance-ws")
    client = connect(redis_cluster.url)
    shards = raw_stream_names(9)
    with_trades = [s for s in shards if client.xlen(s) > 1]
    assert with_trades == [shards[0], shards[3]], {s: client.xlen(s) for s in shards}
    assert len({redis_cluster.port_of(s) for s in with_trades}) == 2, "both on one node"
    assert {redis_cluster.port_of(s) for s in shards} == {n.port for n in redis_cluster.nodes}
    for flow in ("candles", "metrics", "archive"):
        cryptopipe_ok(env, "stream", "run", flow, "--exit-when-idle", "2", timeout=300)
    expected = {k: c.fields() for iv in Interval for k, c in fold_trades(trades, iv).items()}
    assert stored(client, set(SYMBOLS)) == expected
    last_1m = max(k[3] for k in expected if k[1] == "BTCUSDT" and k[2] == "1m")
    assert client.hget(metrics_key("binance", "BTCUSDT"), "open_time") == str(last_1m).encode()

    cryptopipe_ok(env, "batch", "run", "--date", DAY, "--force", timeout=600)
    report = json.loads(cryptopipe_ok(env, "reconcile", "--date", DAY, "--format", "json"))
    counts = {k: v for k, v in report["counts"].items() if v}
    assert counts == {"match": len(expected)}, report
    # the reconciled day is served from the batch, equal to the stream's
    out = cryptopipe_ok(env, "candles", "BTCUSDT", "--interval", "1m", "--format", "json")
    rows = [json.loads(line) for line in out.splitlines()]
    btc_1m = sorted(k[3] for k in expected if k[1] == "BTCUSDT" and k[2] == "1m")
    assert [r["open_time"] for r in rows] == btc_1m
    assert {r["source"] for r in rows} == {"batch"}

    from orchestration.resources import PipelineResource
    from orchestration.speed_layer.assets import raw_log_stats

    result = dg.materialize(
        [raw_log_stats], resources={"pipeline": PipelineResource(redis_url=redis_cluster.url)}
    )
    (mat,) = result.asset_materializations_for_node("raw_log")
    assert set(mat.metadata["streams"].value) == set(shards)
    assert mat.metadata["entries"].value == sum(client.xlen(s) for s in shards)
    client.close()
    print(f"replay to reconciliation on a cluster: {time.monotonic() - began:.1f} s")
