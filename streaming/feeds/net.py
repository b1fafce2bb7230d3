"""The network plumbing the live venue feeds share (Binance, Coinbase).

- HTTP: :class:`HttpResult`, :func:`http_get` (an error status is an answer),
  :func:`retry_after`, :func:`header`, and :func:`in_thread` (a blocking call in a
  daemon thread that a stop abandons).
- :class:`RestClient`: one REST request loop, asking for a JSON list: the wait for
  the gate (a rate-limit pause, a venue's own pause, a minimum interval between
  requests), the request counter, statuses that mean "wait" (429, Binance's 418:
  ``Retry-After`` or a default; not a failure), other 4xx refused, 5xx and network
  errors retried with back-off up to a number of attempts.
- :func:`backoff_delay`: the capped, jittered delay of a numbered attempt.
- :func:`open_websocket` (the ``websockets.connect`` options both feeds use) and
  :func:`connect_with_retries`: opening raced against the stop, a refused handshake
  (429, 418) waiting ``Retry-After`` or a default, other errors backing off.

What is a venue's own stays in its package: the URLs, headers, waits and their
labels, Binance's used-weight watch (``binance/rest.py``), its connection numbering,
rolls (``binance/connection.py``), Coinbase's pacing (``coinbase/rest.py``) and the
subscribe message sent on open (``coinbase/connection.py``). Log lines keep the
feed's prefix (``"binance feed: ..."``, ``"coinbase feed: ..."``), given by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, NamedTuple, Protocol, TypeVar

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from redisstore.retry import Backoff

T = TypeVar("T")


class HttpResult(NamedTuple):
    """Status, headers and body of an HTTP answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def http_get(url: str, headers: Mapping[str, str], timeout: float) -> HttpResult:
    """GET ``url``; an HTTP error status is an answer too, not an exception."""
    req = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResult(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read()
        except OSError:
            body = b""
        return HttpResult(exc.code, dict(exc.headers.items()) if exc.headers else {}, body)


def retry_after(headers: Mapping[str, str], now_s: float) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or ``None``."""
    raw = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_s)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, whatever its case."""
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in a daemon thread (an abandoned call never holds up exit).

    For REST requests, which a stop abandons; raw-log writes use a thread pool.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(settle, False, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=work, name="feed-io", daemon=True).start()
    return await fut


def backoff_delay(base_s: float, cap_s: float, attempt: int) -> float:
    """The capped, jittered delay before retry ``attempt`` (1 for the first)."""
    b = Backoff(base_s, cap_s)
    b.attempt = attempt
    return b.next_delay()


class Stopping(Protocol):
    """What the shared loops need of a feed's stop (``binance.config.Stop``)."""

    @property
    def event(self) -> asyncio.Event:
        """Set on a stop."""
        ...

    def stopped(self) -> bool:
        """Whether a stop was requested."""
        ...

    async def sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; returns whether stop was requested."""
        ...


class RestCounters(Protocol):
    """The counters of a run that a REST request loop moves."""

    rest_requests: int
    rate_limited: int


class RestTuning(Protocol):
    """The tuning a REST request loop reads (both feeds' tunings have it)."""

    @property
    def rest_timeout_s(self) -> float:
        """Timeout of one request."""
        ...

    @property
    def fill_max_attempts(self) -> int:
        """Failed attempts before giving up."""
        ...

    @property
    def backoff_base_s(self) -> float:
        """First back-off bound."""
        ...

    @property
    def backoff_cap_s(self) -> float:
        """Largest back-off bound."""
        ...


class WsTuning(Protocol):
    """The tuning a websocket is opened with (both feeds' tunings have it)."""

    @property
    def open_timeout_s(self) -> float:
        """Handshake timeout."""
        ...

    @property
    def ping_interval_s(self) -> float | None:
        """Seconds between pings (``None``: no pings)."""
        ...

    @property
    def ping_timeout_s(self) -> float | None:
        """Seconds a pong may take (``None``: no limit)."""
        ...


class Wait(NamedTuple):
    """A status that means "wait, then ask again": its default pause and its log label."""

    default_s: float
    label: str


class RestClient:
    """One REST request at a time, for a JSON list, retried (see the module docstring).

    Args:
        tuning: the request timeout, the failed attempts (errors, 5xx, answers not a
            list) before giving up, the back-off bounds between them.
        stop: the feed's stop.
        stats: the run's counters (``rest_requests``, ``rate_limited``).
        log: the feed's logger.
        prefix: the feed's log prefix (``"binance feed"``).
        waits: the statuses that mean "wait", with their default pause and label.
        min_interval_s: least time between the starts of two requests (0: none).
        on_headers: told the headers of every answer (may move :attr:`not_before`).

    """

    def __init__(
        self,
        tuning: RestTuning,
        stop: Stopping,
        stats: RestCounters,
        log: logging.Logger,
        prefix: str,
        waits: Mapping[int, Wait],
        *,
        min_interval_s: float = 0.0,
        on_headers: Callable[[Mapping[str, str]], None] | None = None,
    ) -> None:
        self.stop = stop
        self.stats = stats
        self.log = log
        self.prefix = prefix
        self.waits = dict(waits)
        self.timeout_s = tuning.rest_timeout_s
        self.max_attempts = tuning.fill_max_attempts
        self.backoff_base_s = tuning.backoff_base_s
        self.backoff_cap_s = tuning.backoff_cap_s
        self.min_interval_s = min_interval_s
        self.on_headers = on_headers
        #: No request starts before this ``time.monotonic()``.
        self.not_before = 0.0

    async def get_list(self, url: str, headers: Mapping[str, str], what: str) -> list[Any] | None:
        """The JSON list ``url`` answers; ``None`` after too many failures or a refusal.

        ``what`` names the request in log lines.
        """
        failures = 0
        while not self.stop.stopped():
            wait = self.not_before - time.monotonic()
            if wait > 0 and await self.stop.sleep(wait):
                return None
            if self.min_interval_s > 0:
                self.not_before = time.monotonic() + self.min_interval_s
            self.stats.rest_requests += 1
            try:
                res = await in_thread(http_get, url, headers, self.timeout_s)
            except (OSError, TimeoutError) as exc:
                self.log.warning("%s: %s: %s", self.prefix, what, exc)
            else:
                if self.on_headers is not None:
                    self.on_headers(res.headers)
                if res.status == 200:
                    try:
                        rows = orjson.loads(res.body)
                    except orjson.JSONDecodeError:
                        rows = None
                    if isinstance(rows, list):
                        return rows
                    self.log.warning("%s: %s: answer is not a JSON list", self.prefix, what)
                elif res.status in self.waits:
                    self.stats.rate_limited += 1
                    known = self.waits[res.status]
                    hinted = retry_after(res.headers, time.time())
                    pause = hinted if hinted is not None else known.default_s
                    self.not_before = time.monotonic() + pause
                    self.log.warning(
                        "%s: %s: HTTP %d (%s); waiting %.1fs before any request",
                        self.prefix,
                        what,
                        res.status,
                        known.label,
                        pause,
                    )
                    continue  # waits do not count as failures
                elif res.status < 500:
                    self.log.warning(
                        "%s: %s: HTTP %d %s",
                        self.prefix,
                        what,
                        res.status,
                        res.body[:200].decode("utf-8", "replace"),
                    )
                    return None
                else:
                    self.log.warning("%s: %s: HTTP %d", self.prefix, what, res.status)
            failures += 1
            if failures >= self.max_attempts:
                return None
            delay = backoff_delay(self.backoff_base_s, self.backoff_cap_s, failures)
            if await self.stop.sleep(delay):
                return None
        return None


async def open_websocket(url: str, tuning: WsTuning, user_agent: str) -> ClientConnection:
    """Open a websocket with the options both feeds use."""
    return await connect(
        url,
        open_timeout=tuning.open_timeout_s,
        ping_interval=tuning.ping_interval_s,
        ping_timeout=tuning.ping_timeout_s,
        close_timeout=2,
        max_queue=4096,
        user_agent_header=user_agent,
    )


async def connect_with_retries(
    open_: Callable[[], Coroutine[Any, Any, T]],
    stop: Stopping,
    backoff: Backoff,
    stats: RestCounters,
    log: logging.Logger,
    prefix: str,
    waits: Mapping[int, float],
    *,
    errors: tuple[type[BaseException], ...] = (),
) -> T | None:
    """Run ``open_`` until it succeeds; ``None`` when stopped first.

    ``stats`` counts the rate-limited refusals (``rate_limited``); ``log`` and
    ``prefix`` are the feed's logger and log prefix (``"coinbase feed"``).

    A handshake refused with a status of ``waits`` (429; Binance's 418) is counted as
    rate-limited and waits ``Retry-After``, or at least that status's default and the
    next back-off; other refusals, network errors and ``errors`` (what ``open_`` may
    raise beyond opening) wait the next back-off of ``backoff``.
    """
    caught: tuple[type[BaseException], ...] = (OSError, TimeoutError, InvalidHandshake, *errors)
    while not stop.stopped():
        opening: asyncio.Task[T] = asyncio.create_task(open_())
        stopping = asyncio.create_task(stop.event.wait())
        try:
            await asyncio.wait({opening, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(BaseException):
                await opening
            return None
        try:
            return opening.result()
        except InvalidStatus as exc:
            status = exc.response.status_code
            wait = backoff.next_delay()
            if status in waits:
                stats.rate_limited += 1
                hinted = retry_after(exc.response.headers, time.time())
                wait = hinted if hinted is not None else max(wait, waits[status])
            log.warning(
                "%s: handshake refused with HTTP %d; retrying in %.2fs", prefix, status, wait
            )
        except caught as exc:
            wait = backoff.next_delay()
            log.warning(
                "%s: cannot connect (%s: %s); retrying in %.2fs",
                prefix,
                type(exc).__name__,
                exc,
                wait,
            )
        if await stop.sleep(wait):
            return None
    return None
