"""The flow health sensor and the flow-control jobs, on real processes and a real Redis."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import redis

from orchestration.resources import FlowSupervisorResource, PipelineResource
from orchestration.speed_layer.assets import flow_asset_key
from orchestration.speed_layer.jobs import restart_flows, start_flows, stop_flows
from orchestration.speed_layer.sensors import flow_health_sensor
from redisstore.keys import control_key

# The simulated feed is a real long-running process that beats like every flow; it
# stands in for the bytewax flows here, so these tests exercise supervision only.
FLOW = "feed"


@pytest.fixture
def resource(redis_url: str, tmp_path: Path) -> Iterator[FlowSupervisorResource]:
    res = FlowSupervisorResource(
        pipeline=PipelineResource(redis_url=redis_url, home=str(tmp_path)),
        flows=[FLOW],
        stale_after_s=3,
        max_restarts=2,
    )
    yield res
    res.supervisor().stop(FLOW, timeout=5)


def tick(resource: FlowSupervisorResource, cursor: str | None = None) -> dg.SensorResult:
    # A resource with a nested resource is opened as a context manager by Dagster.
    with dg.build_sensor_context(resources={"flow_supervisor": resource}, cursor=cursor) as ctx:
        result = flow_health_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def run_job(job: dg.JobDefinition, resource: FlowSupervisorResource, **config: object) -> None:
    op = next(iter(job.graph.node_dict))
    result = job.execute_in_process(
        run_config={"ops": {op: {"config": {"flow": FLOW, **config}}}},
        resources={"flow_supervisor": resource},
    )
    assert result.success


def wait_for(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def running(resource: FlowSupervisorResource) -> bool:
    return resource.supervisor().status(FLOW).state == "running"


def test_healthy_flow_gets_no_restart_and_is_observed(resource: FlowSupervisorResource) -> None:
    run_job(start_flows, resource)
    wait_for(lambda: running(resource))
    result = tick(resource)
    assert result.run_requests == []
    obs = [e for e in result.asset_events if isinstance(e, dg.AssetObservation)]
    assert obs[0].asset_key == flow_asset_key(FLOW)
    assert obs[0].metadata["state"].value == "running"
    # Figures are numbers, so Dagster's UI plots them over time; text stays text.
    meta = obs[0].metadata
    for name in ("items_in", "items_out", "restarts", "pid", "restarts_in_window"):
        assert isinstance(meta[name], dg.IntMetadataValue), name
    assert isinstance(meta["heartbeat_age_s"], dg.FloatMetadataValue)
    assert isinstance(meta["throughput"], dg.FloatMetadataValue)
    assert meta["pid"].value == resource.supervisor().status(FLOW).pid
    checks = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert checks[0].passed


def test_killed_flow_is_restarted_once_per_incident_then_crash_loop_stops(
    resource: FlowSupervisorResource,
) -> None:
    sup = resource.supervisor()
    run_job(start_flows, resource)
    wait_for(lambda: running(resource))
    keys = []
    for incident in range(2):
        pid = sup.pid(FLOW)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: sup.status(FLOW).state == "dead")
        first, second = tick(resource), tick(resource)
        (req,) = first.run_requests
        assert [r.run_key for r in second.run_requests] == [req.run_key]  # same incident
        assert req.run_key == f"restart:{FLOW}:{incident}"
        keys.append(req.run_key)
        run_job(restart_flows, resource, reason="dead", automatic=True)
        wait_for(lambda: running(resource))
        assert sup.pid(FLOW) != pid
    assert keys == [f"restart:{FLOW}:0", f"restart:{FLOW}:1"]
    # A third death inside the window: max_restarts (2) reached, so no more restarts.
    os.kill(sup.pid(FLOW), signal.SIGKILL)
    wait_for(lambda: sup.status(FLOW).state == "dead")
    result = tick(resource)
    assert result.run_requests == []
    st = sup.status(FLOW)
    assert st.state == "failed" and "2 restarts" in st.reason
    checks = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert checks and not checks[-1].passed
    assert tick(resource).run_requests == []  # stays failed
    # A manual start clears the crash loop.
    run_job(start_flows, resource)
    wait_for(lambda: running(resource))


def test_stalled_flow_is_restarted(resource: FlowSupervisorResource) -> None:
    sup = resource.supervisor()
    run_job(start_flows, resource)
    wait_for(lambda: running(resource))
    pid = sup.pid(FLOW)
    os.kill(pid, signal.SIGSTOP)  # alive but silent
    try:
        wait_for(lambda: sup.status(FLOW).state == "stalled")
        (req,) = tick(resource).run_requests
        assert req.tags["reason"] == "stalled"
    finally:
        os.kill(pid, signal.SIGCONT)


def test_stopped_flow_is_left_alone(resource: FlowSupervisorResource) -> None:
    run_job(start_flows, resource)
    run_job(stop_flows, resource)
    st = resource.supervisor().status(FLOW)
    assert st.state == "stopped"
    assert tick(resource).run_requests == []


def test_definitions_hold_the_sensor_jobs_and_flow_assets(redis_client: redis.Redis) -> None:
    from orchestration.definitions import defs

    repo = defs.get_repository_def()
    assert {"start_flows", "stop_flows", "restart_flows"} <= {j.name for j in repo.get_all_jobs()}
    assert (
        repo.get_sensor_def("flow_health_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    )
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"candles_flow", "metrics_flow", "archive_flow", "raw_log"} <= keys


def test_wanted_flow_is_started_not_restarted(resource: FlowSupervisorResource) -> None:
    sup = resource.supervisor()
    for attempt in (1, 2):
        sup.want(FLOW)
        assert sup.status(FLOW).state == "pending"
        (req,) = tick(resource).run_requests
        assert (req.job_name, req.run_key) == ("start_flows", f"start:{FLOW}:{attempt}")
        run_job(start_flows, resource)
        wait_for(lambda: running(resource))
        assert sup.restarts_in_window(FLOW) == 0  # a first start is not a restart
        assert tick(resource).run_requests == []
        sup.stop(FLOW)


def test_a_failed_start_run_is_requested_again_and_overdue_is_unhealthy(
    resource: FlowSupervisorResource, tmp_path: Path
) -> None:
    from cryptopipe.localredis import free_port
    from streaming import supervisor as supervisor_module

    sup = resource.supervisor()
    sup.want(FLOW)
    with dg.DagsterInstance.ephemeral() as instance:

        def tick_with(inst: dg.DagsterInstance) -> dg.SensorResult:
            with dg.build_sensor_context(
                resources={"flow_supervisor": resource}, instance=inst
            ) as ctx:
                result = flow_health_sensor(ctx)
            assert isinstance(result, dg.SensorResult)
            return result

        (first,) = tick_with(instance).run_requests
        # The start run fails before it acts: its Redis does not answer.
        unreachable = FlowSupervisorResource(
            pipeline=PipelineResource(
                redis_url=f"redis://127.0.0.1:{free_port()}/0", home=str(tmp_path)
            ),
            flows=[FLOW],
        )
        failed = start_flows.execute_in_process(
            run_config={"ops": {"start_flow": {"config": {"flow": FLOW}}}},
            resources={"flow_supervisor": unreachable},
            instance=instance,
            tags={"dagster/run_key": first.run_key},
            raise_on_error=False,
        )
        assert not failed.success
        (again,) = tick_with(instance).run_requests
        assert again.run_key != first.run_key and again.job_name == "start_flows"
        # Asked again under the new key, not a third time while that one is unanswered.
        assert [r.run_key for r in tick_with(instance).run_requests] == [again.run_key]

    assert sup.status(FLOW).state == "pending" and sup.status(FLOW).healthy
    old = int(time.time() * 1000) - int(supervisor_module.PENDING_GRACE_S * 1000) - 5_000
    sup.client.hset(control_key(FLOW), "wanted_at_ms", old)
    st = sup.status(FLOW)
    assert st.state == "overdue" and not st.healthy and st.needs_start
    checks = [e for e in tick(resource).asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert [c.passed for c in checks] == [False]
