"""The live chart in a real browser: Debian's Chromium, driven by Playwright.

The page draws the candles the API returns, a new trade moves the live candle within
a second, a picker change loads the other series; a screenshot is kept in
``artifacts/`` (``CRYPTOPIPE_ARTIFACTS`` to move it).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from playwright.sync_api import Page, sync_playwright

from marketdata.trade import Trade
from tests.processes import ROOT
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
    api = requests.get(
        base + "/api/candles", params={"symbol": "BTCUSDT", "interval": "1m"}, timeout=10
    ).json()
    page.goto(base + "/?symbol=BTCUSDT&interval=1m")
    wait_loaded(page, "BTCUSDT|binance|1m")
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
