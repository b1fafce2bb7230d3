"""``cryptopipe batch run`` in its own process against a Spark elsewhere, checked exactly.

Shared by the standalone-cluster and the Spark Connect tests: a simulated day with
duplicates and out-of-order rows in the lake, the command run with only
``CRYPTOPIPE_SPARK_MASTER`` (and ``extra`` variables) set, and every interval's
candles compared with the reference (:func:`marketdata.candle.fold_trades`).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import date
from pathlib import Path
from typing import Any

from lake.candles import read_day_candles
from lake.layout import SourceRange
from lake.writer import LakeWriter
from marketdata.candle import fold_trades
from marketdata.interval import ALL_INTERVALS
from marketdata.records import SOURCE_BATCH
from marketdata.simulator import SimConfig, simulate
from tests.processes import run_cryptopipe

DAY = date(2025, 3, 14)


def run_batch_on(master: str, tmp_path: Path, **extra: str) -> dict[str, Any]:
    """Run the day's batch on ``master``; assert its candles equal the reference; its summary."""
    cfg = SimConfig(
        symbols=("BTCUSDT", "ETHUSDT"),
        rate=20,
        duration_s=7200,
        seed=8,
        start_ms=1_741_910_400_000,
        duplicates=0.02,
        out_of_order=0.05,
    )
    trades = [m.trade for m in simulate(cfg) if m.trade is not None]
    lake = tmp_path / "lake"
    LakeWriter(lake).write_trades(trades, source=SourceRange.rows("remote-test", 1, len(trades)))
    env = {
        **os.environ,
        "CRYPTOPIPE_HOME": str(tmp_path),
        "CRYPTOPIPE_SPARK_MASTER": master,
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        **extra,
    }
    env.pop("CRYPTOPIPE_LAKE_URI", None)
    out = run_cryptopipe(
        env, "batch", "run", "--date", str(DAY), "--force", "--format", "json", timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["date"] == str(DAY)
    expected = {}
    for iv in ALL_INTERVALS:
        expected.update(fold_trades(trades, iv))
    got = read_day_candles(lake, SOURCE_BATCH, DAY)
    assert got is not None
    assert {k: c.fields() for k, c in got.items()} == {k: c.fields() for k, c in expected.items()}
    return summary
