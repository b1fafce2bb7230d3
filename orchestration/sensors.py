"""The flow health sensor: restarts dead or stalled flows, stops a crash loop."""

import json
import time

import dagster as dg

from orchestration.assets.flows import flow_asset_key
from orchestration.flows import restart_flows, start_flows
from orchestration.resources import FlowSupervisorResource
from redisstore.conn import text
from redisstore.keys import control_key
from streaming.supervisor import FlowStatus, Supervisor

#: States that pass the flow_is_healthy check.
HEALTHY = ("running", "starting", "pending", "stopped")
#: Observations are reported on a change of state, and at least this often.
OBSERVE_EVERY_S = 30.0


def _observation(st: FlowStatus) -> dg.AssetObservation:
    hb = st.heartbeat
    meta: dict[str, dg.RawMetadataValue] = {
        "state": st.state,
        "reason": st.reason,
        "pid": st.pid if st.pid is not None else "-",
        "restarts_in_window": st.restarts_in_window,
        "heartbeat_age_s": round(st.heartbeat_age_s, 1) if st.heartbeat_age_s is not None else "-",
    }
    for field in ("items_in", "items_out", "lag", "last_source_id", "throughput"):
        if field in hb:
            meta[field] = hb[field]
    return dg.AssetObservation(asset_key=flow_asset_key(st.name), metadata=meta)


def _generation(sup: Supervisor, name: str, field: str = "restarts_total") -> str:
    # Run keys carry a counter: one run per incident (or start request), a new one after.
    raw = sup.client.hget(control_key(name), field)
    return text(raw) if raw else "0"


@dg.sensor(
    jobs=[start_flows, restart_flows],
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches every flow's heartbeat; restarts dead or stalled flows within 30 s; "
    "more than max_restarts in the window marks the flow failed and stops restarting it.",
)
def flow_health_sensor(
    context: dg.SensorEvaluationContext, flow_supervisor: FlowSupervisorResource
) -> dg.SensorResult:
    """One look at every flow."""
    sup = flow_supervisor.supervisor()
    cursor = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    requests: list[dg.RunRequest] = []
    events: list[dg.AssetObservation | dg.AssetCheckEvaluation] = []
    for name in flow_supervisor.flows:
        st = sup.status(name)
        if st.needs_start:
            requests.append(
                dg.RunRequest(
                    job_name=start_flows.name,
                    run_key=f"start:{name}:{_generation(sup, name, 'wants')}",
                    run_config={
                        "ops": {
                            "start_flow": {
                                "config": {"flow": name, "reason": "wanted", "automatic": True}
                            }
                        }
                    },
                    tags={"flow": name, "reason": "start"},
                )
            )
        elif st.needs_restart:
            done = sup.restarts_in_window(name)
            if done >= flow_supervisor.max_restarts:
                reason = (
                    f"{done} restarts in the last {flow_supervisor.window_s / 60:.0f} min; "
                    f"last seen {st.state}: {st.reason}. Fix the cause (see the flow's log), "
                    "then run start_flows to clear it."
                )
                sup.mark_failed(name, reason)
                context.log.error(f"{name}: {reason}")
                st = sup.status(name)
            else:
                requests.append(
                    dg.RunRequest(
                        job_name=restart_flows.name,
                        run_key=f"restart:{name}:{_generation(sup, name)}",
                        run_config={
                            "ops": {
                                "restart_flow": {
                                    "config": {"flow": name, "reason": st.state, "automatic": True}
                                }
                            }
                        },
                        tags={"flow": name, "reason": st.state},
                    )
                )
        last = cursor.get(name, {})
        if last.get("state") != st.state or now - last.get("at", 0) >= OBSERVE_EVERY_S:
            events.append(_observation(st))
            events.append(
                dg.AssetCheckEvaluation(
                    asset_key=flow_asset_key(name),
                    check_name="flow_is_healthy",
                    passed=st.state in HEALTHY,
                    metadata={"state": st.state, "reason": st.reason},
                )
            )
            cursor[name] = {"state": st.state, "at": now}
    return dg.SensorResult(run_requests=requests, asset_events=events, cursor=json.dumps(cursor))
