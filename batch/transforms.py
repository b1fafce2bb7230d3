"""The batch layer's computations: DataFrame in, DataFrame out (docs/architecture.md section 3).

No reading, writing or session creation here (see :mod:`batch.daily`). Every
function is exact: prices and quantities stay exact decimals or exact integers of
1e-8 units, and the only rounding is the half-even rounding docs/architecture.md asks for
(VWAP, and the ratios of the daily aggregates).

1m candles have two implementations with the same result:

* :func:`narrow_trades` + :func:`dedupe_narrow` + :func:`minute_partials` +
  :func:`candles_from_partials`, the fast one: all-integer
  (Spark ``long``) aggregates that run as hash aggregations. Open and close use one
  ``long`` order key per trade, ``(event_time - open_time) << 47 | trade_id``, which
  orders like ``(event_time, trade_id)`` as long as ``trade_id < 2^47``; price x
  quantity (up to 126 bits) is summed as five ``long`` sums of products of 21-bit
  limbs, recombined exactly as a decimal per minute. Each partial row says whether
  its preconditions held (ids below 2^47, quantities within ``long``, no sum
  overflow, duplicates that agree; :func:`fast_path_valid`).
* :func:`minute_candles_exact`, the general one: decimal arithmetic and
  ``min``/``max`` of structs. Slower (sort-based aggregation, big decimals), valid
  for every value docs/architecture.md allows. The job falls back to it when a fast partial
  is not valid, and the tests compare both with :func:`marketdata.candle.fold_trades`.

Coarser candles are rolled up from 1m candles with the merge rule (:func:`roll_up_many`).

Each DataFrame operation costs an analysis pass, which is slow in a fresh JVM, so
the functions build wide ``select``s rather than chains of ``withColumn``.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from batch.schemas import AGGREGATE_COLUMNS, CANDLE_COLUMNS, PRICE, QUANTITY, QUOTE, VOLUME
from marketdata.interval import Interval

MINUTE_MS = Interval.M1.ms
DAY_MINUTES = Interval.D1.ms // MINUTE_MS
#: Bits of the trade id in the fast path's packed order key.
KEY_ID_BITS = 47
MAX_PACKED_TRADE_ID = (1 << KEY_ID_BITS) - 1
LIMB_BITS = 21
LIMB_MASK = (1 << LIMB_BITS) - 1
#: Minutes whose approximate largest price x quantity is within this relative margin
#: of the day's are searched exactly for the largest trade (doubles are good to ~1e-16).
LARGEST_MARGIN = 1e-9

TRADE_KEY = ("exchange", "symbol", "trade_id")
CANDLE_KEY = ("exchange", "symbol", "open_time")
#: Internal 1m columns kept beside the candle's for the daily aggregates and the
#: job's report; never written.
INTERNAL_COLUMNS = ("max_quote_approx", "duplicates", "conflicts")

_E8 = Decimal("1E-8")
_E16 = Decimal("1E-16")


def _from_e8(col: Column | str, out: object) -> Column:
    """An exact decimal from an integer count of 1e-8 units."""
    c = F.col(col) if isinstance(col, str) else col
    return (c.cast("decimal(38,0)") * F.lit(_E8)).cast(out)  # type: ignore[arg-type]


def _floor(col: str, interval_ms: int) -> Column:
    # event times are never negative, so % is a floor here
    return F.col(col) - F.col(col) % F.lit(interval_ms)


def ratio_e8(num: str, den: str) -> Column:
    """``num / den`` rounded half-even to 8 fractional digits, exactly, as ``decimal(18,8)``.

    ``num`` and ``den`` name positive decimal columns. Spark's decimal division
    rounds half-up (and may cut digits first), so this divides in integers instead:
    with ``w = den * 1e-8``, ``q = num div w`` is the exact floor of the result in
    1e-8 units and ``r = num - q * w`` the exact remainder; ``q`` goes up by one
    when ``2r > w``, or ``2r == w`` and ``q`` is odd. (One SQL expression: Python's
    API has no integral division; Spark evaluates the repeated parts once.)
    """
    w = f"CAST(`{den}` * 0.00000001BD AS DECIMAL(38,16))"
    q = f"(`{num}` div {w})"
    r2 = f"((`{num}` - {q} * {w}) * 2)"
    up = f"CASE WHEN {r2} > {w} OR ({r2} = {w} AND {q} % 2 = 1) THEN 1 ELSE 0 END"
    return F.expr(f"CAST(CAST({q} + {up} AS DECIMAL(38,0)) * 0.00000001BD AS DECIMAL(18,8))")


def vwap() -> Column:
    """``quote_volume / volume`` rounded half-even to 8 digits (docs/architecture.md section 3)."""
    return ratio_e8("quote_volume", "volume").alias("vwap")


def _candle_select(extra: Sequence[str] = ()) -> list[Column | str]:
    # The candle columns in schema order, vwap computed from the others.
    return [vwap() if c == "vwap" else c for c in CANDLE_COLUMNS] + list(extra)


# --------------------------------------------------------------------------- dedupe


def trades_per_row() -> Column:
    """The exchange's trades a trade row stands for: its ``span``, NULL being 1.

    An aggregate trade (``span > 1``) holds the ids ``trade_id .. trade_id + span -
    1``: candles count ``span`` trades and close by the last id
    (:meth:`marketdata.candle.Candle.add`).
    """
    return F.coalesce(F.col("span"), F.lit(1).cast("long"))


def dedupe_trades(trades: DataFrame) -> DataFrame:
    """One row per (exchange, symbol, trade_id): duplicates count once.

    Duplicates carry the same content by contract (docs/architecture.md section 2).
    Should two rows with one key differ anyway, the kept version is the one with the
    smallest xxhash64 of its content: arbitrary but independent of file order, so
    re-runs agree.

    Returns:
        The trade columns plus ``copies`` (rows seen for the key) and
        ``conflicting`` (whether those rows differed).

    """
    content = ("event_time", "price", "quantity", "is_buyer_maker", "span")
    return (
        # Shuffle first: a map-side partial aggregation cannot shrink unique keys.
        trades.repartition(*TRADE_KEY)
        .select(*TRADE_KEY, *content, F.xxhash64(*content).alias("_h"))
        .groupBy(*TRADE_KEY)
        .agg(
            *(F.min_by(c, "_h").alias(c) for c in content),
            F.count(F.lit(1)).alias("copies"),
            (F.min("_h") != F.max("_h")).alias("conflicting"),
        )
    )


# --------------------------------------------------------------------------- 1m, fast


def narrow_trades(trades: DataFrame, *, distinct: bool = False) -> DataFrame:
    """Trades with price and quantity as integers of 1e-8 units (``p``, ``q``).

    ``p`` always fits a ``long`` (price < 10^10); ``q`` is NULL when the quantity
    does not (>= ~9.2 * 10^10), which sends the day to the exact path. Narrow
    rows make the deduplication shuffle about half as heavy.

    Args:
        trades: trade rows.
        distinct: the rows are known to hold each trade key once (the trade files'
            indexes proved it: :func:`lake.tradekeys.proves_distinct`); adds the
            ``copies`` and ``conflicting`` columns :func:`dedupe_narrow` would, so
            no shuffle is needed.

    """
    cols: list[Column | str] = [
        "exchange",
        "symbol",
        "trade_id",
        "event_time",
        "is_buyer_maker",
        trades_per_row().alias("n"),
        (F.col("price") * F.lit(10**8)).cast("long").alias("p"),
        (F.col("quantity") * F.lit(10**8)).try_cast("long").alias("q"),
    ]
    if distinct:
        cols += [F.lit(1).cast("long").alias("copies"), F.lit(False).alias("conflicting")]
    return trades.select(*cols)


def dedupe_narrow(narrow: DataFrame) -> DataFrame:
    """:func:`dedupe_trades` for :func:`narrow_trades` rows, with plain min/max aggregates.

    The kept values are each column's minimum over the key's rows: the rows
    themselves when duplicates agree, which is what ``conflicting`` checks
    (any column differing, or a quantity too large for ``long`` in some copies
    only). A conflicting day goes to the exact path, which keeps whole rows.
    """
    maker = F.col("is_buyer_maker").cast("int")
    cols = {
        "event_time": F.col("event_time"),
        "p": F.col("p"),
        "q": F.col("q"),
        "m": maker,
        "n": F.col("n"),
    }
    agg = (
        narrow.repartition(*TRADE_KEY)
        .groupBy(*TRADE_KEY)
        .agg(
            *(F.min(c).alias(f"min_{n}") for n, c in cols.items()),
            *(F.max(c).alias(f"max_{n}") for n, c in cols.items()),
            F.count(F.lit(1)).alias("copies"),
            F.count("q").alias("q_copies"),
        )
    )
    conflicting = (F.col("q_copies") != F.col("copies")) & (F.col("q_copies") > 0)
    for n in cols:
        conflicting = conflicting | (F.col(f"min_{n}") != F.col(f"max_{n}"))
    return agg.select(
        *TRADE_KEY,
        F.col("min_event_time").alias("event_time"),
        (F.col("min_m") == F.lit(1)).alias("is_buyer_maker"),
        F.col("min_p").alias("p"),
        F.col("min_q").alias("q"),
        F.col("min_n").alias("n"),
        "copies",
        conflicting.alias("conflicting"),
    )


def _limbs(col: str) -> list[Column]:
    c = F.col(col)
    return [
        c.bitwiseAND(F.lit(LIMB_MASK)),
        F.shiftright(c, LIMB_BITS).bitwiseAND(F.lit(LIMB_MASK)),
        F.shiftright(c, 2 * LIMB_BITS),
    ]


def minute_partials(deduped: DataFrame) -> DataFrame:
    """1m aggregates of deduplicated narrow trades, in integers (see the module docstring).

    Args:
        deduped: :func:`dedupe_narrow` rows, or :func:`narrow_trades` rows with
            ``distinct=True``.

    Returns:
        Per (exchange, symbol, open_time): ``open_p``, ``close_p``, ``high_p``,
        ``low_p`` (1e-8 units), ``first_key``/``last_key`` (packed order keys),
        ``volume_q``, ``taker_q``, ``c0`` .. ``c4`` (limb sums of price x quantity),
        ``trade_count``, ``q_count``, ``max_trade_id`` and the internal columns.

    """
    key = F.shiftleft(F.col("event_time") % F.lit(MINUTE_MS), KEY_ID_BITS) + F.col("trade_id")
    p, q = _limbs("p"), _limbs("q")
    products = [
        p[0] * q[0],
        p[0] * q[1] + p[1] * q[0],
        p[0] * q[2] + p[1] * q[1] + p[2] * q[0],
        p[1] * q[2] + p[2] * q[1],
        p[2] * q[2],
    ]
    return deduped.groupBy(
        "exchange", "symbol", _floor("event_time", MINUTE_MS).alias("open_time")
    ).agg(
        F.min_by("p", key).alias("open_p"),
        F.max_by("p", key).alias("close_p"),
        F.min(key).alias("first_key"),
        F.max(key).alias("last_key"),
        # An aggregate trade closes by its last id (marketdata.candle.Candle.add).
        F.max_by(F.col("trade_id") + F.col("n") - F.lit(1), key).alias("last_id"),
        F.max("p").alias("high_p"),
        F.min("p").alias("low_p"),
        F.try_sum("q").alias("volume_q"),
        F.try_sum(F.when(~F.col("is_buyer_maker"), F.col("q")).otherwise(F.lit(0))).alias(
            "taker_q"
        ),
        *(F.try_sum(c).alias(f"c{k}") for k, c in enumerate(products)),
        F.sum("n").alias("trade_count"),
        F.count("q").alias("q_count"),
        F.count(F.lit(1)).alias("rows"),
        F.max("trade_id").alias("max_trade_id"),
        F.max(F.col("p").cast("double") * F.col("q").cast("double")).alias("max_quote_approx"),
        F.sum(F.col("copies") - 1).alias("duplicates"),
        F.sum(F.col("conflicting").cast("long")).alias("conflicts"),
    )


def fast_path_valid() -> Column:
    """Whether a row of :func:`minute_partials` is exact (its preconditions held)."""
    ok = (
        (F.col("q_count") == F.col("rows"))
        & (F.col("max_trade_id") <= F.lit(MAX_PACKED_TRADE_ID))
        & (F.col("conflicts") == F.lit(0))
    )
    for s in ("volume_q", "taker_q", "c0", "c1", "c2", "c3", "c4"):
        ok = ok & F.col(s).isNotNull()
    return ok


def candles_from_partials(partials: DataFrame) -> DataFrame:
    """1m candles (:data:`batch.schemas.CANDLES` plus the internal columns) from valid partials."""
    quote_e16 = None
    for k in range(5):
        term = F.col(f"c{k}").cast("decimal(38,0)") * F.lit(Decimal(1 << (LIMB_BITS * k)))
        quote_e16 = term if quote_e16 is None else quote_e16 + term
    assert quote_e16 is not None
    return partials.select(
        "exchange",
        "symbol",
        "open_time",
        _from_e8("open_p", PRICE).alias("open"),
        _from_e8("high_p", PRICE).alias("high"),
        _from_e8("low_p", PRICE).alias("low"),
        _from_e8("close_p", PRICE).alias("close"),
        _from_e8("volume_q", VOLUME).alias("volume"),
        (quote_e16 * F.lit(_E16)).cast(QUOTE).alias("quote_volume"),
        F.col("trade_count").cast("long").alias("trade_count"),
        _from_e8("taker_q", VOLUME).alias("taker_buy_volume"),
        F.col("first_key").bitwiseAND(F.lit(MAX_PACKED_TRADE_ID)).alias("first_trade_id"),
        F.col("last_id").alias("last_trade_id"),
        (F.col("open_time") + F.shiftright("first_key", KEY_ID_BITS)).alias("first_event_time"),
        (F.col("open_time") + F.shiftright("last_key", KEY_ID_BITS)).alias("last_event_time"),
        *INTERNAL_COLUMNS,
    ).select(*_candle_select(INTERNAL_COLUMNS))


# --------------------------------------------------------------------------- 1m, exact


def minute_candles_exact(deduped: DataFrame) -> DataFrame:
    """1m candles by decimal arithmetic, for every value docs/architecture.md allows (slower).

    Args:
        deduped: :func:`dedupe_trades` rows.

    """
    quote = (F.col("price") * F.col("quantity")).cast(QUOTE)
    zero = F.lit(Decimal(0)).cast(QUANTITY)
    g = deduped.groupBy(
        "exchange", "symbol", _floor("event_time", MINUTE_MS).alias("open_time")
    ).agg(
        F.min(F.struct("event_time", "trade_id", "price")).alias("o"),
        F.max(F.struct("event_time", "trade_id", "price", trades_per_row().alias("n"))).alias("c"),
        F.max("price").alias("high"),
        F.min("price").alias("low"),
        F.sum("quantity").alias("volume"),
        F.sum(quote).alias("quote_volume"),
        F.sum(trades_per_row()).alias("trade_count"),
        F.sum(F.when(~F.col("is_buyer_maker"), F.col("quantity")).otherwise(zero)).alias(
            "taker_buy_volume"
        ),
        F.max(quote).cast("double").alias("max_quote_approx"),
        F.sum(F.col("copies") - 1).alias("duplicates"),
        F.sum(F.col("conflicting").cast("long")).alias("conflicts"),
    )
    return g.select(
        "exchange",
        "symbol",
        "open_time",
        F.col("o.price").cast(PRICE).alias("open"),
        F.col("high").cast(PRICE).alias("high"),
        F.col("low").cast(PRICE).alias("low"),
        F.col("c.price").cast(PRICE).alias("close"),
        F.col("volume").cast(VOLUME).alias("volume"),
        F.col("quote_volume").cast(QUOTE).alias("quote_volume"),
        F.col("trade_count").cast("long").alias("trade_count"),
        F.col("taker_buy_volume").cast(VOLUME).alias("taker_buy_volume"),
        F.col("o.trade_id").alias("first_trade_id"),
        (F.col("c.trade_id") + F.col("c.n") - F.lit(1)).alias("last_trade_id"),
        F.col("o.event_time").alias("first_event_time"),
        F.col("c.event_time").alias("last_event_time"),
        *INTERNAL_COLUMNS,
    ).select(*_candle_select(INTERNAL_COLUMNS))


# --------------------------------------------------------------------------- roll-up


def roll_up_many(candles: DataFrame, intervals: Sequence[Interval]) -> DataFrame:
    """Candles of coarser ``intervals`` merged from finer ones (1m -> 5m ... 1d), in one pass.

    The merge rule of :meth:`marketdata.candle.Candle.merged`: open/close of the
    part with the smallest/largest (event_time, trade_id), sums of the sums. Equal
    to folding the trades (the tests check it). Each input candle is copied once
    per interval and one aggregation does them all.

    Returns:
        :data:`batch.schemas.CANDLES` columns plus ``interval`` (the label).

    """
    targets = F.array(
        *(F.struct(F.lit(iv.ms).alias("ms"), F.lit(iv.label).alias("label")) for iv in intervals)
    )
    t = candles.select(*CANDLE_COLUMNS, F.explode(targets).alias("_iv"))
    g = t.groupBy(
        F.col("_iv.label").alias("interval"),
        "exchange",
        "symbol",
        (F.col("open_time") - F.col("open_time") % F.col("_iv.ms")).alias("open_time"),
    ).agg(
        F.min(F.struct("first_event_time", "first_trade_id", "open")).alias("o"),
        F.max(F.struct("last_event_time", "last_trade_id", "close")).alias("c"),
        F.max("high").alias("high"),
        F.min("low").alias("low"),
        F.sum("volume").cast(VOLUME).alias("volume"),
        F.sum("quote_volume").cast(QUOTE).alias("quote_volume"),
        F.sum("trade_count").alias("trade_count"),
        F.sum("taker_buy_volume").cast(VOLUME).alias("taker_buy_volume"),
    )
    parts = {
        "open": F.col("o.open"),
        "close": F.col("c.close"),
        "first_trade_id": F.col("o.first_trade_id"),
        "last_trade_id": F.col("c.last_trade_id"),
        "first_event_time": F.col("o.first_event_time"),
        "last_event_time": F.col("c.last_event_time"),
    }
    return g.select(
        *(
            parts[c].alias(c) if c in parts else vwap() if c == "vwap" else F.col(c)
            for c in CANDLE_COLUMNS
        ),
        "interval",
    )


def roll_up(candles: DataFrame, interval: Interval) -> DataFrame:
    """Candles of one coarser ``interval`` merged from finer ones (see :func:`roll_up_many`)."""
    return roll_up_many(candles, [interval]).drop("interval")


def all_intervals(minute: DataFrame) -> DataFrame:
    """1m candles and their roll-ups to every interval, with an ``interval`` column."""
    m1 = minute.select(*CANDLE_COLUMNS, F.lit(Interval.M1.label).alias("interval"))
    coarse = [iv for iv in Interval if iv is not Interval.M1]
    return m1.unionByName(roll_up_many(minute, coarse))


# --------------------------------------------------------------------------- daily


def largest_trade_windows(minute: DataFrame) -> DataFrame:
    """The 1m windows that may hold each (exchange, symbol)'s largest trade of the day.

    ``max_quote_approx`` is a double, so near-ties are kept: every minute within
    :data:`LARGEST_MARGIN` of the best; :func:`largest_trades` then decides exactly.
    """
    best = F.max("max_quote_approx").over(Window.partitionBy("exchange", "symbol"))
    return (
        minute.select("exchange", "symbol", "open_time", "max_quote_approx", best.alias("_best"))
        .filter(F.col("max_quote_approx") >= F.col("_best") * F.lit(1.0 - LARGEST_MARGIN))
        .select("exchange", "symbol", "open_time")
    )


def largest_trades(deduped: DataFrame) -> DataFrame:
    """Per (exchange, symbol), the trade with the largest price x quantity.

    Ties go to the smallest (event_time, trade_id). Meant for the few trades of
    :func:`largest_trade_windows` (it compares structs of exact decimals).

    Args:
        deduped: :func:`dedupe_trades` rows.

    """
    quote = (F.col("price") * F.col("quantity")).cast(QUOTE)
    best = F.max(
        F.struct(
            quote.alias("quote"),
            (-F.col("event_time")).alias("neg_time"),
            (-F.col("trade_id")).alias("neg_id"),
            F.col("price").alias("price"),
            F.col("quantity").alias("quantity"),
        )
    ).alias("b")
    return (
        deduped.groupBy("exchange", "symbol")
        .agg(best)
        .select(
            "exchange",
            "symbol",
            (-F.col("b.neg_id")).alias("largest_trade_id"),
            (-F.col("b.neg_time")).alias("largest_trade_time"),
            F.col("b.price").cast(PRICE).alias("largest_trade_price"),
            F.col("b.quantity").cast(QUANTITY).alias("largest_trade_quantity"),
            F.col("b.quote").cast(QUOTE).alias("largest_trade_quote"),
        )
    )


def daily_aggregates(minute: DataFrame, largest: DataFrame) -> DataFrame:
    """One row per (exchange, symbol) of the day (:data:`batch.schemas.AGGREGATES`).

    Args:
        minute: the day's 1m candles (one UTC day only).
        largest: :func:`largest_trades` of the day.

    Realized volatility is ``sqrt(sum(ln(close_i / close_{i-1})^2))`` over the
    day's consecutive 1m candles in open_time order (minutes without trades are
    skipped, not filled), in double precision; 0.0 when there is one candle.
    ``trades_per_minute`` is ``trade_count / 1440`` and ``taker_buy_share`` is
    ``taker_buy_volume / volume``, both rounded half-even to 8 digits.
    """
    prev = F.lag("close").over(Window.partitionBy("exchange", "symbol").orderBy("open_time"))
    ret = F.log(F.col("close").cast("double") / prev.cast("double"))
    stats = (
        minute.select("exchange", "symbol", "trade_count", ret.alias("_r"))
        .groupBy("exchange", "symbol")
        .agg(
            F.sqrt(F.coalesce(F.sum(F.col("_r") * F.col("_r")), F.lit(0.0))).alias(
                "realized_volatility"
            ),
            F.count("_r").alias("return_count"),
            F.count(F.lit(1)).alias("active_minutes"),
            F.max("trade_count").cast("long").alias("max_trades_per_minute"),
        )
    )
    day = roll_up(minute, Interval.D1)
    joined = day.join(stats, on=["exchange", "symbol"], how="inner").join(
        largest, on=["exchange", "symbol"], how="inner"
    )
    # trade_count / 1440, half-even, in integers of 1e-8 (fits a long for < 9e10 trades)
    n, m = "(trade_count * 100000000)", DAY_MINUTES
    tpm = F.expr(
        f"CAST(CAST({n} div {m} + CASE WHEN 2 * ({n} % {m}) > {m} OR (2 * ({n} % {m}) = {m} "
        f"AND ({n} div {m}) % 2 = 1) THEN 1 ELSE 0 END AS DECIMAL(38,0)) * 0.00000001BD "
        "AS DECIMAL(18,8))"
    )
    computed = {
        "trades_per_minute": tpm,
        "taker_buy_share": ratio_e8("taker_buy_volume", "volume"),
    }
    return joined.select(*(computed[c].alias(c) if c in computed else c for c in AGGREGATE_COLUMNS))
