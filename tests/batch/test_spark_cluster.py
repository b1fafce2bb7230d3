"""The daily batch on a real standalone Spark cluster (master + worker on localhost).

Started from the pyspark distribution's own ``bin/spark-class``; the same command as
in local mode, with only ``CRYPTOPIPE_SPARK_MASTER`` pointing at the cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pyspark
import pytest

from cryptopipe.localredis import free_port
from lake.candles import read_day_candles
from lake.layout import SourceRange
from lake.writer import LakeWriter
from marketdata.candle import fold_trades
from marketdata.interval import ALL_INTERVALS
from marketdata.records import SOURCE_BATCH
from marketdata.simulator import SimConfig, simulate

DAY = date(2025, 3, 14)
SPARK_HOME = Path(pyspark.__file__).parent


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"nothing listens on {port} after {timeout:.0f}s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    logs = tmp_path_factory.mktemp("spark-cluster")
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_WORKER_DIR": str(logs / "work"),
        "PYSPARK_PYTHON": sys.executable,
    }
    port, ui, wui = free_port(), free_port(), free_port()
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    spark_class,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--webui-port",
                    str(ui),
                ],
                env=env,
                stdout=(logs / "master.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        _wait_port(port, 60)
        url = f"spark://127.0.0.1:{port}"
        procs.append(
            subprocess.Popen(
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    url,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    "2",
                    "--memory",
                    "2g",
                    "--webui-port",
                    str(wui),
                ],
                env=env,
                stdout=(logs / "worker.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        deadline = time.monotonic() + 60
        while b"Successfully registered with master" not in (logs / "worker.log").read_bytes():
            assert time.monotonic() < deadline, (logs / "worker.log").read_text()[-2000:]
            time.sleep(0.5)
        yield url, logs / "work"
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.slow
def test_daily_batch_runs_on_a_standalone_cluster(
    cluster: tuple[str, Path], tmp_path: Path
) -> None:
    url, work = cluster
    cfg = SimConfig(
        symbols=("BTCUSDT", "ETHUSDT"),
        rate=20,
        duration_s=7200,
        seed=8,
        start_ms=1_741_910_400_000,
        duplicates=0.02,
        out_of_order=0.05,
    )
    trades = [m.trade for m in simulate(cfg) if m.trade is not None]
    lake = tmp_path / "lake"
    LakeWriter(lake).write_trades(trades, source=SourceRange.rows("cluster-test", 1, len(trades)))
    env = {
        **os.environ,
        "CRYPTOPIPE_HOME": str(tmp_path),
        "CRYPTOPIPE_SPARK_MASTER": url,
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cryptopipe",
            "batch",
            "run",
            "--date",
            str(DAY),
            "--force",
            "--format",
            "json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["date"] == str(DAY)
    expected = {}
    for iv in ALL_INTERVALS:
        expected.update(fold_trades(trades, iv))
    got = read_day_candles(lake, SOURCE_BATCH, DAY)
    assert got is not None
    assert {k: c.fields() for k, c in got.items()} == {k: c.fields() for k, c in expected.items()}
    # It really ran on the cluster: the worker ran executors of an application.
    assert list(work.glob("app-*")), "the worker ran no application"
