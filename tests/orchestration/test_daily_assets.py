"""Daily assets through Dagster's materialize: the reconciliation check passes, then fails."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest
import redis

from lake.candles import write_day_candles
from marketdata.records import SOURCE_BATCH
from orchestration.batch_layer.assets import reconciliation, stream_candles
from orchestration.resources import PipelineResource
from tests.batch.test_reconcile_day import DAY, batch_candles, run_stream, valid_trades


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path / "home")}


def materialize(env: dict[str, str]) -> dg.ExecuteInProcessResult:
    pipeline = PipelineResource(redis_url=env["REDIS_URL"], home=env["CRYPTOPIPE_HOME"])
    return dg.materialize(
        [stream_candles, reconciliation],
        partition_key=str(DAY),
        resources={"pipeline": pipeline},
        raise_on_error=False,
    )


def check_of(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "reconciliation_is_exact"
    return evaluation


def test_check_passes_on_a_day_explained_by_late_trades(env: dict[str, str]) -> None:
    run_stream(env)
    write_day_candles(
        Path(env["CRYPTOPIPE_HOME"]) / "lake",
        SOURCE_BATCH,
        DAY,
        batch_candles(valid_trades()).values(),
    )
    result = materialize(env)
    assert result.success
    ev = check_of(result)
    assert ev.passed
    assert ev.metadata["unexplained"].value == 0
    assert ev.metadata["explained_by_late"].value > 0
    (mat,) = result.asset_materializations_for_node("stream_candles")
    assert mat.metadata["candles"].value > 100


def test_check_fails_when_the_stream_lost_trades(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    trades = valid_trades()
    run_stream(env, drop_every=500, client=redis_client)
    write_day_candles(
        Path(env["CRYPTOPIPE_HOME"]) / "lake", SOURCE_BATCH, DAY, batch_candles(trades).values()
    )
    ev = check_of(materialize(env))
    assert not ev.passed
    assert ev.metadata["unexplained"].value > 0
    worst = ev.metadata["worst"].value
    assert worst and worst[0]["outcome"] in ("mismatch", "missing_in_stream")
