"""Which days readers get from the batch layer: the batch's run marks and the published days.

The merged view (:mod:`serving.merged`) serves a day from the batch layer only once
that day's batch candles have been reconciled against the stream with nothing
unexplained (docs/architecture.md section 5). Two small files per day hold that:

    serving/batch/date=YYYY-MM-DD.json       the batch run that wrote the day's candles
    serving/published/date=YYYY-MM-DD.json   published: the reconciliation that passed,
                                             naming the batch run it checked

A batch run records itself as writing and withdraws the day (deletes its published
mark) *before* it replaces the day's candles, then withdraws it again and records
itself complete: from the first write of a re-run until the next passing
reconciliation, readers get the stream's candles for the day. A reconciliation
remembers the complete batch run it read (:func:`batch_run`; none while a run is
writing), and :func:`publish` refuses a summary whose run is no longer the day's: a
re-run between reconciling and publishing cannot be published unchecked.

Plain JSON in the lake (not Redis): the marks live as long as the candles they speak
for, and readers that have only the lake (``--source merged`` without the day in
Redis) read them the same way.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import date
from typing import Any

from lake.layout import Lake, as_lake, partition
from marketdata.settings import Settings

SERVING_DIR = "serving"
_BATCH = f"{SERVING_DIR}/batch"
_PUBLISHED = f"{SERVING_DIR}/published"


#: The batch run of candles written without a record (:func:`batch_run`).
UNRECORDED = "unrecorded"


class NotPublishableError(RuntimeError):
    """The reconciliation does not allow the day to be served from the batch."""


def _file(lake: Lake, top: str, day: date) -> str:
    return lake.path(top, f"{partition(day)}.json")


def withdraw(where: Settings | Lake | str, day: date) -> None:
    """Stop serving ``day`` from the batch (before its batch candles are replaced)."""
    lake = as_lake(where)
    lake.remove(_file(lake, _PUBLISHED, day))


def _record(lake: Lake, day: date, run: str, *, complete: bool) -> None:
    body = {
        "date": day.isoformat(),
        "run": run,
        "complete": complete,
        "at_ms": int(time.time() * 1000),
    }
    lake.write_bytes(_file(lake, _BATCH, day), json.dumps(body).encode())


def begin_batch_run(where: Settings | Lake | str, day: date) -> str:
    """A batch run is about to replace ``day``'s candles: record it, withdraw the day."""
    lake = as_lake(where)
    run = uuid.uuid4().hex
    _record(lake, day, run, complete=False)
    withdraw(lake, day)
    return run


def end_batch_run(where: Settings | Lake | str, day: date, run: str) -> None:
    """The batch run ``run`` has written all of ``day``'s candles."""
    lake = as_lake(where)
    withdraw(lake, day)  # a publish made while the run wrote checked the older candles
    _record(lake, day, run, complete=True)


def batch_run(where: Settings | Lake | str, day: date) -> str | None:
    """The complete batch run whose candles the lake holds for ``day``.

    ``None`` while a run is writing; :data:`UNRECORDED` for candles written without a
    record (a lake from before these records, candles written by other tools).
    """
    lake = as_lake(where)
    found = lake.read_json(_file(lake, _BATCH, day))
    if found is None:
        return UNRECORDED
    if not found.get("complete"):
        return None
    return str(found["run"])


def publish(
    where: Settings | Lake | str, day: date, summary: dict[str, Any], *, accept: bool = False
) -> None:
    """Serve ``day`` from the batch, on the strength of a reconciliation ``summary``.

    With ``accept``, a summary with unexplained differences is published too: a person
    looked at the report and holds the batch right (the stream lost data, e.g. Redis
    crashed). The mark records how many differences were accepted.

    Raises:
        NotPublishableError: the summary has unexplained differences, is of another
            day, or checked a batch run that is no longer the day's.

    """
    lake = as_lake(where)
    if summary.get("date") != day.isoformat():
        msg = f"the reconciliation summary is of {summary.get('date')}, not {day}"
        raise NotPublishableError(msg)
    unexplained = int(summary.get("unexplained", 0))
    if unexplained and not accept:
        msg = (
            f"{day} is not served from the batch: its reconciliation left {unexplained} "
            "unexplained differences (report in reconciliation/date=D/report.json); readers "
            "keep the stream's candles until a reconciliation passes, or until you accept "
            "the batch ('cryptopipe reconcile --date D --accept-batch')"
        )
        raise NotPublishableError(msg)
    current = batch_run(lake, day)
    if current is None or summary.get("batch_run") != current:
        msg = (
            f"the batch candles of {day} are not the ones this reconciliation checked (batch "
            f"run now {current or 'writing or unrecorded'}, checked "
            f"{summary.get('batch_run') or 'none'}): run the day's batch and reconcile again"
        )
        raise NotPublishableError(msg)
    body = {
        "date": day.isoformat(),
        "batch_run": current,
        "reconciled_at_ms": summary.get("at_ms"),
        "counts": summary.get("counts", {}),
        "accepted_unexplained": unexplained,
        "published_at_ms": int(time.time() * 1000),
    }
    lake.write_bytes(_file(lake, _PUBLISHED, day), json.dumps(body).encode())


def published_days(where: Settings | Lake | str) -> set[date]:
    """Days served from the batch layer (one listing, no file read)."""
    lake = as_lake(where)
    out = set()
    for name in lake.list_files(lake.path(_PUBLISHED)):
        if name.startswith("date=") and name.endswith(".json"):
            try:
                out.add(date.fromisoformat(name[5:-5]))
            except ValueError:
                continue
    return out


def is_published(where: Settings | Lake | str, day: date) -> bool:
    """Whether ``day`` is served from the batch layer."""
    lake = as_lake(where)
    return lake.exists(_file(lake, _PUBLISHED, day))
