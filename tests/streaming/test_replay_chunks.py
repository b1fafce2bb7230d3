"""``feed replay --speed max`` writes chunks: exactly the entries the message-by-message
writer wrote, and nothing lost across a Redis restart.

The reference is the replay as it was before chunks: each file read line by line
(``rstrip``, blank lines and a CSV header skipped, :func:`_ws_time` / :func:`_csv_time`
for the timeline), the files merged by time with :func:`heapq.merge`, written by
:class:`PacedWriter` through :meth:`RawLogWriter.write` (a redis-py pipeline). The
chunked path must give the same entries (every field but the receive time, which is
the wall clock), in the same order in every shard, with progress marks at the time
reached; a client without a connection pool of its own (Redis Cluster's) takes the
pipeline with the same result.
"""

from __future__ import annotations

import heapq
import io
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.connection import Connection

from cryptopipe.localredis import LocalRedis, free_port
from marketdata.binance_dump import is_header, open_dump
from marketdata.parsing import FORMAT_WS
from marketdata.rawmessage import F_MARK, F_PAYLOAD, F_RECV, RawMessage
from streaming.feeds import replay
from streaming.feeds.pacing import PacedWriter, write_chunks
from streaming.rawlog import PayloadChunk, RawLogWriter, pack_xadd, reply_error

T0 = 1_741_910_400_000
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"]


def reference_messages(
    files: list[tuple[Path, str | None]], fmt: str
) -> Iterator[tuple[int, RawMessage]]:
    """The files' messages with their timeline times, merged, as the replay read them."""

    def read(path: Path, symbol: str | None) -> Iterator[tuple[int, RawMessage]]:
        t = 0
        with open_dump(path)[0] as f:
            for lineno, raw in enumerate(f):
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                if fmt != FORMAT_WS:
                    if is_header(lineno + 1, line):
                        continue
                    t = replay._csv_time(line, t, replay._CSV_TIME_COLUMN[fmt])
                    yield t, RawMessage(line, "binance", 0, fmt, symbol)
                else:
                    t, sym, _ = replay._ws_time(line, t)
                    yield t, RawMessage(line, "binance", 0, FORMAT_WS, sym)

    return heapq.merge(*(read(p, s) for p, s in files), key=lambda item: item[0])


def reference_replay(writer: RawLogWriter, files: list[tuple[Path, str | None]], fmt: str) -> int:
    """The replay at --speed max as it was before chunks (see the module docstring)."""
    merged = reference_messages(files, fmt)
    stamped = ((t, m._replace(recv_ms=int(time.time() * 1000))) for t, m in merged)
    return PacedWriter(writer, None, venues=("binance",)).run(stamped)


def reference_times(files: list[tuple[Path, str | None]], fmt: str) -> dict[bytes, int]:
    """Each payload's timeline time (the test files' payloads are unique)."""
    return {m.payload: t for t, m in reference_messages(files, fmt)}


def entries(client: redis.Redis, streams: list[str]) -> dict[str, list[dict[bytes, bytes]]]:
    """Every stream's entries, receive times left out (they are the wall clock)."""
    return {
        s: [{k: v for k, v in f.items() if k != F_RECV} for _, f in client.xrange(s)]
        for s in streams
    }


def check_marks(written: dict[str, list[dict[bytes, bytes]]], times: dict[bytes, int]) -> None:
    """Every stream's marks: after the messages they cover, each at the time reached.

    A chunk's messages go before its marks in every stream, so the messages before
    the k-th mark of all streams together are those written before it: the mark's
    time is their largest timeline time.
    """
    marks_of = []  # per stream: (event time, largest time before it in the stream)
    for stream_entries in written.values():
        top: int | None = None
        marks: list[tuple[int, int | None]] = []
        for f in stream_entries:
            if F_MARK in f:
                marks.append((int(f[F_MARK]), top))
            else:
                t = times[f[F_PAYLOAD]]
                top = t if top is None else max(top, t)
        marks_of.append(marks)
    assert len({len(m) for m in marks_of}) == 1 and marks_of[0], "every mark in every stream"
    last: int | None = None
    for k in range(len(marks_of[0])):
        kth = [m[k] for m in marks_of]
        (event_ms,) = {e for e, _ in kth}
        assert event_ms == max(t for _, t in kth if t is not None), (k, kth)
        assert last is None or event_ms >= last
        last = event_ms
    assert last == max(times.values())


def messages_only(written: dict[str, list[dict[bytes, bytes]]]) -> dict[str, list[dict]]:
    return {s: [f for f in es if F_MARK not in f] for s, es in written.items()}


