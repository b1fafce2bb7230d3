"""The supervisor with real processes and a real Redis (the feed is a long-running flow)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from marketdata.settings import Settings
from redisstore.keys import heartbeat_key
from streaming.supervisor import FEED, Supervisor


@pytest.fixture
def sup(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Supervisor:
    s = Supervisor(
        Settings(redis_url=redis_url, home=tmp_path),
        redis_client,
        stale_after_s=2,
        max_restarts=3,
        flow_args={FEED: ["--rate", "20"]},
    )
    yield s
    s.stop(FEED, timeout=5)


def wait_for(pred, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_start_stop_and_states(sup: Supervisor, redis_client: redis.Redis) -> None:
    assert sup.status(FEED).state == "stopped"
    pid = sup.start(FEED)
    assert sup.start(FEED) == pid  # idempotent
    assert os.getsid(pid) == pid  # its own session: outlives the caller
    st = sup.status(FEED)
    assert (st.state, st.pid, st.desired) == ("starting", pid, "running")
    wait_for(lambda: redis_client.xlen("md:trades:raw") > 5)
    # A heartbeat of this pid makes it running; an old one makes it stalled.
    now = int(time.time() * 1000)
    redis_client.hset(heartbeat_key(FEED), mapping={"pid": pid, "heartbeat_at": now})
    assert sup.status(FEED).state == "running"
    redis_client.hset(heartbeat_key(FEED), "heartbeat_at", now - 10_000)
    st = sup.status(FEED)
    assert st.state == "stalled" and st.needs_restart
    assert sup.stop(FEED)
    assert sup.status(FEED).state == "stopped" and not sup.status(FEED).needs_restart
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_sigkill_makes_it_dead_and_restart_counts(sup: Supervisor) -> None:
    pid = sup.start(FEED)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: sup.status(FEED).state == "dead")
    st = sup.status(FEED)
    assert st.needs_restart and st.pid is None and st.reason == "process is gone"
    new = sup.restart(FEED, reason="dead")
    assert new != pid and sup.status(FEED).restarts_in_window == 1
    for _ in range(3):
        sup.record_restart(FEED, "test")
    assert sup.restarts_in_window(FEED) == 4 > sup.max_restarts
    sup.mark_failed(FEED, "4 restarts in 600s")
    st = sup.status(FEED)
    assert st.state == "failed" and st.reason == "4 restarts in 600s" and not st.needs_restart
    sup.clear_failed(FEED)
    assert sup.status(FEED).state in ("starting", "running")


def test_a_recycled_pid_is_not_the_flow(sup: Supervisor, tmp_path: Path) -> None:
    sup.run_dir.mkdir(parents=True, exist_ok=True)
    (sup.run_dir / f"{FEED}.pid").write_text(f"{os.getpid()} 1\n")  # our pid, wrong start time
    assert sup.pid(FEED) is None
    assert not (sup.run_dir / f"{FEED}.pid").exists()


def test_unknown_flow_is_refused(sup: Supervisor) -> None:
    with pytest.raises(ValueError, match="candles, metrics, archive"):
        sup.start("nonsense")


def test_decide_starts_restarts_once_per_incident_and_gives_up_on_a_crash_loop(
    sup: Supervisor,
) -> None:
    assert sup.decide(FEED).action == "none"  # never wanted
    sup.want(FEED)
    first = sup.decide(FEED)
    assert (first.action, first.reason) == ("start", "wanted")
    assert sup.decide(FEED).run_key == first.run_key  # the same request: the same key
    pid = sup.start(FEED)
    assert sup.decide(FEED).action == "none" and sup.decide(FEED).status.healthy
    keys = []
    for _ in range(sup.max_restarts):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: sup.status(FEED).state == "dead")
        d = sup.decide(FEED)
        assert d.action == "restart" and d.reason == "dead" and not d.status.healthy
        keys.append(d.run_key)
        pid = sup.restart(FEED, reason=d.reason)
    assert len(set(keys)) == len(keys)  # a new incident gets a new run key
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: sup.status(FEED).state == "dead")
    d = sup.decide(FEED)
    assert d.action == "failed" and f"{sup.max_restarts} restarts" in d.reason
    assert d.status.state == "failed" and not d.status.healthy
    assert sup.decide(FEED).action == "none"  # failed: no more restarts
    sup.want(FEED)  # a person asks again: the crash loop is forgotten
    assert sup.decide(FEED).action == "start"


def test_two_starters_at_once_launch_one_process(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    import threading

    settings = Settings(redis_url=redis_url, home=tmp_path)
    sups = [Supervisor(settings, redis_client) for _ in range(4)]
    pids: list[int] = []
    barrier = threading.Barrier(len(sups))

    def go(sup: Supervisor) -> None:
        barrier.wait()
        pids.append(sup.start(FEED))

    threads = [threading.Thread(target=go, args=(s,)) for s in sups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(set(pids)) == 1, pids
    finally:
        sups[0].stop(FEED, timeout=10)


def test_a_feed_started_by_hand_reads_running(sup: Supervisor, redis_url: str) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cryptopipe",
            "feed",
            "simulate",
            "--symbols",
            "BTCUSDT",
            "--rate",
            "20",
            "--redis-url",
            redis_url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: sup.status(FEED).state == "running")
        st = sup.status(FEED)
        assert st.pid == proc.pid and st.reason == "started outside the supervisor"
        assert not st.needs_restart
    finally:
        proc.terminate()
        proc.wait(20)
    wait_for(lambda: sup.status(FEED).state == "stopped", timeout=30)
