"""A Redis that may evict our keys is refused by every writer, in one line."""

from __future__ import annotations

import logging
import os

import pytest
import redis

from marketdata.settings import Settings
from redisstore.conn import connect_settings
from redisstore.keys import RAW_STREAM
from tests.processes import run_cryptopipe

FEED = ("feed", "simulate", "--symbols", "BTCUSDT", "--rate", "50", "--duration", "1")


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_writers_refuse_an_evicting_redis(
    policy: str, redis_url: str, redis_client: redis.Redis, tmp_path
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path)}
    redis_client.config_set("maxmemory-policy", policy)
    try:
        for argv in (FEED, ("stream", "run", "candles", "--exit-when-idle", "1")):
            out = run_cryptopipe(env, *argv, timeout=60)
            assert out.returncode != 0, out.stdout
            said = out.stderr.strip().splitlines()
            assert len(said) == 1, out.stderr
            assert f"has maxmemory-policy {policy}, which can evict the raw log" in said[0]
            assert "CONFIG SET maxmemory-policy noeviction" in said[0]
        assert redis_client.xlen(RAW_STREAM) == 0
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
    out = run_cryptopipe(env, *FEED, timeout=60)
    assert out.returncode == 0, out.stderr
    assert redis_client.xlen(RAW_STREAM) > 0


def test_a_redis_that_hides_its_config_is_accepted_with_a_warning(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # A managed Redis: our user may not run CONFIG (NOPERM), even with an evicting policy.
    redis_client.acl_setuser(
        "app", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-config"]
    )
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        scheme, rest = redis_url.split("://", 1)
        url = f"{scheme}://app:pw@{rest}"
        with caplog.at_level(logging.WARNING, logger="redisstore.conn"):
            client = connect_settings(Settings(redis_url=url), writer=True)
        assert client.ping()
        client.close()
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1
        assert "cannot read maxmemory-policy of" in warned[0]
        assert "app:***@" in warned[0] and "pw@" not in warned[0]
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
        redis_client.acl_deluser("app")
