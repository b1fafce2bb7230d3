"""``cryptopipe status`` shows entries a flow lost (trimmed before it read them)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import redis

from cryptopipe.cli import main
from redisstore.keys import heartbeat_key


def test_lost_entries_are_shown(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    beat = {"pid": os.getpid(), "heartbeat_at": int(time.time() * 1000), "lost_entries": 7}
    redis_client.hset(heartbeat_key("archive"), mapping=beat)
    common = ["--redis-url", redis_url, "--home", str(tmp_path)]
    assert main(["status", "--format", "json", *common]) == 0
    rows = {r["flow"]: r for r in json.loads(capsys.readouterr().out)["flows"]}
    assert rows["archive"]["lost_entries"] == 7 and rows["candles"]["lost_entries"] == 0
    assert rows["archive"]["reason"] == "started outside the supervisor"
    assert main(["status", *common]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "lost" in table[0].split()
    archive = next(line for line in table if line.startswith("archive"))
    assert " 7 " in f" {archive} "


def test_status_exits_1_when_a_flow_is_not_healthy(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from marketdata.settings import Settings
    from redisstore.keys import control_key
    from streaming.supervisor import Supervisor

    common = ["--redis-url", redis_url, "--home", str(tmp_path)]
    assert main(["status", *common]) == 0  # nothing wanted, nothing running: healthy
    capsys.readouterr()
    sup = Supervisor(Settings(redis_url=redis_url, home=tmp_path), redis_client)
    sup.want("candles")
    redis_client.hset(control_key("candles"), "started_at_ms", int(time.time() * 1000))
    assert sup.status("candles").state == "dead"  # wanted, started once, no process
    assert main(["status", *common]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "not healthy: candles"
    assert main(["status", "--format", "json", *common]) == 1
    rows = {r["flow"]: r for r in json.loads(capsys.readouterr().out)["flows"]}
    assert rows["candles"]["state"] == "dead"


def test_version_is_the_packages(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    from tests.processes import ROOT

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"cryptopipe {declared}"
