"""Opening Redis connections from a URL, with errors that say what to do."""

from __future__ import annotations

import logging
from typing import Any, cast

import redis
from redis.exceptions import RedisClusterException

from marketdata.settings import Settings
from redisstore.cluster import ClusterClient, primaries

log = logging.getLogger(__name__)

#: Every connection's defaults: a read that gets no answer for this long fails (a
#: half-open connection, a Redis that stopped answering) instead of hanging for ever;
#: no command of ours blocks on the server (XREAD is non-blocking), so none waits
#: this long when Redis is well.
SOCKET_TIMEOUT_S = 30.0
SOCKET_CONNECT_TIMEOUT_S = 5.0
#: TCP keep-alive on, and an idle connection is PINGed before reuse after this long.
HEALTH_CHECK_INTERVAL_S = 30


class RedisUnavailableError(RuntimeError):
    """No Redis answers at the configured URL."""


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to log)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def connect(
    url: str, *, check: bool = True, cluster: bool | None = None, **kwargs: Any
) -> redis.Redis:
    """A Redis client for ``url`` (``redis://`` or ``rediss://``), pinged when ``check``.

    A node of a Redis Cluster is detected (``INFO cluster``: ``cluster_enabled:1``)
    and gives a :class:`redisstore.cluster.ClusterClient` (a ``redis.cluster.RedisCluster``
    that serves the same commands), which finds the other nodes itself; any other
    Redis a plain ``redis.Redis``. ``cluster`` forces either (``False``: talk to that
    one node, e.g. while a cluster is being created). Without ``check``, a Redis that
    does not answer yet gives a plain client.

    Socket timeouts, TCP keep-alive and a health check on reuse are on unless
    ``kwargs`` say otherwise (:data:`SOCKET_TIMEOUT_S` and the rest).

    Raises:
        RedisUnavailableError: one line naming the URL (password redacted) and what to do.

    """
    kwargs.setdefault("socket_timeout", SOCKET_TIMEOUT_S)
    kwargs.setdefault("socket_connect_timeout", SOCKET_CONNECT_TIMEOUT_S)
    kwargs.setdefault("socket_keepalive", True)
    kwargs.setdefault("health_check_interval", HEALTH_CHECK_INTERVAL_S)
    try:
        client = redis.Redis.from_url(url, **kwargs)
    except ValueError as exc:
        msg = f"bad Redis URL {redact(url)!r}: {exc}; use redis://[user:pass@]host:port/db"
        raise RedisUnavailableError(msg) from None
    if check or cluster is None:
        try:
            client.ping()
            if cluster is None:
                cluster = _cluster_enabled(client)
        except redis.AuthenticationError as exc:
            if check:
                msg = (
                    f"Redis at {redact(url)} refused the credentials ({exc}); "
                    "check user and password"
                )
                raise RedisUnavailableError(msg) from None
        except redis.RedisError as exc:
            if check:
                msg = (
                    f"no Redis answers at {redact(url)} ({exc}); start one, or run "
                    "'cryptopipe up' to start a local one, or pass --redis-url / REDIS_URL"
                )
                raise RedisUnavailableError(msg) from None
    if not cluster:
        return client
    client.close()
    return _connect_cluster(url, kwargs)


def _cluster_enabled(client: redis.Redis) -> bool:
    """Whether the server is a node of a Redis Cluster (``INFO cluster``)."""
    try:
        info = client.info("cluster")
    except redis.ResponseError:  # INFO not allowed (a managed Redis): not a cluster node
        return False
    return bool(int(info.get("cluster_enabled", 0) or 0))


def _connect_cluster(url: str, kwargs: dict[str, Any]) -> redis.Redis:
    """A :class:`~redisstore.cluster.ClusterClient` from one node's URL."""
    try:
        client = ClusterClient.from_url(url, **kwargs)
    except (redis.RedisError, RedisClusterException, ValueError) as exc:
        msg = (
            f"Redis at {redact(url)} is a node of a Redis Cluster that is not ready ({exc}); "
            "check 'redis-cli -u URL cluster info' says cluster_state:ok (every slot "
            "served), or point --redis-url / REDIS_URL at another node"
        )
        raise RedisUnavailableError(msg) from None
    # The same commands as redis.Redis serves (redisstore.cluster says what differs).
    return cast(redis.Redis, client)


def connect_settings(settings: Settings, *, writer: bool = False, **kwargs: Any) -> redis.Redis:
    """A checked client for the settings' Redis; a ``writer`` also checks its eviction policy."""
    client = connect(settings.redis_url, **kwargs)
    if writer:
        require_noeviction(client, settings.redis_url)
    return client


#: The one ``maxmemory-policy`` under which Redis never drops our keys.
SAFE_POLICY = "noeviction"


def require_noeviction(client: redis.Redis, url: str) -> None:
    """Refuse a Redis that may evict keys to make room.

    Any policy but ``noeviction`` can drop the raw log, the dedupe sets or candles
    without a word (``volatile-*`` drop keys with a TTL: the live candles and the
    dedupe sets), which breaks "nothing lost in silence". A server that does not let
    us read its configuration (a managed Redis) is accepted with a warning.

    Raises:
        RedisUnavailableError: one line naming the policy and what to set.

    """
    for name, node in primaries(client).items():
        where = f"{redact(url)}, cluster node {name}," if name else redact(url)
        _require_noeviction_on(node, where)


def _require_noeviction_on(node: redis.Redis, where: str) -> None:
    """:func:`require_noeviction` for one server (each primary of a cluster)."""
    try:
        raw = node.config_get("maxmemory-policy")
    except redis.ResponseError as exc:
        log.warning(
            "cannot read maxmemory-policy of %s (%s); make sure it is noeviction", where, exc
        )
        return
    values = [text(v) for v in dict(raw or {}).values() if v is not None]
    policy = values[0] if values else SAFE_POLICY
    if policy != SAFE_POLICY:
        msg = (
            f"Redis at {where} has maxmemory-policy {policy}, which can evict the raw "
            "log, dedupe sets and candles without a word: set it to noeviction "
            "(CONFIG SET maxmemory-policy noeviction, and in redis.conf; on every "
            "primary of a cluster)"
        )
        raise RedisUnavailableError(msg)


def text(value: bytes | str | int | float) -> str:
    """A Redis reply value as ``str`` (replies are bytes unless decoding is on)."""
    return value.decode() if isinstance(value, bytes) else str(value)
