"""The live chart in a real browser: Debian's Chromium, driven by Playwright.

The page draws the candles the API returns and the spreads the series is in, a new
trade moves the live candle within a second, a picker change loads the other series; a
screenshot is kept in ``artifacts/`` (``CRYPTOPIPE_ARTIFACTS`` to move it).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
import redis
import requests
from playwright.sync_api import Page, sync_playwright

from lake.candles import write_day_candles
from lake.published import batch_run, publish
from marketdata.candle import fold_trades
from marketdata.indicators import ClosedBar
from marketdata.instruments import Instruments, SpreadRules, parse_comparisons
from marketdata.interval import Interval
from marketdata.records import SOURCE_BATCH
from marketdata.settings import Settings
from marketdata.timeutil import DAY_MS
from marketdata.trade import Trade
from streaming.metricsagg import SpreadState, apply_spread_bars
from streaming.metricsstore import MetricsStore
from tests.processes import ROOT, cryptopipe_ok
from tests.serving.test_http_api import T0, M, trades, write

ARTIFACTS = Path(os.environ.get("CRYPTOPIPE_ARTIFACTS", ROOT / "artifacts"))


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is not installed: ./dev test installs it (apt-get install chromium)"
    return path


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        yield pg
        browser.close()


def plotted(page: Page) -> dict:
    """The candlestick trace as the page drew it."""
    return page.evaluate(
        "() => { const t = document.getElementById('chart').data[0];"
        " return {x: t.x.length, close: t.close, open_time: window.cryptopipe.candles"
        ".map(c => c.open_time), events: window.cryptopipe.events}; }"
    )


def wait_loaded(page: Page, key: str, timeout_ms: int = 15_000) -> None:
    page.wait_for_function(
        "key => window.cryptopipe.loaded === key && document.getElementById('chart').data",
        arg=key,
        timeout=timeout_ms,
    )


def test_the_chart_draws_the_api_candles_follows_trades_and_pickers(
    server: tuple[str, dict[str, str]], redis_client: redis.Redis, page: Page
) -> None:
    base, _ = server
    write(redis_client, trades("BTCUSDT", range(30)), trades("BTCUSDT", range(30, 31), 100))
    write(redis_client, trades("ETHUSDT", range(3), 1000), [])
    rules = SpreadRules.build(Instruments(), parse_comparisons("binance:BTCUSDT~coinbase:BTC-USD"))
    bars = [
        ClosedBar("binance", "BTCUSDT", T0, 84_003_10000000, 10**8, 0),
        ClosedBar("coinbase", "BTC-USD", T0, 84_020_12345678, 10**8, 0),
    ]
    MetricsStore(redis_client).write([apply_spread_bars(SpreadState(), bars, rules)])
    api = requests.get(
        base + "/api/candles", params={"symbol": "BTCUSDT", "interval": "1m"}, timeout=10
    ).json()
    page.goto(base + "/?symbol=BTCUSDT&interval=1m")
    wait_loaded(page, "BTCUSDT|binance|1m")
    page.wait_for_function("() => window.cryptopipe.spreads.length === 1", timeout=10_000)
    assert page.inner_text("#spreads") == (
        "binance:BTCUSDT - coinbase:BTC-USD: -17.02345678 BTC (USDT vs USD)"
    )
    got = plotted(page)
    assert got["x"] == len(api) == 31
    assert got["close"] == [float(c["close"]) for c in api]
    assert got["open_time"] == [c["open_time"] for c in api]
    assert page.inner_text("#price") == f"{api[-1]['close']} (live)"
    assert page.locator(".day.stream").first.inner_text() == "2025-03-14 stream"
    page.wait_for_function("() => document.getElementById('live').className === 'on'")

    # A new trade moves the live candle on the page within a second.
    events = got["events"]
    moved = [
        *trades("BTCUSDT", range(30, 31), 100),
        Trade("binance", "BTCUSDT", 200, 777 * 10**8, 10**7, T0 + 30 * M + 40_000, False),
    ]
    sent = time.monotonic()
    write(redis_client, [], moved)
    page.wait_for_function(
        "() => document.getElementById('chart').data[0].close.at(-1) === 777", timeout=1_000
    )
    assert time.monotonic() - sent < 1.0
    assert plotted(page)["events"] > events
    assert page.inner_text("#price") == "777.00000000 (live)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chart-live.png"))

    # Pickers: another interval, another symbol; each loads its own series.
    page.select_option("#interval", "5m")
    wait_loaded(page, "BTCUSDT|binance|5m")
    five = requests.get(
        base + "/api/candles", params={"symbol": "BTCUSDT", "interval": "5m"}, timeout=10
    ).json()
    assert plotted(page)["open_time"] == [c["open_time"] for c in five] and len(five) == 6
    page.select_option("#symbol", "ETHUSDT")
    wait_loaded(page, "ETHUSDT|binance|5m")
    assert plotted(page)["x"] == 1
    page.screenshot(path=str(ARTIFACTS / "chart-picker.png"))
    assert (ARTIFACTS / "chart-live.png").stat().st_size > 10_000


def test_the_day_strip_shows_each_days_source_and_reconciliation_and_the_overlays_are_drawn(
    server: tuple[str, dict[str, str]], redis_client: redis.Redis, page: Page
) -> None:
    """Three days: history only in the batch; a streamed day whose reconciliation left
    differences (served from the stream); a streamed day reconciled and published
    (served from the batch). The real metrics flow computes the EMA overlays and flags
    a price jump, drawn as an anomaly marker."""
    base, env = server
    home = Path(env["CRYPTOPIPE_HOME"])
    settings = Settings(redis_url=env["REDIS_URL"], home=home)
    day0, day1, day2 = (date(2025, 3, 13) + timedelta(days=i) for i in range(3))
    jump = 30  # minute of day1 whose close is 50% above the rest: a price anomaly
    # A flat market (100 +- 0.02), so that only the jump strays 2% from the EMA.
    flat = [
        t._replace(price_e8=100 * 10**8 + (i % 3) * 10**6)
        for i, t in enumerate(trades("BTCUSDT", range(40)))
    ]
    day1_trades = [t._replace(price_e8=150 * 10**8) if i == jump else t for i, t in enumerate(flat)]
    day2_trades = [
        t._replace(trade_id=t.trade_id + 1000, event_time=t.event_time + DAY_MS)
        for t in trades("BTCUSDT", range(3))
    ]
    write(redis_client, day1_trades + day2_trades, [])
    cryptopipe_ok(env, "stream", "run", "metrics", "--exit-when-idle", "2")
    lake = home / "lake"
    folded = {iv: fold_trades(day1_trades + day2_trades, iv) for iv in Interval}
    history_only = [
        t._replace(trade_id=t.trade_id + 5000, event_time=t.event_time - DAY_MS)
        for t in trades("BTCUSDT", range(2))
    ]
    for day, batch in (
        (day0, [c for iv in Interval for c in fold_trades(history_only, iv).values()]),
        (
            day1,
            [
                c
                for c in (c for f in folded.values() for c in f.values())
                if c.open_time < T0 + DAY_MS
            ],
        ),
        (
            day2,
            [
                c
                for c in (c for f in folded.values() for c in f.values())
                if c.open_time >= T0 + DAY_MS
            ],
        ),
    ):
        write_day_candles(lake, SOURCE_BATCH, day, batch)
    for day, unexplained in ((day1, 3), (day2, 0)):
        summary = {"date": str(day), "unexplained": unexplained, "batch_run": batch_run(lake, day)}
        folder = lake / "reconciliation" / f"date={day}"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(summary))
        if not unexplained:
            publish(settings, day, summary)

    page.goto(base + "/?symbol=BTCUSDT&interval=1m")
    wait_loaded(page, "BTCUSDT|binance|1m")
    page.wait_for_function(
        "() => { const d = [...document.querySelectorAll('#days .day')];"
        " return d.length === 3 && d.every(e => e.textContent.includes(',')); }",
        timeout=10_000,
    )
    strip = {
        el.get_attribute("data-day"): (el.get_attribute("class"), el.inner_text())
        for el in page.locator("#days .day").all()
    }
    assert strip == {
        str(day0): ("day batch", f"{day0} batch, not reconciled"),
        str(day1): ("day unexplained", f"{day1} stream, unexplained 3"),
        str(day2): ("day reconciled", f"{day2} batch, reconciled"),
    }
    # The overlays: the metrics flow's EMAs as the API gives them, the anomaly marked.
    hist = requests.get(
        base + "/api/metrics/history", params={"symbol": "BTCUSDT"}, timeout=10
    ).json()
    drawn = page.evaluate(
        "() => Object.fromEntries(document.getElementById('chart').data"
        ".filter(t => t.name !== 'BTCUSDT' && t.name !== 'volume')"
        ".map(t => [t.name, {x: t.x.length, y: t.y}]))"
    )
    for name, key in (("EMA 12", "ema_12"), ("EMA 26", "ema_26")):
        want = [m[key] for m in hist]
        assert drawn[name]["y"] == want and any(v is not None for v in want), name
    # The jump is the first price anomaly (the minutes after it stray from an EMA the
    # jump pulled up, and are flagged too); the chart marks every one.
    flagged = [m["open_time"] for m in hist if m.get("price_anomaly")]
    assert flagged and flagged[0] == T0 + jump * M
    assert drawn["anomaly"]["x"] == len(flagged)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chart-days.png"))
