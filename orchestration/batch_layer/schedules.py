"""When the batch side runs: one trigger, the sealed-day sensor.

A day's batch runs once the day is sealed (docs/architecture.md section 4) and the
lake holds trades for it; a day without trades (a fresh start, a day nothing was
imported for) is not requested at all, so no run fails with "no trades". There is no
time-based schedule: a day sealed late (the archive behind, an import of old history)
is picked up when it is sealed, and a schedule would only add runs for empty days.

A safety net for the stream's candles: Redis trims a day's candles once the candle
retention has passed (docs/storage.md), and reconciliation then needs the lake's
snapshot of them (``stream_candles``). A sealed day older than the look-back, with
trades, whose snapshot is missing (its batch run failed, or was never asked) gets a
run of ``stream_candles`` alone (run key ``snapshot:D``, no Spark) and a warning with
the hours left before Redis starts trimming it.
"""

from datetime import UTC, date, datetime, timedelta

import dagster as dg

from batch.sealing import day_seal
from lake.candles import candle_days
from lake.layout import as_lake, trade_files
from marketdata.interval import Interval
from marketdata.records import SOURCE_STREAM
from marketdata.settings import Settings
from marketdata.timeutil import day_start_ms
from orchestration.batch_layer.partitions import daily
from orchestration.resources import PipelineResource
from orchestration.runtags import BATCH_TAGS

#: Every asset of the batch layer's group for a day: the archived trades, the batch,
#: the stream snapshot and the reconciliation with its check (a new asset of the group
#: joins the day's run by being in the group).
daily_batch_job = dg.define_asset_job(
    "daily_batch_job",
    selection=dg.AssetSelection.groups("batch_layer"),
    tags=BATCH_TAGS,  # Spark: one batch run at a time (docs/operations.md)
    description="Batch candles and aggregates of a UTC day, then reconciliation against the "
    "stream (refuses an unsealed day unless forced).",
)

#: How many recent days the sealed-day sensor looks at.
LOOKBACK_DAYS = 3


@dg.sensor(
    job=daily_batch_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches a day's batch once the day is sealed and the lake has its trades "
    "(once per day); the only trigger of the daily batch.",
)
def sealed_day_sensor(
    context: dg.SensorEvaluationContext, pipeline: PipelineResource
) -> dg.SensorResult:
    """One run per sealed day with trades among the last few; the others named as skipped."""
    today = datetime.now(tz=UTC).date()
    settings = pipeline.settings()
    lake = as_lake(settings)
    requests = []
    skipped = []
    for back in range(1, LOOKBACK_DAYS + 1):
        day = today - timedelta(days=back)
        if day < daily.start.date():
            continue
        if not trade_files(lake, day):
            skipped.append(f"{day}: no trades in the lake ({lake.trades_dir(day)})")
            continue
        seal = day_seal(settings, day)
        if seal.sealed:
            requests.append(
                dg.RunRequest(
                    run_key=f"sealed:{day}", partition_key=day.isoformat(), tags=BATCH_TAGS
                )
            )
        else:
            skipped.append(f"{day}: not sealed: {seal.reason}")
    if skipped:
        context.log.info("skipped " + "; ".join(skipped))
    snapshots, at_risk = snapshot_requests(settings, today)
    if at_risk:
        context.log.warning(
            "stream candles not yet in the lake (reconciliation needs them once Redis trims "
            "them): " + "; ".join(at_risk) + "; a stream_candles run is requested for each"
        )
    requests += snapshots
    return dg.SensorResult(
        run_requests=requests,
        skip_reason=("skipped " + "; ".join(skipped)) if not requests else None,
    )


def snapshot_requests(settings: Settings, today: date) -> tuple[list[dg.RunRequest], list[str]]:
    """``stream_candles`` runs for sealed days past the look-back with trades and no snapshot.

    Returns the run requests and one line per such day (the hours left before the
    candle retention starts trimming the day's first candles from Redis).
    """
    lake = as_lake(settings)
    have = set(candle_days(lake, SOURCE_STREAM, Interval.M1))
    retention_days = settings.candle_retention_ms // 86_400_000
    now_ms = datetime.now(tz=UTC).timestamp() * 1000
    requests, lines = [], []
    for back in range(LOOKBACK_DAYS + 1, retention_days + 2):
        day = today - timedelta(days=back)
        if day < daily.start.date() or day in have or not trade_files(lake, day):
            continue
        if not day_seal(settings, day).sealed:
            continue
        left_h = (day_start_ms(day) + settings.candle_retention_ms - now_ms) / 3_600_000
        lines.append(
            f"{day}: Redis starts trimming it in {left_h:.0f} h"
            if left_h > 0
            else f"{day}: Redis may already have trimmed some ({-left_h:.0f} h past)"
        )
        requests.append(
            dg.RunRequest(
                run_key=f"snapshot:{day}",
                partition_key=day.isoformat(),
                asset_selection=[dg.AssetKey("stream_candles")],
            )
        )
    return requests, lines
