"""``cryptopipe feed coinbase``: Coinbase Exchange's live trades into the raw log.

One websocket connection to the Exchange feed (``wss://ws-feed.exchange.coinbase.com``)
subscribed to the ``matches`` and ``heartbeat`` channels of every product. Each
``match`` and ``last_match`` frame is written to the raw log exactly as received,
format ``coinbase-ws``, with the exchange name (``coinbase``; ``--exchange`` overrides
it), ``recv_ms`` = wall clock (UTC ms) at receipt and the product id (``BTC-USD``) as
the symbol. The parser reads ``side`` as the maker's side: ``"sell"`` is a taker buy.

Keeping the log complete and duplicate-free, as the Binance feed does:

* **Ids.** Trade ids are consecutive per product; a match whose id is already
  accounted for is dropped as a duplicate.
* **Gaps.** A match whose id jumps, or a ``heartbeat`` whose ``last_trade_id`` is above
  the highest id received, opens a gap; after ``gap_grace_s`` it is filled from
  ``GET /products/<id>/trades`` (pages newest first, ``after=<id>`` for older ones,
  at most 1000 a page), written as synthesized ``match`` frames marked
  ``"source":"rest"``.
* **Backfill before live.** While a gap is pending, or a product is unsure of what it
  missed (after a start with resume positions or a lost connection, until its first
  heartbeat on the new connection), live frames are held; then the filled trades
  and the held frames are written merged by (trade time, trade id, order kept)
  across products (:mod:`streaming.feeds.live`).
* **Resuming.** The id up to which every trade is written is kept per product in
  ``md:feed:coinbase:resume:<ws host:port>``; a restarted feed fills from there
  (at most ``resume_max_ids`` a product). ``--no-resume`` starts from the live stream.
* **Progress marks.** While caught up, every ``mark_every_s``: the smallest over the
  products of each one's latest heartbeat time (the venue has one clock), never
  going back.
* **Connections and rate limits.** A connection that ends, errs or falls silent is
  replaced after a capped, jittered backoff; REST requests go one at a time, at most
  ``rest_per_s`` a second (Coinbase allows 10 per IP), and a 429 waits ``Retry-After``.

The whole behaviour, the documented Coinbase behaviour it relies on, and the decisions
are in docs/feeds.md, *Coinbase Exchange feed*.

The parts: :mod:`~streaming.feeds.coinbase.config` (URLs, tuning, counters, the
subscribe message, REST rows as frames), :mod:`~streaming.feeds.coinbase.ids` (id
tracking, heartbeats, resuming), :mod:`~streaming.feeds.coinbase.rest` (filling gaps
from REST), :mod:`~streaming.feeds.coinbase.connection` (the websocket) and
:mod:`~streaming.feeds.coinbase.feed` (the feed that composes them and writes the raw
log) on the shared writing loop (:mod:`streaming.feeds.live`). Shared with the
Binance feed: the id book (:mod:`streaming.feeds.ids`), the REST and websocket loops
(:mod:`streaming.feeds.net`), and the stop and counters of its config.
"""

from __future__ import annotations

import argparse
import threading

from marketdata.settings import Settings
from streaming.feeds.base import split_list

#: The products followed unless told: the Coinbase side of ``up``'s default symbols.
DEFAULT_PRODUCTS = "BTC-USD,ETH-USD,SOL-USD"


class CoinbaseLive:
    """``cryptopipe feed coinbase``: live Coinbase Exchange trades (see the module docstring).

    Light on purpose: the registry imports it with every command; the websocket
    machinery is imported when the feed runs.
    """

    name = "coinbase"
    help = "live Coinbase Exchange trades (matches channel)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Products, the venue's URLs, the exchange name, resuming."""
        parser.add_argument(
            "--products",
            "--symbols",
            dest="products",
            nargs="+",
            default=[DEFAULT_PRODUCTS],
            help=f"Coinbase product ids (default {DEFAULT_PRODUCTS}; --symbols is the same option)",
        )
        parser.add_argument(
            "--exchange", default="coinbase", help="exchange name (default: coinbase)"
        )
        parser.add_argument(
            "--ws-url",
            default=None,
            help="websocket feed URL (default: wss://ws-feed.exchange.coinbase.com)",
        )
        parser.add_argument(
            "--rest-url",
            default=None,
            help="REST base URL (default: https://api.exchange.coinbase.com)",
        )
        parser.add_argument(
            "--no-resume",
            dest="resume",
            action="store_false",
            help="start from the live stream alone: do not fetch the trades missed since the "
            "last run from REST",
        )

    def run(self, args: argparse.Namespace, settings: Settings, stop: threading.Event) -> int:
        """Run the live feed until stopped.

        A bad product or exchange name is one ``ValueError`` line.
        """
        from marketdata.parsing import normalize_exchange
        from streaming.feeds.base import feed_process
        from streaming.feeds.coinbase.feed import run_coinbase_feed

        exchange = normalize_exchange(args.exchange)
        if exchange is None:
            msg = f"--exchange {args.exchange!r} is not a valid exchange name (e.g. coinbase)"
            raise ValueError(msg)
        return run_coinbase_feed(
            settings,
            split_list(args.products),
            ws_url=args.ws_url,
            rest_url=args.rest_url,
            stop_event=stop,
            resume=args.resume,
            exchange=exchange,
            heartbeat_name=feed_process(),  # its supervised name (feed, feed-coinbase)
        )
