"""Dagster resources: thin, configurable handles on our own interfaces."""

import dagster as dg
import redis

from marketdata.settings import DEFAULT_REDIS_URL
from streaming.redisconn import connect


class RedisResource(dg.ConfigurableResource):
    """The Redis that holds the raw log and the speed layer's output.

    Attributes:
        url: ``redis://[user:pass@]host:port/db`` or ``rediss://``; from ``REDIS_URL``.

    """

    url: str = DEFAULT_REDIS_URL

    def client(self) -> redis.Redis:
        """A checked client (fails with one line saying what to do)."""
        return connect(self.url)
