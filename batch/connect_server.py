"""A local Spark Connect server, as a process we own: start, wait until it answers, stop.

The pyspark wheel ships the server (``jars/spark-connect_*.jar``) and
``bin/spark-submit``; :class:`ConnectServer` runs
``spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer``
in the foreground, in its own session, with the batch layer's local settings
(:func:`batch.spark.default_conf`: shuffle partitions, memory, no UI) and the gRPC
port on 127.0.0.1, its output in a log file. A ``batch run`` given
``CRYPTOPIPE_SPARK_MASTER=sc://127.0.0.1:PORT`` (:attr:`ConnectServer.url`) then
starts no JVM and finds one that is already warm.

``cryptopipe up --spark-connect`` keeps one running for Dagster's batch runs; the
tests start their own.

A fresh server's first job is about twice as slow as the next ones (its JIT, and
Spark compiling the job's generated code, which it then keeps by the code's text):
:func:`warm_up` runs the daily job once on a small generated day, in a throw-away
lake, so that the first real run finds the server warm. It runs in a process of its
own (``python -m batch.connect_server warm-up URL``: :func:`warm_up_argv`), since a
process that once opened a Connect session stays in Connect mode.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from batch.spark import APP_NAME, BATCH_NICENESS, SparkConfig, log4j_file

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
#: Spark Connect's own default port.
DEFAULT_PORT = 15002
#: How long :meth:`ConnectServer.start` waits for the port to answer.
START_TIMEOUT_S = 120.0


class ConnectServerError(RuntimeError):
    """The server could not be started (the message says why and what to do)."""


def spark_home() -> Path:
    """The pyspark distribution (its ``bin/`` and ``jars/``)."""
    import pyspark

    return Path(pyspark.__file__).parent


def java_missing() -> str | None:
    """Why no Java can run the server, or None when one can."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return None
    if shutil.which("java"):
        return None
    return (
        "no Java runtime: Spark needs Java 17 or 21 ('./dev setup' installs it; or "
        "apt-get install openjdk-17-jre-headless, or set JAVA_HOME)"
    )


def server_argv(
    port: int, master: str = "local[2]", conf: Mapping[str, str] | None = None
) -> list[str]:
    """The command that runs the server in the foreground on ``127.0.0.1:port``."""
    settings = {
        **SparkConfig(master=master, conf=dict(conf or {})).resolved(),
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.connect.grpc.port.maxRetries": "0",  # our port or nothing
    }
    opts = settings.get("spark.driver.extraJavaOptions", "")
    settings["spark.driver.extraJavaOptions"] = (
        f"{opts} -Dlog4j.configurationFile=file:{log4j_file()}".strip()
    )
    memory = settings.pop("spark.driver.memory", None)
    argv = [str(spark_home() / "bin" / "spark-submit"), "--class", SERVER_CLASS]
    argv += ["--name", f"{APP_NAME}-connect", "--master", master]
    if memory:
        argv += ["--driver-memory", memory]  # the driver JVM's own heap: before it starts
    for key, value in settings.items():
        argv += ["--conf", f"{key}={value}"]
    return argv


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


