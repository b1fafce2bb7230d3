"""End to end: ``cryptopipe up`` with Dagster's daemon supervising real flows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from cryptopipe.localredis import free_port
from tests.processes import leftovers


def log_tails(home: Path, lines: int = 25) -> str:
    """The end of every log ``up`` and the flows wrote (what a timeout shows)."""
    out = []
    for path in sorted((home / "run" / "logs").glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(tail))
    return "\n".join(out)


def wait_for(
    pred: Callable[[], object], timeout: float, what: str, home: Path | None = None
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(1.0)
    logs = f"\n{log_tails(home)}" if home is not None else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{logs}")


@pytest.mark.slow
def test_up_sensor_starts_flows_and_restarts_a_killed_one(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = {**os.environ, "REDIS_URL": url, "CRYPTOPIPE_HOME": str(tmp_path)}
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cryptopipe",
            "up",
            "--rate",
            "40",
            "--dagster-port",
            str(free_port()),
            "--for",
            "400",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def status(name: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "cryptopipe", "stream", "status", name, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        return json.loads(out.stdout)[0] if out.returncode == 0 else {}

    try:
        first = wait_for(
            lambda: (s := status("candles")).get("state") == "running" and s,
            120,
            "the sensor to start the candles flow",
            tmp_path,
        )
        client = redis.Redis.from_url(url)
        live = "md:candles:{BTCUSDT}:binance:live"
        wait_for(lambda: client.exists(live), 60, "live candles", tmp_path)
        closed_key = "md:candles:{BTCUSDT}:binance:1m"
        wait_for(lambda: client.hlen(closed_key) >= 1, 90, "a closed 1m candle", tmp_path)
        before = client.hgetall(closed_key)
        os.kill(first["pid"], signal.SIGKILL)
        again = wait_for(
            lambda: (
                (s := status("candles")).get("state") == "running"
                and s.get("pid") != first["pid"]
                and s
            ),
            60,
            "the sensor to restart the killed flow",
            tmp_path,
        )
        assert int(again["restarts"]) >= 1
        # Candles written before the kill are intact (idempotent rewrites at most).
        after = client.hgetall(closed_key)
        assert all(after[k] == v for k, v in before.items())
        wait_for(
            lambda: client.hlen(closed_key) > len(before), 90, "new candles after restart", tmp_path
        )
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
    assert up.returncode == 0, up.stdout.read() if up.stdout else ""

    # Processes still exiting get a moment; anything alive after that is a leak.
    left = leftovers(str(tmp_path), grace_s=15)
    assert left == "", left
