"""``cryptopipe feed binance``: Binance's live trade streams into the raw log.

One combined-stream websocket (``/stream?streams=btcusdt@trade/ethusdt@trade``)
carries every symbol. Each frame is written to the raw log exactly as received (the
whole ``{"stream": ..., "data": {...}}`` envelope; the parser accepts it), with the
market's exchange name (``binance``; ``--exchange`` overrides it), ``recv_ms`` = wall
clock (UTC ms) at receipt and the trade's symbol for sharding. Writes are pipelined: a
batch every ``flush_interval_s`` or every ``flush_max`` messages, whichever comes
first.

**Aggregate trades (``--stream aggTrade``).** The feed follows ``<symbol>@aggTrade``
instead of ``<symbol>@trade``: one frame per aggregate trade, the fills of one taker
order at one price and time (``a`` the aggregate id, ``p`` the price, ``q`` the summed
quantity, ``f``/``l`` the first and last trade id, ``T`` the time, ``m`` the maker
side). The frames go to the raw log as received, and the candles flow counts each
as ``l - f + 1`` trades (its ``trade_id`` is ``f``), so its candles equal those of
the trades it aggregates, trade counts and first/last trade ids included. The feed
keeps one code path: what follows about ids holds for aggregate ids (``a``,
contiguous per symbol like trade ids) in this mode and for trade ids (``t``) in the
other. Gaps, resumes and probes use ``GET /api/v3/aggTrades`` (``fromId`` = the
first missing aggregate id, ``limit`` at most 1000; no API key, and none is sent),
and the resume positions are kept in their own hash (``...:<host:port>:aggTrade``):
aggregate ids are not trade ids.

**USD-M futures (``--market um``).** They publish trades only as aggregate trades,
so ``--market um`` implies ``--stream aggTrade`` (``--market um --stream trade`` is
refused in one line). Their defaults: websocket ``wss://fstream.binance.com/market``
(Binance routes ``@aggTrade`` under the ``/market`` path; its unrouted legacy URLs
were retired on 2026-04-23), REST ``https://fapi.binance.com`` with
``/fapi/v1/aggTrades`` (rows without ``M``), exchange name ``binance-um`` (a market
of its own, with its own trade ids and its own clock), at most 200 streams a
connection (spot: 1024) and a REST weight limit of 2400 a minute (spot: 6000).
``--ws-url``, ``--rest-url`` and ``--exchange`` override each. USD-M's aggregates
cover its market trades only (Binance leaves insurance-fund and ADL trades out), so
trade ids may skip from one aggregate to the next; aggregate ids do not.

Keeping the log complete and duplicate-free:

* **Ids.** Binance trade ids (and aggregate ids) are contiguous per symbol. The feed
  tracks, per symbol, the ids it has written: a watermark (every id up to it is
  accounted for) and the disjoint ranges above it, so memory grows with the number
  of open gaps, not with the number of trades. A trade whose id is already accounted
  for is dropped as a duplicate (a frame sent twice, or the overlap of two
  connections).
* **Gaps.** An id more than one above the highest seen opens a gap (a trade the
  socket skipped, or the trades missed while reconnecting). After a short grace
  (``gap_grace_s``: an overlapping connection may still deliver them) the missing ids
  are fetched from ``GET /api/v3/historicalTrades?symbol=X&fromId=N&limit=...``
  (with header ``X-MBX-APIKEY`` when ``BINANCE_API_KEY`` is set), or the aggTrades
  endpoint in aggTrade mode, and written too. Gaps are only seen between trades, and
  across restarts (below).
* **Resuming.** After each write that leaves nothing buffered, the feed records per
  symbol the id up to which every trade is written (or given up on) in the Redis
  hash ``md:feed:binance:resume:<websocket host:port>`` (one per venue: testnet ids
  are not mainnet's). The next run starts each symbol's ids there: the first trade
  it receives opens a gap over the trades of the downtime, filled from REST like any
  other. A first trade at or below the recorded id cannot come from the same id
  sequence (the socket sends only new trades): the position is ignored, with a
  warning. At most ``resume_max_ids`` of them per symbol are fetched (the
  newest); older ones are given up with a warning that names the remedy (Binance's
  daily trade or aggTrades dumps, ``cryptopipe lake import``). After a clean stop nothing is
  fetched twice; after a SIGKILL, the trades of the last write (50 ms) may be
  written again (the raw log is at-least-once; both layers deduplicate).
  ``--no-resume`` starts from the live stream alone.
* **Unsure symbols.** After a start with resume points, and after a lost connection
  (not a roll), a symbol may have missed trades nobody knows of until its next trade.
  If the socket has shown none after ``gap_grace_s`` (a quiet market), the feed asks
  REST for the symbol's newest trade (``historicalTrades`` or ``aggTrades`` without
  ``fromId``, ``limit=1``), while connected, so every later trade comes from the
  socket: that trade opens the gap of what was missed, filled as above (a resume
  point equal to it: nothing was missed).
* **Backfill before live.** While a backfill is pending (an open gap, or an unsure
  symbol), live frames of every symbol are held back, in order, and so are the
  trades fetched from REST. When it completes, the fetched trades and the held
  frames are written merged by (trade time, trade id, order kept) across symbols
  (:mod:`streaming.feeds.live`): the venue has one event-time clock for all its
  symbols, so a newer live trade, or one symbol's newer
  backfill, written first would make the rest of the backfill late. At most
  ``hold_max`` messages are kept back; beyond that they are written anyway, with one
  warning (that backfill may then be late). A stop writes what is kept back. The
  resume positions are not recorded while anything is kept back.
* **Progress marks.** While caught up (a connection open, no backfill pending,
  nothing held), every ``mark_every_s`` (0.5 s, quiet markets included) a progress
  mark of the feed's exchange (``binance``, ``binance-um``) goes out with the
  writer's batch, after the trades it covers: every trade up to event time T is in
  the raw log. T is Binance's time as the feed
  knows it: the ``E`` of the latest trade frame from the socket plus the time since
  it was received on the feed's clock (the one stamped as ``recv_ms``), which
  corrects for the clocks' offset and the network's latency; before any frame, the
  feed's clock. T never decreases and is at most the feed's clock + 1 s. A skipped
  trade is only noticed when the next one arrives, so a mark may come before the gap
  it could not know of by a few ms (within the allowed lateness).
* **REST-filled trades are synthesized payloads.** Binance's REST rows are rewritten
  in the websocket's trade format, so the raw log holds one format::

      {"stream":"btcusdt@trade",
       "data":{"e":"trade","E":<time>,"s":"BTCUSDT","t":<id>,"p":<price>,"q":<qty>,
               "T":<time>,"m":<isBuyerMaker>,"M":<isBestMatch>},
       "source":"rest"}

  and an ``aggTrades`` row ``{"a","p","q","f","l","T","m"[,"M"]}`` as::

      {"stream":"btcusdt@aggTrade",
       "data":{"e":"aggTrade","E":<T>,"s":"BTCUSDT","a":<id>,"p":<price>,"q":<qty>,
               "f":<first id>,"l":<last id>,"T":<T>,"m":<m>[,"M":<M>]},
       "source":"rest"}

  ``E`` (event time) is the trade time, the REST row having none; the envelope's
  ``"source":"rest"`` tells them apart from frames received from the socket (which
  never carry that key). Price and quantity strings are copied, never converted.
* **Rate limits.** HTTP 429 and 418 are honoured: the feed waits ``Retry-After``
  seconds (or a default when the header is missing) before any further request; one
  request at a time, never more. When Binance reports five sixths of the market's
  minute weight used (``X-MBX-USED-WEIGHT-1M``), REST pauses until the next minute.
  Other failures are retried with backoff; after ``fill_max_attempts`` failures (or
  a 4xx other than 429/418) the ids are given up on, counted as ``lost`` and logged
  at WARNING.

Connections:

* Pings are answered by ``websockets`` itself (pong with the ping's payload), as
  Binance requires; the client also pings, so a dead TCP connection is noticed.
* A connection that ends (close frame, error, no pong) is replaced after a capped
  exponential backoff with full jitter; a handshake answered 429/418 waits
  ``Retry-After``.
* Before Binance's 24 h cut (``max_connection_age_s``, 23h50m by default) and on a
  ``serverShutdown`` event, the connection is *rolled*: a new one is opened first,
  and the old one is closed once the new one delivers (or after ``roll_overlap_s``),
  so nothing is missed; the overlap is deduplicated.

Stopping (``stop_event``, Ctrl-C through the CLI) closes the socket, abandons open
gaps (logged), writes what is buffered, and returns.

The parts: :mod:`~streaming.feeds.binance.config` (URLs, tuning, counters, the
stop), :mod:`~streaming.feeds.binance.ids` (id tracking and resuming),
:mod:`~streaming.feeds.binance.rest` (filling gaps from REST),
:mod:`~streaming.feeds.binance.connection` (the websocket) and
:mod:`~streaming.feeds.binance.feed` (the feed that composes them and writes the raw
log), on what the live feeds share: the id book (:mod:`streaming.feeds.ids`), the
REST and websocket loops (:mod:`streaming.feeds.net`) and the writing loop
(:mod:`streaming.feeds.live`).
"""

