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


def test_the_daily_job_runs_every_batch_layer_asset_and_nothing_else() -> None:
    from orchestration.definitions import defs

    job = defs.resolve_job_def("daily_batch_job")
    keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    batch_group = {
        spec.key.to_user_string()
        for spec in defs.resolve_all_asset_specs()
        if spec.group_name == "batch_layer"
    }
    assert (
        keys
        == batch_group
        == {
            "archived_trades",
            "batch_candles",
            "daily_aggregates",
            "stream_candles",
            "reconciliation",
            "served_candles",
        }
    )


def test_the_days_readers_get_are_fresh_by_two_and_gated_by_the_check() -> None:
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    served = dg.AssetKey("served_candles")
    # Downstream of the reconciliation, whose check is blocking: a failing check stops it.
    assert graph.get(served).parent_keys == {dg.AssetKey("reconciliation")}
    (check,) = graph.get(dg.AssetKey("reconciliation")).check_keys
    assert graph.get_check_spec(check).blocking
    for key in ("batch_candles", "reconciliation", "served_candles"):
        policy = graph.get(dg.AssetKey(key)).freshness_policy
        assert policy is not None and policy.deadline_cron == "0 2 * * *", key
