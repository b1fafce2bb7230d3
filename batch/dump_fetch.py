"""``cryptopipe lake fetch``: Binance's public daily dumps, downloaded, verified, resumable.

Binance publishes its dumps at data.binance.vision in this layout (``<base>`` is
``https://data.binance.vision``, or ``CRYPTOPIPE_BINANCE_DATA_URL``)::

    <base>/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2025-03-14.zip
    <base>/data/spot/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2025-03-14.zip
    <base>/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-03-14.zip
    <base>/data/futures/um/daily/...                     (USD-M futures, the same kinds)

each with a ``<file>.CHECKSUM`` beside it holding ``<sha256 hex>  <file name>``.
:class:`DumpFetcher` downloads one file to
``<home>/downloads/binance/<market>/<kind>/<SYMBOL>/``: a file already there whose
checksum verifies is skipped; a partial download (``<file>.part``) resumes with an
HTTP ``Range`` request (from scratch when the server ignores it); a checksum mismatch
deletes the download and fails the file; a day Binance has not published (404) is
reported as such; connection errors and 5xx answers are retried with back-off. HTTP
goes through ``requests`` and progress bars through ``tqdm`` (on a terminal only):
maintained libraries, nothing hand-written but the resume and verify logic.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import requests
from tqdm import tqdm

DEFAULT_BASE_URL = "https://data.binance.vision"
#: --market -> (path under data/, exchange name of the imported rows)
MARKETS = {"spot": ("spot", "binance"), "um": ("futures/um", "binance-um")}
#: --kind -> (directory and name part in Binance's layout, lake import format)
KINDS = {
    "trades": ("trades", "binance-trades"),
    "aggtrades": ("aggTrades", "binance-aggtrades"),
    "klines": ("klines", "binance-klines"),
}
CHUNK = 1 << 20
#: Bytes read from the network at a time: what a broken connection can lose.
STREAM_CHUNK = 64 << 10
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")

DOWNLOADED, SKIPPED, NOT_PUBLISHED, FAILED = "downloaded", "skipped", "not_published", "failed"


class _Retryable(Exception):
    pass


@dataclass
class FetchOutcome:
    """What fetching one day's file did."""

    symbol: str
    day: date
    status: str  # downloaded | skipped | not_published | failed
    path: Path
    detail: str = ""
    bytes: int = 0
    resumed_from: int = 0


def dump_file_name(kind: str, symbol: str, day: date) -> str:
    """``BTCUSDT-trades-2025-03-14.zip``, ``BTCUSDT-aggTrades-...``, ``BTCUSDT-1m-...``."""
    part = "1m" if kind == "klines" else KINDS[kind][0]
    return f"{symbol}-{part}-{day.isoformat()}.zip"


def dump_url(base_url: str, market: str, kind: str, symbol: str, day: date) -> str:
    """The file's URL in the data.binance.vision layout."""
    sub = f"{KINDS[kind][0]}/{symbol}" + ("/1m" if kind == "klines" else "")
    name = dump_file_name(kind, symbol, day)
    return f"{base_url.rstrip('/')}/data/{MARKETS[market][0]}/daily/{sub}/{name}"


