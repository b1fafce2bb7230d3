"""The stack's lease on its Redis (real redis-server): refused, taken over, renewed, released."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis

from cryptopipe.stack import StackBusyError, StackLease
from redisstore.keys import STACK_KEY
from streaming.owner import owner_token


def test_a_live_holder_refuses_and_release_frees(redis_client: redis.Redis) -> None:
    first = StackLease(redis_client, home="/a", ui="http://127.0.0.1:3000")
    assert first.acquire() is None
    assert 0 < redis_client.pttl(STACK_KEY) <= 15_000
    second = StackLease(redis_client, home="/b")
    with pytest.raises(StackBusyError) as exc:
        second.acquire()
    said = str(exc.value)
    assert "home /a, UI http://127.0.0.1:3000" in said and exc.value.status == 1
    second.release()  # never held: gives nothing back
    assert redis_client.exists(STACK_KEY)
    first.release()
    assert not redis_client.exists(STACK_KEY)
    assert second.acquire() is None


def test_a_dead_holder_on_this_host_is_taken_over(redis_client: redis.Redis) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(gone.stdout)
    dead = StackLease(redis_client, home="/dead")
    value = json.loads(dead.value) | {"pid": pid, "token": f"{pid}:1"}
    redis_client.set(STACK_KEY, json.dumps(value), px=15_000)
    lease = StackLease(redis_client, home="/new")
    holder = lease.acquire()
    assert holder is not None and holder.pid == pid and holder.home == "/dead"
    assert json.loads(redis_client.get(STACK_KEY))["token"] == owner_token()


def test_renew_puts_a_vanished_lease_back_and_sees_a_lost_one(redis_client: redis.Redis) -> None:
    lease = StackLease(redis_client, home="/a")
    lease.acquire()
    redis_client.delete(STACK_KEY)  # a Redis restarted without it
    assert lease.renew() and not lease.lost.is_set()
    assert json.loads(redis_client.get(STACK_KEY))["home"] == "/a"
    redis_client.set(STACK_KEY, json.dumps({"pid": 1, "host": "elsewhere", "home": "/x"}))
    assert not lease.renew() and lease.lost.is_set()
    lease.release()  # not ours any more: left alone
    assert json.loads(redis_client.get(STACK_KEY))["home"] == "/x"
