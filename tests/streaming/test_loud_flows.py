"""Nothing rejected in silence: the flows' summaries and ``cryptopipe status``, as real processes.

* ``stream run candles`` running (no idle exit): within a tick of 10 s after it read
  them, its log sums up the rejections by reason and the late trades, with no new
  batch to trigger it (the heartbeat ticks the summary);
* ``cryptopipe status`` shows the totals by reason and the late count; they survive
  a restart and a trimmed DLQ (they come from the flow's exactly-once counters);
* ``stream run archive`` and ``stream run metrics`` sum up what they could not read.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from test_candles_data import gen_day

from marketdata.rawmessage import RawMessage
from redisstore.keys import CLOSED_EVENTS_STREAM, DLQ_STREAM
from streaming.rawlog import RawLogWriter
from tests.processes import ROOT, run_cryptopipe

pytestmark = pytest.mark.slow

#: ``<flow>: rejected N in the last S s: reason n, reason n (where)[; late N (where)]``
SUMMARY = re.compile(
    r"(?P<flow>\w+): (?:rejected (?P<n>[\d,]+) in the last \d+ s: (?P<reasons>[^(]*) "
    r"\((?P<kept>[^)]*)\))?(?:; )?"
    r"(?:late (?P<late>[\d,]+)(?: in the last \d+ s)? \(md:trades:late\))?$"
)


def summaries(text: str, flow: str) -> tuple[Counter[str], int, list[str]]:
    """The reasons and late trades summed over ``flow``'s summary lines, and the lines."""
    reasons: Counter[str] = Counter()
    late = 0
    lines = []
    for line in text.splitlines():
        tail = line.split(" cryptopipe.rejections: ", 1)
        if len(tail) < 2 or not tail[1].startswith(f"{flow}: "):
            continue
        m = SUMMARY.match(tail[1])
        assert m, line
        lines.append(tail[1])
        if m["reasons"]:
            pairs = (r.rsplit(" ", 1) for r in m["reasons"].split(", "))
            listed = {k: int(n.replace(",", "")) for k, n in pairs}
            assert sum(listed.values()) == int(m["n"].replace(",", "")), line
            reasons.update(listed)
        late += int(m["late"].replace(",", "")) if m["late"] else 0
    return reasons, late, lines


def env_for(url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    return {**env, "REDIS_URL": url, "CRYPTOPIPE_HOME": str(home)}


def status(env: dict[str, str]) -> dict:
    out = run_cryptopipe(env, "status", "--format", "json", timeout=60)
    return json.loads(out.stdout)["rejections"]


def test_the_candles_flow_says_what_it_rejected_and_status_keeps_the_totals(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    day = gen_day(17, n=3000, span_ms=30 * 60_000, late=0.01, malformed=0.03)
    assert day.rejected > 20 and len(day.late) > 5
    day.write(redis_client)
    env = env_for(redis_url, tmp_path / "home")
    log = tmp_path / "candles.log"
    args = [sys.executable, "-m", "cryptopipe", "stream", "run", "candles"]
    with log.open("wb") as err:
        flow = subprocess.Popen(args, env=env, cwd=ROOT, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reasons, late, lines = summaries(log.read_text(errors="replace"), "candles")
            if sum(reasons.values()) >= day.rejected and late >= len(day.late):
                break
            time.sleep(0.5)
        # Said while running, with no batch after them: the heartbeat's tick.
        assert flow.poll() is None, log.read_text()[-3000:]
        assert reasons == day.reasons and late == len(day.late), lines
        assert all("(DLQ md:trades:dlq)" in line for line in lines if "rejected" in line)
        assert status(env) == {
            "rejected": day.rejected,
            "by_reason": day.reasons,
            "late": len(day.late),
        }
    finally:
        flow.send_signal(signal.SIGTERM)
        flow.wait(timeout=60)
    assert flow.returncode == 0, log.read_text()[-3000:]

    # More rejections after a restart from the snapshot; the DLQ trimmed meanwhile.
    redis_client.xtrim(DLQ_STREAM, maxlen=0, approximate=False)
    assert redis_client.xlen(DLQ_STREAM) == 0
    writer = RawLogWriter(redis_client)
    now = int(time.time() * 1000)
    writer.write([RawMessage(b'{"e":"trade","s":"BTCUSDT"', "binance", now)] * 5)
    writer.write([RawMessage(b'{"e":"kline","s":"BTCUSDT","k":{}}', "binance", now)] * 2)
    out = run_cryptopipe(env, "stream", "run", "candles", "--exit-when-idle", "1.5", timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    reasons, late, _ = summaries(out.stderr, "candles")
    assert reasons == {"malformed_json": 5, "unsupported_event": 2} and late == 0, out.stderr
    total = Counter(day.reasons) + Counter({"malformed_json": 5, "unsupported_event": 2})
    got = status(env)
    assert got["by_reason"] == dict(total) and got["rejected"] == day.rejected + 7
    assert got["late"] == len(day.late)
    text = run_cryptopipe(env, "status", timeout=60).stdout
    assert f"rejected (in md:trades:dlq): {day.rejected + 7:,} (" in text, text
    assert f"late (in md:trades:late): {len(day.late):,}" in text, text


def test_the_archive_and_metrics_flows_say_what_they_could_not_read(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    day = gen_day(19, n=2000, span_ms=20 * 60_000, malformed=0.03)
    day.write(redis_client)
    env = env_for(redis_url, tmp_path / "home")
    out = run_cryptopipe(env, "stream", "run", "archive", "--exit-when-idle", "1.5", timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    reasons, _, lines = summaries(out.stderr, "archive")
    assert reasons == day.reasons, out.stderr[-3000:]
    lake_rejects = tmp_path / "home" / "lake" / "rejects"
    assert all(line.endswith(f"(lake {lake_rejects})") for line in lines), lines

    out = run_cryptopipe(env, "stream", "run", "candles", "--exit-when-idle", "1.5", timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert redis_client.xlen(CLOSED_EVENTS_STREAM) > 0
    redis_client.xadd(CLOSED_EVENTS_STREAM, {"interval": "1m", "candle": "{not json"})
    redis_client.xadd(CLOSED_EVENTS_STREAM, {"interval": "1m"})
    out = run_cryptopipe(env, "stream", "run", "metrics", "--exit-when-idle", "1.5", timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    reasons, _, lines = summaries(out.stderr, "metrics")
    assert reasons == {"malformed_candle": 1, "missing_field:candle": 1}, out.stderr[-3000:]
    assert lines[-1].endswith(f"(left in {CLOSED_EVENTS_STREAM})")
    assert redis_client.keys("md:metrics:*")  # the readable events made metrics