class ConnectServer:
    """One local Spark Connect server process.

    Attributes:
        port: its gRPC port on 127.0.0.1.
        log_path: where its output goes.
        master: the server's own ``spark.master`` (default ``local[2]``).

    """

    def __init__(
        self,
        port: int,
        log_path: Path,
        *,
        master: str = "local[2]",
        conf: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.port = port
        self.log_path = log_path
        self.master = master
        self.conf = dict(conf or {})
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``sc://127.0.0.1:PORT``: what ``CRYPTOPIPE_SPARK_MASTER`` takes."""
        return f"sc://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's pid (it leads its own process group), if started."""
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def check_startable(self) -> None:
        """Raise :class:`ConnectServerError` when it cannot start: no Java, port taken."""
        why = java_missing()
        if why:
            raise ConnectServerError(f"cannot start a Spark Connect server: {why}")
        if port_answers(self.port):
            msg = f"port {self.port} is taken: give the Spark Connect server another one"
            raise ConnectServerError(msg)

    def argv(self) -> list[str]:
        """Its command line (:func:`server_argv`)."""
        return server_argv(self.port, self.master, self.conf)

    def env(self) -> dict[str, str]:
        """The variables it needs on top of the caller's environment."""
        return {
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(self.log_path.parent),
        }

    def wait_ready(
        self,
        alive: Callable[[], bool],
        stopping: Callable[[], bool] = lambda: False,
        timeout: float = START_TIMEOUT_S,
    ) -> bool:
        """Wait until its port answers; False when ``alive()`` turns false, on timeout or stop."""
        deadline = time.monotonic() + timeout
        while not port_answers(self.port):
            if not alive() or stopping() or time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
        return True

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start it as a child of this process and wait until its port answers.

        Raises:
            ConnectServerError: no Java, the port is taken, or the server exited or did
                not answer within ``timeout`` (the log's end is in the message).

        """
        self.check_startable()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env()}
        env.pop("SPARK_CONNECT_MODE_ENABLED", None)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.log_path.parent,
                start_new_session=True,
                preexec_fn=self._in_child,
            )
        if not self.wait_ready(self.alive, timeout=timeout):
            code = self.proc.poll()
            self.stop()
            what = f"exited with status {code}" if code is not None else "did not answer"
            msg = (
                f"the Spark Connect server {what} (port {self.port}); its log "
                f"{self.log_path} ends:\n{self.log_tail()}"
            )
            raise ConnectServerError(msg)

    def _in_child(self) -> None:
        """Before the server's ``exec``: batch priority (:data:`BATCH_NICENESS`), then ours."""
        os.nice(BATCH_NICENESS)
        if self.preexec_fn is not None:
            self.preexec_fn()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM its process group, SIGKILL after ``timeout``; idempotent."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def warm_up(self, timeout: float = 300.0) -> None:
        """Run :func:`warm_up` against it in a child process and wait (errors are raised).

        Raises:
            ConnectServerError: the warm-up failed (its output is in the message).

        """
        out = subprocess.run(
            warm_up_argv(self.url), capture_output=True, text=True, timeout=timeout, check=False
        )
        if out.returncode != 0:
            msg = f"the warm-up of the Spark Connect server failed:\n{out.stderr[-2000:]}"
            raise ConnectServerError(msg)

    def __enter__(self) -> ConnectServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def warm_up_argv(url: str) -> list[str]:
    """The command that warms the server at ``url`` up (:func:`warm_up`) and exits."""
    return [sys.executable, "-m", "batch.connect_server", "warm-up", url]


def warm_up(url: str, trades_per_symbol: int = 100_000) -> float:
    """The daily job once through ``url`` on a generated day in a temporary lake; seconds.

    The day is imported-like (every file with its trade-id index, no duplicates), as
    the lake's days usually are, so the job takes the same path as the real ones.
    """
    from batch.daily import run_batch_day
    from batch.spark import SparkConfig, build_session
    from lake.layout import Lake, SourceRange
    from lake.writer import LakeWriter
    from marketdata.simulator import SimConfig, simulate

    started = time.monotonic()
    cfg = SimConfig(
        symbols=("WARMUSDT", "UPUSDT"),
        rate=2 * trades_per_symbol / 86_400,
        duration_s=86_400.0,
        seed=1,
    )
    trades = [m.trade for m in simulate(cfg) if m.trade is not None]
    with tempfile.TemporaryDirectory(prefix="cryptopipe-warm-up-") as tmp:
        lake = Lake(Path(tmp) / "lake")
        source = SourceRange.rows("warm-up", 1, len(trades))
        LakeWriter(lake, durable=False).write_trades(trades, [], source)
        session = build_session(SparkConfig(master=url))
        try:
            run_batch_day(session, lake, datetime.fromtimestamp(cfg.start_ms / 1000, UTC).date())
        finally:
            session.stop()
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    """``python -m batch.connect_server warm-up sc://HOST:PORT``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "warm-up":
        print("usage: python -m batch.connect_server warm-up sc://HOST:PORT", file=sys.stderr)
        return 2
    print(f"warm-up of {args[1]}: {warm_up(args[1]):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
