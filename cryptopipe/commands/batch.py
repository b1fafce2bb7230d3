"""``cryptopipe batch run --date D [--force]``: the daily PySpark job for one UTC day."""

from __future__ import annotations

import argparse
import json
import logging

from tqdm import tqdm

from batch.sealing import DayNotSealedError, require_sealed
from cryptopipe.errors import CommandError
from lake.layout import Lake
from marketdata.settings import Settings
from marketdata.timeutil import parse_day

#: Exit status when the day is not sealed (retry later, or --force).
EXIT_UNSEALED = 3


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``batch`` command group."""
    batch = sub.add_parser("batch", parents=[common], help="the batch layer (PySpark)")
    bsub = batch.add_subparsers(dest="batch", metavar="ACTION")
    bsub.required = True
    run = bsub.add_parser(
        "run",
        parents=[common],
        help="compute a day's batch candles (all intervals) and daily aggregates",
        description=(
            "Read <lake>/trades/date=D/, deduplicate, and write "
            "<lake>/candles/source=batch/interval=I/date=D/ for 1m 5m 15m 1h 4h 1d and "
            "<lake>/aggregates/date=D/, replacing what an earlier run wrote for D. "
            "Refuses a day that is not sealed unless --force. Spark's master comes "
            "from CRYPTOPIPE_SPARK_MASTER (default local[2])."
        ),
    )
    run.add_argument("--date", required=True, help="the UTC day, YYYY-MM-DD")
    run.add_argument(
        "--force",
        action="store_true",
        help="run even if the day is not sealed (a later run replaces the result)",
    )
    run.add_argument(
        "--dedup",
        choices=("auto", "always"),
        default="auto",
        help="auto (default): skip the deduplication shuffle when the trade files' id "
        "indexes prove there are no duplicates; always: deduplicate regardless",
    )
    run.add_argument("--format", choices=("text", "json"), default="text")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Check sealing, then run the job and print a summary."""
    day = parse_day(args.date, "--date")
    try:
        status = require_sealed(settings, day, force=args.force)
    except DayNotSealedError as exc:
        msg = (
            f"{exc}. Run it anyway with --force (trades still to come would be missing "
            "until a later run replaces it)"
        )
        raise CommandError(msg, status=EXIT_UNSEALED) from None
    lake = Lake(settings.lake)

    from batch.daily import STAGES, NoTradesError, run_batch_day
    from batch.spark import ConnectUnavailableError, LazySpark

    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines are noise here
    spark = LazySpark()
    # Progress through the stages on a terminal (tqdm leaves pipes and logs alone).
    with tqdm(
        total=len(STAGES), desc=f"batch {day}", unit="stage", disable=None, leave=False
    ) as bar:

        def on_stage(name: str) -> None:
            bar.set_postfix_str(name, refresh=False)
            bar.update(STAGES.index(name) - bar.n)

        on_stage(STAGES[0])  # the JVM starts when the session is first asked for
        try:
            result = run_batch_day(
                spark.session, lake, day, use_index=args.dedup == "auto", on_stage=on_stage
            )
        except (NoTradesError, ConnectUnavailableError) as exc:
            raise CommandError(str(exc)) from None
        bar.update(len(STAGES) - bar.n)
    if args.format == "json":
        out = result.to_json_dict()
        out["sealed"] = status.sealed
        out["sealed_by"] = status.by or None
        print(json.dumps(out, sort_keys=True))
        return 0
    counts = ", ".join(f"{k}: {v:,}" for k, v in result.candles.items())
    seal = f"sealed by {status.by}" if status.sealed else "NOT sealed, forced"
    print(
        f"batch {day.isoformat()} ({seal}): {result.trades:,} trades "
        f"({result.duplicates:,} duplicates dropped) of {result.symbols} symbols -> "
        f"candles {counts}; {result.aggregates} daily aggregates; "
        f"{result.seconds:.1f} s ({result.path} path)"
    )
    return 0
