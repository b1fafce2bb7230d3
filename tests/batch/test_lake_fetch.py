"""``cryptopipe lake fetch`` against a local server laid out like data.binance.vision.

The server (``http.server`` in a thread) serves zips generated here, with their
``.CHECKSUM`` files, at Binance's paths; it honours ``Range`` and can drop a
connection midway, answer 500, ignore ``Range`` and lack a day. Every test asserts on
what the server saw and on what is on disk (or in the lake) afterwards.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest
from binance_files import klines, spot_trades, um_aggtrades
from test_real_dumps import DAY, DAY_MS, day_trades

from batch.dump_fetch import DumpFetcher, FetchError, Status, dump_url, parse_checksum
from cryptopipe.cli import main
from lake.klines import read_day_klines
from lake.layout import Lake
from lake.trades import read_trades
from marketdata.settings import DEFAULT_BINANCE_DATA_URL, Settings
from marketdata.timeutil import day_of_ms, now_ms
from marketdata.trade import Trade, aggregate

ROOT = Path(__file__).resolve().parents[2]
D2 = DAY + timedelta(days=1)
D3 = DAY + timedelta(days=2)


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    range: str | None
    status: int


class Server:
    """Serves ``root`` at Binance's paths; faults are armed per path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: list[Seen] = []
        self.drop_once: set[str] = set()  # send half the body, then close the connection
        self.fail: dict[str, int] = {}  # path -> how many more times to answer 500
        self.ignore_range = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(body=False)

            def do_GET(self) -> None:
                self.answer(body=True)

            def answer(self, *, body: bool) -> None:
                rng = self.headers.get("Range")

                def seen(status: int) -> None:
                    outer.seen.append(Seen(self.command, self.path, rng, status))

                if outer.fail.get(self.path, 0) > 0:
                    outer.fail[self.path] -= 1
                    seen(500)
                    self.send_error(500)
                    return
                f = outer.root / self.path.lstrip("/")
                if not f.is_file():
                    seen(404)
                    self.send_error(404)
                    return
                data = f.read_bytes()
                start = 0
                if rng and not outer.ignore_range:
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    if start >= len(data):
                        seen(416)
                        self.send_error(416)
                        return
                    seen(206)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    seen(200)
                    self.send_response(200)
                payload = data[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if not body:
                    return
                if self.path in outer.drop_once:
                    outer.drop_once.discard(self.path)
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(
        self, market: str, kind: str, symbol: str, day: date, csv: bytes, *, checksum: str = ""
    ) -> str:
        """A zip and its .CHECKSUM at Binance's path; the URL path of the zip.

        ``checksum`` replaces the right digest (a lying server).
        """
        path = dump_url(self.url, market, kind, symbol, day).removeprefix(self.url)
        f = self.root / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f.name.replace(".zip", ".csv"), csv)
        f.write_bytes(buf.getvalue())
        digest = checksum or hashlib.sha256(buf.getvalue()).hexdigest()
        Path(f"{f}.CHECKSUM").write_text(f"{digest}  {f.name}\n")
        return path

    def file(self, path: str) -> bytes:
        """The bytes served at ``path``."""
        return (self.root / path.lstrip("/")).read_bytes()

    def requests_for(self, path: str, method: str = "GET") -> list[Seen]:
        """What was asked for ``path``."""
        return [s for s in self.seen if s.path == path and s.method == method]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "www")
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CRYPTOPIPE_LAKE_URI", "CRYPTOPIPE_SYMBOLS", "CRYPTOPIPE_BINANCE_DATA_URL"):
        monkeypatch.delenv(var, raising=False)


class Sleeps(list[float]):
    """Records the back-off waits instead of sleeping."""

    def __call__(self, s: float) -> None:
        self.append(s)


def fetcher(server: Server, tmp_path: Path, **kw: Any) -> DumpFetcher:
    return DumpFetcher(server.url, tmp_path / "downloads", sleep=kw.pop("sleep", Sleeps()), **kw)


def shifted(trades: list[Trade], days: int) -> list[Trade]:
    """The same trades ``days`` later, with their own ids."""
    return [
        t._replace(event_time=t.event_time + days * DAY_MS, trade_id=t.trade_id + days * 10**7)
        for t in trades
    ]


