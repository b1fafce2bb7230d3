"""A recovery directory (pickled flow state) is loaded only if nobody else could write it."""

from __future__ import annotations

import pytest


def test_a_recovery_directory_others_can_write_is_refused(tmp_path) -> None:
    import os

    from cryptopipe.commands.stream import ensure_recovery_dir
    from cryptopipe.errors import CommandError

    rec = tmp_path / "recovery" / "candles"
    assert ensure_recovery_dir(rec, parts=1) is True
    os.chmod(rec, 0o755)  # readable by others: tightened
    assert ensure_recovery_dir(rec, parts=1) is False
    assert rec.stat().st_mode & 0o777 == 0o700
    part = next(rec.iterdir())
    os.chmod(part, 0o660)  # group-writable (umask 002): tightened
    assert ensure_recovery_dir(rec, parts=1) is False
    assert part.stat().st_mode & 0o777 == 0o600
    os.chmod(part, 0o666)  # writable by anyone: refused, saying what to do
    with pytest.raises(CommandError, match=r"not safe to load.*chmod -R go-rwx"):
        ensure_recovery_dir(rec, parts=1)
