"""The speed layer as assets of the graph.

The raw log (observed: its length and range) and the long-running flows and the
feed (observed, not materialised by Dagster), each with its ``flow_is_healthy`` check.
"""

import dagster as dg

from orchestration.resources import FlowSupervisorResource, PipelineResource
from streaming.rawlog_stats import raw_log_summary
from streaming.supervisor import ALL, FEED

_DESCRIPTIONS = {
    "candles": "bytewax: raw log -> live and closed candles (1m..1d), DLQ, late stream.",
    "metrics": "bytewax: closed 1m candles -> EMA, MACD, RSI, VWAP, anomalies, spreads.",
    "archive": "bytewax: raw log -> Parquet lake trades/ (typed, append-only).",
    FEED: "the feed process (cryptopipe up --feed ...): the venue's trades -> raw log.",
}
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
    """Asset key of a flow (``candles_flow``, ...)."""
    return dg.AssetKey(f"{name}_flow")


flow_assets = [
    dg.AssetSpec(
        flow_asset_key(name),
        description=_DESCRIPTIONS.get(name, name),
        group_name="speed_layer",
        kinds={"python", "redis"} if name == FEED else {"bytewax", "redis"},
        deps=_DEPS.get(name, []),
    )
    for name in ALL
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


flow_checks = [_health_check(name) for name in ALL]
speed_assets: list[dg.AssetsDefinition | dg.AssetSpec] = [raw_log_stats, *flow_assets]
