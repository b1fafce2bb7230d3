"""Liveness from progress: a flow stuck on a half-open socket is found and restarted (slow).

The real candles flow reads the raw log through a proxy that then freezes its reading
connection (open, silent both ways) while its heartbeat thread, on another
connection, beats on. More trades arrive: the supervisor sees input pending and no
read back, calls the flow ``stalled`` although its heartbeat is fresh, the health
sensor asks for a restart, and the restarted flow reads everything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import redis

from cryptopipe.localredis import LocalRedis
from marketdata.rawmessage import RawMessage
from marketdata.simulator import trade_payload
from marketdata.trade import Trade
from orchestration.resources import FlowSupervisorResource, PipelineResource
from orchestration.speed_layer.jobs import restart_flows, start_flows
from orchestration.speed_layer.sensors import flow_health_sensor
from redisstore.keys import RAW_STREAM, counts_key
from streaming.rawlog import RawLogWriter
from tests.stallproxy import StallProxy

pytestmark = pytest.mark.slow
FLOW = "candles"
T0 = 1_741_910_400_000


def messages(first: int, n: int) -> list[RawMessage]:
    out = []
    for i in range(first, first + n):
        t = Trade("binance", "BTCUSDT", i, (100 + i) * 10**8, 10**7, T0 + i * 10, False)
        out.append(RawMessage(trade_payload(t), "binance", T0 + i * 10))
    return out


@pytest.fixture
def proxy(redis_server: LocalRedis) -> Iterator[StallProxy]:
    p = StallProxy("127.0.0.1", redis_server.port)
    yield p
    p.close()


@pytest.fixture
def resource(
    proxy: StallProxy, redis_server: LocalRedis, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[FlowSupervisorResource]:
    url = redis_server.url.replace(f":{redis_server.port}/", f":{proxy.port}/")
    res = FlowSupervisorResource(
        pipeline=PipelineResource(redis_url=url, home=str(tmp_path)),
        flows=[FLOW],
        stale_after_s=5,
    )
    yield res
    res.supervisor().stop(FLOW, timeout=5)


def run_job(job: dg.JobDefinition, resource: FlowSupervisorResource) -> None:
    op = next(iter(job.graph.node_dict))
    result = job.execute_in_process(
        run_config={"ops": {op: {"config": {"flow": FLOW}}}},
        resources={"flow_supervisor": resource},
    )
    assert result.success


def wait_for(pred, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def items_in(resource: FlowSupervisorResource) -> int:
    return int(resource.supervisor().status(FLOW).heartbeat.get("items_in", 0))


def test_a_flow_stuck_on_a_socket_is_stalled_and_restarted(
    resource: FlowSupervisorResource, proxy: StallProxy, redis_client: redis.Redis
) -> None:
    sup = resource.supervisor()
    writer = RawLogWriter(redis_client)
    writer.write(messages(0, 100))
    run_job(start_flows, resource)
    wait_for(lambda: sup.status(FLOW).state == "running" and items_in(resource) == 100)
    first_pid = sup.status(FLOW).pid

    assert proxy.freeze(b"XREAD") >= 1  # the worker's reading connection, not the heartbeat's
    writer.write(messages(100, 50))
    frozen_at = time.monotonic()
    wait_for(lambda: sup.status(FLOW).state == "stalled", timeout=30)
    st = sup.status(FLOW)
    assert time.monotonic() - frozen_at < 5 + 5  # the stale time, plus a beat or two
    assert st.heartbeat_age_s is not None and st.heartbeat_age_s < 5  # the heartbeat is fresh
    assert st.reason.startswith("no progress: md:trades:raw has entries after")
    assert items_in(resource) == 100

    with dg.build_sensor_context(resources={"flow_supervisor": resource}) as ctx:
        result = flow_health_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    (req,) = result.run_requests
    assert req.job_name == "restart_flows"
    run_job(restart_flows, resource)
    wait_for(lambda: sup.status(FLOW).state == "running" and items_in(resource) >= 50)
    assert sup.status(FLOW).pid != first_pid
    # Every trade counted once: the restarted flow resumed from its snapshot.
    key = counts_key(FLOW, RAW_STREAM)
    wait_for(lambda: int(redis_client.hget(key, "trades") or 0) == 150)
    assert int(redis_client.hget(key, "duplicates") or 0) == 0
