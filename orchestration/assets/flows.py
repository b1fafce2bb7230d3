"""The long-running flows as assets of the graph (observed, not materialised by Dagster)."""

import dagster as dg

from orchestration.resources import FlowSupervisorResource
from streaming.supervisor import FLOWS

_DESCRIPTIONS = {
    "candles": "bytewax: raw log -> live and closed candles (1m..1d), DLQ, late stream.",
    "metrics": "bytewax: closed 1m candles -> EMA, MACD, RSI, VWAP, anomalies, spreads.",
    "archive": "bytewax: raw log -> Parquet lake trades/ (typed, append-only).",
}
_DEPS = {"candles": ["raw_log"], "metrics": ["candles_flow"], "archive": ["raw_log"]}


def flow_asset_key(name: str) -> dg.AssetKey:
    """Asset key of a flow (``candles_flow``, ...)."""
    return dg.AssetKey(f"{name}_flow")


flow_assets = [
    dg.AssetSpec(
        flow_asset_key(name),
        description=_DESCRIPTIONS.get(name, name),
        group_name="speed_layer",
        kinds={"bytewax", "redis"},
        deps=_DEPS.get(name, []),
    )
    for name in FLOWS
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
            passed=st.state in ("running", "starting", "pending", "stopped"),
            metadata={"state": st.state, "reason": st.reason},
        )

    return check


flow_checks = [_health_check(name) for name in FLOWS]