def lake_rows(lake_root: Path, day: date) -> list[tuple[Any, ...]]:
    """The trades of ``day`` in the lake, read with pyarrow, as sorted tuples."""
    t = pads.dataset(lake_root / "trades" / f"date={day}", format="parquet").to_table()
    cols = ["exchange", "symbol", "trade_id", "price", "quantity", "event_time", "is_buyer_maker"]
    return sorted(zip(*(t[c].to_pylist() for c in cols), strict=True))


def expected_rows(trades: list[Trade]) -> list[tuple[Any, ...]]:
    return sorted(
        (
            t.exchange,
            t.symbol,
            t.trade_id,
            Decimal(t.price_e8).scaleb(-8),
            Decimal(t.quantity_e8).scaleb(-8),
            t.event_time,
            t.is_buyer_maker,
        )
        for t in trades
    )


def fetch_cmd(server: Server, home: Path, *args: str) -> list[str]:
    return [
        "lake",
        "fetch",
        *args,
        "--base-url",
        server.url,
        "--home",
        str(home),
    ]


# -- the layout --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("market", "kind", "path"),
    [
        ("spot", "trades", "/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2025-03-14.zip"),
        (
            "spot",
            "aggtrades",
            "/data/spot/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2025-03-14.zip",
        ),
        ("spot", "klines", "/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-03-14.zip"),
        ("um", "trades", "/data/futures/um/daily/trades/BTCUSDT/BTCUSDT-trades-2025-03-14.zip"),
        (
            "um",
            "aggtrades",
            "/data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2025-03-14.zip",
        ),
        ("um", "klines", "/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-03-14.zip"),
    ],
)
def test_urls_follow_data_binance_vision(market: str, kind: str, path: str) -> None:
    base = DEFAULT_BINANCE_DATA_URL
    assert dump_url(base + "/", market, kind, "BTCUSDT", DAY) == base + path


def test_checksum_files_are_read_as_sha256sum_writes_them() -> None:
    digest = "AB" * 32
    name = "BTCUSDT-trades-2025-03-14.zip"
    assert parse_checksum(f"{digest}  {name}\n", name) == digest.lower()
    assert parse_checksum(f"{digest} *{name}", name) == digest.lower()  # binary mode
    assert parse_checksum(digest, name) == digest.lower()
    with pytest.raises(FetchError, match="not 'BTCUSDT-trades"):
        parse_checksum(f"{digest}  ETHUSDT-trades-2025-03-14.zip", name)
    with pytest.raises(FetchError, match="does not start with a sha256"):
        parse_checksum("<html>Not Found</html>", name)


def test_the_data_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env().binance_data_url == DEFAULT_BINANCE_DATA_URL
    monkeypatch.setenv("CRYPTOPIPE_BINANCE_DATA_URL", " http://mirror.example/binance ")
    s = Settings.from_env()
    assert s.binance_data_url == "http://mirror.example/binance"
    assert s.env()["CRYPTOPIPE_BINANCE_DATA_URL"] == "http://mirror.example/binance"


# -- through the command -----------------------------------------------------------------


