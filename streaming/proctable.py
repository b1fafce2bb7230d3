"""The process table (Linux ``/proc``) and stopping a process group for good.

One place for what the supervisor and the command line's process groups both need:
a process's start time (so a recycled pid is never taken for the one we started),
its state (a zombie is not running), the live members of a process group, and
"SIGTERM, wait, then SIGKILL" for a whole group: the leader exiting is not enough,
a child it left behind in its group (Dagster's code server, a flow's worker) must be
gone too before a stop returns.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (the command name in field 2 may hold spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22), or ``None``."""
    fields = _stat_fields(pid)
    return None if fields is None else fields[19]


def state(pid: int) -> str | None:
    """The process's state letter (``R``, ``S``, ``Z`` ...), or ``None`` when gone."""
    fields = _stat_fields(pid)
    return None if fields is None else fields[0]


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # field 3 is the state, field 5 the process group
        if fields is not None and fields[0] != "Z" and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members


def terminate(send: Callable[[int], None], alive: Callable[[], bool], timeout: float) -> bool:
    """SIGTERM, wait up to ``timeout`` for it to go, then SIGKILL; False if it was gone."""
    try:
        send(signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive():
        try:
            send(signal.SIGKILL)
        except ProcessLookupError:
            return True
        while alive() and time.monotonic() < deadline + 5:
            time.sleep(0.05)
    return True


def terminate_group(
    pgid: int, timeout: float, also_alive: Callable[[], bool] | None = None
) -> bool:
    """Stop every process of group ``pgid``: SIGTERM, then SIGKILL what is left.

    Returns when no member lives (nor ``also_alive`` holds, e.g. "the leader is not
    reaped yet"); False if the group was already gone.
    """

    def alive() -> bool:
        return bool(group_members(pgid)) or (also_alive is not None and also_alive())

    return terminate(lambda sig: os.killpg(pgid, sig), alive, timeout)
