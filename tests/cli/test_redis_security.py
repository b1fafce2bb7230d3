"""Redis with an ACL user and with TLS, end to end through the command line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cryptopipe.localredis import LocalRedis, TlsFiles, free_port
from redisstore.conn import redact

SECRET = "s3cr3t-Pa55word"


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = LocalRedis(
        tmp_path_factory.mktemp("acl"), free_port(), username="feeder", password=SECRET
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    d = tmp_path_factory.mktemp("tls")
    server = LocalRedis(
        d / "data",
        free_port(),
        username="feeder",
        password=SECRET,
        tls=TlsFiles.self_signed(d / "pki"),
    ).start()
    yield server
    server.stop()


def simulate(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cryptopipe",
            "-v",
            "feed",
            "simulate",
            "--redis-url",
            url,
            "--duration",
            "20",
            "--rate",
            "50",
            "--speed",
            "max",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_acl_user_end_to_end_and_no_secret_in_output(acl_redis: LocalRedis) -> None:
    assert acl_redis.url.startswith("redis://feeder:")
    out = simulate(acl_redis.url)
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout + out.stderr
    client = redis.Redis.from_url(acl_redis.url)
    assert client.xlen("md:trades:raw") > 500
    # The default user is off: no anonymous access.
    anon = redis.Redis(port=acl_redis.port)
    with pytest.raises(redis.AuthenticationError):
        anon.xlen("md:trades:raw")


def test_wrong_password_is_one_clear_line(acl_redis: LocalRedis) -> None:
    url = acl_redis.url.replace(SECRET, "wrong-" + SECRET)
    out = simulate(url)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "refused the credentials" in out.stderr
    assert SECRET not in out.stderr


def test_tls_end_to_end(tls_redis: LocalRedis) -> None:
    assert tls_redis.url.startswith("rediss://")
    out = simulate(tls_redis.url)
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout + out.stderr
    assert redis.Redis.from_url(tls_redis.url).xlen("md:trades:raw") > 500
    # Plain TCP to the TLS port does not get in.
    plain = tls_redis.url.replace("rediss://", "redis://").split("?")[0]
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=2).ping()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
        ("rediss://:pw@h:1/0", "rediss://:***@h:1/0"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("redis://u:p@ss@h:1/0", "redis://u:***@h:1/0"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_bad_url_is_one_clear_line(tmp_path: Path) -> None:
    out = simulate("http://nowhere")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "redis://" in out.stderr
