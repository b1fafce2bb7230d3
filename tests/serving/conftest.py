"""A real ``cryptopipe serve`` process for the serving tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cryptopipe.localredis import free_port
from tests.processes import ROOT


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    env = {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path)}
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cryptopipe", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(base + "/api/symbols", timeout=2)
            break
        except requests.ConnectionError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the server did not answer within 30 s"
            time.sleep(0.2)
    yield base, env
    proc.terminate()
    proc.wait(10)
