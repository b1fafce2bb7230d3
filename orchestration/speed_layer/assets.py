"""The speed layer as assets of the graph.

The raw log (observed: its length and range) and the long-running flows and the
feeds (observed, not materialised by Dagster), each with its ``flow_is_healthy`` check.
The feed processes' assets are static, one per name a feed process can have (``feed``
and ``feed-<feed>`` for every supervised feed: :data:`streaming.supervisor.PROCESSES`);
which of them the health sensor watches is what ``cryptopipe up --feed`` asked for.
"""

import dagster as dg

from orchestration.resources import FlowSupervisorResource, PipelineResource
from streaming.rawlog_stats import raw_log_summary
from streaming.supervisor import FEED, PROCESSES, is_feed_process

_DESCRIPTIONS = {
    "candles": "bytewax: raw log -> live and closed candles (1m..1d), DLQ, late stream.",
    "metrics": "bytewax: closed 1m candles -> EMA, MACD, RSI, VWAP, anomalies, spreads.",
    "archive": "bytewax: raw log -> Parquet lake trades/ (typed, append-only).",
    FEED: "the feed process (cryptopipe up --feed ...): the venue's trades -> raw log.",
}
_FEED_DESCRIPTION = (
    "the {feed} feed's process when cryptopipe up runs several feeds "
    "(--feed {feed},...): its trades -> raw log."
)
_DEPS = {"candles": ["raw_log"], "metrics": ["candles_flow"], "archive": ["raw_log"]}


@dg.asset(name="raw_log", group_name="speed_layer", kinds={"redis"})
def raw_log_stats(
    context: dg.AssetExecutionContext, pipeline: PipelineResource
) -> dg.MaterializeResult:
    """Length and id range of every raw-log stream (``md:trades:raw`` and its shards)."""
    summary = raw_log_summary(pipeline.client())
    context.log.info("raw log: %s", summary)
    return dg.MaterializeResult(
        metadata={
            "entries": dg.MetadataValue.int(sum(s["length"] for s in summary.values())),
            "streams": dg.MetadataValue.json(summary),
        }
    )


def flow_asset_key(name: str) -> dg.AssetKey:
    """Asset key of a flow or feed process (``candles_flow``, ``feed_binance_flow``, ...)."""
    return dg.AssetKey(f"{name.replace('-', '_')}_flow")


def _description(name: str) -> str:
    if name in _DESCRIPTIONS:
        return _DESCRIPTIONS[name]
    return _FEED_DESCRIPTION.format(feed=name.removeprefix(f"{FEED}-"))


flow_assets = [
    dg.AssetSpec(
        flow_asset_key(name),
        description=_description(name),
        group_name="speed_layer",
        kinds={"python", "redis"} if is_feed_process(name) else {"bytewax", "redis"},
        deps=_DEPS.get(name, []),
    )
    for name in PROCESSES
]


def _health_check(name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=flow_asset_key(name),
        name="flow_is_healthy",
        description="The flow's process runs and its heartbeat is fresh (or it was stopped).",
    )
    def check(flow_supervisor: FlowSupervisorResource) -> dg.AssetCheckResult:
        st = flow_supervisor.supervisor().status(name)
        return dg.AssetCheckResult(
            passed=st.healthy, metadata={"state": st.state, "reason": st.reason}
        )

    return check


flow_checks = [_health_check(name) for name in PROCESSES]
speed_assets: list[dg.AssetsDefinition | dg.AssetSpec] = [raw_log_stats, *flow_assets]
