"""``cryptopipe up --feed a,b``: naming the feed processes, routing the options, Redis.

Fast: the command line's own parser, a real Redis for the control hashes, no process
started (the processes themselves: tests/orchestration/test_several_feeds.py).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from cryptopipe.cli import build_parser
from cryptopipe.commands.flowctl import cmd_status, status_report
from cryptopipe.commands.up import feed_processes, metrics_line
from cryptopipe.errors import CommandError
from marketdata.settings import Settings
from redisstore.keys import control_key
from streaming.feeds.base import FEED_PROCESS_ENV, feed_process, feed_writer
from streaming.heartbeat import read_heartbeat
from streaming.supervisor import FLOWS, Supervisor, feed_process_names, metrics_port

DEFAULT = ["--symbols", "BTCUSDT,ETHUSDT,SOLUSDT"]


def up_feeds(*argv: str) -> dict[str, list[str]]:
    return feed_processes(build_parser().parse_args(["up", *argv]))


def test_one_feed_is_the_feed_process_as_before() -> None:
    assert up_feeds() == {"feed": ["simulate", *DEFAULT, "--rate", "20.0"]}
    assert up_feeds("--feed", "binance", "--symbols", "BTCUSDT", "--feed-option=--market=um") == {
        "feed": ["binance", "--symbols", "BTCUSDT", "--market=um"]
    }
    assert up_feeds("--no-feed") == {}
    assert feed_process_names(["binance"]) == ["feed"]


def test_several_feeds_are_a_process_each_with_their_own_options() -> None:
    feeds = up_feeds(
        *("--feed", "binance,simulate", "--symbols", "BTCUSDT", "--rate", "5"),
        "--feed-option=binance:--ws-url=ws://127.0.0.1:9",  # binance's only
        "--feed-option=simulate:--exchanges=kraken",  # the simulator's only
        "--feed-option=-v",  # every feed's
    )
    assert feeds == {
        "feed-binance": ["binance", "--symbols", "BTCUSDT", "--ws-url=ws://127.0.0.1:9", "-v"],
        "feed-simulate": [
            *("simulate", "--symbols", "BTCUSDT", "--rate", "5.0"),
            *("--exchanges=kraken", "-v"),
        ],
    }
    # A value with a colon that names no feed is an argument for every feed.
    assert up_feeds("--feed", "binance", "--feed-option=ws://127.0.0.1:9")["feed"][-1] == (
        "ws://127.0.0.1:9"
    )


def test_symbols_go_to_the_feeds_whose_option_it_is() -> None:
    # Coinbase names its instruments --products (BTC-USD): it keeps its own.
    feeds = up_feeds(
        *("--feed", "binance,coinbase", "--symbols", "BTCUSDT"),
        "--feed-option=coinbase:--products=BTC-USD,ETH-USD",
    )
    assert feeds == {
        "feed-binance": ["binance", "--symbols", "BTCUSDT"],
        "feed-coinbase": ["coinbase", "--products=BTC-USD,ETH-USD"],
    }
    with pytest.raises(CommandError, match="feed coinbase takes no --symbols"):
        up_feeds("--feed", "coinbase", "--symbols", "BTC-USD")


def test_bad_feed_lists_and_options_fail_at_once_naming_the_feed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    for value, said in (
        ("binance,binance", "feed binance given twice"),
        ("simulate,replay", "'replay' cannot run under up (it needs files"),
        ("simulate,nope", "'nope' cannot run under up: use simulate, binance"),
        (",", "give a feed"),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(["up", "--feed", value])
        assert said in capsys.readouterr().err, value
    # --no-resume is the live feed's: the simulator's parser refuses it, and says so.
    with pytest.raises(CommandError, match="the options of feed simulate are refused"):
        up_feeds("--feed", "binance,simulate", "--feed-option=--no-resume")
    assert up_feeds("--feed", "binance,simulate", "--feed-option=binance:--no-resume")
    with pytest.raises(CommandError, match="is for feed binance, which --feed simulate"):
        up_feeds("--feed", "simulate", "--feed-option=binance:--no-resume")


def test_feed_processes_are_kept_in_redis_for_dagster(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(redis_url=redis_url, home=tmp_path, metrics_port_base=9400)
    sup = Supervisor(settings, redis_client)
    assert sup.feed_processes() == ["feed"]  # nothing said: the one feed
    names = sup.set_feeds([["binance", "--symbols", "BTCUSDT"], ["simulate", "--rate", "5"]])
    assert names == ["feed-binance", "feed-simulate"]
    # Another process (Dagster's daemon, a run) reads the same from Redis.
    other = Supervisor(
        Settings(redis_url=redis_url, home=tmp_path, metrics_port_base=9400), redis_client
    )
    assert other.feed_processes() == names
    py = [sys.executable, "-m", "cryptopipe", "feed"]
    assert other.argv("feed-binance") == [
        *py,
        "binance",
        "--symbols",
        "BTCUSDT",
        "--metrics-port",
        "9430",
    ]
    assert other.argv("feed-simulate") == [*py, "simulate", "--rate", "5", "--metrics-port", "9431"]
    assert other.argv("candles")[-2:] == ["--metrics-port", "9400"]
    assert "feed-binance 9430, feed-simulate 9431" in metrics_line(
        settings, [*FLOWS, *names], names
    )
    # One feed again: the process is feed, on the feed's port, as before.
    assert sup.set_feeds([["binance", "--symbols", "ETHUSDT"]]) == ["feed"]
    assert sup.feed_processes() == ["feed"]
    assert other.argv("feed")[4:] == ["binance", "--symbols", "ETHUSDT", "--metrics-port", "9430"]
    assert metrics_port(settings, "feed") == 9430
    with pytest.raises(ValueError, match="unknown flow 'feed-replay'"):
        sup.argv("feed-replay")


def test_status_shows_each_feed_process_and_exits_1_for_a_dead_one(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(redis_url=redis_url, home=tmp_path)
    sup = Supervisor(settings, redis_client)
    for name in sup.set_feeds([["binance", "--symbols", "BTCUSDT"], ["simulate"]]):
        sup.want(name)
    rows = {r["flow"]: r for r in status_report(settings, redis_client)["flows"]}
    assert list(rows) == [*FLOWS, "feed-binance", "feed-simulate"]
    assert rows["feed-binance"]["state"] == rows["feed-simulate"]["state"] == "pending"
    args = argparse.Namespace(format="table")
    assert cmd_status(args, settings) == 0
    # Started once, and its process gone: that feed alone is dead.
    redis_client.hset(control_key("feed-binance"), "started_at_ms", int(time.time() * 1000))
    capsys.readouterr()
    assert cmd_status(args, settings) == 1
    out, err = capsys.readouterr()
    assert "feed-binance" in out and "feed-simulate" in out
    assert err.strip() == "not healthy: feed-binance"


def test_a_feed_beats_under_the_name_it_is_supervised_as(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert feed_process({}) == "feed"
    assert feed_process({FEED_PROCESS_ENV: "feed-coinbase"}) == "feed-coinbase"
    with pytest.raises(ValueError, match="CRYPTOPIPE_FEED_PROCESS='candles'"):
        feed_process({FEED_PROCESS_ENV: "candles"})
    monkeypatch.setenv(FEED_PROCESS_ENV, "feed-simulate")
    stop = threading.Event()
    with feed_writer(Settings(redis_url=redis_url, home=tmp_path), stop):
        deadline = time.monotonic() + 5
        while read_heartbeat(redis_client, "feed-simulate") is None:
            assert time.monotonic() < deadline, "no heartbeat under feed-simulate"
            time.sleep(0.05)
    assert read_heartbeat(redis_client, "feed") is None
