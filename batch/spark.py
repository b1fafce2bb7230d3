"""Building the SparkSession: configuration in, session out, lazily.

``spark.master`` comes from ``CRYPTOPIPE_SPARK_MASTER`` (default ``local[2]``), the
lake's location from :attr:`marketdata.settings.Settings.lake`. Extra Spark settings
can be given as ``CRYPTOPIPE_SPARK_CONF="key=value,key=value"``. Nothing starts a JVM
until :attr:`LazySpark.session` is first used.

Two settings are not tuning but correctness, and are always set:
``spark.sql.decimalOperations.allowPrecisionLoss=false`` (otherwise Spark silently
drops fractional digits of wide decimal products, e.g. price x quantity) and ANSI
mode (overflow raises instead of producing NULL).
"""

from __future__ import annotations

import os
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


def _log4j_file() -> str:
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
    memory) then stay as they were.
    """
    from pyspark.sql import SparkSession

    cfg = config or SparkConfig.from_env()
    conf = cfg.resolved()
    if _local_cores(cfg.master) is not None:
        opts = conf.get("spark.driver.extraJavaOptions", "")
        conf["spark.driver.extraJavaOptions"] = (
            f"{opts} -Dlog4j.configurationFile=file:{_log4j_file()}".strip()
        )
    builder = SparkSession.builder.master(cfg.master).appName(cfg.app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    for key, value in REQUIRED_CONF.items():
        session.conf.set(key, value)
    return session


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
