"""Daily batch assets: the archived trades of a day, batch candles and daily aggregates."""

from collections.abc import Iterator
from datetime import date

import dagster as dg

from batch.daily import NoTradesError, run_batch_day
from batch.sealing import SealStatus, parse_watermark, seal_status
from lake.layout import Lake
from orchestration.partitions import daily
from orchestration.resources import PipelineResource, SparkResource
from redisstore.keys import ARCHIVE_WATERMARK_KEY


def day_seal(pipeline: PipelineResource, day: date) -> SealStatus:
    """Whether ``day`` is sealed (imported history, or the archive watermark past it)."""
    settings = pipeline.settings()
    client = pipeline.client()
    return seal_status(
        Lake(settings.lake),
        day,
        lateness_ms=settings.lateness_ms,
        watermark=lambda: parse_watermark(client.get(ARCHIVE_WATERMARK_KEY)),
    )


@dg.asset(
    partitions_def=daily,
    group_name="batch_layer",
    kinds={"parquet"},
    deps=["archive_flow"],
    description="The day's trades in the lake (trades/date=D), written by the archive flow "
    "or lake import; materialising records what is there and whether the day is sealed.",
)
def archived_trades(
    context: dg.AssetExecutionContext, pipeline: PipelineResource
) -> dg.MaterializeResult:
    """Look at the day's archived trades."""
    day = date.fromisoformat(context.partition_key)
    lake = Lake(pipeline.settings().lake)
    files = lake.list_files(lake.trades_dir(day))
    seal = day_seal(pipeline, day)
    return dg.MaterializeResult(
        metadata={
            "files": len(files),
            "sealed": seal.sealed,
            "sealed_by": seal.by or "-",
            "reason": seal.reason,
        }
    )


class BatchConfig(dg.Config):
    """Options of the daily batch.

    Attributes:
        force: run on a day that is not sealed yet (its trades may still be arriving).
    """

    force: bool = False


@dg.multi_asset(
    partitions_def=daily,
    group_name="batch_layer",
    specs=[
        dg.AssetSpec(
            "batch_candles",
            deps=[archived_trades],
            kinds={"spark", "parquet"},
            description="Candles of every interval recomputed from the day's trades.",
        ),
        dg.AssetSpec(
            "daily_aggregates",
            deps=[archived_trades],
            kinds={"spark", "parquet"},
            description="Per symbol: OHLCV, VWAP, trades, taker-buy share, realised "
            "volatility, largest trade, trades per minute.",
        ),
    ],
)
def daily_batch(
    context: dg.AssetExecutionContext,
    config: BatchConfig,
    pipeline: PipelineResource,
    spark: SparkResource,
) -> Iterator[dg.MaterializeResult]:
    """Run the PySpark daily batch for the partition's day (refuses an unsealed day)."""
    day = date.fromisoformat(context.partition_key)
    seal = day_seal(pipeline, day)
    if not seal.sealed and not config.force:
        msg = f"{day} is not sealed: {seal.reason}. Wait, or run with config force: true."
        raise dg.Failure(msg)
    try:
        result = run_batch_day(spark.session(), Lake(pipeline.settings().lake), day)
    except NoTradesError as exc:
        raise dg.Failure(str(exc)) from None
    summary = result.to_json_dict()
    context.log.info(f"batch {day}: {summary}")
    yield dg.MaterializeResult(
        asset_key="batch_candles",
        metadata={
            "trades": result.trades,
            "duplicates": result.duplicates,
            "candles": dg.MetadataValue.json(result.candles),
            "seconds": summary["seconds"],
            "forced": not seal.sealed,
        },
    )
    yield dg.MaterializeResult(
        asset_key="daily_aggregates",
        metadata={"rows": result.aggregates, "symbols": result.symbols},
    )
