"""The feeds: where trades come from, and the one place they are registered.

Each feed is one module holding a class of the :class:`~streaming.feeds.base.Feed`
shape; adding a venue is writing that module and adding it to :data:`FEEDS` below.
``cryptopipe feed <name>`` and the supervisor's ``feed`` process find feeds here.
"""

from __future__ import annotations

from streaming.feeds.base import Feed
from streaming.feeds.binance import BinanceLive
from streaming.feeds.coinbase import CoinbaseLive
from streaming.feeds.replay import DumpReplay
from streaming.feeds.simulate import SimulatedMarket

#: Every feed by its name (the ``cryptopipe feed`` subcommand).
FEEDS: dict[str, Feed] = {
    f.name: f for f in (SimulatedMarket(), DumpReplay(), BinanceLive(), CoinbaseLive())
}
#: The feed ``cryptopipe up`` and the supervisor run unless told otherwise.
DEFAULT_FEED = SimulatedMarket.name


def feed_named(name: str) -> Feed:
    """The feed called ``name``.

    Raises:
        ValueError: naming the feeds there are.

    """
    try:
        return FEEDS[name]
    except KeyError:
        msg = f"unknown feed {name!r}: use one of {', '.join(FEEDS)}"
        raise ValueError(msg) from None
