"""One stack per Redis: the lease a running ``cryptopipe up`` holds on its Redis.

Two ``up`` against one Redis would run two feeds into one raw log and two
supervisors over one set of flows, each stopping what the other started. So ``up``
takes a lease first, before it touches anything: the key
:data:`redisstore.keys.STACK_KEY` holds, as JSON, who runs the stack (pid, host,
home, UI URL, start time and the owner token of :mod:`streaming.owner`), with a TTL
of :data:`LEASE_TTL_MS` that the holder renews every :data:`RENEW_EVERY_S`.

A second ``up`` finds the key and is refused within seconds, naming the holder,
and touches nothing. The lease is taken over only when its holder is gone: on the
same host, its owner token no longer names a live process (``up`` killed by
SIGKILL: the next ``up`` need not wait); on another host, the key expired.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from cryptopipe.errors import CommandError
from redisstore.conn import text
from redisstore.keys import STACK_KEY
from streaming.owner import owner_token, token_alive

log = logging.getLogger(__name__)

#: A lease not renewed for this long is free (its holder died on another host).
LEASE_TTL_MS = 15_000
#: How often the holder renews it.
RENEW_EVERY_S = 2.0

# Renew our lease; put it back if it vanished (a restarted Redis without our key);
# 0 when another holder has it.
_RENEW = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

# Replace the value only if it is still what we read (a takeover), or delete ours.
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) return 1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class StackBusyError(CommandError):
    """Another ``cryptopipe up`` holds this Redis."""


@dataclass(frozen=True)
class Holder:
    """Who holds the lease, as its JSON says."""

    pid: int
    host: str
    home: str
    ui: str
    started_at: str
    token: str
    spark: str = ""  # the warm Spark Connect server's sc:// URL, if up keeps one

    @classmethod
    def parse(cls, raw: bytes | str) -> Holder:
        """The holder from the key's value (unknown fields are ignored)."""
        try:
            data: dict[str, Any] = json.loads(text(raw))
        except ValueError:
            data = {}
        return cls(
            pid=int(data.get("pid", 0) or 0),
            host=str(data.get("host", "?")),
            home=str(data.get("home", "?")),
            ui=str(data.get("ui", "")),
            started_at=str(data.get("started_at", "?")),
            token=str(data.get("token", "")),
            spark=str(data.get("spark", "")),
        )

    def describe(self) -> str:
        """``pid P on host H, home X, UI U, since T``."""
        ui = f", UI {self.ui}" if self.ui else ""
        return f"pid {self.pid} on host {self.host}, home {self.home}{ui}, since {self.started_at}"

    def gone(self) -> bool:
        """Known dead: on this host, and its owner token names no live process."""
        return self.host == socket.gethostname() and not token_alive(self.token)


class StackLease:
    """The lease of one ``cryptopipe up`` on its Redis.

    Use :meth:`acquire` first, then :meth:`start_renewing`; :meth:`release` at the end.
    ``lost`` is set when the lease went to someone else (then this stack must stop).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        home: str,
        ui: str = "",
        spark: str = "",
        ttl_ms: int = LEASE_TTL_MS,
    ) -> None:
        self.client = client
        self.ttl_ms = ttl_ms
        token = owner_token()
        self.value = json.dumps(
            {
                "pid": int(token.split(":")[0]),
                "host": socket.gethostname(),
                "home": home,
                "ui": ui,
                "started_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
                "token": token,
                **({"spark": spark} if spark else {}),
            },
            sort_keys=True,
        )
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def acquire(self) -> Holder | None:
        """Take the lease; returns the holder taken over from (it was gone), if any.

        Raises:
            StackBusyError: another live ``up`` holds it (the message names it).

        """
        for _ in range(3):  # the holder may vanish between our reads
            if self.client.set(STACK_KEY, self.value, nx=True, px=self.ttl_ms):
                self.held = True
                return None
            raw = self.client.get(STACK_KEY)
            if raw is None:
                continue
            holder = Holder.parse(raw)
            if not holder.gone():
                msg = (
                    f"another cryptopipe up runs the stack on this Redis: {holder.describe()}. "
                    f"Stop it first (Ctrl-C in its terminal, or kill {holder.pid}), or give "
                    "this one another Redis (--redis-url)"
                )
                raise StackBusyError(msg, status=1)
            if self.client.eval(_SWAP, 1, STACK_KEY, raw, self.value, self.ttl_ms):
                log.warning("taking over from a stack that is gone: %s", holder.describe())
                self.held = True
                return holder
        msg = "could not take the stack lease on this Redis (it kept changing); try again"
        raise StackBusyError(msg, status=1)

    def renew(self) -> bool:
        """Renew once; False (and ``lost`` set) when someone else holds the lease."""
        if self.client.eval(_RENEW, 1, STACK_KEY, self.value, self.ttl_ms):
            return True
        raw = self.client.get(STACK_KEY)
        who = Holder.parse(raw).describe() if raw else "nobody"
        log.error("lost the stack lease on this Redis to %s", who)
        self.lost.set()
        return False

    def start_renewing(self) -> None:
        """Renew every :data:`RENEW_EVERY_S` in a daemon thread until :meth:`release`."""

        def run() -> None:
            while not self._stop.wait(RENEW_EVERY_S):
                try:
                    if not self.renew():
                        return
                except redis.RedisError as exc:  # Redis away: retried at the next tick
                    log.warning("could not renew the stack lease: %s", exc)

        self._thread = threading.Thread(target=run, name="stack-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and give the lease back (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held:
            try:
                self.client.eval(_SWAP, 1, STACK_KEY, self.value, "", 0)
            except redis.RedisError as exc:
                log.warning("could not release the stack lease (it expires by itself): %s", exc)
            self.held = False
