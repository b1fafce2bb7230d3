"""What a test that started ``cryptopipe`` processes checks they left behind."""

from __future__ import annotations

import subprocess
import time


def leftovers(pattern: str, grace_s: float = 15.0) -> str:
    """``ps`` lines of processes whose command line matches ``pattern`` (``pgrep -f``).

    Processes still exiting get ``grace_s`` seconds; an empty string means none is left.
    """
    deadline = time.monotonic() + grace_s
    while True:
        found = subprocess.run(
            ["pgrep", "-f", pattern], capture_output=True, text=True, check=False
        ).stdout.split()
        ps = ""
        if found:
            ps = subprocess.run(
                ["ps", "-o", "pid,ppid,pgid,stat,etime,cmd", "-p", ",".join(found)],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            ps = ps if len(ps.splitlines()) > 1 else ""
        if not ps or time.monotonic() >= deadline:
            return ps
        time.sleep(0.5)