def ws_lines() -> tuple[list[str], list[str]]:
    """Two captures: canonical trades of four symbols, and hostile lines among them."""
    first, second = [], []
    for i in range(400):
        msg = {"e": "trade", "E": T0 + 10 * i + 2, "s": SYMBOLS[i % 4], "t": i}
        msg.update({"p": f"{96000 + i}.01000000", "q": "0.00100000", "T": T0 + 10 * i})
        msg.update({"m": i % 3 == 0, "M": True})
        (first if i % 5 else second).append(json.dumps(msg, separators=(",", ":")))
        if i % 7 == 1:  # a trade of the same symbol at the same time in the other file
            tie = {**msg, "t": 10_000 + i}
            (second if i % 5 else first).append(json.dumps(tie, separators=(",", ":")))
    hostile = [
        json.dumps(
            {"stream": "ethusdt@trade", "data": {"e": "trade", "s": "ETHUSDT", "T": T0 + 5}}
        ),
        json.dumps({"e": "aggTrade", "s": "SOLUSDT", "a": 1, "f": 1, "l": 3, "T": T0 + 7}),
        json.dumps({"e": "kline", "E": T0 + 11, "s": "BTCUSDT", "k": {"t": T0}}),
        "{truncated",
        "[1, 2]",
        '{"e":"trade","s":123,"T":1741910400033}',
        '{"e":"trade","s":"","T":1741910400034}',
        '{"e":"trade","s":"BTC\\u0055SDT","T":true}',
        json.dumps({"e": "trade", "s": "XRPUSDT", "T": (T0 + 40) * 1000}),  # µs
        json.dumps({"e": "trade", "s": "XRPUSDT", "T": T0 - 60_000}),  # out of order
        "   ",
        "",
        json.dumps({"e": "trade", "s": "BNBUSDT", "T": T0 + 50, "x": "y" * 70_000}),
        "\u00e9t\u00e9 not json",
    ]
    for j, line in enumerate(hostile):
        first.insert(7 + 13 * j, line)
    return first, second


def csv_files(tmp_path: Path) -> list[tuple[Path, str | None]]:
    """Two dumps: spot (µs and ms, bad rows) and futures (a header, CRLF line ends)."""
    btc = [f"{i},{96000 + i}.5,0.001,96.0005,{(T0 + i * 700) * 1000},true,true" for i in range(300)]
    btc[5] = "5,not-a-price,1,1,1741910406000000,true,true"
    btc[9] = "9,1.5,1"  # no time column: the previous row's time
    btc[11] = "11,1.5,1,1, 1741910407000 ,false,true"  # spaces around the time
    btc[12] = "   "
    eth = ["id,price,qty,quote_qty,time,is_buyer_maker"]
    eth += [f"{i},3200.{i},0.5,1600,{T0 + i * 500},false" for i in range(400)]  # ties
    p1 = tmp_path / "BTCUSDT-trades-2025-03-14.csv"
    p1.write_text("\n".join(btc) + "\n")
    p2 = tmp_path / "ETHUSDT-trades-2025-03-14.csv"
    p2.write_bytes(("\r\n".join(eth)).encode())  # no line break after the last row
    return [(p1, "BTCUSDT"), (p2, "ETHUSDT")]