def sha256_of(path: Path) -> str:
    """The file's SHA-256, hex."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class DumpFetcher:
    """Downloads Binance's daily dumps (see the module docstring).

    Args:
        base_url: the data.binance.vision root.
        dest_root: ``<home>/downloads``.
        retries: attempts per request after the first, on connection errors and 5xx.
        backoff_s: first wait between attempts (doubles).
        timeout_s: connect and read timeout of each request.
        progress: show a tqdm bar per file (on a terminal only).
        session: the ``requests`` session (tests may pass their own).

    """

    def __init__(
        self,
        base_url: str,
        dest_root: Path,
        *,
        retries: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 30.0,
        progress: bool = True,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url
        self.dest_root = dest_root
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.progress = progress
        self.session = session or requests.Session()
        self.sleep = sleep

    def destination(self, market: str, kind: str, symbol: str, day: date) -> Path:
        """Where the file goes: ``<dest>/binance/<market>/<kind>/<SYMBOL>/<file>``."""
        name = dump_file_name(kind, symbol, day)
        return self.dest_root / "binance" / market / kind / symbol / name

    def fetch(self, market: str, kind: str, symbol: str, day: date) -> FetchOutcome:
        """Download and verify one day's file (never raises on a network or server error)."""
        url = dump_url(self.base_url, market, kind, symbol, day)
        dest = self.destination(market, kind, symbol, day)
        try:
            expected = self._checksum(url)
            if expected is None:
                return FetchOutcome(symbol, day, NOT_PUBLISHED, dest, f"not published: {url}")
            if dest.exists() and sha256_of(dest) == expected:
                return FetchOutcome(symbol, day, SKIPPED, dest, "already downloaded, verified")
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            resumed, size = self._download(url, part)
            if size is None:
                part.unlink(missing_ok=True)
                return FetchOutcome(symbol, day, NOT_PUBLISHED, dest, f"not published: {url}")
            got = sha256_of(part)
            if got != expected:
                part.unlink(missing_ok=True)
                msg = f"checksum mismatch (sha256 {got[:12]}..., .CHECKSUM says {expected[:12]}...)"
                return FetchOutcome(symbol, day, FAILED, dest, msg)
            part.replace(dest)
            return FetchOutcome(symbol, day, DOWNLOADED, dest, "", size, resumed)
        except (requests.RequestException, _Retryable, OSError) as exc:
            return FetchOutcome(symbol, day, FAILED, dest, f"{url}: {exc}")

    # -- HTTP -----------------------------------------------------------------------

    def _get(self, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        """GET with retries on connection errors and 5xx; 2xx/4xx returned as they are."""
        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                r = self.session.get(url, headers=headers, stream=True, timeout=self.timeout_s)
                if r.status_code < 500:
                    return r
                r.close()
                err: Exception = _Retryable(f"HTTP {r.status_code}")
            except (requests.ConnectionError, requests.Timeout) as exc:
                err = exc
            if attempt == self.retries:
                raise _Retryable(f"gave up after {self.retries + 1} attempts: {err}")
            self.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")

    def _checksum(self, url: str) -> str | None:
        r = self._get(url + ".CHECKSUM")
        with r:
            if r.status_code == 404:
                return None
            r.raise_for_status()
            text = r.text.strip()
        digest = text.split()[0] if text else ""
        if not _HEX.match(digest):
            msg = f"{url}.CHECKSUM does not hold a sha256 ({text[:40]!r})"
            raise _Retryable(msg)
        return digest.lower()

    def _download(self, url: str, part: Path) -> tuple[int, int | None]:
        """Download into ``part``, resuming what is there; (resumed from, size) or size None.

        A connection that breaks mid-body is retried from where it broke.
        """
        resumed = part.stat().st_size if part.exists() else 0
        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else None
            r = self._get(url, headers)
            with r:
                if r.status_code == 404:
                    return resumed, None
                if r.status_code == 416:  # nothing left to send: the part is whole or bad
                    part.unlink(missing_ok=True)
                    resumed = 0
                    continue
                r.raise_for_status()
                append = have > 0 and r.status_code == 206
                if not append:
                    resumed = 0 if have else resumed
                total = _total(r, have if append else 0)
                try:
                    with (
                        part.open("ab" if append else "wb") as out,
                        tqdm(
                            total=total,
                            initial=have if append else 0,
                            unit="B",
                            unit_scale=True,
                            desc=part.name.removesuffix(".part"),
                            disable=None if self.progress else True,
                            leave=False,
                        ) as bar,
                    ):
                        for chunk in r.iter_content(STREAM_CHUNK):
                            out.write(chunk)
                            bar.update(len(chunk))
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                    if attempt == self.retries:
                        raise _Retryable(f"connection kept breaking: {exc}") from None
                    self.sleep(wait)
                    wait *= 2
                    continue
                size = part.stat().st_size
                if total is not None and size != total:
                    if attempt == self.retries:
                        raise _Retryable(f"short download: {size} of {total} bytes")
                    continue
                return resumed, size
        raise _Retryable("download did not complete")


def _total(r: requests.Response, offset: int) -> int | None:
    length = r.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None
