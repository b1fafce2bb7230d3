"""Binance's public daily dumps, downloaded, verified and resumable (``lake fetch``).

Binance publishes its dumps at data.binance.vision in this layout (``<base>`` is
``https://data.binance.vision``, or ``CRYPTOPIPE_BINANCE_DATA_URL``)::

    <base>/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2025-03-14.zip
    <base>/data/spot/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2025-03-14.zip
    <base>/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-03-14.zip
    <base>/data/futures/um/daily/...                     (USD-M futures, the same kinds)

each with a ``<file>.CHECKSUM`` beside it holding ``<sha256 hex>  <file name>`` (what
``sha256sum -c`` reads). :class:`DumpFetcher` downloads one day's file to
``<home>/downloads/binance/<market>/<kind>/<SYMBOL>/<file>``:

- a file already there whose checksum verifies is skipped;
- a download goes to ``<file>.part`` first and is renamed into place only once it
  verifies; a ``.part`` left by a broken connection or an earlier run is continued
  with an HTTP ``Range`` request (a whole one is just renamed); a server that ignores
  ``Range`` (200 instead of 206) sends the whole file, which replaces the ``.part``;
  one that answers 416 (the ``.part`` is longer than the file) gets asked again
  without it;
- a resumed download that does not verify is downloaded once more from scratch
  (Binance replaces archived files now and then, and an old ``.part`` may be of the
  file it replaced); a fresh download that does not verify is deleted and fails;
- a day Binance has not published (404) is reported as such, not as a failure;
- connection errors, timeouts, 429 and 5xx answers are retried with a doubling
  back-off; a body cut short is continued from where it broke.

Nothing here raises on a network or server error: :meth:`DumpFetcher.fetch` returns
a :class:`FetchOutcome` saying what happened to the file, and the caller decides. HTTP
goes through ``requests`` and the progress bars through ``tqdm`` (maintained
libraries); only the resume and verification logic is ours.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple, TextIO, cast

import requests
from tqdm import tqdm

from marketdata.binance_dump import FORMAT_AGGTRADES, FORMAT_KLINES, FORMAT_TRADES
from marketdata.settings import DEFAULT_BINANCE_DATA_URL

DEFAULT_BASE_URL = DEFAULT_BINANCE_DATA_URL


class Market(NamedTuple):
    """A market of Binance's dumps."""

    path: str  #: the directory under ``data/``
    exchange: str  #: the exchange name the lake import gives its rows


class Kind(NamedTuple):
    """A kind of dump."""

    directory: str  #: its directory in Binance's layout (``trades``, ``aggTrades``, ``klines``)
    interval: str | None  #: klines: the interval, a directory of its own and the file name's part
    fmt: str  #: the ``lake import`` format

    @property
    def name_part(self) -> str:
        """``BTCUSDT-<name_part>-2025-03-14.zip``."""
        return self.interval or self.directory


#: ``--market`` -> where its dumps are and the exchange name of its rows. COIN-M
#: (``cm``) is left out on purpose: its quantities are contracts, not the base asset.
MARKETS = {
    "spot": Market("spot", "binance"),
    "um": Market("futures/um", "binance-um"),
}
#: ``--kind`` -> its place in Binance's layout and its import format (klines: 1m only,
#: the interval that compares with the batch's candles).
KINDS = {
    "trades": Kind("trades", None, FORMAT_TRADES),
    "aggtrades": Kind("aggTrades", None, FORMAT_AGGTRADES),
    "klines": Kind("klines", "1m", FORMAT_KLINES),
}
#: Bytes hashed at a time.
HASH_CHUNK = 1 << 20
#: Bytes read from the network at a time: the most a broken connection loses.
STREAM_CHUNK = 64 << 10
_HEX = re.compile(r"[0-9a-fA-F]{64}")
#: Answers worth asking again: too many requests, and every server error.
_TRANSIENT = frozenset({429}) | frozenset(range(500, 600))


class Status(StrEnum):
    """What became of one day's file."""

    DOWNLOADED = "downloaded"
    SKIPPED = "skipped"  # already downloaded, and it verifies
    NOT_PUBLISHED = "not_published"  # 404: Binance has no dump of that day
    FAILED = "failed"


