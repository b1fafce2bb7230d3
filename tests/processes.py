"""Running ``cryptopipe`` from tests, and what a test that started its processes left behind."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cryptopipe(
    env: Mapping[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m cryptopipe ARGS`` from the repository's root, its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "cryptopipe", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cryptopipe_ok(env: Mapping[str, str], *args: str, timeout: float = 300) -> str:
    """:func:`run_cryptopipe` that must exit 0: its stdout (the failure shows stderr's end)."""
    out = run_cryptopipe(env, *args, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


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


def log_tails(home: Path, lines: int = 25) -> str:
    """The end of every log ``up`` and the flows wrote (what a timeout shows)."""
    out = []
    for path in sorted((home / "run" / "logs").glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(tail))
    return "\n".join(out)
