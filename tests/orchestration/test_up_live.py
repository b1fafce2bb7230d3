"""``cryptopipe up`` left running: one stack per Redis, children restarted, nothing orphaned.

Real processes throughout: ``cryptopipe up`` as a user runs it, its local
redis-server, Dagster's webserver and daemon, the flows and the feed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import requests

from cryptopipe.localredis import free_port
from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.parsing import parse_message
from marketdata.rawmessage import F_MARK, RawMessage
from marketdata.settings import Settings
from marketdata.trade import Trade
from redisstore.keys import (
    DLQ_STREAM,
    LATE_STREAM,
    RAW_STREAM,
    STACK_KEY,
    counts_key,
    series_key,
)
from serving.stream import StreamCandleReader
from streaming.supervisor import Supervisor
from tests.processes import ROOT, leftovers, log_tails, run_cryptopipe

#: Fresh-home starts in a row (the issue asks for ten: CRYPTOPIPE_FRESH_STARTS=10, verified
#: by hand; CI runs two, the test's other stack being a third).
FRESH_STARTS = int(os.environ.get("CRYPTOPIPE_FRESH_STARTS", "2"))


class Up:
    """A running ``cryptopipe up`` whose output is collected as it comes."""

    def __init__(self, home: Path, url: str, *args: str) -> None:
        self.home = home
        self.env = {**os.environ, "REDIS_URL": url, "CRYPTOPIPE_HOME": str(home)}
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "cryptopipe", "up", "--api-port", str(free_port())),
                # Ports of its own (30 up from a free one), beside other tests' stacks.
                *("--metrics-port-base", str(free_port())),
                *args,
            ],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching ``pattern`` (fails with the logs after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.2)
        pytest.fail(f"no line /{pattern}/ from up:\n{self.output}\n{log_tails(self.home)}")

    def count(self, pattern: str) -> int:
        return sum(1 for line in list(self.lines) if re.search(pattern, line))

    def stop(self, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


def wait_for(pred: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def raw_len(client: redis.Redis) -> int:
    return int(client.xlen("md:trades:raw"))


def flow_pids(up: Up, names: tuple[str, ...]) -> dict[str, int]:
    """The pids of running flows, by ``stream status`` (empty until all run)."""
    out = run_cryptopipe(up.env, "status", "--format", "json")
    if out.returncode not in (0, 1) or not out.stdout:  # 1: some flow is not healthy
        return {}
    states = {s["flow"]: s for s in json.loads(out.stdout)["flows"]}
    if all(states.get(n, {}).get("state") == "running" for n in names):
        return {n: int(states[n]["pid"]) for n in names}
    return {}


def metrics_urls(up: Up, names: tuple[str, ...]) -> dict[str, str]:
    """Each process's ``metrics_url`` by ``status --format json`` (empty until all have one)."""
    out = run_cryptopipe(up.env, "status", "--format", "json")
    if out.returncode not in (0, 1) or not out.stdout:
        return {}
    urls = {s["flow"]: s.get("metrics_url") for s in json.loads(out.stdout)["flows"]}
    return {n: urls[n] for n in names} if all(urls.get(n) for n in names) else {}


def flow_pid(up: Up, name: str) -> int | None:
    """The pid of a flow's process, running or starting, as ``status`` reports it.

    Asked in this process (the supervisor's own status, which ``status`` prints), not
    by running ``cryptopipe status``: polled twice a second while a restart is timed,
    a new Python process each time would take a core of this 2-core machine from the
    restart being timed.
    """
    settings = Settings(redis_url=up.env["REDIS_URL"], home=up.home)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        st = Supervisor(settings, client).status(name)
    except redis.RedisError:
        return None
    finally:
        client.close()
    return st.pid if st.state in ("running", "starting") and st.pid else None


