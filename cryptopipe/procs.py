"""Child processes that a command starts and must stop on exit."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from streaming import proctable

log = logging.getLogger(__name__)


@dataclass
class Child:
    """A named child process with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In the child: ``sig`` when the parent dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


def killed_with_parent() -> None:
    """In the child: SIGKILL when the parent dies (it shares the parent's fate)."""
    die_with_parent(signal.SIGKILL)


@dataclass
class ProcessGroup:
    """Starts children in their own sessions and stops them all, newest first.

    Attributes:
        log_dir: each child's output goes to ``<log_dir>/<name>.log``.
        env: the children's base environment (default: this process's).
        cwd: the children's working directory (default: this process's).
        die_with_parent: children get SIGTERM when this process dies, even by
            SIGKILL (Linux), for harnesses that must not leave processes behind.

    """

    log_dir: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    die_with_parent: bool = False
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        """Start ``argv`` with output to ``<log_dir>/<name>.log``; ``env`` is added."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        base = os.environ if self.env is None else self.env
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**base, **(env or {})},
                start_new_session=True,
                preexec_fn=die_with_parent if self.die_with_parent else None,
            )
        child = Child(name, proc, log_path, list(argv), dict(env or {}))
        self.children.append(child)
        log.info("started %s (pid %d), log %s", name, proc.pid, log_path)
        return child

    def child(self, name: str) -> Child:
        """The child started as ``name`` (the newest, if several)."""
        return next(c for c in reversed(self.children) if c.name == name)

    def restart(self, name: str) -> Child:
        """Start ``name`` again as it was started (after it exited); the new child.

        Whatever is left of the old one's process group is stopped first.
        """
        old = self.child(name)
        self._stop([old], timeout=5.0)
        at = self.children.index(old)
        self.children.remove(old)
        new = self.start(name, old.argv, old.env)
        self.children.remove(new)
        self.children.insert(at, new)  # keep the stop order (newest first) as it was
        return new

    def stop(self, name: str, timeout: float = 15.0) -> int:
        """Stop one child as :meth:`stop_all` does; its exit code."""
        child = self.child(name)
        self._stop([child], timeout)
        return child.proc.returncode

    def stop_all(self, timeout: float = 15.0) -> None:
        """SIGTERM every child's process group, then SIGKILL what is left after ``timeout``."""
        self._stop(list(reversed(self.children)), timeout)
        self.children.clear()

    def _stop(self, children: list[Child], timeout: float) -> None:
        # Each child leads its own process group (its own session): stopping it means
        # stopping the whole group, whose other members (Dagster's code server, a
        # flow's workers) may outlive the leader. SIGTERM all first so they stop in
        # parallel, then wait for each group in turn and SIGKILL what is left.
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            remaining = max(0.1, deadline - time.monotonic())
            proctable.terminate_group(child.proc.pid, remaining, also_alive=child.alive)
            if proctable.group_members(child.proc.pid) or child.proc.poll() is None:
                log.warning("%s is still there after SIGKILL", child.name)
