"""Several feeds under the health sensor: each its own process, heartbeat and restarts.

``cryptopipe up --feed binance,coinbase`` names the feed processes ``feed-binance``
and ``feed-coinbase`` and keeps them in Redis; the sensor (Dagster's own
``build_sensor_context``) decides about each apart. Two tests run the real feed
processes: the live Binance and Coinbase feeds against the local fake servers.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
import redis

from cryptopipe.localredis import free_port
from marketdata.rawmessage import F_EXCHANGE
from marketdata.settings import Settings
from orchestration.resources import FlowSupervisorResource, PipelineResource
from orchestration.speed_layer.assets import flow_asset_key
from orchestration.speed_layer.jobs import restart_flows, start_flows
from orchestration.speed_layer.sensors import flow_health_sensor
from redisstore.keys import RAW_STREAM, control_key
from streaming.heartbeat import read_heartbeat
from streaming.supervisor import FLOWS, Supervisor
from tests.orchestration.test_up_live import Up
from tests.processes import leftovers, run_cryptopipe
from tests.streaming.fake_binance import FakeBinance
from tests.streaming.fake_coinbase import FakeCoinbase

BINANCE, SIMULATE, COINBASE = "feed-binance", "feed-simulate", "feed-coinbase"


@pytest.fixture
def resource(redis_url: str, tmp_path: Path) -> Iterator[FlowSupervisorResource]:
    # flows unset, as in the code location: the flows and the feeds up asked for.
    res = FlowSupervisorResource(
        pipeline=PipelineResource(redis_url=redis_url, home=str(tmp_path)),
        stale_after_s=3,
        max_restarts=2,
    )
    yield res
    for name in (BINANCE, SIMULATE, COINBASE):
        res.supervisor().stop(name, timeout=5)


def tick(resource: FlowSupervisorResource) -> dg.SensorResult:
    with dg.build_sensor_context(resources={"flow_supervisor": resource}) as ctx:
        result = flow_health_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def keys(result: dg.SensorResult, job: str) -> list[str]:
    return sorted(r.run_key or "" for r in result.run_requests if r.job_name == job)


def carry_out(result: dg.SensorResult, resource: FlowSupervisorResource) -> None:
    """Run each requested job in this process, as the daemon would in a run."""
    jobs = {j.name: j for j in (start_flows, restart_flows)}
    for req in result.run_requests:
        assert (
            jobs[req.job_name]
            .execute_in_process(run_config=req.run_config, resources={"flow_supervisor": resource})
            .success
        )


def wait_for(pred: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_the_sensor_decides_about_each_feed_process_apart(
    resource: FlowSupervisorResource, redis_client: redis.Redis
) -> None:
    sup = resource.supervisor()
    names = sup.set_feeds([["binance", "--symbols", "BTCUSDT"], ["simulate", "--rate", "5"]])
    assert resource.watched() == [*FLOWS, BINANCE, SIMULATE]
    for name in names:
        sup.want(name)
    first = tick(resource)
    assert keys(first, "start_flows") == [f"start:{BINANCE}:1", f"start:{SIMULATE}:1"]
    observed = {e.asset_key for e in first.asset_events if isinstance(e, dg.AssetObservation)}
    assert {flow_asset_key(BINANCE), flow_asset_key(SIMULATE)} <= observed
    assert flow_asset_key(BINANCE) == dg.AssetKey("feed_binance_flow")

    # feed-binance was started and its process is gone: it alone is restarted ...
    redis_client.hset(control_key(BINANCE), "started_at_ms", int(time.time() * 1000))
    assert keys(tick(resource), "restart_flows") == [f"restart:{BINANCE}:0"]
    # ... and it alone reaches its crash-loop limit.
    for _ in range(resource.max_restarts):
        sup.record_restart(BINANCE, "dead")
    result = tick(resource)
    assert keys(result, "restart_flows") == []
    assert sup.status(BINANCE).state == "failed"
    assert sup.status(SIMULATE).state == "pending" and sup.restarts_in_window(SIMULATE) == 0
    checks = {
        e.asset_key: e.passed for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)
    }
    assert checks[flow_asset_key(BINANCE)] is False

    # The next up runs one feed: the sensor watches the feed up asked for, nothing else.
    assert sup.set_feeds([["simulate"]]) == ["feed"]
    assert resource.watched() == [*FLOWS, "feed"]
    assert keys(tick(resource), "start_flows") == []  # feed-simulate is wanted, not watched


def test_the_code_location_has_an_asset_and_check_per_feed_process() -> None:
    from orchestration.definitions import defs

    repo = defs.get_repository_def()
    graph = repo.asset_graph
    for name in ("feed", BINANCE, SIMULATE, COINBASE):
        key = flow_asset_key(name)
        assert key in graph.get_all_asset_keys(), key
        assert dg.AssetCheckKey(key, "flow_is_healthy") in graph.asset_check_keys


def test_two_live_feeds_beat_apart_and_a_killed_one_alone_is_restarted(
    resource: FlowSupervisorResource, redis_client: redis.Redis
) -> None:
    sup = resource.supervisor()
    market = {"n_trades": 100_000, "tick_s": 0.01, "live_clock": True}
    with FakeBinance(["BTCUSDT"], **market) as fb, FakeCoinbase(["BTC-USD"], **market) as fc:
        binance = ["binance", "--symbols", "BTCUSDT", "--ws-url", fb.ws_url]
        coinbase = ["coinbase", "--products", "BTC-USD", "--ws-url", fc.ws_url]
        for name in sup.set_feeds(
            [[*binance, "--rest-url", fb.rest_url], [*coinbase, "--rest-url", fc.rest_url]]
        ):
            sup.want(name)
        carry_out(tick(resource), resource)  # the two start runs

        def beating(name: str) -> bool:
            st = sup.status(name)
            hb = read_heartbeat(redis_client, name) or {}
            return st.state == "running" and hb.get("pid") == str(st.pid)

        wait_for(lambda: beating(BINANCE) and beating(COINBASE))
        assert read_heartbeat(redis_client, "feed") is None  # each beats under its own name
        pids = {n: sup.pid(n) for n in (BINANCE, COINBASE)}

        os.kill(pids[COINBASE], signal.SIGKILL)
        wait_for(lambda: sup.status(COINBASE).state == "dead")
        result = tick(resource)
        assert keys(result, "restart_flows") == [f"restart:{COINBASE}:0"]
        carry_out(result, resource)
        wait_for(lambda: beating(COINBASE))
        assert sup.pid(COINBASE) not in (None, pids[COINBASE])
        assert sup.pid(BINANCE) == pids[BINANCE] and sup.restarts_in_window(BINANCE) == 0
        assert sup.restarts_in_window(COINBASE) == 1
        assert beating(BINANCE)
        assert keys(tick(resource), "restart_flows") == []
        # Both venues' trades reach the raw log: each process runs its own feed.
        wait_for(lambda: {b"binance", b"coinbase"} <= venues(redis_client))


def venues(client: redis.Redis) -> set[bytes]:
    """The exchanges of what the raw log holds (trades and progress marks)."""
    return {f[F_EXCHANGE] for _, f in client.xrange(RAW_STREAM) if F_EXCHANGE in f}


@pytest.mark.slow
def test_up_without_dagster_runs_each_feed_under_its_name(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    market = {"n_trades": 100_000, "tick_s": 0.01, "live_clock": True}
    with FakeBinance(["BTCUSDT"], **market) as fb, FakeCoinbase(["BTC-USD"], **market) as fc:
        up = Up(
            tmp_path,
            url,
            *("--no-dagster", "--no-api", "--feed", "binance,coinbase", "--symbols", "BTCUSDT"),
            f"--feed-option=binance:--ws-url={fb.ws_url}",
            f"--feed-option=binance:--rest-url={fb.rest_url}",
            "--feed-option=coinbase:--products=BTC-USD",
            f"--feed-option=coinbase:--ws-url={fc.ws_url}",
            f"--feed-option=coinbase:--rest-url={fc.rest_url}",
            *("--for", "60"),
        )
        try:
            binance = int(up.wait_line(r"started feed-binance \(pid (\d+)\)", 60)[1])
            coinbase = int(up.wait_line(r"started feed-coinbase \(pid (\d+)\)", 5)[1])
            up.wait_line(r"feed: cryptopipe feed coinbase --products=BTC-USD .*feed-coinbase", 30)
            base = int(up.wait_line(r"metrics: .*: candles (\d+),", 5)[1])
            assert f"feed-binance {base + 30}, feed-coinbase {base + 31}" in up.output

            def rows() -> dict[str, dict[str, object]]:
                out = run_cryptopipe(up.env, "status", "--format", "json")
                return {r["flow"]: r for r in json.loads(out.stdout)["flows"]}

            def both_serving() -> bool:
                got = rows()
                return all(got.get(n, {}).get("metrics_url") for n in (BINANCE, COINBASE))

            wait_for(both_serving, 30)
            got = rows()
            assert [got[BINANCE]["pid"], got[COINBASE]["pid"]] == [binance, coinbase]
            assert got[BINANCE]["state"] == got[COINBASE]["state"] == "running"
            assert got[BINANCE]["metrics_url"] == f"http://127.0.0.1:{base + 30}/metrics"
            assert got[COINBASE]["metrics_url"] == f"http://127.0.0.1:{base + 31}/metrics"
            assert "feed" not in got
            client = redis.Redis.from_url(url)
            assert Supervisor(Settings(redis_url=url, home=tmp_path), client).feed_processes() == [
                BINANCE,
                COINBASE,
            ]
            wait_for(lambda: {b"binance", b"coinbase"} <= venues(client))
            client.close()
        finally:
            assert up.stop() == 0, up.output
    assert leftovers(str(tmp_path)) == ""
