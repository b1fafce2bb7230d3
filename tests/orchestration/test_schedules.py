"""The daily schedule and the sealed-day sensor."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import redis

from orchestration.batch_layer.schedules import (
    daily_batch_job,
    daily_batch_schedule,
    sealed_day_sensor,
)
from orchestration.resources import PipelineResource
from redisstore.keys import ARCHIVE_WATERMARK_KEY


def tick(redis_url: str, home: Path) -> dg.SensorResult:
    ctx = dg.build_sensor_context(
        resources={"pipeline": PipelineResource(redis_url=redis_url, home=str(home))}
    )
    result = sealed_day_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def test_sensor_launches_sealed_days_only(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    unsealed = tick(redis_url, tmp_path)
    assert unsealed.run_requests == []
    assert unsealed.skip_reason is not None
    assert "watermark" in (unsealed.skip_reason.skip_message or "")
    today = datetime.now(tz=UTC).date()
    midnight = int(datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp() * 1000)
    # The archive has reached yesterday 12:00: yesterday is not sealed, earlier days are.
    redis_client.set(ARCHIVE_WATERMARK_KEY, midnight - 12 * 3_600_000)
    reqs = tick(redis_url, tmp_path).run_requests
    assert sorted(r.partition_key for r in reqs) == sorted(
        (today - timedelta(days=n)).isoformat() for n in (2, 3)
    )
    assert all(r.run_key == f"sealed:{r.partition_key}" for r in reqs)
    redis_client.set(ARCHIVE_WATERMARK_KEY, int(time.time() * 1000))
    keys = sorted(r.partition_key for r in tick(redis_url, tmp_path).run_requests)
    assert keys == sorted((today - timedelta(days=n)).isoformat() for n in (1, 2, 3))


def test_schedule_runs_yesterday_at_half_past_midnight() -> None:
    assert daily_batch_schedule.cron_schedule == "30 0 * * *"
    assert daily_batch_schedule.job_name == daily_batch_job.name
    ctx = dg.build_schedule_context(
        scheduled_execution_time=datetime(2025, 3, 15, 0, 30, tzinfo=UTC)
    )
    (req,) = daily_batch_schedule.evaluate_tick(ctx).run_requests
    assert req.partition_key == "2025-03-14"
