"""Spark's local JVM runs at batch priority; the process that asked for it does not."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from pyspark import SparkContext

from batch.spark import BATCH_NICENESS, SparkConfig, build_session, lower_priority
from tests.batch.test_spark_connect import niceness_of_threads


def test_the_local_jvm_runs_below_the_live_path() -> None:
    # A session of its own (the shared fixture's may have been stopped by a test
    # before): build_session reuses the process's JVM, or starts one.
    spark = build_session(SparkConfig(master="local[2]"))
    spark.range(1000).selectExpr("sum(id)").collect()  # threads started for a job, too
    gateway = SparkContext._gateway
    assert gateway is not None
    assert niceness_of_threads(gateway.proc.pid) == {BATCH_NICENESS}
    assert niceness_of_threads(os.getpid()) == {0}


def test_lower_priority_takes_every_thread_and_is_idempotent() -> None:
    # A child with a few threads of its own.
    code = (
        "import threading, time\n"
        "for _ in range(3):\n"
        "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{child.pid}/task")) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert niceness_of_threads(child.pid) == {0}
        assert lower_priority(child.pid) == 4
        assert niceness_of_threads(child.pid) == {BATCH_NICENESS}
        assert lower_priority(child.pid) == 0  # already there
        assert lower_priority(2**22 + 7) == 0  # no such process: nothing, no error
        assert threading.current_thread().name  # this process untouched
        assert niceness_of_threads(os.getpid()) == {0}
    finally:
        child.kill()
        child.wait()
