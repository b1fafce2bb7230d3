"""What every feed is: a named source of trades for the raw log, with its options.

A feed (a venue's live stream, a replay of files, the simulator) is one class with
the :class:`Feed` shape in one module of :mod:`streaming.feeds`, registered by one
line in :data:`streaming.feeds.FEEDS`. From that, ``cryptopipe feed <name>`` gets its
subcommand (the feed adds its own options) and the supervisor can run it as a
feed process. A feed writes through :func:`feed_writer` (the raw log, sharded as
configured, beating under :func:`feed_process`: ``feed``, or the name the supervisor
gave the process, e.g. ``feed-binance``), stops when the stop event is set, prints
one summary line and returns an exit status. A feed that writes through a writer of
its own names its heartbeat with :func:`feed_process` too.
"""

from __future__ import annotations

import argparse
import os
import re
import threading
from collections.abc import Mapping
from typing import Protocol

from marketdata.parsing import normalize_exchange, normalize_symbol
from marketdata.settings import Settings
from redisstore.conn import connect_settings
from streaming.heartbeat import HeartbeatWriter
from streaming.rawlog import RawLogWriter

#: The heartbeat (and supervisor) name of a feed process unless told otherwise.
FEED_PROCESS = "feed"
#: The environment variable by which the supervisor (and ``cryptopipe up``) tells a
#: feed process its name when several feeds run side by side (``feed-binance``).
FEED_PROCESS_ENV = "CRYPTOPIPE_FEED_PROCESS"
_PROCESS_NAME = re.compile(r"feed(-[a-z0-9][a-z0-9-]*)?")


class Feed(Protocol):
    """A source of trades (see the module docstring)."""

    #: The subcommand: ``cryptopipe feed <name>``.
    name: str
    #: One line for ``cryptopipe feed --help``.
    help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the feed's own options to its subcommand."""
        ...

    def run(self, args: argparse.Namespace, settings: Settings, stop: threading.Event) -> int:
        """Feed the raw log until done or ``stop`` is set; print a summary; exit status."""
        ...


def feed_process(environ: Mapping[str, str] | None = None) -> str:
    """The name this feed process beats under: its heartbeat's (and supervisor's) name.

    :data:`FEED_PROCESS_ENV` when set (the supervisor sets it on every feed process
    it starts: ``feed``, or ``feed-<feed>`` when several feeds run, docs/operations.md),
    else :data:`FEED_PROCESS`. Every feed names its heartbeat with this function,
    directly or through :func:`feed_writer`, so the supervisor finds each feed's
    heartbeat under the name it started the feed as.

    Raises:
        ValueError: the variable holds something that is not a feed process's name.

    """
    raw = (os.environ if environ is None else environ).get(FEED_PROCESS_ENV, "").strip()
    if not raw:
        return FEED_PROCESS
    if not _PROCESS_NAME.fullmatch(raw):
        msg = (
            f"{FEED_PROCESS_ENV}={raw!r}: a feed process is named feed or feed-<feed> "
            "(e.g. feed-binance); leave it unset outside the supervisor"
        )
        raise ValueError(msg)
    return raw


def feed_writer(settings: Settings, stop: threading.Event) -> RawLogWriter:
    """The raw-log writer of a feed, beating under :func:`feed_process`."""
    name = feed_process()
    client = connect_settings(settings, writer=True)
    return RawLogWriter(
        client, settings.raw_shards, HeartbeatWriter(client, name), should_stop=stop.is_set
    )


def split_list(values: list[str]) -> list[str]:
    """Items of options given comma- or space-separated, possibly repeated."""
    out: list[str] = []
    for v in values:
        out.extend(p for p in v.replace(",", " ").split() if p)
    return out


def parse_symbols(values: list[str]) -> tuple[str, ...]:
    """Symbols, normalised (``btcusdt`` -> ``BTCUSDT``), in order, once each.

    Raises:
        ValueError: naming a bad symbol and what one looks like.

    """
    out = []
    for raw in split_list(values):
        sym = normalize_symbol(raw)
        if sym is None:
            msg = f"bad symbol {raw!r}: use letters and digits like BTCUSDT"
            raise ValueError(msg)
        out.append(sym)
    return tuple(dict.fromkeys(out))


def parse_exchanges(values: list[str]) -> tuple[str, ...]:
    """Exchange names, normalised, in order.

    Raises:
        ValueError: naming a bad exchange name.

    """
    out = []
    for raw in split_list(values):
        ex = normalize_exchange(raw)
        if ex is None:
            msg = f"bad exchange name {raw!r}"
            raise ValueError(msg)
        out.append(ex)
    return tuple(out)


def share(text: str) -> float:
    """An option's share between 0 and 1 (argparse ``type``)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        msg = f"{text}: a share between 0 and 1"
        raise argparse.ArgumentTypeError(msg)
    return value
