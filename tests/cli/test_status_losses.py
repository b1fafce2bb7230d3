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
