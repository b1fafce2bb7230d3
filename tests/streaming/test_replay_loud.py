"""``cryptopipe feed replay`` never replays in silence what carries no trade.

Through the command line, into a real Redis:

* a websocket capture none of whose messages is a trade is refused in one line (how
  many messages, of which event types), wherever in the file its first trade would
  have been, and nothing is written;
* a capture that carries trades among other messages is replayed whole, with one
  warning at the end counting the others by event type;
* a CSV dump none of whose rows parses is refused with the reasons and the first
  three examples (line number and reason).
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import redis

from marketdata.rawmessage import F_MARK
from tests.processes import run_cryptopipe

T0 = 1_741_910_400_000


def replay(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cryptopipe(
        os.environ, "feed", "replay", *args, "--redis-url", redis_url, timeout=120
    )


def messages(client: redis.Redis) -> list[bytes]:
    return [f[b"payload"] for _, f in client.xrange("md:trades:raw") if F_MARK not in f]


def trade(i: int, **fields: object) -> str:
    msg = {"e": "trade", "E": T0 + i + 2, "s": "BTCUSDT", "t": i, "p": "1.5", "q": "2"}
    msg.update({"T": T0 + i, "m": False, "M": True})
    return json.dumps({**msg, **fields})


def kline(i: int) -> str:
    k = {"t": T0, "T": T0 + 59_999, "s": "BTCUSDT", "i": "1m", "o": "1", "c": "1"}
    return json.dumps({"e": "kline", "E": T0 + i, "s": "BTCUSDT", "k": k})


def depth(i: int) -> str:
    inner = {"e": "depthUpdate", "E": T0 + i, "s": "BTCUSDT", "U": i, "u": i, "b": [], "a": []}
    return json.dumps({"stream": "btcusdt@depth", "data": inner})


def lines_file(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_a_capture_with_no_trade_is_refused_in_one_line(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    klines = lines_file(tmp_path / "klines.jsonl", [kline(i) for i in range(1500)])
    mixed = lines_file(
        tmp_path / "book.jsonl",
        [depth(i) for i in range(40)] + [kline(i) for i in range(7)] + ["{trunc", "[1]"],
    )
    # Trade messages, every one invalid: no trade either.
    bad = lines_file(tmp_path / "bad.jsonl", [trade(i, p="abc") for i in range(3)] + [kline(0)])
    zipped = tmp_path / "book.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(mixed, "book.jsonl")
    cases = [
        (
            klines,
            "klines.jsonl: none of its 1,500 messages is a trade (by event type: kline 1,500); "
            "only trade and aggTrade messages are taken: nothing replayed",
        ),
        (
            zipped,
            "book.zip: none of its 49 messages is a trade (by event type: depthUpdate 40, "
            "kline 7, not JSON 1, not an object 1); only trade and aggTrade messages are taken: "
            "nothing replayed",
        ),
        (
            bad,
            "bad.jsonl: none of its 4 messages is a trade (by event type: trade 3, kline 1; "
            "the trade and aggTrade messages were rejected: bad_number:price 3); only trade and "
            "aggTrade messages are taken: nothing replayed",
        ),
    ]
    for path, says in cases:
        out = replay(redis_url, str(path), "--format", "binance-ws")
        assert out.returncode == 2, out
        assert out.stderr == f"cryptopipe: error: {says}\n"
    # With a good file beside it: refused all the same, before anything is written.
    good = lines_file(tmp_path / "trades.jsonl", [trade(i) for i in range(1, 4)])
    out = replay(redis_url, str(good), str(klines), "--format", "binance-ws")
    assert out.returncode == 2 and "klines.jsonl: none of its 1,500" in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    empty = lines_file(tmp_path / "empty.jsonl", ["", "  "])
    out = replay(redis_url, str(empty), "--format", "binance-ws")
    assert out.returncode == 2 and "empty.jsonl holds no messages" in out.stderr
    assert messages(redis_client) == []


def test_a_capture_with_some_trades_is_replayed_with_a_warning(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    # The first trade after 1,500 kline messages: found, however far in.
    late = [kline(i) for i in range(1500)] + [trade(1)]
    first = lines_file(tmp_path / "late.jsonl", late)
    second = lines_file(
        tmp_path / "mixed.jsonl",
        [trade(2), depth(1), trade(3), "{trunc", depth(2), trade(4, e="aggTrade", f=4, l=6)],
    )
    only_trades = lines_file(tmp_path / "clean.jsonl", [trade(i) for i in range(5, 8)])
    out = replay(redis_url, str(first), str(second), str(only_trades), "--format", "binance-ws")
    assert out.returncode == 0, out.stderr
    assert len(messages(redis_client)) == 1501 + 6 + 3  # every line, as it was
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "replay: warning: late.jsonl: 1,500 of its 1,501 messages carry no trade "
        "(kline 1,500); only trade and aggTrade messages are taken, the others go to "
        "the DLQ (md:trades:dlq)",
        "replay: warning: mixed.jsonl: 3 of its 6 messages carry no trade "
        "(depthUpdate 2, not JSON 1); only trade and aggTrade messages are taken, the "
        "others go to the DLQ (md:trades:dlq)",
    ]
    assert "replay: wrote 1510 messages" in out.stdout


def test_a_dump_none_of_whose_rows_parse_is_refused_with_reasons_and_examples(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    rows = [
        "1,abc,1,1,1741910400000,true,true",
        "2,1.5,1,1,1741910400000,maybe,true",
        "3,1.5,-1,1,1741910400000,true,true",
        "4,1.5,1,1",
        "5,xyz,1,1,1741910400000,true,true",
    ]
    spot = lines_file(tmp_path / "BTCUSDT-trades-2025-03-14.csv", rows)
    out = replay(redis_url, str(spot), "--format", "binance-csv")
    assert out.returncode == 2, out
    assert out.stderr == (
        "cryptopipe: error: BTCUSDT-trades-2025-03-14.csv: none of its 5 rows is a trade as "
        "binance-csv (bad_number:price 2, bad_bool:is_buyer_maker 1, non_positive:quantity 1, "
        "missing_field:event_time 1; e.g. line 1: bad_number:price, line 2: "
        "bad_bool:is_buyer_maker, line 3: non_positive:quantity): nothing replayed\n"
    )
    # USD-M's header line is not a row; the examples keep the file's line numbers.
    header = "id,price,qty,quote_qty,time,is_buyer_maker"
    um = lines_file(tmp_path / "ETHUSDT-trades-2025-03-14.csv", [header, "", *rows[:2]])
    out = replay(redis_url, str(um), "--format", "binance-trades")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out
    assert "none of its 2 rows is a trade as binance-csv" in out.stderr
    assert "e.g. line 3: bad_number:price, line 4: bad_bool:is_buyer_maker)" in out.stderr
    # The same rows as aggregate trades: rejected for their own reasons.
    aggs = lines_file(tmp_path / "BTCUSDT-aggTrades-2025-03-14.csv", rows)
    out = replay(redis_url, str(aggs), "--format", "binance-aggtrades")
    assert out.returncode == 2, out
    assert "none of its 5 rows is a trade as binance-aggtrades" in out.stderr
    assert "e.g. line 1: bad_number:price, line 2: bad_timestamp," in out.stderr
    assert messages(redis_client) == []
    # One good row is enough: the dump is replayed, its bad rows go to the DLQ.
    good = rows[0].replace("abc", "1")
    mixed = lines_file(tmp_path / "SOLUSDT-trades-2025-03-14.csv", [*rows, good])
    out = replay(redis_url, str(mixed), "--format", "binance-csv")
    assert out.returncode == 0, out.stderr
    assert len(messages(redis_client)) == 6
