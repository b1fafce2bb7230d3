"""Which bytewax worker runs a keyed step's key, so that a stream is read where it is folded.

bytewax sends every item of a keyed (stateful) step to worker ``hash(key) % workers``,
``hash`` being Rust's default hasher (SipHash-1-3 with zero keys) of the key string.
The source partitions, on the other hand, go to workers that list them, round robin.
A flow of several processes whose source read a stream in one process and folded it
in another would pickle every batch (10,000 entries, about 2.7 MB) across the
processes: two processes were slower than one. So each process lists only the
streams whose key its own workers fold (:func:`local_streams`): a batch never leaves
the process that read it, and the key of the stateful step stays the stream's name,
which keeps the recovery snapshots valid across a change of scale.

The cost: which process folds which stream follows the hash, not a balance; with
few shards a process may get none. :func:`placement` tells, and the flow logs it at
start (docs/scaling.md has the table for common shard and worker counts).

No bytewax import: the rule is bytewax's, written out here (tests check it against a
real multi-process flow: no batch crosses processes).
"""

from __future__ import annotations

from collections.abc import Iterable

_M = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M


def siphash(data: bytes, k0: int = 0, k1: int = 0, c: int = 1, d: int = 3) -> int:
    """SipHash-c-d of ``data`` (Rust's ``DefaultHasher`` is 1-3 with zero keys)."""
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573

    def rounds(n: int, v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
        for _ in range(n):
            v0 = (v0 + v1) & _M
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _M
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _M
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _M
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)
        return v0, v1, v2, v3

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = rounds(c, v0, v1, v2, v3)
        v0 ^= m
    last = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= last
    v0, v1, v2, v3 = rounds(c, v0, v1, v2, v3)
    v0 ^= last
    v2 ^= 0xFF
    v0, v1, v2, v3 = rounds(d, v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker (of ``workers`` in all) that bytewax gives ``key`` of a keyed step.

    Rust hashes a string as its bytes followed by ``0xFF``.
    """
    return siphash(key.encode() + b"\xff") % workers


def process_of(key: str, processes: int, workers_per_process: int) -> int:
    """The process whose worker folds ``key`` (worker *w* is in process ``w // workers``)."""
    return worker_of(key, processes * workers_per_process) // workers_per_process


def placement(
    streams: Iterable[str], processes: int, workers_per_process: int
) -> dict[int, list[str]]:
    """Process -> the streams it reads and folds (every process, even one with none)."""
    out: dict[int, list[str]] = {p: [] for p in range(processes)}
    for s in streams:
        out[process_of(s, processes, workers_per_process)].append(s)
    return out


def local_streams(
    streams: Iterable[str], process: int, processes: int, workers_per_process: int
) -> list[str]:
    """The streams process ``process`` should read (all of them in a one-process flow)."""
    streams = list(streams)
    if processes <= 1:
        return streams
    return placement(streams, processes, workers_per_process)[process]
