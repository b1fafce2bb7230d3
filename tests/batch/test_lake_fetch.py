"""``cryptopipe lake fetch`` against a local server laid out like data.binance.vision."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from binance_files import klines, spot_trades, um_aggtrades
from test_real_dumps import DAY, day_trades

from batch.dump_fetch import (
    DOWNLOADED,
    FAILED,
    NOT_PUBLISHED,
    SKIPPED,
    DumpFetcher,
    dump_url,
)
from cryptopipe.cli import main
from lake.klines import read_day_klines
from lake.layout import Lake
from lake.trades import read_trades
from marketdata.trade import aggregate


class Server:
    """Serves files from a directory; can break, fail or lie once per path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_once: set[str] = set()  # send half the body, then close
        self.fail_once: set[str] = set()  # answer 500
        self.ignore_range = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                if self.path in outer.fail_once:
                    outer.fail_once.discard(self.path)
                    self.send_error(500)
                    return
                f = outer.root / self.path.lstrip("/")
                if not f.is_file():
                    self.send_error(404)
                    return
                data = f.read_bytes()
                start = 0
                if rng and not outer.ignore_range:
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in outer.drop_once:
                    outer.drop_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, market: str, kind: str, symbol: str, day: date, csv: bytes) -> str:
        """A zip and its .CHECKSUM at Binance's path; returns the URL path of the zip."""
        url = dump_url(self.url, market, kind, symbol, day)
        path = url.removeprefix(self.url)
        f = self.root / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f.name.replace(".zip", ".csv"), csv)
        f.write_bytes(buf.getvalue())
        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        Path(str(f) + ".CHECKSUM").write_text(f"{digest}  {f.name}\n")
        return path

    def stop(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "www")
    yield s
    s.stop()


D2 = date(2025, 3, 15)


def test_download_verify_import_and_skip(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trades = day_trades(41, "binance", "BTCUSDT", n=300)
    server.publish("spot", "trades", "BTCUSDT", DAY, spot_trades(trades))
    home = tmp_path / "home"
    argv = ["lake", "fetch", "BTCUSDT", "--from", "2025-03-14", "--base-url", server.url]
    assert main([*argv, "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "downloaded" in out and "verified" in out and "imported" in out
    assert sorted(read_trades(Lake(home / "lake"), DAY)) == sorted(trades)
    zpath = home / "downloads/binance/spot/trades/BTCUSDT/BTCUSDT-trades-2025-03-14.zip"
    assert zpath.is_file() and not Path(str(zpath) + ".part").exists()
    # Again: skipped (checksum verified), and the import replaces its own rows only.
    n = len(server.requests)
    assert main([*argv, "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "skipped, already downloaded" in out and f"replaced {len(trades):,} rows" in out
    assert [p for p, _ in server.requests[n:]] == [
        p for p, _ in server.requests[n:] if "CHECKSUM" in p
    ]
    assert sorted(read_trades(Lake(home / "lake"), DAY)) == sorted(trades)


def test_usd_m_aggtrades_and_klines_set_the_exchange(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trades = day_trades(42, "binance-um", "ETHUSDT", n=200)
    server.publish("um", "aggtrades", "ETHUSDT", DAY, um_aggtrades(aggregate(trades)))
    server.publish("um", "klines", "ETHUSDT", DAY, klines(trades, micros=False, header=True))
    home = ["--home", str(tmp_path / "home")]
    for kind in ("aggtrades", "klines"):
        argv = [
            "lake",
            "fetch",
            "ETHUSDT",
            "--market",
            "um",
            "--kind",
            kind,
            "--from",
            "2025-03-14",
        ]
        assert main([*argv, "--base-url", server.url, *home]) == 0, capsys.readouterr()
    lake = Lake(tmp_path / "home" / "lake")
    stored = read_trades(lake, DAY)
    assert {t.exchange for t in stored} == {"binance-um"}
    assert sum(t.span for t in stored) == len(trades)
    assert read_day_klines(lake, DAY, "binance-um")
    assert "/data/futures/um/daily/klines/ETHUSDT/1m/ETHUSDT-1m-2025-03-14.zip" in {
        p for p, _ in server.requests
    }


def test_resume_retry_mismatch_and_missing_days(server: Server, tmp_path: Path) -> None:
    big = spot_trades(day_trades(43, "binance", "BTCUSDT", n=30_000))
    path = server.publish("spot", "trades", "BTCUSDT", DAY, big)
    fetcher = DumpFetcher(server.url, tmp_path / "dl", progress=False, sleep=lambda s: None)
    # The connection drops midway once: the rest comes by a Range request.
    server.drop_once.add(path)
    out = fetcher.fetch("spot", "trades", "BTCUSDT", DAY)
    assert out.status == DOWNLOADED, out.detail
    ranges = [r for p, r in server.requests if p == path]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert out.path.read_bytes() == (server.root / path.lstrip("/")).read_bytes()
    # A partial file from an earlier run resumes; a server ignoring Range restarts cleanly.
    part = Path(str(out.path) + ".part")
    out.path.unlink()
    part.write_bytes(
        out.path.with_suffix("").name.encode()[:0]
        + (server.root / path.lstrip("/")).read_bytes()[:1000]
    )
    again = fetcher.fetch("spot", "trades", "BTCUSDT", DAY)
    assert again.status == DOWNLOADED and again.resumed_from == 1000
    out.path.unlink()
    part.write_bytes(b"x" * 1000)
    server.ignore_range = True
    clean = fetcher.fetch("spot", "trades", "BTCUSDT", DAY)
    assert (
        clean.status == DOWNLOADED
        and clean.path.read_bytes() == (server.root / path.lstrip("/")).read_bytes()
    )
    server.ignore_range = False
    # A 500 once: retried.
    server.fail_once.add(path + ".CHECKSUM")
    assert fetcher.fetch("spot", "trades", "BTCUSDT", DAY).status == SKIPPED
    # A wrong checksum: the download is deleted and the file fails.
    p2 = server.publish("spot", "trades", "BTCUSDT", D2, big)
    (server.root / (p2.lstrip("/") + ".CHECKSUM")).write_text("0" * 64 + "  x.zip\n")
    bad = fetcher.fetch("spot", "trades", "BTCUSDT", D2)
    assert bad.status == FAILED and "checksum mismatch" in bad.detail
    assert not bad.path.exists() and not Path(str(bad.path) + ".part").exists()
    # A day not published.
    gone = fetcher.fetch("spot", "trades", "BTCUSDT", date(2025, 3, 16))
    assert gone.status == NOT_PUBLISHED and "not published" in gone.detail


def test_missing_days_fail_the_command_but_not_the_others(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.publish(
        "spot", "trades", "BTCUSDT", D2, spot_trades(day_trades(44, "binance", "BTCUSDT", n=50))
    )
    home = ["--home", str(tmp_path / "home")]
    argv = ["lake", "fetch", "BTCUSDT", "--from", "2025-03-14", "--to", "2025-03-15"]
    assert main([*argv, "--base-url", server.url, *home]) == 1
    out = capsys.readouterr().out
    assert "BTCUSDT 2025-03-14 spot trades: not published" in out
    assert "BTCUSDT 2025-03-15 spot trades: downloaded" in out
    assert "fetch: 2 files: downloaded 1, not published 1" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--market", "cm"], "COIN-M"),
        (["--market", "eu"], "use spot or um"),
        (["--to", "2025-03-13"], "before --from"),
        (["--to", "2099-01-01"], "publishes a day's dump after the day ends"),
    ],
)
def test_refusals_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    argv = ["lake", "fetch", "BTCUSDT", "--from", "2025-03-14", *args, "--home", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
