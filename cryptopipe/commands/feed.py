"""``cryptopipe feed NAME``: trades into the raw log, from any registered feed.

The subcommands come from :data:`streaming.feeds.FEEDS` (simulate, replay, binance):
each feed adds its own options and runs until done or stopped (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import functools

from cryptopipe.signals import stop_event_on_signals
from marketdata.settings import Settings
from streaming.feeds import FEEDS
from streaming.feeds.base import Feed


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``feed`` command group: one subcommand per registered feed."""
    feed = sub.add_parser("feed", help="bring trades into the raw log", parents=[common])
    fsub = feed.add_subparsers(dest="feed", metavar="FEED")
    fsub.required = True
    for name, one in FEEDS.items():
        parser = fsub.add_parser(name, parents=[common], help=one.help)
        one.add_arguments(parser)
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            metavar="PORT",
            help="serve Prometheus /metrics on 127.0.0.1:PORT",
        )
        parser.set_defaults(func=functools.partial(cmd_feed, one))


def cmd_feed(feed: Feed, args: argparse.Namespace, settings: Settings) -> int:
    """Run ``feed`` until it is done or a signal stops it."""
    if args.metrics_port is not None:
        from streaming import prom

        prom.serve_feed(feed.name, args.metrics_port)
    return feed.run(args, settings, stop_event_on_signals())
