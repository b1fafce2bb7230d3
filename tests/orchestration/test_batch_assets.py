"""The daily batch assets with real Spark (local mode), real Redis and a real lake."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
import redis

from lake.layout import SourceRange
from lake.writer import LakeWriter
from marketdata.interval import Interval
from marketdata.settings import Settings
from marketdata.timeutil import DAY_MS, day_start_ms
from orchestration.batch_layer.assets import (
    archived_trades,
    daily_batch,
    reconciliation,
    served_candles,
    stream_candles,
)
from orchestration.resources import PipelineResource, SparkResource
from redisstore.keys import ARCHIVE_WATERMARK_KEY
from serving.merged import reader_for
from tests.batch.test_reconcile_day import DAY, run_stream, valid_trades

SEALED = 1_742_083_200_000  # 2025-03-16T00:00:00Z: past 2025-03-15 00:00 + lateness


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path / "home")}


def materialize(
    env: dict[str, str], assets: list, op: str = "daily_batch", **config: object
) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {op: {"config": config}}} if config else None
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


def failures(result: dg.ExecuteInProcessResult) -> list[str]:
    """The run's step failures, to show when a run was meant to succeed."""
    return [str(e.event_specific_data)[:2000] for e in result.all_events if e.is_step_failure]


def served(env: dict[str, str], client: redis.Redis) -> tuple[set[str], bool]:
    """What the merged view serves for DAY's 1m candles, and whether it is the batch's.

    Returns the sources seen for DAY, and whether the candles equal the batch's exactly.
    """
    settings = Settings(redis_url=env["REDIS_URL"], home=Path(env["CRYPTOPIPE_HOME"]))
    start = day_start_ms(DAY)
    window = {"exchange": "binance", "start": start, "end": start + DAY_MS}
    merged = reader_for("merged", settings, client).read("BTCUSDT", Interval.M1, **window)
    batch = reader_for("batch", settings, client).read("BTCUSDT", Interval.M1, **window)
    assert merged and batch
    return {r.source for r in merged}, [r.candle for r in merged] == [r.candle for r in batch]


@pytest.mark.slow
def test_a_day_is_served_from_the_batch_only_once_its_reconciliation_passed(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    archive(env)
    # Not sealed yet: the batch refuses, saying why.
    refused = materialize(env, [archived_trades, daily_batch])
    assert not refused.success
    failure = next(e for e in refused.all_events if e.is_step_failure)
    assert "not sealed" in str(failure.event_specific_data)
    redis_client.set(ARCHIVE_WATERMARK_KEY, SEALED)
    everything = [archived_trades, daily_batch, stream_candles, reconciliation, served_candles]

    # The stream loses trades: the blocking check fails and stops served_candles, so
    # readers keep the stream's candles of the day although the batch computed it.
    run_stream(env, drop_every=400, client=redis_client)
    failed = materialize(env, everything)
    checks = {c.check_name: c for c in failed.get_asset_check_evaluations()}
    check = checks["reconciliation_is_exact"]
    assert not check.passed and check.metadata["unexplained"].value > 0
    assert not failed.asset_materializations_for_node("served_candles")
    assert failed.asset_materializations_for_node("daily_batch")
    assert served(env, redis_client) == ({"stream"}, False)
    # Asked for alone (no check in that run), the asset still refuses.
    alone = materialize(env, [served_candles])
    assert not alone.success
    failure = next(e for e in alone.all_events if e.is_step_failure)
    assert "unexplained differences" in str(failure.event_specific_data)
    assert served(env, redis_client) == ({"stream"}, False)
    # Accepted by hand (the report read, the batch held right): served, and recorded.
    accepted = materialize(env, [served_candles], "served_candles", accept_unexplained=True)
    (pub,) = accepted.asset_materializations_for_node("served_candles")
    assert pub.metadata["accepted_unexplained"].value == check.metadata["unexplained"].value
    assert served(env, redis_client) == ({"batch"}, True)

    # The stream whole again (a new Redis, the flow's recovery gone with it): the check
    # passes and the day is served from the batch.
    shutil.rmtree(Path(env["CRYPTOPIPE_HOME"]) / "recovery")
    redis_client.flushall()
    redis_client.set(ARCHIVE_WATERMARK_KEY, SEALED)
    run_stream(env)
    result = materialize(env, everything)
    assert result.success, failures(result)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    check = checks["reconciliation_is_exact"]
    assert check.passed and check.metadata["explained_by_late"].value > 0
    # No klines imported for the day: the klines check has nothing to compare, and says so.
    klines = checks["matches_exchange_klines"]
    assert klines.passed and klines.metadata["klines"].value == 0
    (mat,) = result.asset_materializations_for_node("archived_trades")
    assert mat.metadata["sealed"].value is True
    (pub,) = result.asset_materializations_for_node("served_candles")
    assert pub.metadata["served_from"].value == "batch"
    assert served(env, redis_client) == ({"batch"}, True)

    # The batch runs again: the day goes back to the stream until reconciled again.
    assert materialize(env, [archived_trades, daily_batch]).success
    assert served(env, redis_client)[0] == {"stream"}
    stale = materialize(env, [served_candles])
    assert not stale.success
    assert served(env, redis_client)[0] == {"stream"}
    assert materialize(env, [stream_candles, reconciliation, served_candles]).success
    assert served(env, redis_client) == ({"batch"}, True)
