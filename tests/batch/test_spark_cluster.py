"""The daily batch on a real standalone Spark cluster (master + worker on localhost).

Started from the pyspark distribution's own ``bin/spark-class``; the same command as
in local mode, with only ``CRYPTOPIPE_SPARK_MASTER`` pointing at the cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyspark
import pytest

from cryptopipe.localredis import free_port
from tests.batch.remote_batch import run_batch_on

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
    run_batch_on(url, tmp_path)
    # It really ran on the cluster: the worker ran executors of an application.
    assert list(work.glob("app-*")), "the worker ran no application"
