"""Progress of long commands on a terminal (tqdm), and none in pipes and logs."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from batch.daily import STAGES
from tests.batch.test_batch_job import csv_line, generate_trades
from tests.processes import ROOT, run_cryptopipe


def run_on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run ``cryptopipe ARGS`` with stderr on a pseudo-terminal: (status, stdout, terminal)."""
    master, slave = pty.openpty()
    # A terminal 200 columns wide (a new pseudo-terminal has none, and tqdm draws in 0).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cryptopipe", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    out = proc.stdout.read() if proc.stdout else ""
    return proc.wait(120), out, seen.decode(errors="replace")


@pytest.mark.slow
def test_import_and_batch_show_progress_on_a_terminal_only(tmp_path: Path) -> None:
    env = {**os.environ, "CRYPTOPIPE_HOME": str(tmp_path / "home")}
    trades = [t for t in generate_trades(5, per_key=300) if t.exchange == "binance"]
    path = tmp_path / "BTCUSDT-trades-2025-03-14.csv"
    path.write_bytes(b"\n".join(csv_line(t) for t in trades if t.symbol == "BTCUSDT") + b"\n")
    status, out, term = run_on_a_terminal(env, "lake", "import", str(path))
    assert status == 0 and "trades" in out, term
    # The file's bar: its name, the bytes read and the lines so far.
    assert f"{path.name}:" in term and "lines" in term and "B/s" in term, term

    status, out, term = run_on_a_terminal(env, "batch", "run", "--date", "2025-03-14")
    assert status == 0 and "sealed by import" in out, term
    assert "batch 2025-03-14" in term
    for stage in STAGES:  # each stage named as it begins, counted out of all of them
        assert stage in term, (stage, term)
    assert f"/{len(STAGES)}" in term

    # Not a terminal: the same commands print no progress at all.
    piped = run_cryptopipe(env, "batch", "run", "--date", "2025-03-14", timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert not any(stage in piped.stderr for stage in STAGES), piped.stderr
