"""A backfill of several days as the Dagster UI launches it, run by the daemon.

``cryptopipe up`` with its flows running; two days of a simulated market go through
them; then the GraphQL mutation the UI's "Launch backfill" sends
(``launchPartitionBackfill`` with the batch layer's assets and two partitions). The
daemon's backfill daemon runs the days one at a time; each day's batch is reconciled
and served from the batch. A flow killed meanwhile is restarted within 30 s: flow
control never waits behind the batch.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
import redis
import requests

from batch.sealing import day_seal
from cryptopipe.localredis import free_port
from lake.published import is_published
from marketdata.interval import Interval
from marketdata.settings import Settings
from marketdata.timeutil import DAY_MS, day_start_ms
from orchestration.definitions import defs
from serving.merged import reader_for
from tests.orchestration.test_up_live import Up, dagster_runs, flow_pid, flow_pids, wait_for
from tests.processes import run_cryptopipe

DAYS = [date(2025, 3, 14), date(2025, 3, 15)]
#: What the UI selects: every asset of the batch layer's group (the daily job's).
BATCH_ASSETS = [
    spec.key.to_user_string()
    for spec in defs.resolve_all_asset_specs()
    if spec.group_name == "batch_layer"
]

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""

STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status }
  }
}
"""


def spark_masters(home: Path) -> list[str]:
    """Where each of the instance's batch_candles materializations ran (its "spark" entry)."""
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        records = instance.fetch_materializations(AssetKey("batch_candles"), limit=100).records
        mats = [r.asset_materialization for r in records]
        return [str(m.metadata["spark"].value) for m in mats if m is not None]


def graphql(ui: str, query: str, variables: dict) -> dict:
    resp = requests.post(f"{ui}/graphql", json={"query": query, "variables": variables}, timeout=30)
    resp.raise_for_status()
    body = resp.json()
    assert "errors" not in body, body
    return dict(body["data"])


