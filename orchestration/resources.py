"""Dagster resources: thin, configurable handles on our own interfaces.

:class:`PipelineResource` is the one place that says which Redis and which home (lake,
pid files, logs) the pipeline uses; the others take it as a nested resource rather
than repeating ``redis_url`` and ``home``.
"""

from dataclasses import replace

import dagster as dg
import redis
from pydantic import PrivateAttr
from pyspark.sql import SparkSession

from batch.spark import DEFAULT_SPARK_MASTER, LazySpark, SparkConfig
from marketdata.settings import DEFAULT_HOME, DEFAULT_REDIS_URL, Settings
from redisstore.conn import connect
from streaming.supervisor import (
    FLOWS,
    MAX_RESTARTS,
    RESTART_WINDOW_S,
    STALE_AFTER_S,
    Supervisor,
)


class PipelineResource(dg.ConfigurableResource):
    """The pipeline's Redis and home, as every asset, sensor and job sees them.

    Attributes:
        redis_url: ``redis://[user:pass@]host:port/db`` or ``rediss://``; from
            ``REDIS_URL``.
        home: the pipeline's ``--home`` (``CRYPTOPIPE_HOME``): the lake lives there
            unless ``CRYPTOPIPE_LAKE_URI`` says otherwise, and the flows' pid files
            and logs.
    """

    redis_url: str = DEFAULT_REDIS_URL
    home: str = DEFAULT_HOME

    def settings(self) -> Settings:
        """The pipeline's settings (the environment fills in the rest)."""
        return Settings.from_env(redis_url=self.redis_url, home=self.home)

    def client(self) -> redis.Redis:
        """A checked Redis client (fails with one line saying what to do)."""
        return connect(self.redis_url)


class SparkResource(dg.ConfigurableResource):
    """PySpark, with the session built on first use (like ``LazyPySparkResource``).

    Attributes:
        master: ``spark.master`` (``CRYPTOPIPE_SPARK_MASTER``; default ``local[2]``):
            the same jobs run on a cluster given its URL.
    """

    master: str = DEFAULT_SPARK_MASTER
    _lazy: LazySpark | None = PrivateAttr(default=None)

    def session(self) -> SparkSession:
        """The session (built now if this run has none yet)."""
        if self._lazy is None:
            self._lazy = LazySpark(replace(SparkConfig.from_env(), master=self.master))
        return self._lazy.session

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Stop the session this run built."""
        if self._lazy is not None:
            self._lazy.stop()


class FlowSupervisorResource(dg.ConfigurableResource):
    """Starts, stops and inspects the long-running flows (OS processes outliving Dagster).

    Attributes:
        pipeline: the pipeline's Redis and home.
        flows: the flows and feed processes the health sensor watches; unset (the
            default): the flows and the feed processes ``cryptopipe up --feed`` asked
            for, read from Redis at each look (:meth:`watched`).
        stale_after_s: a heartbeat older than this is a stalled flow.
        max_restarts: more restarts than this inside ``window_s`` mark the flow failed.
        window_s: the crash-loop window.
    """

    pipeline: PipelineResource
    flows: list[str] | None = None
    stale_after_s: float = STALE_AFTER_S
    max_restarts: int = MAX_RESTARTS
    window_s: float = RESTART_WINDOW_S

    def watched(self, sup: Supervisor | None = None) -> list[str]:
        """What the health sensor watches (and ``all`` of the flow jobs means).

        ``flows`` when set, else the flows and :meth:`Supervisor.feed_processes`: the
        Dagster processes (webserver, daemon, run workers) learn which feeds run from
        Redis, where ``cryptopipe up`` put them.
        """
        if self.flows is not None:
            return list(self.flows)
        return [*FLOWS, *(sup or self.supervisor()).feed_processes()]

    def supervisor(self) -> Supervisor:
        """The supervisor for these settings."""
        return Supervisor(
            self.pipeline.settings(),
            self.pipeline.client(),
            stale_after_s=self.stale_after_s,
            max_restarts=self.max_restarts,
            window_s=self.window_s,
        )