@dataclass(frozen=True)
class FetchOutcome:
    """What fetching one day's file did.

    Attributes:
        symbol: the symbol.
        day: the UTC day.
        status: downloaded, skipped, not published or failed.
        path: where the file is (or would be).
        url: where it was fetched from.
        detail: why it failed or was not published; empty otherwise.
        bytes: the file's size (downloaded or skipped).
        resumed_at: the offsets the download was continued at with a ``Range``
            request the server honoured, in order (a ``.part`` of an earlier run
            first, then each broken connection).
        restarted: the server ignored a ``Range`` request, or a resumed download did
            not verify: the file was downloaded from its start.
        replaced_stale: a file was already there but no longer matched the
            ``.CHECKSUM``; the new download replaced it.

    """

    symbol: str
    day: date
    status: Status
    path: Path
    url: str
    detail: str = ""
    bytes: int = 0
    resumed_at: tuple[int, ...] = ()
    restarted: bool = False
    replaced_stale: bool = False


class FetchError(Exception):
    """One file could not be fetched (after retries); the message says why."""


class _NotPublished(Exception):
    pass


def dump_file_name(kind: str, symbol: str, day: date) -> str:
    """``BTCUSDT-trades-2025-03-14.zip``, ``BTCUSDT-aggTrades-...``, ``BTCUSDT-1m-...``."""
    return f"{symbol}-{KINDS[kind].name_part}-{day.isoformat()}.zip"


def dump_url(base_url: str, market: str, kind: str, symbol: str, day: date) -> str:
    """The file's URL in the data.binance.vision layout.

    Args:
        base_url: the root, e.g. ``https://data.binance.vision``.
        market: a key of :data:`MARKETS`.
        kind: a key of :data:`KINDS`.
        symbol: upper case, e.g. ``BTCUSDT``.
        day: the UTC day.

    """
    k = KINDS[kind]
    where = f"{k.directory}/{symbol}" + (f"/{k.interval}" if k.interval else "")
    name = dump_file_name(kind, symbol, day)
    return f"{base_url.rstrip('/')}/data/{MARKETS[market].path}/daily/{where}/{name}"


