"""Where bytewax folds a stream's key (pure); the flows' multi-process tests check it live."""

from __future__ import annotations

import pytest

from redisstore.keys import raw_stream_names
from streaming.placement import local_streams, placement, siphash, worker_of


def test_siphash_is_siphash() -> None:
    # The reference vectors of SipHash-2-4 (key 00..0f): the rounds are the same code.
    k0 = int.from_bytes(bytes(range(8)), "little")
    k1 = int.from_bytes(bytes(range(8, 16)), "little")
    assert siphash(b"", k0, k1, 2, 4) == 0x726FDB47DD0E0E31
    assert siphash(bytes(range(15)), k0, k1, 2, 4) == 0xA129CA6149BE45E5
    assert siphash(bytes(range(8)), k0, k1, 2, 4) == 0x93F5F5799A932462


@pytest.mark.parametrize(("processes", "workers"), [(1, 1), (2, 1), (2, 2), (3, 2), (4, 4)])
def test_every_stream_is_read_by_exactly_the_process_that_folds_it(
    processes: int, workers: int
) -> None:
    streams = raw_stream_names(16)
    where = placement(streams, processes, workers)
    assert sorted(s for v in where.values() for s in v) == sorted(streams)
    for p in range(processes):
        local = local_streams(streams, p, processes, workers)
        assert local == where[p]
        assert all(worker_of(s, processes * workers) // workers == p for s in local)


def test_one_process_reads_every_stream() -> None:
    assert local_streams(["a", "b"], 0, 1, 8) == ["a", "b"]