def test_a_second_up_is_refused_at_once_and_the_first_is_untouched(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    first = Up(tmp_path / "a", url, "--no-dagster", "--rate", "50", "--for", "120")
    try:
        feed_pid = int(first.wait_line(r"started feed-simulate \(pid (\d+)\)", 60)[1])
        first.wait_line("Ctrl-C stops everything", 30)
        client = redis.Redis.from_url(url)
        wait_for(lambda: raw_len(client) > 0, 30, "the first stack's feed to write")
        holder = client.get(STACK_KEY)

        t0 = time.monotonic()
        second = run_cryptopipe(
            {**first.env, "CRYPTOPIPE_HOME": str(tmp_path / "b")},
            "up",
            "--no-dagster",
            "--for",
            "30",
            timeout=60,
        )
        took = time.monotonic() - t0
        assert second.returncode == 1, second.stdout + second.stderr
        assert took < 10, f"refused only after {took:.1f} s"
        said = second.stderr.strip().splitlines()[-1]
        assert f"pid {first.proc.pid}" in said and str(tmp_path / "a") in said, said
        assert "another cryptopipe up runs the stack on this Redis" in said
        # Untouched: the same lease, the same feed still writing, nothing of b's started.
        assert client.get(STACK_KEY) == holder
        assert alive(feed_pid) and first.proc.poll() is None
        before = raw_len(client)
        wait_for(lambda: raw_len(client) > before, 15, "the first feed to go on writing")
        assert not (tmp_path / "b" / "run").exists()
    finally:
        assert first.stop() == 0, first.output
    assert leftovers(str(tmp_path)) == ""


def test_a_dead_feed_and_a_dead_local_redis_are_restarted(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    up = Up(tmp_path, url, "--no-dagster", "--rate", "50", "--for", "180")
    try:
        feed_pid = int(up.wait_line(r"started feed-simulate \(pid (\d+)\)", 60)[1])
        client = redis.Redis.from_url(url, socket_timeout=5)
        wait_for(lambda: raw_len(client) > 0, 30, "the feed to write")

        os.kill(feed_pid, signal.SIGKILL)
        up.wait_line(r"feed-simulate exited with status -9; restarting it in 1 s", 15)
        new_pid = int(up.wait_line(r"restarted feed-simulate \(pid (\d+)\)", 15)[1])
        assert new_pid != feed_pid and alive(new_pid)
        before = raw_len(client)
        wait_for(lambda: raw_len(client) > before, 30, "the restarted feed to write")

        # The HTTP API, a child of up like the feed: killed, restarted, answering.
        api_pid = int(up.wait_line(r"started api \(pid (\d+)\)", 5)[1])
        api = up.wait_line(r"api: (http://\S+)/api/candles", 5)[1]
        os.kill(api_pid, signal.SIGKILL)
        up.wait_line(r"api exited with status -9; restarting it in 1 s", 15)
        up.wait_line(r"restarted api \(pid \d+\)", 15)
        wait_for(lambda: _answers(api + "/api/symbols"), 30, "the restarted API to answer")

        redis_pid = int(client.info("server")["process_id"])
        os.kill(redis_pid, signal.SIGKILL)
        up.wait_line(r"local redis-server exited \(-9\); restarting it in 1 s", 15)
        up.wait_line(r"restarted the local redis-server", 30)

        def grows() -> bool:
            try:
                return raw_len(client) > 0 and int(client.info("server")["process_id"]) != redis_pid
            except redis.RedisError:
                return False

        wait_for(grows, 30, "the restarted Redis to answer")
        after = raw_len(client)
        wait_for(lambda: raw_len(client) > after, 60, "the feed to write into the new Redis")
        assert alive(new_pid), "the feed rode out the Redis restart"
        assert up.proc.poll() is None
    finally:
        assert up.stop() == 0, up.output
    assert leftovers(str(tmp_path)) == ""


def closed_1m_exact(client: redis.Redis) -> int:
    """Every closed 1m candle in Redis equals the fold of the raw log's trades of its
    window, each trade once (a restarted simulator sends its market again from its
    start: duplicates; it has no faults: nothing late, nothing rejected); returns how
    many there are."""
    trades: dict[tuple[str, str, int], Trade] = {}
    for _, fields in client.xrange(RAW_STREAM):
        if F_MARK in fields:  # a venue's progress mark, not a trade
            continue
        t = parse_message(RawMessage.from_fields(fields).payload)
        assert isinstance(t, Trade), t
        trades.setdefault(t.key, t)  # the first delivery wins, as in the flow
    folded = fold_trades(list(trades.values()), Interval.M1)
    reader = StreamCandleReader(client)
    stored = [
        rec.candle
        for sym in sorted({t.symbol for t in trades.values()})
        for rec in reader.read(sym, Interval.M1)
        if rec.closed
    ]

    def brief(c: object) -> object:
        if c is None:
            return None
        f = c.fields()  # type: ignore[attr-defined]
        return {k: f[k] for k in ("trade_count", "first_trade_id", "last_trade_id", "low")}

    wrong = [
        (c.key, brief(c), brief(folded.get(c.key)))
        for c in stored
        if folded.get(c.key) is None or folded[c.key].fields() != c.fields()
    ]
    counts = {
        k.decode(): v.decode() for k, v in client.hgetall(counts_key("candles", RAW_STREAM)).items()
    }
    assert wrong == [], (len(wrong), len(stored), wrong[:2], counts)
    assert client.xlen(LATE_STREAM) == 0 and client.xlen(DLQ_STREAM) == 0
    return len(stored)


def dagster_runs(home: Path) -> list[tuple[str, str]]:
    """(job name, status) of every run in the stack's Dagster instance."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        return [(r.job_name, r.status.value) for r in instance.get_runs()]


@pytest.mark.slow
def test_a_supervised_stack_heals_and_sigkill_leaves_nothing(tmp_path: Path) -> None:
    """One stack under Dagster (market time at 10x, a 1m candle every 6 s).

    The sensor starts the flows and the feed; webserver and daemon killed: restarted,
    flows undisturbed; the local Redis killed: restarted, flows and feed ride it out;
    the candles flow and the feed killed: restarted by the sensor; each process serves
    Prometheus metrics on its port; the candles stay exact throughout; no run failed;
    ``up`` SIGKILLed: nothing left. (A flow killed during a backfill:
    ``test_ui_backfill.py``.)
    """
    url = f"redis://127.0.0.1:{free_port()}/0"
    up = Up(
        tmp_path,
        url,
        "--rate",
        "4",
        "--feed-option=--speed=10",
        # From a fixed start: the feed restarted below sends the same market again
        # (duplicates) rather than a market from "now", 10x behind the first one's.
        f"--feed-option=--start={int(time.time() * 1000)}",
        "--dagster-port",
        str(free_port()),
        "--for",
        "900",
    )
    try:
        up.wait_line(r"code location loaded", 180)
        web = int(up.wait_line(r"started dagster-webserver \(pid (\d+)\)", 5)[1])
        daemon = int(up.wait_line(r"started dagster-daemon \(pid (\d+)\)", 5)[1])
        names = ("candles", "metrics", "archive", "feed")
        pids = wait_for(lambda: flow_pids(up, names), 180, "the sensor to start the flows")
        assert isinstance(pids, dict)
        client = redis.Redis.from_url(url, socket_timeout=10)
        closed = series_key("binance", "BTCUSDT", Interval.M1)

        # Each supervised process serves Prometheus metrics on the port up gave it, and
        # status lists them.
        base = int(up.wait_line(r"metrics: .*: candles (\d+),", 5)[1])
        urls = wait_for(lambda: metrics_urls(up, names), 30, "every process's metrics port")
        assert isinstance(urls, dict)
        assert urls == {
            n: f"http://127.0.0.1:{base + off}/metrics"
            for n, off in zip(names, (0, 10, 20, 30), strict=True)
        }
        wanted = {
            "candles": "cryptopipe_trades_accepted_total",
            "metrics": "cryptopipe_flow_entries_read_total",
            "archive": "cryptopipe_flow_entries_read_total",
            "feed": "cryptopipe_feed_messages_written_total",
        }
        for n, u in urls.items():
            assert wanted[n] in requests.get(u, timeout=5).text, n

        # Dagster's children: restarted by up, the flows ride it out.
        os.kill(web, signal.SIGKILL)
        os.kill(daemon, signal.SIGKILL)
        up.wait_line(r"restarted dagster-webserver \(pid \d+\)", 30)
        up.wait_line(r"restarted dagster-daemon \(pid \d+\)", 30)
        wait_for(lambda: client.hlen(closed) >= 2, 120, "closed 1m candles")
        assert flow_pids(up, names) == pids, "the flows rode out Dagster's restart"

        # The local Redis: restarted by up; flows and feed carry on, candles exact.
        redis_pid = int(client.info("server")["process_id"])
        os.kill(redis_pid, signal.SIGKILL)
        up.wait_line(r"restarted the local redis-server", 30)

        n0 = int(wait_for(lambda: hlen(client, closed) + 1, 30, "Redis to answer again")) - 1
        wait_for(lambda: hlen(client, closed) >= n0 + 2, 120, "candles after Redis's restart")
        assert flow_pids(up, names) == pids, "the flows and the feed rode out Redis's restart"
        assert closed_1m_exact(client) >= 4

        # The candles flow killed: the sensor restarts it; what it wrote stays.
        before = client.hgetall(closed)
        os.kill(pids["candles"], signal.SIGKILL)
        back = wait_for(
            lambda: (p := flow_pids(up, ("candles",))) and p["candles"] != pids["candles"] and p,
            90,
            "the sensor to restart the candles flow",
        )
        assert back
        after = client.hgetall(closed)
        assert all(after[k] == v for k, v in before.items())
        wait_for(lambda: hlen(client, closed) >= len(before) + 2, 90, "candles after the restart")

        # The feed, supervised like a flow: killed, the health sensor starts it again.
        os.kill(pids["feed"], signal.SIGKILL)
        feed_back = wait_for(
            lambda: (p := flow_pids(up, ("feed",))) and p["feed"] != pids["feed"] and p,
            90,
            "the sensor to restart the feed",
        )
        assert feed_back
        assert not [r for r in dagster_runs(tmp_path) if r[1] == "FAILURE"]

        # (A flow killed during a backfill: tests/orchestration/test_ui_backfill.py.)
        assert not [r for r in dagster_runs(tmp_path) if r[1] == "FAILURE"]
        assert closed_1m_exact(client) >= 8
        # What the API serves is what the command line prints.
        api = up.wait_line(r"api: (http://\S+)/api/candles", 5)[1]
        params = {"symbol": "BTCUSDT", "interval": "1m", "source": "stream", "end": "2100-01-01"}
        served = requests.get(api + "/api/candles", params=params, timeout=10).json()
        printed = run_cryptopipe(
            up.env,
            "candles",
            "BTCUSDT",
            "-i",
            "1m",
            "--source",
            "stream",
            "--end",
            "2100-01-01",
            "--format",
            "json",
        )
        closed_served = [c for c in served if c["closed"]]
        closed_printed = [c for c in map(json.loads, printed.stdout.splitlines()) if c["closed"]]
        n = min(len(closed_served), len(closed_printed))  # one may close in between
        assert n >= 2 and closed_served[:n] == closed_printed[:n]

        up.proc.send_signal(signal.SIGKILL)
        up.proc.wait(10)
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
    # Everything up started goes with it: the flows stop themselves (their owner is gone),
    # Dagster and the local Redis get SIGTERM from the kernel.
    left = leftovers(str(tmp_path), grace_s=60)
    assert left == "", f"{left}\n{log_tails(tmp_path)}"


def hlen(client: redis.Redis, key: str) -> int:
    """HLEN, or -1 while Redis does not answer."""
    try:
        return int(client.hlen(key))
    except redis.RedisError:
        return -1


def _two_heads(db: Path) -> None:
    """What the webserver and daemon racing on a fresh instance leave: two version rows."""
    from dagster._core.storage.sqlite import LAST_KNOWN_STAMPED_SQLITE_ALEMBIC_REVISION

    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO alembic_version (version_num) VALUES (?)",
            (LAST_KNOWN_STAMPED_SQLITE_ALEMBIC_REVISION,),
        )


@pytest.mark.slow
def test_fresh_starts_load_the_code_location_and_a_broken_instance_is_repaired_or_explained(
    tmp_path: Path,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for n in range(FRESH_STARTS):
        home = tmp_path / f"fresh{n}"
        up = Up(home, url, "--dagster-port", str(free_port()), "--for", "240")
        try:
            up.wait_line(r"code location loaded \(realtime_crypto_pipeline\)", 180)
            wait_for(lambda u=up: flow_pids(u, ("candles",)), 120, f"start {n}: candles")
        finally:
            assert up.stop() == 0, up.output

    # The race's leftover, made by hand: two schema versions in the schedule storage.
    home = tmp_path / "fresh0"
    db = home / "dagster" / "schedules" / "schedules.db"
    _two_heads(db)
    up = Up(home, url, "--dagster-port", str(free_port()), "--for", "240")
    try:
        up.wait_line(r"dagster: repaired schedules/schedules.db: 2 schema version rows", 60)
        up.wait_line(r"code location loaded", 180)
        wait_for(lambda: flow_pids(up, ("candles",)), 120, "the candles flow after the repair")
    finally:
        assert up.stop() == 0, up.output
    with sqlite3.connect(db) as conn:
        assert len(conn.execute("SELECT version_num FROM alembic_version").fetchall()) == 1

    # A version we do not know: explained, exit 1, nothing started.
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO alembic_version (version_num) VALUES ('0000deadbeef')")
    out = run_cryptopipe(
        {**os.environ, "REDIS_URL": url, "CRYPTOPIPE_HOME": str(home)},
        "up",
        "--no-api",
        "--for",
        "60",
    )
    assert out.returncode == 1, out.stdout + out.stderr
    said = out.stderr.strip().splitlines()[-1]
    assert "schedules.db has 2 schema versions" in said and f"move {home / 'dagster'} away" in said
    assert "started dagster" not in out.stderr
    assert leftovers(str(tmp_path)) == ""
