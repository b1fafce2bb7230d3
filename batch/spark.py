"""Building the SparkSession: configuration in, session out, lazily.

``spark.master`` comes from ``CRYPTOPIPE_SPARK_MASTER`` (default ``local[2]``), the
lake's location from :attr:`marketdata.settings.Settings.lake`. Extra Spark settings
can be given as ``CRYPTOPIPE_SPARK_CONF="key=value,key=value"``. Nothing starts a JVM
until :attr:`LazySpark.session` is first used.

A master of the form ``sc://host:port`` is a Spark Connect server (one of
:mod:`batch.connect_server`, or any other): the session is then a thin gRPC client
and this process starts no JVM at all. Only session-level settings (``spark.sql.*``)
can be given to a Connect session; the server's own (memory, cores) are the server's.

Spark's JVM runs at a lower CPU priority than the live path (:func:`lower_priority`,
niceness :data:`BATCH_NICENESS`): a batch run may take every core for minutes, and the
flows, the feeds and the Dagster runs that restart them must not wait behind it.

Two settings are not tuning but correctness, and are always set:
``spark.sql.decimalOperations.allowPrecisionLoss=false`` (otherwise Spark silently
drops fractional digits of wide decimal products, e.g. price x quantity) and ANSI
mode (overflow raises instead of producing NULL).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SPARK_MASTER_ENV = "CRYPTOPIPE_SPARK_MASTER"
SPARK_CONF_ENV = "CRYPTOPIPE_SPARK_CONF"
DEFAULT_SPARK_MASTER = "local[2]"
APP_NAME = "cryptopipe-batch"
#: A master URL of this scheme is a Spark Connect server.
CONNECT_SCHEME = "sc://"

#: The niceness of Spark's JVMs (the local driver, ``up``'s Connect server): 0 is the
#: default, 19 the lowest priority. The flows and feeds keep 0, so they come first.
BATCH_NICENESS = 10

#: Settings the batch job's exactness depends on.
REQUIRED_CONF: dict[str, str] = {
    "spark.sql.decimalOperations.allowPrecisionLoss": "false",
    "spark.sql.ansi.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
}

_LOG4J2 = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
# PySpark counts as a shell: Spark resets the root level to this logger's level.
logger.repl.name = org.apache.spark.repl.Main
logger.repl.level = error
"""


def _local_cores(master: str) -> int | None:
    if master == "local":
        return 1
    if master.startswith("local[") and master.endswith("]"):
        inner = master[6:-1].split(",")[0]
        return (os.cpu_count() or 1) if inner == "*" else int(inner)
    return None


def lower_priority(pid: int, niceness: int = BATCH_NICENESS) -> int:
    """Give every thread of process ``pid`` at least ``niceness``; how many were changed.

    Linux keeps a niceness per thread and a new thread takes its creator's, so a
    JVM already running is lowered thread by thread (``/proc/PID/task``); threads it
    starts later inherit it. A thread already nicer, or one that ends meanwhile, is
    left alone; nothing here raises.
    """
    changed = 0
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return 0
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
                changed += 1
        except OSError:  # ended meanwhile, or not ours to change
            continue
    return changed


