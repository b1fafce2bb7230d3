"""The sealed-day sensor: the daily batch's one trigger."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import redis

from lake.layout import SourceRange
from lake.writer import write_trades
from marketdata.trade import Trade
from orchestration.batch_layer.schedules import sealed_day_sensor
from orchestration.resources import PipelineResource
from orchestration.runtags import BATCH_TAGS
from redisstore.keys import ARCHIVE_WATERMARK_KEY


def tick(redis_url: str, home: Path) -> dg.SensorResult:
    ctx = dg.build_sensor_context(
        resources={"pipeline": PipelineResource(redis_url=redis_url, home=str(home))}
    )
    result = sealed_day_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def skip_message(result: dg.SensorResult) -> str:
    assert result.skip_reason is not None
    return result.skip_reason.skip_message or ""


def archive_a_day(home: Path, day: date) -> None:
    noon = int(datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp() * 1000)
    trades = [
        Trade("binance", "BTCUSDT", i, 6_000_000_000_000 + i, 1_000_000, noon + i * 1000, False)
        for i in range(1, 6)
    ]
    write_trades(home / "lake", trades, source=SourceRange.rows("test-day", 1, len(trades)))


def test_an_empty_lake_requests_nothing_even_when_every_day_is_sealed(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    redis_client.set(ARCHIVE_WATERMARK_KEY, int(time.time() * 1000))  # all 3 days sealed
    result = tick(redis_url, tmp_path)
    assert result.run_requests == []
    today = datetime.now(tz=UTC).date()
    message = skip_message(result)
    for back in (1, 2, 3):
        assert f"{today - timedelta(days=back)}: no trades in the lake" in message


def test_a_sealed_day_with_trades_is_requested_once_the_others_named(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    today = datetime.now(tz=UTC).date()
    day = today - timedelta(days=2)
    archive_a_day(tmp_path, day)
    # Not sealed yet: the archive watermark is not set. No run, and the reason says so.
    result = tick(redis_url, tmp_path)
    assert result.run_requests == []
    assert f"{day}: not sealed" in skip_message(result)
    assert f"{today - timedelta(days=1)}: no trades in the lake" in skip_message(result)
    redis_client.set(ARCHIVE_WATERMARK_KEY, int(time.time() * 1000))
    (req,) = tick(redis_url, tmp_path).run_requests
    assert (req.partition_key, req.run_key) == (day.isoformat(), f"sealed:{day}")
    assert req.tags == BATCH_TAGS


def test_the_sensor_is_the_only_trigger() -> None:
    from orchestration.definitions import defs

    repo = defs.get_repository_def()
    assert repo.schedule_defs == []
    assert repo.get_sensor_def("sealed_day_sensor").job_name == "daily_batch_job"
    assert repo.get_job("daily_batch_job").tags == BATCH_TAGS


def test_a_day_past_the_look_back_without_its_stream_snapshot_gets_one(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    from lake.candles import candle_days
    from marketdata.interval import Interval
    from marketdata.records import SOURCE_STREAM
    from orchestration.batch_layer.assets import stream_candles

    today = datetime.now(tz=UTC).date()
    day = today - timedelta(days=5)  # its batch run failed, say: no snapshot
    archive_a_day(tmp_path, day)
    redis_client.set(ARCHIVE_WATERMARK_KEY, int(time.time() * 1000))
    result = tick(redis_url, tmp_path)
    (req,) = result.run_requests
    assert (req.partition_key, req.run_key) == (day.isoformat(), f"snapshot:{day}")
    assert req.asset_selection == [dg.AssetKey("stream_candles")]
    # The run it asks for, through Dagster: the snapshot is taken, and not asked again.
    pipeline = PipelineResource(redis_url=redis_url, home=str(tmp_path))
    done = dg.materialize(
        [stream_candles], partition_key=day.isoformat(), resources={"pipeline": pipeline}
    )
    assert done.success
    assert day in candle_days(tmp_path / "lake", SOURCE_STREAM, Interval.M1)
    assert tick(redis_url, tmp_path).run_requests == []
