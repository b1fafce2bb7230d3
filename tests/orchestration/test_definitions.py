"""The Dagster code location loads, validates and runs against a real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import redis

from marketdata.rawmessage import RawMessage
from streaming.rawlog import RawLogWriter

ROOT = Path(__file__).resolve().parents[2]


def test_workspace_validates() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:6379/0"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "realtime_crypto_pipeline" in out.stdout + out.stderr


def test_raw_log_stats_materializes(redis_url: str, redis_client: redis.Redis) -> None:
    from orchestration.resources import PipelineResource
    from orchestration.speed_layer.assets import raw_log_stats

    RawLogWriter(redis_client).write([RawMessage(b"{}", "binance", 1)] * 7)
    result = dg.materialize(
        [raw_log_stats], resources={"pipeline": PipelineResource(redis_url=redis_url)}
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node("raw_log")
    assert mat.metadata["entries"].value == 7
