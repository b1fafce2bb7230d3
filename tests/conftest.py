"""Shared fixtures: a real redis-server on a free port for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cryptopipe.localredis import LocalRedis, free_port
from tests.rediscluster import LocalCluster


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """One real redis-server for the test session."""
    server = LocalRedis(tmp_path_factory.mktemp("redis"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One real 3-master Redis Cluster for the test session (started on first use)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_server: LocalCluster) -> LocalCluster:
    """The session's Redis Cluster, every node emptied before the test."""
    redis_cluster_server.flush()
    return redis_cluster_server


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> Iterator[str]:
    """URL of the session's Redis, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the emptied test Redis."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh ``--home`` directory."""
    return tmp_path / "home"
