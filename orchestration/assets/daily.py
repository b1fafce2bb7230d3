"""Daily assets: the stream's candles of a day and the day's reconciliation."""

from collections.abc import Iterator
from datetime import date

import dagster as dg

from batch.reconcile import reconcile_day, snapshot_stream_day
from marketdata.reconcile import OUTCOMES
from orchestration.partitions import daily
from orchestration.resources import PipelineResource


def _day(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> date:
    return date.fromisoformat(context.partition_key)


@dg.asset(
    partitions_def=daily,
    group_name="batch_layer",
    kinds={"redis", "parquet"},
    description="The speed layer's closed candles of the day, as stored in Redis, copied to "
    "candles/source=stream in the lake.",
)
def stream_candles(
    context: dg.AssetExecutionContext, pipeline: PipelineResource
) -> dg.MaterializeResult:
    """Snapshot the day's stream candles into the lake."""
    candles = snapshot_stream_day(pipeline.settings(), _day(context), pipeline.client())
    per_interval: dict[str, int] = {}
    for key in candles:
        per_interval[key[2]] = per_interval.get(key[2], 0) + 1
    return dg.MaterializeResult(
        metadata={"candles": len(candles), "per_interval": dg.MetadataValue.json(per_interval)}
    )


@dg.asset(
    partitions_def=daily,
    group_name="batch_layer",
    kinds={"python", "parquet"},
    deps=["batch_candles", stream_candles],
    check_specs=[
        dg.AssetCheckSpec(
            "reconciliation_is_exact",
            asset="reconciliation",
            blocking=True,
            description="Every stream candle equals its batch candle, or late trades explain "
            "the difference exactly; anything else fails.",
        )
    ],
    description="Stream vs batch candles of the day, exact; report in reconciliation/date=D.",
)
def reconciliation(
    context: dg.AssetExecutionContext, pipeline: PipelineResource
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Reconcile the day; the blocking check fails on any unexplained difference."""
    result, summary = reconcile_day(pipeline.settings(), _day(context), pipeline.client())
    counts = {o: summary["counts"][o] for o in OUTCOMES}
    worst = [d for d in summary["worst"] if d["outcome"] != "explained_by_late"][:10]
    meta = {
        **{o: dg.MetadataValue.int(n) for o, n in counts.items()},
        "unexplained": dg.MetadataValue.int(result.unexplained),
        "late_trades": dg.MetadataValue.int(summary["late_trades"]),
        "worst": dg.MetadataValue.json(worst),
    }
    yield dg.MaterializeResult(metadata=meta)
    yield dg.AssetCheckResult(
        check_name="reconciliation_is_exact",
        passed=result.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={**meta},
        description=None if result.ok else f"{result.unexplained} unexplained differences",
    )
