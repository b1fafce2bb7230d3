"""The daily batch through a real local Spark Connect server (batch.connect_server).

The ``batch run`` process is a Connect client only: ``CRYPTOPIPE_SPARK_MASTER=sc://...``
and nothing else changes; its candles must equal the reference exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch.connect_server import ConnectServer, ConnectServerError
from batch.spark import BATCH_NICENESS, connect_address, is_connect
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


def niceness_of_threads(pid: int) -> set[int]:
    """The niceness of every thread of ``pid`` (``/proc/PID/task/TID/stat``, field 19)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        out.add(int(stat[stat.rindex(")") + 2 :].split()[16]))
    return out


@pytest.mark.slow
def test_the_server_runs_below_the_live_path(server: ConnectServer) -> None:
    # Every thread of its JVM, also those started for the jobs run meanwhile.
    assert server.pid is not None
    assert niceness_of_threads(server.pid) == {BATCH_NICENESS}
    assert niceness_of_threads(os.getpid()) == {0}  # the caller keeps its priority


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
