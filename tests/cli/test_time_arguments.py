"""Every command's time and day arguments: bad values are one line, never a traceback.

The forms themselves are tested on the parser (``tests/marketdata/test_timeutil.py``)
and, for ``candles``, end to end on real candles (``tests/streaming/test_candles_cli.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from tests.processes import run_cryptopipe

#: ``lake fetch`` with every required option but the days.
FETCH = ["lake", "fetch", "BTCUSDT", "--market", "spot", "--kind", "trades"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["batch", "run", "--date", "2025-13-01"], "bad --date '2025-13-01': use YYYY-MM-DD"),
        (["batch", "run", "--date", "9999-12-31", "--force"], "--date '9999-12-31' is out"),
        (["reconcile", "--date", "14/03/2025"], "bad --date '14/03/2025': use YYYY-MM-DD"),
        (["reconcile", "--date", "1969-12-31"], "--date '1969-12-31' is out of range"),
        (
            [*FETCH, "--from", "0001-01-01"],
            "--from '0001-01-01' is out of range",
        ),
        (
            [*FETCH, "--from", "2025-03-14", "--to", "x"],
            "bad --to 'x'",
        ),
        (["feed", "simulate", "--start", "soon"], "bad --start 'soon': use ISO 8601"),
        (["feed", "simulate", "--start", "1741910400000000000"], "--start '1741910400000000000'"),
        (["feed", "simulate", "--start", "0", "--duration", "1"], "before 2009-01-03T00:00:00Z"),
        (["candles", "BTCUSDT", "-i", "1m", "--end", "-5"], "bad --end '-5'"),
        (["candles", "BTCUSDT", "-i", "1m", "--start", "10000000000"], "--start '10000000000'"),
    ],
)
def test_a_bad_time_or_day_is_one_line(
    argv: list[str], says: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path / "home")}
    env["CRYPTOPIPE_BINANCE_DATA_URL"] = "http://127.0.0.1:9"  # never the network
    out = run_cryptopipe(env, *argv, timeout=120)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("cryptopipe: error: ") and says in out.stderr, out.stderr
    assert redis_client.dbsize() == 0  # refused before anything was written
