"""Feeds into a real Redis, driven through the ``cryptopipe`` command line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import redis

from marketdata.parsing import parse_message
from marketdata.rawmessage import F_MARK, ProgressMark, RawMessage, parse_mark, shard_of
from marketdata.settings import Settings
from marketdata.simulator import SimConfig, simulate
from marketdata.trade import Trade
from redisstore.keys import heartbeat_key, raw_stream_names
from streaming.feeds.base import feed_writer
from streaming.feeds.pacing import MARK_EVERY_S, PacedWriter, parse_speed
from streaming.rawlog import RawLogWriter
from streaming.supervisor import Supervisor
from tests.processes import leftovers, run_cryptopipe

T0 = 1_741_910_400_000


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return run_cryptopipe(os.environ if env is None else env, *args, timeout=timeout)


def read_all(client: redis.Redis, stream: str = "md:trades:raw") -> list[RawMessage]:
    """The messages of a raw-log stream (its progress marks left out)."""
    return [RawMessage.from_fields(f) for _, f in client.xrange(stream) if F_MARK not in f]


def read_marks(client: redis.Redis, stream: str = "md:trades:raw") -> list[ProgressMark]:
    """The progress marks of a raw-log stream."""
    out = []
    for _, f in client.xrange(stream):
        if F_MARK in f:
            m = parse_mark([x for kv in f.items() for x in kv])
            assert isinstance(m, ProgressMark), m
            out.append(m)
    return out


def test_simulate_fills_the_raw_log_reproducibly(redis_url: str, redis_client: redis.Redis) -> None:
    args = [
        "feed",
        "simulate",
        "--redis-url",
        redis_url,
        "--start",
        "2025-03-14T00:00:00Z",
        "--duration",
        "120",
        "--rate",
        "100",
        "--speed",
        "max",
        "--seed",
        "9",
        "--duplicates",
        "0.05",
        "--malformed",
        "0.02",
        "--late",
        "0.01",
    ]
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    entries = redis_client.xlen("md:trades:raw")
    marks = read_marks(redis_client)
    n = entries - len(marks)
    cfg = SimConfig(
        rate=100,
        duration_s=120,
        seed=9,
        start_ms=T0,
        duplicates=0.05,
        malformed=0.02,
        late=0.01,
        first_trade_id=T0 * 10,
    )
    expected = list(simulate(cfg))
    assert n == len(expected) > 10_000
    msgs = read_all(redis_client)
    assert [m.payload for m in msgs] == [e.payload for e in expected]
    assert all(
        m.exchange == "binance" and m.recv_ms == e.arrival_ms
        for m, e in zip(msgs, expected, strict=True)
    )
    assert f"wrote {n} messages and {len(marks)} progress marks" in out.stdout
    # at least the final mark: the simulated time reached, never going back
    assert marks and marks[-1].event_ms == max(e.arrival_ms for e in expected)
    assert [m.event_ms for m in marks] == sorted(m.event_ms for m in marks)
    # The CLI's output is what `redis-cli XLEN` shows.
    xlen = subprocess.run(
        ["redis-cli", "-u", redis_url, "XLEN", "md:trades:raw"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(xlen.stdout) == n + len(marks)


def test_simulate_shards_by_symbol(redis_url: str, redis_client: redis.Redis) -> None:
    env = {**__import__("os").environ, "CRYPTOPIPE_RAW_SHARDS": "3"}
    out = cli(
        "feed",
        "simulate",
        "--redis-url",
        redis_url,
        "--duration",
        "30",
        "--rate",
        "200",
        "--speed",
        "max",
        "--symbols",
        "BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert redis_client.xlen("md:trades:raw") == 0
    total = 0
    for i, stream in enumerate(raw_stream_names(3)):
        for m in read_all(redis_client, stream):
            t = parse_message(m.payload)
            assert isinstance(t, Trade) and shard_of(t.symbol, 3) == i
            total += 1
    assert total > 4_000


def _dump(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(r + "\n" for r in rows))
    return path


def test_replay_csv_dumps_merged_by_time(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    # µs timestamps (2025 dumps) in one file, ms in the other; one bad row.
    btc = _dump(
        tmp_path / "BTCUSDT-trades-2025-03-14.csv",
        [f"{i},{96000 + i}.5,0.001,96.0005,{(T0 + i * 1000) * 1000},true,true" for i in range(1, 6)]
        + ["6,not-a-price,1,1,1741910406000000,true,true"],
    )
    eth = _dump(
        tmp_path / "ETHUSDT-trades-2025-03-14.csv",
        [f"{i},3200.{i},0.5,1600,{T0 + i * 1000 + 500},false,true" for i in range(1, 6)],
    )
    zipped = tmp_path / "ETHUSDT-trades-2025-03-14.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(eth, eth.name)
    out = cli(
        "feed", "replay", str(btc), str(zipped), "--format", "binance-csv", "--redis-url", redis_url
    )
    assert out.returncode == 0, out.stderr
    msgs = read_all(redis_client)
    assert len(msgs) == 11
    assert all(m.fmt == "binance-csv" for m in msgs)
    parsed = [parse_message(m.payload, fmt=m.fmt, symbol=m.symbol) for m in msgs]
    trades = [p for p in parsed if isinstance(p, Trade)]
    assert [p.reason for p in parsed if not isinstance(p, Trade)] == ["bad_number:price"]
    assert [t.event_time for t in trades] == sorted(t.event_time for t in trades)
    assert [t.symbol for t in trades[:4]] == ["BTCUSDT", "ETHUSDT", "BTCUSDT", "ETHUSDT"]
    assert msgs[0].payload == b"1,96001.5,0.001,96.0005,1741910401000000,true,true"


def test_replay_csv_needs_a_symbol(tmp_path: Path, redis_url: str) -> None:
    f = _dump(tmp_path / "trades.csv", ["1,1,1,1,1741910400000,true,true"])
    out = cli("feed", "replay", str(f), "--format", "binance-csv", "--redis-url", redis_url)
    assert out.returncode == 2
    assert "--symbol" in out.stderr and "Traceback" not in out.stderr
    out = cli(
        "feed",
        "replay",
        str(f),
        "--format",
        "binance-csv",
        "--symbol",
        "xrpusdt",
        "--redis-url",
        redis_url,
    )
    assert out.returncode == 0, out.stderr


def test_replay_ws_jsonl_keeps_lines_as_received(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    lines = [
        json.dumps(
            {
                "stream": "btcusdt@trade",
                "data": {
                    "e": "trade",
                    "E": T0 + 2,
                    "s": "BTCUSDT",
                    "t": 1,
                    "p": "1.0",
                    "q": "2.0",
                    "T": T0,
                    "m": True,
                    "M": True,
                },
            }
        ),
        '{"e":"trade","s":"BTCUSDT","t":2,"p":"1.5","q":"1","T":1741910400010,"m":false}',
        "{truncated",
    ]
    f = tmp_path / "rec.jsonl"
    f.write_text("\n".join(lines) + "\n")
    out = cli("feed", "replay", str(f), "--format", "binance-ws", "--redis-url", redis_url)
    assert out.returncode == 0, out.stderr
    assert [m.payload.decode() for m in read_all(redis_client)] == lines


def test_a_simulation_starting_in_the_future_is_refused(redis_url: str) -> None:
    out = cli("feed", "simulate", "--redis-url", redis_url, "--start", "2099-01-01T00:00:00Z")
    assert out.returncode == 2
    assert "in the future" in out.stderr and "bad_timestamp" in out.stderr


def test_unreachable_redis_is_one_clear_line(tmp_path: Path) -> None:
    out = cli("feed", "simulate", "--redis-url", "redis://127.0.0.1:1/0", "--duration", "1")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "no Redis answers" in out.stderr


def test_paced_writer_keeps_recorded_spacing(redis_client: redis.Redis) -> None:
    writer = RawLogWriter(redis_client)
    items = [(T0 + i * 100, RawMessage(b"x", "binance", 0)) for i in range(11)]  # 1 s of data
    started = time.monotonic()
    assert PacedWriter(writer, speed=2.0).run(items) == 11
    assert 0.45 <= time.monotonic() - started < 1.0  # 1 s at 2x = 0.5 s
    started = time.monotonic()
    PacedWriter(writer, speed=None).run(items)
    assert time.monotonic() - started < 0.3


def test_a_paced_feed_marks_progress_every_second_through_a_quiet_market(
    redis_client: redis.Redis,
) -> None:
    """Two trades 3.5 s apart at real-time speed: marks every MARK_EVERY_S (twice a second)
    while it waits, at the time reached (never past the next trade), after the trades
    they cover."""
    writer = RawLogWriter(redis_client, shards=2)
    items = [
        (T0, RawMessage(b"a", "kraken", T0, symbol="BTCUSDT")),
        (T0 + 3_500, RawMessage(b"b", "kraken", T0 + 3_500, symbol="BTCUSDT")),
    ]
    paced = PacedWriter(writer, speed=1.0, venues=("kraken",))
    started = time.monotonic()
    assert paced.run(items) == 2
    assert time.monotonic() - started < 4.5
    for stream in writer.streams:  # every shard gets every mark
        marks = read_marks(redis_client, stream)
        assert 3.5 / MARK_EVERY_S <= len(marks) <= 3.5 / MARK_EVERY_S + 2
        assert {m.exchange for m in marks} == {"kraken"}
        times = [m.event_ms for m in marks]
        assert times == sorted(times) and times[-1] == T0 + 3_500
        assert all(t < T0 + 3_500 for t in times[:-1]) and times[-2] > T0 + 2_000
    # the first trade's shard: the trade, then the marks that cover it
    shard = writer.stream_for(items[0][1])
    kinds = [F_MARK in f for _, f in redis_client.xrange(shard)]
    assert kinds[0] is False and kinds[-1] is True and kinds.count(False) == 2


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "inf"])
def test_parse_speed_refuses_nonsense(bad: str) -> None:
    with pytest.raises(ValueError, match="max"):
        parse_speed(bad)


@pytest.mark.slow
def test_up_starts_redis_and_feed_and_leaves_nothing(tmp_path: Path) -> None:
    from cryptopipe.localredis import free_port

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cryptopipe",
            "up",
            "--api-port",
            str(free_port()),
            "--redis-url",
            url,
            "--home",
            str(tmp_path),
            "--rate",
            "50",
            "--for",
            "300",
            "--dagster-port",
            str(free_port()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = redis.Redis.from_url(url)
        # The feed is started by Dagster's health sensor once the code location loaded.
        deadline = time.monotonic() + 180
        n = 0
        while time.monotonic() < deadline:
            try:
                n = client.xlen("md:trades:raw")
            except redis.ConnectionError:
                n = 0
            if n >= 20:
                break
            time.sleep(0.2)
        assert n >= 20, "the simulated feed did not reach the local Redis"
        proc.send_signal(__import__("signal").SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    with pytest.raises(redis.ConnectionError):
        client.ping()  # the Redis it started is gone
    # Nothing it started is left (up waits for each child's whole process group).
    left = leftovers(f"(redis-server.*{port}|--redis-url {url}|{tmp_path})", grace_s=0)
    assert left == "", left
    assert (tmp_path / "redis" / "appendonlydir").is_dir()


class _EchoVenue:
    """A venue feed as a new one would be written: one class, registered in FEEDS."""

    name = "echo"
    help = "writes the given payloads"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("payloads", nargs="+")

    def run(self, args: argparse.Namespace, settings: Settings, stop: threading.Event) -> int:
        with feed_writer(settings, stop) as writer:
            writer.write([RawMessage(p.encode(), "echo", 1) for p in args.payloads])
        print(f"echo: wrote {writer.written} messages")
        return 0


def test_a_new_venue_is_one_class_and_one_registration(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from cryptopipe.cli import main
    from streaming import feeds

    monkeypatch.setitem(feeds.FEEDS, "echo", _EchoVenue())
    assert main(["--redis-url", redis_url, "feed", "echo", "a", "b"]) == 0
    assert "echo: wrote 2 messages" in capsys.readouterr().out
    assert [m.payload for m in read_all(redis_client)] == [b"a", b"b"]
    assert redis_client.hget(heartbeat_key("feed"), "items_out") is not None
    sup = Supervisor(Settings(redis_url=redis_url), redis_client, feed="echo")
    assert sup.argv("feed")[-2:] == ["feed", "echo"]


def test_every_registered_feed_is_a_command_and_the_supervisor_checks_the_name(
    redis_url: str, redis_client: redis.Redis
) -> None:
    from streaming.feeds import DEFAULT_FEED, FEEDS

    out = cli("feed", "--help").stdout
    assert all(name in out for name in FEEDS) and DEFAULT_FEED == "simulate"
    assert Supervisor(Settings(redis_url=redis_url), redis_client).argv("feed")[-1] == "simulate"
    with pytest.raises(ValueError, match="unknown feed 'nope': use one of simulate, replay"):
        Supervisor(Settings(redis_url=redis_url), redis_client, feed="nope")
