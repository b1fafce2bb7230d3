"""The daily batch assets with real Spark (local mode), real Redis and a real lake."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest
import redis

from lake.layout import SourceRange
from lake.writer import LakeWriter
from orchestration.batch_layer.assets import (
    archived_trades,
    daily_batch,
    reconciliation,
    stream_candles,
)
from orchestration.resources import PipelineResource, SparkResource
from redisstore.keys import ARCHIVE_WATERMARK_KEY
from tests.batch.test_reconcile_day import DAY, run_stream, valid_trades

SEALED = 1_742_083_200_000  # 2025-03-16T00:00:00Z: past 2025-03-15 00:00 + lateness


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path / "home")}


def materialize(env: dict[str, str], assets: list, **config: object) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {"daily_batch": {"config": config}}} if config else None
    return dg.materialize(
        assets,
        partition_key=str(DAY),
        resources={
            "pipeline": PipelineResource(redis_url=env["REDIS_URL"], home=env["CRYPTOPIPE_HOME"]),
            "spark": SparkResource(master="local[2]"),
        },
        run_config=run_config,
        raise_on_error=False,
    )


def archive(env: dict[str, str]) -> None:
    trades = valid_trades()
    LakeWriter(Path(env["CRYPTOPIPE_HOME"]) / "lake").write_trades(
        trades, source=SourceRange.rows("test-day", 1, len(trades))
    )


@pytest.mark.slow
def test_batch_then_reconciliation_passes_and_then_fails(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    archive(env)
    # Not sealed yet: the batch refuses, saying why.
    refused = materialize(env, [archived_trades, daily_batch])
    assert not refused.success
    failure = next(e for e in refused.all_events if e.is_step_failure)
    assert "not sealed" in str(failure.event_specific_data)
    redis_client.set(ARCHIVE_WATERMARK_KEY, SEALED)
    run_stream(env)
    everything = [archived_trades, daily_batch, stream_candles, reconciliation]
    result = materialize(env, everything)
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    check = checks["reconciliation_is_exact"]
    assert check.passed and check.metadata["explained_by_late"].value > 0
    # No klines imported for the day: the klines check has nothing to compare, and says so.
    klines = checks["matches_exchange_klines"]
    assert klines.passed and klines.metadata["klines"].value == 0
    (mat,) = result.asset_materializations_for_node("archived_trades")
    assert mat.metadata["sealed"].value is True
    # The stream loses trades: the same assets now fail the blocking check.
    redis_client.flushall()
    redis_client.set(ARCHIVE_WATERMARK_KEY, SEALED)
    run_stream(env, drop_every=400, client=redis_client)
    checks = {c.check_name: c for c in materialize(env, everything).get_asset_check_evaluations()}
    check = checks["reconciliation_is_exact"]
    assert not check.passed and check.metadata["unexplained"].value > 0