def sha256_of(path: Path) -> str:
    """The file's SHA-256, lower-case hex."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def parse_checksum(text: str, name: str) -> str:
    """The SHA-256 in a ``.CHECKSUM`` file's text (``<hex>  <name>``), lower case.

    Args:
        text: the file's content.
        name: the file name it should name (a name, when present, must be this one).

    Raises:
        FetchError: no 64-digit hex first, or the file names another file.

    """
    fields = text.split()
    if not fields or not _HEX.fullmatch(fields[0]):
        msg = f".CHECKSUM does not start with a sha256 ({text[:80]!r})"
        raise FetchError(msg)
    named = fields[1].lstrip("*") if len(fields) > 1 else name  # '*': sha256sum's binary mode
    if named != name:
        msg = f".CHECKSUM is of {named!r}, not {name!r}"
        raise FetchError(msg)
    return fields[0].lower()


@dataclass
class _Bars:
    """The overall progress bar, and the per-file bars drawn under it."""

    stream: TextIO | None
    overall: Any = None  # tqdm, while fetch_all runs
    done_files: int = 0
    files: int = 0

    def file_bar(self, name: str, total: int | None, initial: int) -> Any:
        return tqdm(
            total=total,
            initial=initial,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name,
            file=self.stream,
            disable=self.stream is None,
            leave=False,
            position=1 if self.overall is not None else 0,
        )

    def add(self, n: int) -> None:
        if self.overall is not None:
            self.overall.update(n)


@dataclass
class _Download:
    size: int = 0
    resumed_at: list[int] = field(default_factory=list)
    restarted: bool = False


class DumpFetcher:
    """Downloads Binance's daily dumps (see the module docstring).

    Args:
        base_url: the data.binance.vision root.
        dest_root: ``<home>/downloads``; files go under ``binance/<market>/<kind>/<SYMBOL>/``.
        retries: attempts after the first, for each request (connection errors,
            timeouts, 429, 5xx) and again for bodies cut short.
        backoff_s: the first wait between attempts; it doubles each time.
        timeout_s: connect and read timeout of each request.
        progress: the stream to draw progress bars on (per file, and overall in
            :meth:`fetch_all`), or ``None`` for none. The command line passes stderr
            when it is a terminal.
        session: the ``requests`` session (a new one by default).
        sleep: how to wait between attempts (tests pass a recorder).

    """

    def __init__(
        self,
        base_url: str,
        dest_root: Path,
        *,
        retries: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 30.0,
        progress: TextIO | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url
        self.dest_root = dest_root
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self.sleep = sleep
        self._bars = _Bars(progress)

    def destination(self, market: str, kind: str, symbol: str, day: date) -> Path:
        """Where the file goes: ``<dest_root>/binance/<market>/<kind>/<SYMBOL>/<file>``."""
        name = dump_file_name(kind, symbol, day)
        return self.dest_root / "binance" / market / kind / symbol / name

    def fetch_all(
        self, market: str, kind: str, symbols: Iterable[str], days: Iterable[date]
    ) -> Iterator[FetchOutcome]:
        """:meth:`fetch` each symbol's file of each day, symbol by symbol, day by day.

        While it runs, an overall bar (bytes downloaded, files done) stays above the
        per-file bars; the caller may import each file before asking for the next.
        """
        day_list = list(days)
        pairs = [(s, d) for s in symbols for d in day_list]
        bars = self._bars
        bars.files, bars.done_files = len(pairs), 0
        with tqdm(
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"0/{len(pairs)} files",
            file=bars.stream,
            disable=bars.stream is None,
            position=0,
        ) as overall:
            bars.overall = overall
            try:
                for symbol, day in pairs:
                    out = self.fetch(market, kind, symbol, day)
                    bars.done_files += 1
                    done = f"{bars.done_files}/{bars.files} files"
                    overall.set_description_str(done, refresh=True)
                    yield out
            finally:
                bars.overall = None

    def fetch(self, market: str, kind: str, symbol: str, day: date) -> FetchOutcome:
        """Download and verify one day's file; never raises on a network or server error.

        Args:
            market: a key of :data:`MARKETS`.
            kind: a key of :data:`KINDS`.
            symbol: upper case.
            day: the UTC day.

        """
        url = dump_url(self.base_url, market, kind, symbol, day)
        dest = self.destination(market, kind, symbol, day)
        part = dest.with_name(dest.name + ".part")

        def outcome(status: Status, detail: str = "", **kw: Any) -> FetchOutcome:
            return FetchOutcome(symbol, day, status, dest, url, detail, **kw)

        try:
            expected = self._checksum(url, dest.name)
            if expected is None:
                return outcome(Status.NOT_PUBLISHED, self._why_not_published(url))
            stale = dest.exists()
            if stale and sha256_of(dest) == expected:
                return outcome(Status.SKIPPED, bytes=dest.stat().st_size)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if part.is_file() and sha256_of(part) == expected:
                # An earlier run got every byte but stopped before the rename.
                size = part.stat().st_size
                part.replace(dest)
                return outcome(
                    Status.DOWNLOADED, bytes=size, resumed_at=(size,), replaced_stale=stale
                )
            dl = self._download(url, part)
            got = sha256_of(part)
            if got != expected and dl.resumed_at:
                # The .part may be of an earlier version of the file: once from scratch.
                part.unlink()
                again = self._download(url, part)
                dl = _Download(again.size, [], True)
                got = sha256_of(part)
            if got != expected:
                part.unlink()
                if stale:  # what was there does not verify either
                    dest.unlink()
                msg = (
                    f"checksum mismatch: the download's sha256 is {got}, its .CHECKSUM says "
                    f"{expected}; the download was deleted"
                )
                return outcome(Status.FAILED, msg)
            part.replace(dest)
            return outcome(
                Status.DOWNLOADED,
                bytes=dl.size,
                resumed_at=tuple(dl.resumed_at),
                restarted=dl.restarted,
                replaced_stale=stale,
            )
        except _NotPublished:
            part.unlink(missing_ok=True)
            return outcome(
                Status.NOT_PUBLISHED, "the server answers 404 for the file (not for its .CHECKSUM)"
            )
        except (requests.RequestException, FetchError, OSError) as exc:
            kept = ""
            if part.is_file() and part.stat().st_size:
                kept = f"; {part.stat().st_size:,} bytes kept in {part.name}, the next run resumes"
            return outcome(Status.FAILED, f"{exc}{kept}")

    # -- HTTP -----------------------------------------------------------------------

    def _backoff(self) -> Iterator[float]:
        wait = self.backoff_s
        for _ in range(self.retries):
            yield wait
            wait *= 2

    def _request(self, method: str, url: str, headers: dict[str, str] | None = None) -> Any:
        """A response, retrying connection errors, timeouts, 429 and 5xx with back-off.

        Raises:
            FetchError: still failing after the last attempt.

        """
        waits = self._backoff()
        attempt = 0
        while True:
            attempt += 1
            try:
                r = self.session.request(
                    method, url, headers=headers, stream=True, timeout=self.timeout_s
                )
                if r.status_code not in _TRANSIENT:
                    return r
                r.close()
                err = f"HTTP {r.status_code}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                err = f"{type(exc).__name__}: {exc}"
            wait = next(waits, None)
            if wait is None:
                msg = f"{url}: gave up after {attempt} attempts ({err})"
                raise FetchError(msg)
            self.sleep(wait)

    def _checksum(self, url: str, name: str) -> str | None:
        """The expected SHA-256, or ``None`` when the ``.CHECKSUM`` is not there (404)."""
        with self._request("GET", url + ".CHECKSUM") as r:
            if r.status_code == 404:
                return None
            r.raise_for_status()
            return parse_checksum(r.text, name)

    def _why_not_published(self, url: str) -> str:
        """Without a ``.CHECKSUM``: either nothing is there (not published) or an error."""
        with self._request("HEAD", url) as r:
            if r.status_code == 404:
                return "the server answers 404 for the file and its .CHECKSUM"
            r.raise_for_status()
            msg = f"{url} is there but its .CHECKSUM is not (404): it cannot be verified"
            raise FetchError(msg)

    def _download(self, url: str, part: Path) -> _Download:
        """Download into ``part``, continuing what is there.

        Raises:
            _NotPublished: 404.
            FetchError: the connection kept breaking, or a request kept failing.
            requests.HTTPError: another 4xx answer.

        """
        dl = _Download()
        waits = self._backoff()
        breaks = 0
        while True:
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else None
            with self._request("GET", url, headers) as r:
                if r.status_code == 404:
                    raise _NotPublished
                if r.status_code == 416 and have:  # the .part is not shorter than the file
                    part.unlink()
                    dl.restarted = True
                    continue
                r.raise_for_status()
                append = r.status_code == 206
                if append and (not have or _range_start(r) != have):
                    got = r.headers.get("Content-Range")
                    msg = f"{url}: a 206 answer with Content-Range {got!r} to Range {headers}"
                    raise FetchError(msg)
                if have and not append:
                    dl.restarted = True  # Range ignored (or answered oddly): from the start
                if append:
                    dl.resumed_at.append(have)
                offset = have if append else 0
                total = _content_length(r)
                total = None if total is None else offset + total
                try:
                    with (
                        part.open("ab" if append else "wb") as out,
                        self._bars.file_bar(part.name.removesuffix(".part"), total, offset) as bar,
                    ):
                        for chunk in r.iter_content(STREAM_CHUNK):
                            out.write(chunk)
                            bar.update(len(chunk))
                            self._bars.add(len(chunk))
                    size = part.stat().st_size
                    if total is not None and size < total:
                        msg = f"the body ended at {size:,} of {total:,} bytes"
                        raise FetchError(msg)
                except (
                    requests.ConnectionError,
                    requests.Timeout,
                    requests.exceptions.ChunkedEncodingError,
                    FetchError,
                ) as exc:
                    breaks += 1
                    wait = next(waits, None)
                    if wait is None:
                        msg = f"{url}: the connection broke {breaks} times, last: {exc}"
                        raise FetchError(msg) from None
                    self.sleep(wait)
                    continue
                dl.size = size
                return dl


def bars_cleared(stream: TextIO) -> AbstractContextManager[None]:
    """A context to write to ``stream`` in without mixing the line into progress bars.

    The bars on the terminal are cleared first and drawn again after.
    """
    return cast(AbstractContextManager[None], tqdm.external_write_mode(file=stream))


def _content_length(r: Any) -> int | None:
    length = r.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _range_start(r: Any) -> int | None:
    """The first byte of a 206 answer (``Content-Range: bytes START-END/SIZE``)."""
    m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None
