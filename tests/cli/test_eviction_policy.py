"""A Redis that may evict our keys is refused by every writer, in one line."""

from __future__ import annotations

import os

import redis

from tests.processes import run_cryptopipe


def test_writers_refuse_an_evicting_redis(
    redis_url: str, redis_client: redis.Redis, tmp_path
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path)}
    feed = ("feed", "simulate", "--symbols", "BTCUSDT", "--rate", "50", "--duration", "1")
    redis_client.config_set("maxmemory-policy", "volatile-lru")
    try:
        for argv in (feed, ("stream", "run", "candles", "--exit-when-idle", "1")):
            out = run_cryptopipe(env, *argv, timeout=60)
            assert out.returncode != 0, out.stdout
            said = out.stderr.strip().splitlines()
            assert len(said) == 1, out.stderr
            assert "has maxmemory-policy volatile-lru" in said[0]
            assert "CONFIG SET maxmemory-policy noeviction" in said[0]
        assert redis_client.xlen("md:trades:raw") == 0
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
    out = run_cryptopipe(env, *feed, timeout=60)
    assert out.returncode == 0, out.stderr
    assert redis_client.xlen("md:trades:raw") > 0
