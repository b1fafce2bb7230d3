"""The batch layer's daily assets.

A day's archived trades, batch candles and aggregates, the stream's candles of the
day, their reconciliation, and the day as readers get it (``served_candles``,
behind the reconciliation's blocking check).

Each asset is thin: it calls one function of :mod:`batch` for the partition's day and
turns its result into Dagster metadata (or a ``Failure`` saying what to do).
"""

from collections.abc import Iterator
from datetime import date, timedelta

import dagster as dg

from batch.daily import STAGES, NoTradesError, run_batch_day
from batch.reconcile import (
    NoKlinesError,
    read_summary,
    reconcile_day,
    reconcile_klines_day,
    snapshot_stream_day,
)
from batch.sealing import DayNotSealedError, day_seal, require_sealed
from lake.layout import Lake
from lake.published import NotPublishableError, publish
from marketdata.binance_klines import OUTCOMES as KLINE_OUTCOMES
from marketdata.reconcile import OUTCOMES
from marketdata.settings import Settings
from orchestration.batch_layer.partitions import daily
from orchestration.resources import PipelineResource, SparkResource

#: A UTC day is sealed shortly after midnight and its batch, reconciliation and
#: publication follow within minutes (the sealed-day sensor): the previous day's
#: partition should be done by 02:00 UTC. Evaluated by the daemon (``freshness:
#: enabled`` in dagster.yaml); a stack with no trades for a day shows the policy failed.
DAILY_FRESHNESS = dg.FreshnessPolicy.cron(
    deadline_cron="0 2 * * *", lower_bound_delta=timedelta(hours=2), timezone="UTC"
)


def _day(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> date:
    return date.fromisoformat(context.partition_key)


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
    day = _day(context)
    settings = pipeline.settings()
    lake = Lake(settings.lake)
    seal = day_seal(settings, day)
    return dg.MaterializeResult(
        metadata={
            "files": len(lake.list_files(lake.trades_dir(day))),
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
            freshness_policy=DAILY_FRESHNESS,
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
    check_specs=[
        dg.AssetCheckSpec(
            "matches_exchange_klines",
            asset="batch_candles",
            description="The day's 1m candles equal the exchange's own klines imported into "
            "klines/date=D (open, high, low, close, volume, trade count, taker buy volume "
            "exactly; quote volume within Binance's per-trade rounding). Passes with nothing "
            "to compare when no klines were imported for the day.",
        )
    ],
)
def daily_batch(
    context: dg.AssetExecutionContext,
    config: BatchConfig,
    pipeline: PipelineResource,
    spark: SparkResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Run the PySpark daily batch for the partition's day (refuses an unsealed day)."""
    day = _day(context)
    settings = pipeline.settings()
    try:
        seal = require_sealed(settings, day, force=config.force)
        context.log.info(f"batch {day}: {STAGES[0]}")
        result = run_batch_day(
            spark.session(),
            Lake(settings.lake),
            day,
            on_stage=lambda stage: context.log.info(f"batch {day}: {stage}"),
        )
    except DayNotSealedError as exc:
        raise dg.Failure(f"{exc}. Wait, or run with config force: true.") from None
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
            "spark": spark.master,  # where it ran: local[N], a cluster, or sc:// (Connect)
        },
    )
    yield dg.MaterializeResult(
        asset_key="daily_aggregates",
        metadata={"rows": result.aggregates, "symbols": result.symbols},
    )
    yield _klines_check(context, settings, day)


def _klines_check(
    context: dg.AssetExecutionContext, settings: Settings, day: date
) -> dg.AssetCheckResult:
    """The batch's 1m candles against the exchange's klines, when the day has any."""
    try:
        cmp, summary = reconcile_klines_day(settings, day, worst=10)
    except NoKlinesError as exc:
        return dg.AssetCheckResult(
            check_name="matches_exchange_klines",
            asset_key="batch_candles",
            passed=True,
            metadata={"klines": dg.MetadataValue.int(0)},
            description=f"nothing to compare: {exc}",
        )
    context.log.info(f"klines {day}: {[(o, summary[o]) for o in KLINE_OUTCOMES]}")
    return dg.AssetCheckResult(
        check_name="matches_exchange_klines",
        asset_key="batch_candles",
        passed=cmp.ok,
        # A witness, not the authority: a difference warns (and is listed), it does not
        # block what the batch wrote.
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            **{o: dg.MetadataValue.int(summary[o]) for o in KLINE_OUTCOMES},
            "klines": dg.MetadataValue.int(summary["klines"]),
            "empty_klines": dg.MetadataValue.int(summary["empty_klines"]),
            "exchanges": dg.MetadataValue.json(summary["exchanges"]),
            "symbols_without_klines": dg.MetadataValue.json(summary["symbols_without_klines"]),
            "quote_volume_rule": summary["quote_volume_rule"],
            "taker_buy_quote_volume_rule": summary["taker_buy_quote_volume_rule"],
            "worst": dg.MetadataValue.json(summary["worst"]),
        },
        description=None if cmp.ok else f"{len(cmp.differences)} minutes differ",
    )


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
    freshness_policy=DAILY_FRESHNESS,
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


class ServeConfig(dg.Config):
    """Options of serving a day from the batch.

    Attributes:
        accept_unexplained: serve it even though its reconciliation left unexplained
            differences (you read the report and hold the batch right; recorded in the
            lake, as ``cryptopipe reconcile --accept-batch`` does). Materialize this
            asset alone with it: in the day's full run the blocking check stops it first.
    """

    accept_unexplained: bool = False


@dg.asset(
    partitions_def=daily,
    group_name="batch_layer",
    kinds={"parquet"},
    deps=[reconciliation],
    freshness_policy=DAILY_FRESHNESS,
    description="The day as readers get it: once its reconciliation passed, the merged view "
    "(cryptopipe candles, the HTTP API, the chart) serves the day's batch candles; until "
    "then, the stream's. The blocking reconciliation check stops this asset in the day's "
    "run when anything is unexplained.",
)
def served_candles(
    context: dg.AssetExecutionContext, config: ServeConfig, pipeline: PipelineResource
) -> dg.MaterializeResult:
    """Publish the day to readers, if its latest reconciliation passed for its batch run."""
    day = _day(context)
    settings = pipeline.settings()
    summary = read_summary(settings, day)
    if summary is None:
        raise dg.Failure(f"{day} has not been reconciled: materialize reconciliation first")
    # Checked again here, not only by the blocking check: a run of this asset alone
    # does not go through the check.
    try:
        publish(settings, day, summary, accept=config.accept_unexplained)
    except NotPublishableError as exc:
        raise dg.Failure(str(exc)) from None
    return dg.MaterializeResult(
        metadata={
            "served_from": "batch",
            "batch_run": str(summary.get("batch_run")),
            "batch_candles": dg.MetadataValue.int(int(summary.get("batch_candles", 0))),
            "accepted_unexplained": dg.MetadataValue.int(int(summary.get("unexplained", 0))),
        }
    )


batch_assets = [archived_trades, daily_batch, stream_candles, reconciliation, served_candles]
