"""The daily batch through a real local Spark Connect server (batch.connect_server).

The ``batch run`` process is a Connect client only: ``CRYPTOPIPE_SPARK_MASTER=sc://...``
and nothing else changes; its candles must equal the reference exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batch.connect_server import ConnectServer, ConnectServerError
from batch.spark import connect_address, is_connect
from cryptopipe.localredis import free_port
from tests.batch.remote_batch import run_batch_on
from tests.processes import run_cryptopipe


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectServer]:
    logs = tmp_path_factory.mktemp("spark-connect")
    with ConnectServer(free_port(), logs / "connect.log") as srv:
        yield srv
    assert not srv.alive()


@pytest.mark.slow
def test_daily_batch_runs_through_spark_connect(server: ConnectServer, tmp_path: Path) -> None:
    summary = run_batch_on(server.url, tmp_path)
    assert summary["trades"] > 0 and summary["duplicates"] > 0
    assert server.alive()


@pytest.mark.slow
def test_a_second_server_on_a_taken_port_is_refused(server: ConnectServer, tmp_path: Path) -> None:
    with pytest.raises(ConnectServerError, match="taken"):
        ConnectServer(server.port, tmp_path / "other.log").start()


def test_no_server_at_the_url_fails_in_one_line(tmp_path: Path) -> None:
    url = f"sc://127.0.0.1:{free_port()}"
    out = run_cryptopipe(
        {"CRYPTOPIPE_HOME": str(tmp_path), "CRYPTOPIPE_SPARK_MASTER": url, "PATH": "/usr/bin:/bin"},
        *("batch", "run", "--date", "2025-03-14", "--force"),
        timeout=60,
    )
    assert out.returncode != 0
    assert f"no Spark Connect server answers at {url}" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_connect_urls() -> None:
    assert is_connect("sc://127.0.0.1:15010") and not is_connect("local[2]")
    assert connect_address("sc://127.0.0.1:15010") == ("127.0.0.1", 15010)
    assert connect_address("sc://spark.example/;token=x") == ("spark.example", 15002)
    assert connect_address("sc://h:7/;use_ssl=true") == ("h", 7)
