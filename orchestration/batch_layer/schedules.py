"""When the batch side runs: every day for yesterday, and as soon as a day is sealed."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from batch.sealing import day_seal
from orchestration.batch_layer.partitions import daily
from orchestration.resources import PipelineResource

#: Every asset of the batch layer's group for a day: the archived trades, the batch,
#: the stream snapshot and the reconciliation with its check (a new asset of the group
#: joins the day's run by being in the group).
daily_batch_job = dg.define_asset_job(
    "daily_batch_job",
    selection=dg.AssetSelection.groups("batch_layer"),
    partitions_def=daily,  # resolves the schedule now (Dagster infers it otherwise, later)
    description="Batch candles and aggregates of a UTC day, then reconciliation against the "
    "stream (refuses an unsealed day unless forced).",
)

#: Yesterday's partition, at 00:30 UTC: past the seal (midnight + lateness) with margin.
daily_batch_schedule = dg.build_schedule_from_partitioned_job(
    daily_batch_job, hour_of_day=0, minute_of_hour=30
)

#: How many recent days the sealed-day sensor looks at.
LOOKBACK_DAYS = 3


@dg.sensor(
    job=daily_batch_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches a day's batch as soon as the day is sealed (once per day).",
)
def sealed_day_sensor(
    context: dg.SensorEvaluationContext, pipeline: PipelineResource
) -> dg.SensorResult:
    """One run per newly sealed day among the last few."""
    today = datetime.now(tz=UTC).date()
    settings = pipeline.settings()
    requests = []
    skipped = []
    for back in range(1, LOOKBACK_DAYS + 1):
        day = today - timedelta(days=back)
        if day < daily.start.date():
            continue
        seal = day_seal(settings, day)
        if seal.sealed:
            requests.append(dg.RunRequest(run_key=f"sealed:{day}", partition_key=day.isoformat()))
        else:
            skipped.append(f"{day}: {seal.reason}")
    return dg.SensorResult(
        run_requests=requests, skip_reason="; ".join(skipped) if not requests else None
    )
