"""The process that owns a background process: it stops when its owner is gone.

``cryptopipe up`` puts its pid and start time in :data:`OWNER_ENV` of everything it
starts, and so of the flows and feeds its Dagster starts. Such a process checks with
every heartbeat that its owner still runs (:func:`owner_gone`) and stops itself the
way ``stream stop`` does (SIGTERM: a snapshot, then exit) when it does not: ``up``
killed by SIGKILL leaves nothing behind. A process started by hand
(``cryptopipe stream start``, ``feed ...``) has no owner and runs until stopped.
"""

from __future__ import annotations

import os

from streaming import proctable

#: ``<pid>:<start ticks>`` of the owning ``cryptopipe up``.
OWNER_ENV = "CRYPTOPIPE_OWNER"


def owner_token(pid: int | None = None) -> str:
    """This process's (or ``pid``'s) owner token: ``<pid>:<start ticks>``."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{proctable.start_ticks(pid) or '0'}"


def token_alive(token: str) -> bool:
    """Whether the process a token names still runs (the same process, not a new one)."""
    pid_text, _, ticks = token.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    return proctable.start_ticks(pid) == ticks and proctable.state(pid) not in (None, "Z")


def owner_gone(environ: dict[str, str] | None = None) -> bool:
    """Whether this process has an owner (:data:`OWNER_ENV`) that no longer runs."""
    token = (os.environ if environ is None else environ).get(OWNER_ENV, "")
    return bool(token) and not token_alive(token)
