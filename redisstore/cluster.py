"""Redis Cluster: the client :func:`redisstore.conn.connect` returns for a cluster node.

Code elsewhere does not care whether it got a plain ``redis.Redis`` or a
:class:`ClusterClient`: both serve the same commands, and every multi-key operation of
ours keeps its keys in one slot (the ``{...}`` hash tags of :mod:`redisstore.keys`).
Three things differ, and are handled here:

* pipelines: ``pipeline()`` is transactional by default, as ``redis.Redis``'s is (a
  ``MULTI`` must then touch one slot, or it fails loudly; its replies come back
  unparsed, ``b"OK"`` for ``True``); a non-transactional one is
  split per node by redis-py. A registered Lua script run in a pipeline is sent as
  ``EVAL`` with its text: a cluster pipeline has no ``SCRIPT LOAD`` step, and a node
  that never saw the script (or restarted) would answer ``NOSCRIPT``;
* what is per node (``CONFIG GET``, ``INFO``, ``SCAN``): :func:`primaries` gives a
  client of each primary; redis-py's own ``scan_iter`` already scans every primary;
* a dedicated connection to the node that serves one key (the stream source's):
  :func:`node_connection`.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    TryAgainError,
)

log = logging.getLogger(__name__)

#: Replies that mean "this node does not serve the key now" (a failover, a resharding).
REDIRECTS = (MovedError, AskError, ClusterDownError, TryAgainError)


class ClusterClient(RedisCluster):
    """A ``RedisCluster`` that behaves like ``redis.Redis`` where our code relies on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: sha -> text of every script registered on this client (run as EVAL in pipelines)
        self.script_texts: dict[str, Any] = {}

    def register_script(self, script: Any) -> Any:
        """``redis.Redis.register_script``, remembering the text for pipelines."""
        registered = super().register_script(script)
        self.script_texts[registered.sha] = script
        return registered

    def pipeline(self, transaction: Any = True, shard_hint: Any = None) -> Any:
        """A pipeline: transactional unless ``transaction=False``, as ``redis.Redis``'s.

        A transaction must keep every key in one slot (redis-py raises
        ``CrossSlotTransactionError`` otherwise); a non-transactional pipeline is sent
        to each node with that node's commands, results in the order queued.
        """
        pipe = super().pipeline(transaction=bool(transaction), shard_hint=shard_hint)
        texts = self.script_texts

        def evalsha(sha: str, numkeys: int, *keys_and_args: Any) -> Any:
            text = texts.get(sha)
            if text is None:
                return pipe.execute_command("EVALSHA", sha, numkeys, *keys_and_args)
            return pipe.execute_command("EVAL", text, numkeys, *keys_and_args)

        pipe.evalsha = evalsha  # what redis-py's Script calls on a pipeline
        return pipe


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    return isinstance(client, RedisCluster)


def primaries(client: redis.Redis) -> dict[str, redis.Redis]:
    """A client of each primary by ``host:port``; of a plain Redis, ``{"": client}``."""
    if not is_cluster(client):
        return {"": client}
    cluster = cast(RedisCluster, client)
    return {n.name: cluster.get_redis_connection(n) for n in cluster.get_primaries()}


class _FollowSlot:
    """Mixin of a connection class: connects to whichever node serves ``key`` right now.

    Each (re)connect asks the cluster client which primary serves the key's slot (and
    refreshes the cluster's slot map first when the last connection was redirected or
    failed). A redirect reply (``MOVED``, ``ASK``, ``CLUSTERDOWN``, ``TRYAGAIN``) is
    raised as a ``redis.ConnectionError`` after dropping the connection: callers that
    ride out outages (the stream source) then simply connect again, to the new node.
    """

    def __init__(self, *, cluster: RedisCluster, slot_key: str, **kwargs: Any) -> None:
        self._cluster = cluster
        self._slot_key = slot_key
        self._stale = False
        super().__init__(**kwargs)

    def _follow(self) -> None:
        """Point this (unconnected) connection at the node that serves the key now."""
        if self._stale:
            try:
                self._cluster.nodes_manager.initialize()
            except (redis.RedisError, RedisClusterException) as exc:  # keep the old map
                log.warning("%s: cannot refresh the cluster's slots (%s)", self._slot_key, exc)
            self._stale = False
        try:
            node = self._cluster.get_node_from_key(self._slot_key)
        except RedisClusterException as exc:  # the slot map has a hole: a failover
            self._stale = True
            msg = f"no node serves {self._slot_key} right now ({exc})"
            raise redis.ConnectionError(msg) from exc
        self.host, self.port = node.host, node.port

    def connect(self) -> None:
        if getattr(self, "_sock", None) is None:
            self._follow()
        try:
            super().connect()  # type: ignore[misc]
        except redis.ConnectionError:
            self._stale = True
            raise

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        # what redis-py calls before sending on a connection (redis-py >= 6)
        if getattr(self, "_sock", None) is None:
            self._follow()
        try:
            super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except redis.ConnectionError:
            self._stale = True
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except REDIRECTS as exc:
            self._stale = True
            self.disconnect()  # type: ignore[attr-defined]
            msg = f"{self._slot_key} is served by another node now ({exc}); reconnecting"
            raise redis.ConnectionError(msg) from exc
        except redis.ConnectionError:
            self._stale = True
            raise


def node_connection(client: redis.Redis, key: str) -> redis.Redis:
    """A plain ``redis.Redis`` whose connections go to the node serving ``key``'s slot.

    For a plain Redis, ``client`` itself. For a cluster, a client of the primary that
    serves the key, which follows the key when the slot moves or its node fails (see
    :class:`_FollowSlot`); closing it closes ``client`` too. Only commands on keys of
    that slot (and keyless ones: ``TIME``, ``MULTI``) belong on it.
    """
    if not is_cluster(client):
        return client
    cluster = cast(RedisCluster, client)
    node = cluster.get_node_from_key(key)
    template = cluster.get_redis_connection(node).connection_pool
    base = template.connection_class
    follow = type(f"FollowSlot{base.__name__}", (_FollowSlot, base), {})
    kwargs = {**template.connection_kwargs, "cluster": cluster, "slot_key": key}
    pool = redis.ConnectionPool(connection_class=follow, **kwargs)
    return _NodeClient(cluster, connection_pool=pool)


class _NodeClient(redis.Redis):
    """The client :func:`node_connection` returns; closing it closes the cluster client."""

    def __init__(self, cluster: RedisCluster, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cluster = cluster

    def close(self) -> None:
        super().close()
        self._cluster.close()