@pytest.mark.slow
def test_a_backfill_launched_as_the_ui_does_runs_every_day_through_the_daemon(
    tmp_path: Path,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    spark_port = free_port()  # the batch runs go to the warm Spark Connect server
    up = Up(
        tmp_path,
        url,
        *("--no-feed", "--no-api", "--dagster-port", str(port), "--for", "900"),
        *("--spark-connect", "--spark-connect-port", str(spark_port)),
    )
    try:
        up.wait_line(r"code location loaded", 180)
        up.wait_line(rf"spark: Spark Connect server sc://127.0.0.1:{spark_port} ", 120)
        names = ("candles", "metrics", "archive")
        wait_for(lambda: flow_pids(up, names), 180, "the sensor to start the flows")
        # Two days and two hours of market through the running flows.
        feed = run_cryptopipe(
            up.env,
            *("feed", "simulate", "--symbols", "BTCUSDT,ETHUSDT", "--rate", "0.1"),
            *("--start", "2025-03-14T00:00:00Z", "--duration", str(2 * 86_400 + 7_200)),
            *("--speed", "max", "--seed", "3", "--late", "0.001", "--duplicates", "0.01"),
            timeout=300,
        )
        assert feed.returncode == 0, feed.stderr
        settings = Settings(redis_url=url, home=tmp_path)
        # Sealed by the archive once it wrote the history (the files of the day after
        # are there): not by the watermark the idle flow published before it.
        after = tmp_path / "lake" / "trades" / f"date={DAYS[-1] + timedelta(days=1)}"
        wait_for(
            lambda: (
                any(after.glob("*.parquet")) and all(day_seal(settings, d).sealed for d in DAYS)
            ),
            180,
            "the archive to write and seal both days",
        )
        client = redis.Redis.from_url(url, socket_timeout=10)

        def caught_up() -> bool:
            out = run_cryptopipe(up.env, "status", "--format", "json").stdout
            lags = {f["flow"]: f["lag"] for f in json.loads(out or '{"flows": []}')["flows"]}
            return lags.get("candles") == lags.get("archive") == "0"

        wait_for(caught_up, 120, "the candles and archive flows to catch up")

        launched = graphql(
            ui,
            LAUNCH,
            {
                "params": {
                    "partitionNames": [str(d) for d in DAYS],
                    "assetSelection": [{"path": [a]} for a in BATCH_ASSETS],
                    "fromFailure": False,
                    "title": "two days, as from the UI",
                }
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill = launched["backfillId"]

        def finished() -> str | None:
            got = graphql(ui, STATUS, {"id": backfill})["partitionBackfillOrError"]
            status = str(got.get("status"))
            return status if status.startswith(("COMPLETED", "FAILED", "CANCELED")) else None

        t0 = time.monotonic()

        # A flow killed while the backfill runs: restarted within 30 s, while the
        # backfill's other day still waits (batch runs go one at a time).
        def batch_runs() -> list[str]:
            return [st for job, st in dagster_runs(tmp_path) if job == "__ASSET_JOB"]

        wait_for(lambda: "STARTED" in batch_runs(), 120, "the backfill's first run")
        metrics_pid = flow_pids(up, ("metrics",))["metrics"]
        killed_at = time.monotonic()
        os.kill(metrics_pid, signal.SIGKILL)
        # Restarted = a new process of the flow runs (its own start-up, bytewax and
        # imports, then follows; that is the flow's time, not the supervisor's).
        wait_for(
            lambda: flow_pid(up, "metrics") not in (None, metrics_pid),
            30,
            "the metrics flow to be restarted within 30 s during the backfill",
        )
        took = time.monotonic() - killed_at
        print(f"metrics flow restarted {took:.1f} s after its SIGKILL, during the backfill")
        waiting = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")
        assert len(batch_runs()) < len(DAYS) or [s for s in batch_runs() if s in waiting], (
            f"the backfill was over before the restart ({took:.0f} s): nothing was shown"
        )
        status = wait_for(finished, 420, "the backfill to finish")
        assert status in ("COMPLETED", "COMPLETED_SUCCESS"), (status, dagster_runs(tmp_path))
        runs = [r for r in dagster_runs(tmp_path) if r[0] == "__ASSET_JOB"]
        assert sorted(s for _, s in runs) == ["SUCCESS", "SUCCESS"], dagster_runs(tmp_path)
        print(f"backfill of {len(DAYS)} days: {time.monotonic() - t0:.0f} s")
        # Both ran on up's warm Spark Connect server, which status shows.
        assert spark_masters(tmp_path) == [f"sc://127.0.0.1:{spark_port}"] * len(DAYS)
        report = json.loads(run_cryptopipe(up.env, "status", "--format", "json").stdout)
        assert report["spark"] == {"connect": f"sc://127.0.0.1:{spark_port}", "answering": True}
        warm_up = (tmp_path / "run" / "logs" / "spark-warm-up.log").read_text()
        assert f"warm-up of sc://127.0.0.1:{spark_port}: " in warm_up, warm_up[-2000:]

        # Each day reconciled exactly and served from the batch.
        merged = reader_for("merged", settings, client)
        batch = reader_for("batch", settings, client)
        for d in DAYS:
            summary = json.loads(
                (tmp_path / "lake" / "reconciliation" / f"date={d}" / "summary.json").read_text()
            )
            assert summary["unexplained"] == 0 and summary["stream_candles"] > 0, summary
            assert is_published(settings, d)
            start = day_start_ms(d)
            window = {"exchange": "binance", "start": start, "end": start + DAY_MS}
            got = merged.read("BTCUSDT", Interval.M1, **window)
            assert got and {r.source for r in got} == {"batch"}
            assert [r.candle for r in got] == [
                r.candle for r in batch.read("BTCUSDT", Interval.M1, **window)
            ]
        # The day after: not backfilled, still the stream's.
        after = day_start_ms(DAYS[-1] + timedelta(days=1))
        late = merged.read("BTCUSDT", Interval.M1, start=after, end=after + DAY_MS)
        assert late and {r.source for r in late} == {"stream"}
    finally:
        up.stop()