class ClusterLike:
    """A client without a connection pool of its own, as a Redis Cluster client."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def pipeline(self, transaction: bool = True) -> Any:
        return self._client.pipeline(transaction=transaction)


@pytest.mark.parametrize("fmt", ["binance-ws", "binance-csv"])
@pytest.mark.parametrize("n_files", [1, 2])
def test_chunks_write_exactly_what_the_reference_writes(
    tmp_path: Path,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    n_files: int,
) -> None:
    if fmt == FORMAT_WS:
        first, second = ws_lines()
        p1, p2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
        p1.write_text("\r\n".join(first[:200]) + "\n" + "\n".join(first[200:]))  # no last \n
        p2.write_text("\n".join(second) + "\n")
        files: list[tuple[Path, str | None]] = [(p1, None), (p2, None)]
    else:
        files = csv_files(tmp_path)
    files = files[:n_files]
    times = reference_times(files, fmt)
    assert len(times) > 200

    def run(write: Any) -> dict[str, list[dict[bytes, bytes]]]:
        redis_client.flushall()
        write()
        return entries(redis_client, RawLogWriter(redis_client, shards=2).streams)

    reference = run(lambda: reference_replay(RawLogWriter(redis_client, shards=2), files, fmt))
    # Small blocks and chunks: lines cut across reads, many chunks in flight.
    monkeypatch.setattr(replay, "BLOCK_BYTES", 257)
    monkeypatch.setattr(replay, "CHUNK_MESSAGES", 7)

    def chunked(client: Any) -> None:
        with RawLogWriter(client, shards=2) as writer:
            n = replay.replay_files(writer, [p for p, _ in files], fmt, progress=False)
        assert n == len(times)

    fast = run(lambda: chunked(redis_client))
    pipelined = run(lambda: chunked(ClusterLike(redis_client)))
    assert all(reference.values()), "both shards have entries"
    assert messages_only(fast) == messages_only(reference)
    assert messages_only(pipelined) == messages_only(reference)
    for written in (reference, fast, pipelined):
        check_marks(written, times)


def test_a_mark_after_every_chunk_is_at_the_time_reached(
    tmp_path: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = csv_files(tmp_path)
    times = reference_times(files, "binance-csv")
    monkeypatch.setattr(replay, "CHUNK_MESSAGES", 50)
    tallies = [replay.FileTally(p) for p, _ in files]
    chunks = replay._chunks(
        [(p, s, t) for (p, s), t in zip(files, tallies, strict=True)],
        "binance-csv",
        "binance",
        [0],
    )
    with RawLogWriter(redis_client, shards=2) as writer:
        n = write_chunks(writer, chunks, venues=("binance",), mark_every_s=0.0)
    assert n == len(times) == sum(t.messages for t in tallies)
    written = entries(redis_client, writer.streams)
    assert writer.marks_written == len(times) // 50 + 2  # after every chunk, and at the end
    check_marks(written, times)


def test_pack_xadd_is_what_redis_py_sends() -> None:
    msg = RawMessage(b"1,2.5,\x00\xff \r\n", "binance", 17, "binance-csv", "BTCUSDT")
    flat = [x for kv in msg.to_fields().items() for x in kv]
    expected = b"".join(Connection().pack_command("XADD", "md:trades:raw:1", "*", *flat))
    assert pack_xadd("md:trades:raw:1", msg.to_fields()) == expected
    chunk = PayloadChunk([b"a", b"b" * 70_000, b""], "kraken", 5, FORMAT_WS, ["X", None, ""])
    packed = b"".join(pack_xadd(f"s{m.symbol}", m.to_fields()) for m in chunk.messages())
    assert chunk.pack(lambda s: f"s{s}") == packed


def test_a_redis_restart_in_the_middle_of_a_replay_loses_nothing(tmp_path: Path) -> None:
    """Redis stops while chunks are on their way and comes back: every line is in the
    raw log, in order (a chunk Redis applied but could not confirm comes twice)."""
    path = tmp_path / "BTCUSDT-trades-2025-03-14.csv"
    rows = [f"{i},96000.5,0.001,96.0005,{T0 + i},true,true" for i in range(400_000)]
    path.write_text("\n".join(rows) + "\n")
    server = LocalRedis(tmp_path / "redis", free_port()).start()
    cmd = [sys.executable, "-m", "cryptopipe", "feed", "replay", str(path)]
    feed = subprocess.Popen(
        [*cmd, "--format", "binance-csv", "--redis-url", server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, CRYPTOPIPE_HOME=str(tmp_path / "home")),
    )
    try:
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 30
        while client.xlen("md:trades:raw") < 50_000:
            assert time.monotonic() < deadline and feed.poll() is None
            time.sleep(0.01)
        server.stop()  # SIGTERM: Redis writes its AOF and exits
        time.sleep(1.0)
        server.start()
        out, err = feed.communicate(timeout=120)
        assert feed.returncode == 0, err
        assert "Redis unavailable" in err and "Redis is back" in err
        stored = [
            f[b"payload"].decode() for _, f in client.xrange("md:trades:raw") if F_MARK not in f
        ]
    finally:
        if feed.poll() is None:
            feed.kill()
        server.stop()
    assert "replay: wrote 400000 messages" in out
    assert set(stored) == set(rows)
    assert list(dict.fromkeys(stored)) == rows
    assert len(stored) - len(rows) <= 2 * replay.BLOCK_BYTES // 40  # the chunks in flight


def test_an_error_reply_is_raised_and_the_chunk_kept_until_written(
    redis_client: redis.Redis,
) -> None:
    redis_client.set("md:trades:raw", "not a stream")
    writer = RawLogWriter(redis_client)
    writer.write_chunk(PayloadChunk([b"a", b"b"], "binance", 1))
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        writer.flush()
    assert writer.written == 0
    redis_client.delete("md:trades:raw")
    writer.flush()  # not confirmed, so sent again
    assert writer.written == 2
    assert [f[b"payload"] for _, f in redis_client.xrange("md:trades:raw")] == [b"a", b"b"]
    # Redis loading its data after a restart is waited out, like a lost connection.
    assert isinstance(reply_error("LOADING Redis is loading the dataset"), redis.ConnectionError)
    assert type(reply_error("OOM command not allowed")) is redis.ResponseError


def test_lines_are_those_iterating_the_file_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read a block at a time: the lines (and bytes) of ``for raw in f``, stripped of
    ``\\r\\n``, whatever the block size, lines longer than a block included."""
    rng = random.Random(5)
    pieces = [b"\n", b"\r\n", b"\r", b"ab", b" ", b"x" * 50]
    for _ in range(2_000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 14)))
        monkeypatch.setattr(replay, "BLOCK_BYTES", rng.randrange(1, 20))
        blocks = list(replay._lines(io.BytesIO(data)))
        assert [line for lines, _ in blocks for line in lines] == [
            raw.rstrip(b"\r\n") for raw in io.BytesIO(data)
        ]
        assert sum(size for _, size in blocks) == len(data)