def test_fetch_verifies_and_imports_then_a_second_run_skips(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    day1 = day_trades(41, "binance", "BTCUSDT", n=300)
    day2 = shifted(day1, 1)
    server.publish("spot", "trades", "BTCUSDT", DAY, spot_trades(day1))
    server.publish("spot", "trades", "BTCUSDT", D2, spot_trades(day2))
    home = tmp_path / "home"
    argv = fetch_cmd(server, home, "BTCUSDT", "--market", "spot", "--kind", "trades")
    argv += ["--from", "2025-03-14", "--to", "2025-03-15"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""  # no progress bars when stderr is not a terminal
    lines = out.splitlines()
    assert lines[0].startswith("downloaded: BTCUSDT 2025-03-14 (spot trades): ")
    assert "sha256 verified" in lines[0]
    assert lines[1].startswith("imported: BTCUSDT 2025-03-14 (spot trades): ")
    assert f"binance BTCUSDT, {len(day1)} trades" in lines[1]
    assert lines[-1] == (
        "fetch: 2 files (1 symbol x 2 days, spot trades): 2 downloaded, 0 skipped, "
        "0 not published, 0 failed; 2 imported, 0 import failed"
    )
    # The lake holds exactly the rows generated, read back with pyarrow.
    assert lake_rows(home / "lake", DAY) == expected_rows(day1)
    assert lake_rows(home / "lake", D2) == expected_rows(day2)
    folder = home / "downloads/binance/spot/trades/BTCUSDT"
    assert sorted(p.name for p in folder.iterdir()) == [
        "BTCUSDT-trades-2025-03-14.zip",
        "BTCUSDT-trades-2025-03-15.zip",
    ]
    # Again: both skipped (only the .CHECKSUM files asked for), and re-imported in place.
    n = len(server.seen)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("skipped, already downloaded: BTCUSDT 2025-03-1") == 2
    assert out.count(f"replaced {len(day1)} rows of its earlier import") == 2
    assert all(s.path.endswith(".CHECKSUM") for s in server.seen[n:]), server.seen[n:]
    assert len(server.seen[n:]) == 2
    assert lake_rows(home / "lake", DAY) == expected_rows(day1)


def test_a_missing_day_is_reported_and_the_others_are_fetched(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    day1 = day_trades(44, "binance", "BTCUSDT", n=50)
    server.publish("spot", "trades", "BTCUSDT", DAY, spot_trades(day1))
    server.publish("spot", "trades", "BTCUSDT", D3, spot_trades(shifted(day1, 2)))
    home = tmp_path / "home"
    argv = fetch_cmd(server, home, "BTCUSDT", "--market", "spot", "--kind", "trades")
    assert main([*argv, "--from", "2025-03-14", "--to", "2025-03-16"]) == 3
    out, err = capsys.readouterr()
    assert "not published: BTCUSDT 2025-03-15 (spot trades): the server answers 404" in out
    assert out.count("imported: BTCUSDT") == 2
    assert "2 downloaded, 0 skipped, 1 not published, 0 failed; 2 imported" in out
    assert err.strip() == "cryptopipe: error: 1 of 3 files not published (see above)"
    assert lake_rows(home / "lake", D3) == expected_rows(shifted(day1, 2))


def test_a_checksum_mismatch_fails_the_file_and_leaves_nothing(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = day_trades(45, "binance", "BTCUSDT", n=50)
    server.publish("spot", "trades", "BTCUSDT", DAY, spot_trades(good), checksum="0" * 64)
    server.publish("spot", "trades", "BTCUSDT", D3, spot_trades(shifted(good, 2)))
    home = tmp_path / "home"
    argv = fetch_cmd(server, home, "BTCUSDT", "--market", "spot", "--kind", "trades")
    # A failed file beats a missing day (2025-03-15): exit status 1.
    assert main([*argv, "--from", "2025-03-14", "--to", "2025-03-16"]) == 1
    out, err = capsys.readouterr()
    assert "failed: BTCUSDT 2025-03-14 (spot trades): checksum mismatch" in out
    assert f".CHECKSUM says {'0' * 64}; the download was deleted" in out
    assert "not published: BTCUSDT 2025-03-15" in out
    assert "imported: BTCUSDT 2025-03-16" in out
    assert err.strip() == "cryptopipe: error: 1 of 3 files failed (see above)"
    folder = home / "downloads/binance/spot/trades/BTCUSDT"
    assert sorted(p.name for p in folder.iterdir()) == ["BTCUSDT-trades-2025-03-16.zip"]
    assert not (home / "lake/trades/date=2025-03-14").exists()


def test_no_import_downloads_only(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.publish(
        "spot", "trades", "BTCUSDT", DAY, spot_trades(day_trades(46, "binance", "BTCUSDT", n=50))
    )
    home = tmp_path / "home"
    argv = fetch_cmd(server, home, "BTCUSDT", "--market", "spot", "--kind", "trades")
    assert main([*argv, "--from", "2025-03-14", "--no-import"]) == 0
    out = capsys.readouterr().out
    assert "downloaded: BTCUSDT 2025-03-14" in out and "imported:" not in out
    assert out.rstrip().endswith("not imported (--no-import)")
    assert (home / "downloads/binance/spot/trades/BTCUSDT/BTCUSDT-trades-2025-03-14.zip").is_file()
    assert not (home / "lake").exists()


def test_usd_m_aggtrades_and_klines_go_in_as_binance_um(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trades = day_trades(42, "binance-um", "ETHUSDT", n=200)
    server.publish("um", "aggtrades", "ETHUSDT", DAY, um_aggtrades(aggregate(trades)))
    server.publish("um", "klines", "ETHUSDT", DAY, klines(trades, micros=False, header=True))
    home = tmp_path / "home"
    for kind in ("aggtrades", "klines"):
        argv = fetch_cmd(server, home, "ETHUSDT", "--market", "um", "--kind", kind)
        assert main([*argv, "--from", "2025-03-14"]) == 0, capsys.readouterr()
    lake = Lake(home / "lake")
    stored = read_trades(lake, DAY)
    assert {t.exchange for t in stored} == {"binance-um"}
    assert sum(t.span for t in stored) == len(trades)
    assert read_day_klines(lake, DAY, "binance-um")
    assert server.requests_for("/data/futures/um/daily/klines/ETHUSDT/1m/ETHUSDT-1m-2025-03-14.zip")
    assert (home / "downloads/binance/um/klines/ETHUSDT/ETHUSDT-1m-2025-03-14.zip").is_file()


def _today() -> date:
    return day_of_ms(now_ms())


SPOT = ["BTCUSDT", "--from", "2025-03-14", "--market", "spot", "--kind", "trades"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["BTCUSDT", "--from", "2025-03-14", "--market", "cm", "--kind", "trades"],
            "--market cm: COIN-M futures are not supported: their dumps count quantities in "
            "contracts",
        ),
        (
            ["BTCUSDT", "--from", "2025-03-14", "--market", "eu", "--kind", "trades"],
            "--market 'eu': use spot, or um",
        ),
        ([*SPOT, "--to", "2025-03-13"], "--to 2025-03-13 is before --from 2025-03-14"),
        (
            [*SPOT, "--to", str(_today() + timedelta(days=1))],
            "is in the future: Binance publishes a day's dump after the day ends",
        ),
        ([*SPOT[:1], "--from", str(_today()), *SPOT[3:]], f"--from {_today()} is today"),
        ([*SPOT, "--to", "2025-02-30"], "bad --to '2025-02-30'"),
        (["BTC/USDT", *SPOT[1:]], "'BTC/USDT' is not a symbol"),
    ],
)
def test_refusals_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    assert main(["lake", "fetch", *args, "--home", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert says in err and err.count("\n") == 1 and out == ""
    assert not (tmp_path / "downloads").exists()


def test_market_and_kind_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--kind", "trades"], ["--market", "spot"]):
        with pytest.raises(SystemExit) as exc:
            main(["lake", "fetch", "BTCUSDT", "--from", "2025-03-14", *args])
        assert exc.value.code == 2
        assert "required" in capsys.readouterr().err


def test_a_symbol_outside_the_allow_list_is_refused_before_downloading(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.setenv("CRYPTOPIPE_SYMBOLS", "ETHUSDT")
    argv = fetch_cmd(server, tmp_path, "BTCUSDT", "--market", "spot", "--kind", "trades")
    assert main([*argv, "--from", "2025-03-14"]) == 2
    assert "BTCUSDT is not in CRYPTOPIPE_SYMBOLS (ETHUSDT)" in capsys.readouterr().err
    assert server.seen == []


def test_the_real_console_script(server: Server, tmp_path: Path) -> None:
    """``.venv/bin/cryptopipe lake fetch``, with --base-url, then from the environment."""
    trades = day_trades(47, "binance", "BTCUSDT", n=100)
    server.publish("spot", "trades", "BTCUSDT", DAY, spot_trades(trades))
    home = tmp_path / "home"
    script = Path(sys.executable).with_name("cryptopipe")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    env["PYTHONPATH"] = str(ROOT)  # this checkout, whichever the venv was installed from
    args = [str(script), "lake", "fetch", "BTCUSDT", "--market", "spot", "--kind", "trades"]
    args += ["--from", "2025-03-14", "--home", str(home)]

    def run(extra: list[str], **more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*args, *extra],
            env={**env, **more},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    first = run(["--base-url", server.url])
    assert first.returncode == 0, first.stderr
    assert "downloaded: BTCUSDT 2025-03-14 (spot trades)" in first.stdout
    assert "imported: BTCUSDT 2025-03-14 (spot trades)" in first.stdout
    assert lake_rows(home / "lake", DAY) == expected_rows(trades)
    second = run([], CRYPTOPIPE_BINANCE_DATA_URL=server.url)
    assert second.returncode == 0, second.stderr
    assert "skipped, already downloaded: BTCUSDT 2025-03-14 (spot trades)" in second.stdout
    assert len(server.seen) == 3  # checksum, zip; then the checksum only
    assert lake_rows(home / "lake", DAY) == expected_rows(trades)


# -- the downloader ----------------------------------------------------------------------

BIG = 30_000  # trades: a zip of several 64 KiB reads, so "midway" is midway


@pytest.fixture
def big(server: Server) -> str:
    csv = spot_trades(day_trades(43, "binance", "BTCUSDT", n=BIG))
    return server.publish("spot", "trades", "BTCUSDT", DAY, csv)


def test_a_partial_download_resumes_with_a_range_request(
    server: Server, tmp_path: Path, big: str
) -> None:
    f = fetcher(server, tmp_path)
    dest = f.destination("spot", "trades", "BTCUSDT", DAY)
    dest.parent.mkdir(parents=True)
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(server.file(big)[:1000])
    out = f.fetch("spot", "trades", "BTCUSDT", DAY)
    assert out.status is Status.DOWNLOADED, out.detail
    assert out.resumed_at == (1000,) and not out.restarted
    [get] = server.requests_for(big)
    assert (get.range, get.status) == ("bytes=1000-", 206)
    assert dest.read_bytes() == server.file(big) and not part.exists()
    assert out.bytes == len(server.file(big))


def test_a_connection_dropped_midway_is_continued_where_it_broke(
    server: Server, tmp_path: Path, big: str
) -> None:
    server.drop_once.add(big)
    sleeps = Sleeps()
    out = fetcher(server, tmp_path, sleep=sleeps).fetch("spot", "trades", "BTCUSDT", DAY)
    assert out.status is Status.DOWNLOADED, out.detail
    first, second = server.requests_for(big)
    assert (first.range, first.status) == (None, 200)
    size = len(server.file(big))
    assert second.status == 206 and second.range is not None
    offset = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= size // 2 and out.resumed_at == (offset,)
    assert out.path.read_bytes() == server.file(big)
    assert sleeps == [0.5]


def test_a_server_ignoring_range_restarts_cleanly(server: Server, tmp_path: Path, big: str) -> None:
    f = fetcher(server, tmp_path)
    dest = f.destination("spot", "trades", "BTCUSDT", DAY)
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(b"x" * 1000)
    server.ignore_range = True
    out = f.fetch("spot", "trades", "BTCUSDT", DAY)
    assert out.status is Status.DOWNLOADED and out.restarted and out.resumed_at == ()
    [get] = server.requests_for(big)
    assert (get.range, get.status) == ("bytes=1000-", 200)
    assert dest.read_bytes() == server.file(big)


def test_a_whole_part_is_renamed_and_a_too_long_one_replaced(
    server: Server, tmp_path: Path, big: str
) -> None:
    f = fetcher(server, tmp_path)
    dest = f.destination("spot", "trades", "BTCUSDT", DAY)
    dest.parent.mkdir(parents=True)
    part = dest.with_name(dest.name + ".part")
    whole = server.file(big)
    part.write_bytes(whole)  # a run stopped between the last byte and the rename
    out = f.fetch("spot", "trades", "BTCUSDT", DAY)
    assert out.status is Status.DOWNLOADED and out.resumed_at == (len(whole),)
    assert not server.requests_for(big) and dest.read_bytes() == whole
    dest.unlink()
    part.write_bytes(whole + b"junk")  # longer than the file: 416, then from the start
    out = f.fetch("spot", "trades", "BTCUSDT", DAY)
    assert out.status is Status.DOWNLOADED and out.restarted, out.detail
    assert [(g.range, g.status) for g in server.requests_for(big)] == [
        (f"bytes={len(whole) + 4}-", 416),
        (None, 200),
    ]
    assert dest.read_bytes() == whole and not part.exists()


def test_a_stale_part_of_a_replaced_file_is_downloaded_again_once(
    server: Server, tmp_path: Path, big: str
) -> None:
    """Binance replaces archived files now and then: a .part may be of the old one."""
    f = fetcher(server, tmp_path)
    dest = f.destination("spot", "trades", "BTCUSDT", DAY)
    dest.parent.mkdir(parents=True)
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(b"PK" + b"\0" * 998)  # the start of another version
    out = f.fetch("spot", "trades", "BTCUSDT", DAY)
    assert out.status is Status.DOWNLOADED, out.detail
    assert out.restarted
    assert [(g.range, g.status) for g in server.requests_for(big)] == [
        ("bytes=1000-", 206),
        (None, 200),
    ]
    assert dest.read_bytes() == server.file(big) and not part.exists()


def test_500s_are_retried_with_back_off_then_given_up(
    server: Server, tmp_path: Path, big: str
) -> None:
    sleeps = Sleeps()
    f = fetcher(server, tmp_path, sleep=sleeps)
    server.fail[big + ".CHECKSUM"] = 1
    server.fail[big] = 2
    out = f.fetch("spot", "trades", "BTCUSDT", DAY)
    assert out.status is Status.DOWNLOADED, out.detail
    assert sleeps == [0.5, 0.5, 1.0]  # one wait for the checksum, two for the zip
    assert [g.status for g in server.requests_for(big)] == [500, 500, 200]
    # Always 500: five attempts (four waits, doubling), then a clear failure.
    sleeps.clear()
    out.path.unlink()
    server.fail[big] = 99
    failed = f.fetch("spot", "trades", "BTCUSDT", DAY)
    assert failed.status is Status.FAILED
    assert failed.detail.endswith(f"{big}: gave up after 5 attempts (HTTP 500)")
    assert sleeps == [0.5, 1.0, 2.0, 4.0]
    assert not failed.path.exists()


def test_a_file_without_its_checksum_fails_and_a_wrong_name_too(
    server: Server, tmp_path: Path, big: str
) -> None:
    f = fetcher(server, tmp_path)
    checksum = server.root / (big.lstrip("/") + ".CHECKSUM")
    text = checksum.read_text()
    checksum.write_text(text.replace("BTCUSDT-trades", "ETHUSDT-trades"))
    out = f.fetch("spot", "trades", "BTCUSDT", DAY)
    assert out.status is Status.FAILED and "is of 'ETHUSDT-trades-2025-03-14.zip'" in out.detail
    checksum.unlink()
    out = f.fetch("spot", "trades", "BTCUSDT", DAY)
    assert out.status is Status.FAILED
    assert "is there but its .CHECKSUM is not (404): it cannot be verified" in out.detail
    assert server.requests_for(big, "HEAD")
    assert not server.requests_for(big)  # never downloaded what cannot be verified
    assert not out.path.parent.exists()


def test_a_file_that_no_longer_verifies_is_downloaded_again(
    server: Server, tmp_path: Path, big: str
) -> None:
    f = fetcher(server, tmp_path)
    dest = f.destination("spot", "trades", "BTCUSDT", DAY)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"an earlier version")
    out = f.fetch("spot", "trades", "BTCUSDT", DAY)
    assert out.status is Status.DOWNLOADED and out.replaced_stale
    assert dest.read_bytes() == server.file(big)
    # When the new download does not verify either, neither is kept.
    dest.write_bytes(b"an earlier version")
    checksum = server.root / (big.lstrip("/") + ".CHECKSUM")
    checksum.write_text(f"{'1' * 64}  {dest.name}\n")
    out = f.fetch("spot", "trades", "BTCUSDT", DAY)
    assert out.status is Status.FAILED and "checksum mismatch" in out.detail
    assert list(dest.parent.iterdir()) == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_bytes_per_file_and_overall(server: Server, tmp_path: Path) -> None:
    server.publish(
        "spot", "trades", "BTCUSDT", DAY, spot_trades(day_trades(48, "binance", "BTCUSDT", n=300))
    )
    term = Terminal()
    f = fetcher(server, tmp_path, progress=term)
    outs = list(f.fetch_all("spot", "trades", ["BTCUSDT"], [DAY, D2]))
    assert [o.status for o in outs] == [Status.DOWNLOADED, Status.NOT_PUBLISHED]
    shown = term.getvalue()
    assert "BTCUSDT-trades-2025-03-14.zip" in shown  # the file's bar
    assert "1/2 files" in shown and "2/2 files" in shown  # the overall bar
    size = outs[0].bytes / 1024
    assert f"{size:.2f}kB" in shown or f"{size:.1f}kB" in shown  # bytes, not rows