def _lower_jvm_priority() -> None:
    """Lower the priority of this process's local Spark JVM (see :func:`lower_priority`)."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None) if gateway is not None else None
    if proc is not None:
        lower_priority(proc.pid)


def is_connect(master: str) -> bool:
    """Whether ``master`` names a Spark Connect server (``sc://host:port``)."""
    return master.startswith(CONNECT_SCHEME)


class ConnectUnavailableError(RuntimeError):
    """No Spark Connect server answers at the configured ``sc://`` URL."""


def parse_conf(text: str) -> dict[str, str]:
    """``"a=1,b=2"`` to ``{"a": "1", "b": "2"}``.

    Raises:
        ValueError: an item without ``=``.

    """
    out: dict[str, str] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            msg = f"{SPARK_CONF_ENV}: {item!r} is not key=value"
            raise ValueError(msg)
        out[key.strip()] = value.strip()
    return out


def default_conf(master: str) -> dict[str, str]:
    """Spark settings for ``master``: tuned for a small machine when local.

    Local mode gets few shuffle partitions (two per core: the day's trades are a
    few million rows, and every extra task costs more than it saves), 16 MiB input
    splits so that both cores get work from a handful of files, no web UI (no port
    clashes with other sessions on the machine) and no console progress bar.
    """
    conf = {
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        **REQUIRED_CONF,
    }
    cores = _local_cores(master)
    if cores is not None:
        conf.update(
            {
                "spark.sql.shuffle.partitions": str(max(2, 2 * cores)),
                "spark.default.parallelism": str(max(2, 2 * cores)),
                "spark.sql.files.maxPartitionBytes": str(16 << 20),
                "spark.ui.enabled": "false",
                "spark.driver.memory": "2g",
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.driver.extraJavaOptions": "-XX:+UseParallelGC",
            }
        )
    return conf


@dataclass(frozen=True)
class SparkConfig:
    """How to build the session.

    Attributes:
        master: ``spark.master`` (``local[2]``, ``spark://host:7077``, ``yarn``, ...).
        conf: extra settings, applied over the defaults (never over
            :data:`REQUIRED_CONF`).
        app_name: the application name.

    """

    master: str = DEFAULT_SPARK_MASTER
    conf: Mapping[str, str] = field(default_factory=dict)
    app_name: str = APP_NAME

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SparkConfig:
        """``CRYPTOPIPE_SPARK_MASTER`` and ``CRYPTOPIPE_SPARK_CONF``, else defaults."""
        e = os.environ if env is None else env
        master = (e.get(SPARK_MASTER_ENV) or "").strip() or DEFAULT_SPARK_MASTER
        return cls(master=master, conf=parse_conf(e.get(SPARK_CONF_ENV, "")))

    def resolved(self) -> dict[str, str]:
        """Every setting the session gets."""
        conf = default_conf(self.master)
        conf.update(self.conf)
        conf.update(REQUIRED_CONF)
        return conf


def log4j_file() -> str:
    """A log4j2 configuration file that keeps Spark at ERROR (written once per user)."""
    path = Path(tempfile.gettempdir()) / f"cryptopipe-spark-log4j2-{os.getuid()}.properties"
    if not path.exists() or path.read_text() != _LOG4J2:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(_LOG4J2)
        tmp.replace(path)
    return str(path)


def build_session(config: SparkConfig | None = None) -> SparkSession:
    """A SparkSession for ``config`` (or the environment's), created or reused.

    If a session already runs in this process (tests, Dagster), it is reused and
    the required settings are applied to it; settings that need a new JVM (master,
    memory) then stay as they were. An ``sc://`` master gives a Spark Connect
    session (:func:`connect_session`).
    """
    cfg = config or SparkConfig.from_env()
    if is_connect(cfg.master):
        return connect_session(cfg)
    from pyspark.sql import SparkSession

    conf = cfg.resolved()
    if _local_cores(cfg.master) is not None:
        opts = conf.get("spark.driver.extraJavaOptions", "")
        conf["spark.driver.extraJavaOptions"] = (
            f"{opts} -Dlog4j.configurationFile=file:{log4j_file()}".strip()
        )
    builder = SparkSession.builder.master(cfg.master).appName(cfg.app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    _lower_jvm_priority()
    for key, value in REQUIRED_CONF.items():
        session.conf.set(key, value)
    return session


def connect_session(config: SparkConfig) -> SparkSession:
    """A Spark Connect session on ``config.master`` (``sc://host:port``), settings applied.

    The session's own settings are the ``spark.sql.*`` ones of :meth:`SparkConfig.resolved`
    (the server owns the rest); :data:`REQUIRED_CONF` is set on the session and read back.

    Raises:
        ConnectUnavailableError: nothing answers at the URL (the message says what to do).

    """
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    msg = (
        f"no Spark Connect server answers at {config.master} ({SPARK_MASTER_ENV}): start "
        "one ('cryptopipe up --spark-connect' keeps one running, or pyspark's "
        "sbin/start-connect-server.sh), or unset the variable to run Spark in this "
        f"process ({DEFAULT_SPARK_MASTER})"
    )
    if not connect_answers(config.master):  # the client would retry for minutes
        raise ConnectUnavailableError(msg)
    builder = SparkSession.builder.remote(config.master).appName(config.app_name)
    for key, value in config.resolved().items():
        if key.startswith("spark.sql."):  # set in one request; static ones are skipped
            builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
        for key, value in REQUIRED_CONF.items():
            session.conf.set(key, value)
    except PySparkException as exc:
        if not _unavailable(exc):
            raise
        raise ConnectUnavailableError(msg) from None
    return session


def connect_address(master: str) -> tuple[str, int]:
    """``(host, port)`` of an ``sc://host[:port][/;params]`` URL (port 15002 by default)."""
    rest = master.removeprefix(CONNECT_SCHEME).split("/", 1)[0].split(";", 1)[0]
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    return host or "localhost", int(port) if port else 15002


def connect_answers(master: str, timeout: float = 5.0) -> bool:
    """Whether something accepts connections at an ``sc://`` URL's host and port."""
    try:
        with socket.create_connection(connect_address(master), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return any(s in text for s in ("UNAVAILABLE", "Connection refused", "failed to connect"))


class LazySpark:
    """A SparkSession built on first use (like dagster-pyspark's ``LazyPySparkResource``)."""

    def __init__(self, config: SparkConfig | None = None) -> None:
        self.config = config or SparkConfig.from_env()
        self._session: SparkSession | None = None

    @property
    def started(self) -> bool:
        """Whether the session has been built."""
        return self._session is not None

    @property
    def session(self) -> SparkSession:
        """The session, built now if needed."""
        if self._session is None:
            self._session = build_session(self.config)
        return self._session

    def stop(self) -> None:
        """Stop the session if this object built it."""
        if self._session is not None:
            self._session.stop()
            self._session = None


def check_exact_decimals(session: SparkSession) -> None:
    """Refuse to compute with a session that would round wide decimals.

    Raises:
        RuntimeError: naming the setting to fix.

    """
    for key, value in REQUIRED_CONF.items():
        actual = session.conf.get(key, None)
        if actual is None or actual.lower() != value.lower():
            msg = f"Spark setting {key}={actual!r}: the batch job needs {value!r} to stay exact"
            raise RuntimeError(msg)
