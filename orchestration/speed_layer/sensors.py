"""The flow health sensor: carries out the supervisor's decisions and shows each flow.

What to do about a flow (start, restart, give up on a crash loop) is decided by
:meth:`streaming.supervisor.Supervisor.decide`; this sensor turns a decision into a
run of :data:`start_flows` or :data:`restart_flows` (one per incident: the run key is
the decision's) and reports each flow's state as an observation and a
``flow_is_healthy`` check evaluation.
"""

import json
import time

import dagster as dg

from orchestration.resources import FlowSupervisorResource
from orchestration.speed_layer.assets import flow_asset_key
from orchestration.speed_layer.jobs import restart_flows, start_flows
from streaming.supervisor import Decision, FlowStatus

#: Observations are reported on a change of state, and at least this often.
OBSERVE_EVERY_S = 30.0
_JOBS = {"start": (start_flows, "start_flow"), "restart": (restart_flows, "restart_flow")}


#: Heartbeat fields observed as numbers (the UI plots numeric metadata over time).
_INT_FIELDS = ("items_in", "items_out", "lag", "lag_ms", "lost_entries", "restarts")


def _observation(st: FlowStatus) -> dg.AssetObservation:
    """The flow's state as text, and its figures as numbers Dagster's UI can plot."""
    hb = st.heartbeat
    meta: dict[str, dg.RawMetadataValue] = {
        "state": st.state,
        "reason": st.reason,
        "restarts_in_window": dg.MetadataValue.int(st.restarts_in_window),
    }
    if st.pid is not None:
        meta["pid"] = dg.MetadataValue.int(st.pid)
    if st.heartbeat_age_s is not None:
        meta["heartbeat_age_s"] = dg.MetadataValue.float(round(st.heartbeat_age_s, 1))
    for name in _INT_FIELDS:
        try:
            meta[name] = dg.MetadataValue.int(int(hb[name]))
        except (KeyError, ValueError):
            continue
    try:
        meta["throughput"] = dg.MetadataValue.float(float(hb["throughput"]))
    except (KeyError, ValueError):
        pass
    if hb.get("last_source_id"):
        meta["last_source_id"] = hb["last_source_id"]
    return dg.AssetObservation(asset_key=flow_asset_key(st.name), metadata=meta)


#: Runs that ended without doing their job: the request is made again, under a new key.
_GAVE_UP = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def _gave_up(context: dg.SensorEvaluationContext, run_key: str) -> bool:
    """Whether the run launched for ``run_key`` failed or was cancelled."""
    try:
        instance = context.instance
    except dg.DagsterInvariantViolationError:  # a context built without an instance
        return False
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
    return bool(runs) and runs[0].status in _GAVE_UP


def _run_request(name: str, decision: Decision) -> dg.RunRequest:
    job, op = _JOBS[decision.action]
    config = {"flow": name, "reason": decision.reason, "automatic": True}
    return dg.RunRequest(
        job_name=job.name,
        run_key=decision.run_key,
        run_config={"ops": {op: {"config": config}}},
        tags={"flow": name, "reason": "start" if decision.action == "start" else decision.reason},
    )


@dg.sensor(
    jobs=[start_flows, restart_flows],
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches every flow's and feed's heartbeat; restarts dead or stalled ones "
    "within 30 s; more than max_restarts in the window marks one failed and stops "
    "restarting it. Each feed process (cryptopipe up --feed a,b) on its own.",
)
def flow_health_sensor(
    context: dg.SensorEvaluationContext, flow_supervisor: FlowSupervisorResource
) -> dg.SensorResult:
    """One look at every flow and at each feed process ``cryptopipe up`` asked for."""
    sup = flow_supervisor.supervisor()
    cursor = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    requests: list[dg.RunRequest] = []
    events: list[dg.AssetObservation | dg.AssetCheckEvaluation] = []
    for name in flow_supervisor.watched(sup):
        decision = sup.decide(name)
        if decision.action in _JOBS and _gave_up(context, decision.run_key):
            # Failed before it acted (Redis away, a code-location timeout) or cancelled
            # in the UI: the same key would never launch again, so ask under a new one.
            context.log.warning(f"{name}: run {decision.run_key} failed or was cancelled: retrying")
            sup.retry_request(name)
            decision = sup.decide(name)
        if decision.action in _JOBS:
            requests.append(_run_request(name, decision))
        elif decision.action == "failed":
            context.log.error(f"{name}: {decision.reason}")
        st = decision.status
        last = cursor.get(name, {})
        if last.get("state") != st.state or now - last.get("at", 0) >= OBSERVE_EVERY_S:
            events.append(_observation(st))
            events.append(
                dg.AssetCheckEvaluation(
                    asset_key=flow_asset_key(name),
                    check_name="flow_is_healthy",
                    passed=st.healthy,
                    metadata={"state": st.state, "reason": st.reason},
                )
            )
            cursor[name] = {"state": st.state, "at": now}
    return dg.SensorResult(run_requests=requests, asset_events=events, cursor=json.dumps(cursor))
