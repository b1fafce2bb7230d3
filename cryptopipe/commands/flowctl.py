"""``cryptopipe stream start|stop|restart|status [NAME]`` and ``cryptopipe status``.

Flows run in the background as OS processes (see :mod:`streaming.supervisor`);
these commands act on them directly, without Dagster. A flow started here is
watched by Dagster's health sensor too, when Dagster runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import redis

from cryptopipe.stack import Holder
from marketdata.settings import Settings
from redisstore.conn import connect_settings, text
from redisstore.keys import DLQ_STREAM, LATE_STREAM, RECONCILE_LAST_KEY, STACK_KEY, counts_key
from streaming.supervisor import FLOWS, HEALTHY_STATES, PROCESSES, FlowStatus, Supervisor


def add_control_commands(
    ssub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``start``, ``stop``, ``restart`` and ``status`` to the ``stream`` group."""
    for action, help_text in (
        ("start", "start flows in the background"),
        ("stop", "stop flows (they snapshot and exit)"),
        ("restart", "restart flows"),
        ("status", "state, lag, throughput and restarts of flows"),
    ):
        p = ssub.add_parser(action, parents=[common], help=help_text)
        p.add_argument(
            "name",
            nargs="?",
            default=None,
            choices=PROCESSES,
            help="one flow, or a feed process: feed, or feed-<feed> when up runs several "
            "feeds (default: candles, metrics and archive)",
        )
        if action == "status":
            p.add_argument("--format", choices=("table", "json"), default="table")
        p.set_defaults(func=cmd_flow, action=action)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the top-level ``status`` command."""
    p = sub.add_parser(
        "status",
        parents=[common],
        help="every flow's and feed's state; the last reconciliation (exit 1 when a flow or "
        "a feed is failed, stalled, dead or overdue)",
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_status)


def _row(st: FlowStatus) -> dict[str, object]:
    hb = st.heartbeat
    return {
        "flow": st.name,
        "state": st.state,
        "pid": st.pid,
        "lag": hb.get("lag"),
        "throughput": hb.get("throughput"),
        "items_in": hb.get("items_in"),
        "items_out": hb.get("items_out"),
        "heartbeat_age_s": None if st.heartbeat_age_s is None else round(st.heartbeat_age_s, 1),
        "restarts": hb.get("restarts", "0"),
        "restarts_10m": st.restarts_in_window,
        "lost_entries": int(hb.get("lost_entries", "0") or 0),
        "metrics_url": (
            f"http://127.0.0.1:{hb['metrics_port']}/metrics" if hb.get("metrics_port") else None
        ),
        "reason": st.reason,
    }


def _table(rows: list[dict[str, object]]) -> str:
    cols = ["flow", "state", "pid", "lag", "throughput", "heartbeat_age_s", "restarts", "reason"]
    if any(r.get("lost_entries") for r in rows):
        cols.insert(-1, "lost_entries")
    heads = {"throughput": "items/s", "heartbeat_age_s": "beat_age_s", "lost_entries": "lost"}
    cells = [[str(heads.get(c, c)) for c in cols]]
    cells += [["-" if r.get(c) is None else str(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def cmd_flow(args: argparse.Namespace, settings: Settings) -> int:
    """Start, stop, restart or show flows."""
    sup = Supervisor(settings, connect_settings(settings))
    names = [args.name] if args.name else list(FLOWS)
    if args.action == "start":
        for name in names:
            sup.clear_failed(name)
            print(f"{name}: started, pid {sup.start(name)}")
    elif args.action == "stop":
        for name in names:
            print(f"{name}: {'stopped' if sup.stop(name) else 'was not running'}")
    elif args.action == "restart":
        for name in names:
            sup.clear_failed(name)
            print(f"{name}: restarted, pid {sup.restart(name)}")
    else:
        rows = [_row(sup.status(n)) for n in names]
        print(json.dumps(rows) if args.format == "json" else _table(rows))
    return 0


def rejection_totals(client: redis.Redis, flow: str = "candles") -> dict[str, Any]:
    """What ``flow`` rejected (by reason) and found late, since it began, over its partitions.

    From the flow's exactly-once counters (``md:flow:<flow>:counts:<stream>``), which
    survive restarts and trimming of the DLQ and late streams.
    """
    reasons: dict[str, int] = {}
    late = 0
    for key in client.scan_iter(match=counts_key(flow, "*"), count=100):
        for k, v in client.hgetall(key).items():
            name, value = text(k), text(v)
            if not value.isdigit():
                continue
            if name.startswith("rejected:"):
                reason = name.removeprefix("rejected:")
                reasons[reason] = reasons.get(reason, 0) + int(value)
            elif name == "late":
                late += int(value)
    ordered = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return {"rejected": sum(ordered.values()), "by_reason": ordered, "late": late}


def spark_status(client: redis.Redis) -> dict[str, Any]:
    """Where Dagster's batch runs find Spark: the stack's warm Connect server, if any."""
    raw = client.get(STACK_KEY)
    url = Holder.parse(raw).spark if raw else ""
    if not url:
        return {"connect": None, "answering": None}
    from batch.spark import connect_answers  # no pyspark: a socket check

    return {"connect": url, "answering": connect_answers(url)}


def status_report(settings: Settings, client: redis.Redis) -> dict[str, Any]:
    """What ``status --format json`` prints (and the HTTP API's ``/api/status`` returns).

    One row per flow and per feed process (``feed``, or each ``feed-<feed>`` when
    ``up`` runs several feeds: :meth:`Supervisor.feed_processes`).
    """
    sup = Supervisor(settings, client)
    raw = client.get(RECONCILE_LAST_KEY)
    return {
        "flows": [_row(sup.status(n)) for n in (*FLOWS, *sup.feed_processes())],
        "spark": spark_status(client),
        "rejections": rejection_totals(client),
        "last_reconciliation": json.loads(raw) if raw else None,
        "at_ms": int(time.time() * 1000),
    }


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Every flow's state, lag, throughput and restarts; rejections; the last reconciliation."""
    report = status_report(settings, connect_settings(settings))
    unhealthy = [r["flow"] for r in report["flows"] if r["state"] not in HEALTHY_STATES]
    if args.format == "json":
        print(json.dumps(report))
        return 1 if unhealthy else 0
    rows, rejections, last = report["flows"], report["rejections"], report["last_reconciliation"]
    print(_table(rows))
    reasons = ", ".join(f"{r} {n:,}" for r, n in rejections["by_reason"].items())
    print(
        f"\nrejected (in {DLQ_STREAM}): {rejections['rejected']:,}"
        + (f" ({reasons})" if reasons else "")
        + f"; late (in {LATE_STREAM}): {rejections['late']:,}"
    )
    if last is None:
        print("\nreconciliation: none yet (cryptopipe reconcile --date D)")
    else:
        counts = " ".join(f"{k}={v}" for k, v in last.get("counts", {}).items())
        print(f"\nreconciliation: {last.get('date')} {counts}")
    spark = report["spark"]
    if spark["connect"]:
        state = "answering" if spark["answering"] else "NOT answering"
        print(f"\nspark: Spark Connect server {spark['connect']} ({state}), kept warm by up")
    if unhealthy:
        print(f"\nnot healthy: {', '.join(unhealthy)}", file=sys.stderr)
        return 1
    return 0