from __future__ import annotations

import argparse
import threading

from marketdata.settings import Settings
from streaming.feeds.base import feed_process, parse_symbols
from streaming.feeds.binance.config import MARKETS


class BinanceLive:
    """``cryptopipe feed binance``: live Binance trade streams (see the module docstring).

    Light on purpose: the registry imports it with every command; the websocket
    machinery is imported when the feed runs.
    """

    name = "binance"
    help = "live Binance trade streams"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Symbols, the venue's URLs, resuming."""
        parser.add_argument(
            "--symbols", nargs="+", required=True, help="symbols, e.g. BTCUSDT,ETHUSDT"
        )
        parser.add_argument(
            "--market",
            choices=tuple(MARKETS),
            default="spot",
            help="spot (default) or um: USD-M futures (fstream/fapi; exchange binance-um)",
        )
        parser.add_argument(
            "--stream",
            choices=("trade", "aggTrade"),
            default=None,
            help="trade (spot's default) or aggTrade (aggregate trades, each counted as "
            "last - first + 1 trades; the only one USD-M futures publish, and their default)",
        )
        parser.add_argument(
            "--exchange", default=None, help="exchange name (default: binance, or binance-um)"
        )
        parser.add_argument(
            "--ws-url",
            default=None,
            help="websocket base URL (default: the market's, wss://stream.binance.com:9443 or "
            "wss://fstream.binance.com/market)",
        )
        parser.add_argument(
            "--rest-url",
            default=None,
            help="REST base URL (default: the market's, https://api.binance.com or "
            "https://fapi.binance.com)",
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

        ``--market`` picks the URLs and the exchange name (each overridable), and
        the default stream (``trade`` on spot, ``aggTrade`` on USD-M, which has no
        other); an impossible pair or a bad exchange name is one ``ValueError`` line.
        """
        from marketdata.parsing import normalize_exchange
        from streaming.feeds.binance.config import trade_stream
        from streaming.feeds.binance.feed import run_binance_feed

        market = MARKETS[args.market]
        event = args.stream or ("trade" if market.name == "spot" else "aggTrade")
        stream = trade_stream(market.name, event)  # ValueError: one line from the CLI
        exchange = normalize_exchange(args.exchange or market.exchange)
        if exchange is None:
            msg = f"--exchange {args.exchange!r} is not a valid exchange name (e.g. binance)"
            raise ValueError(msg)
        return run_binance_feed(
            settings,
            list(parse_symbols(args.symbols)),
            ws_url=args.ws_url,
            rest_url=args.rest_url,
            stop_event=stop,
            resume=args.resume,
            stream=stream,
            exchange=exchange,
            heartbeat_name=feed_process(),  # its supervised name (feed, feed-binance)
        )
