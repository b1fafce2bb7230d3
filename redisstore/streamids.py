"""Redis stream entry ids (``<ms>-<seq>``): one place to read and write them."""

from __future__ import annotations


def id_ms(entry_id: bytes | str) -> int:
    """Millisecond part of a stream id (``b"1741910400000-3"`` -> 1741910400000).

    The arrival clock of the speed layer; called once per entry, so it slices bytes
    rather than going through :func:`parse_id`.
    """
    if isinstance(entry_id, str):
        entry_id = entry_id.encode()
    return int(entry_id[: entry_id.index(b"-")])


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    """A stream id as ``(ms, seq)``, for comparisons (``"5"`` is ``(5, 0)``)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def join_id(ms: int, seq: int) -> bytes:
    """``(ms, seq)`` as a stream id."""
    return f"{ms}-{seq}".encode()
