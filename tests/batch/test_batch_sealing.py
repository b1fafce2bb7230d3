"""Sealing: batch run refuses a day that may still receive trades, unless forced."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import redis

from batch.dump_import import import_dump
from batch.sealing import (
    WatermarkUnavailableError,
    import_seal,
    parse_watermark,
    seal_status,
    seals_at,
)
from cryptopipe.cli import main
from cryptopipe.commands.batch import EXIT_UNSEALED
from cryptopipe.localredis import free_port
from lake.layout import Lake, SourceRange
from lake.writer import LakeWriter
from marketdata.timeutil import day_start_ms
from marketdata.trade import Trade
from redisstore.keys import ARCHIVE_WATERMARK_KEY

DAY = date(2025, 3, 14)
D0 = day_start_ms(DAY)
NEXT = D0 + 86_400_000


def archive_day(lake: Lake) -> None:
    trades = [
        Trade(
            exchange="binance",
            symbol="BTCUSDT",
            trade_id=i,
            price_e8=10**12,
            quantity_e8=10**6,
            event_time=D0 + i * 1000,
            is_buyer_maker=False,
        )
        for i in range(5)
    ]
    LakeWriter(lake, durable=False).write_trades(
        trades, [], SourceRange.stream("md:trades:raw", "1-0", "5-0")
    )


def import_day(lake: Lake, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"1,1.5,2,3,%d,true\n2,1.5,2,3,%d,false\n" % (D0 * 1000, D0 * 1000 + 5))
    import_dump(lake, path, symbol="BTCUSDT")


def never() -> int | None:
    raise AssertionError("the watermark must not be needed")


@pytest.mark.parametrize(
    ("watermark", "sealed"),
    [
        (None, False),
        (NEXT - 1, False),
        (NEXT + 4_999, False),  # inside the allowed lateness
        (NEXT + 5_000, True),  # D+1 00:00 + lateness: sealed
        (NEXT + 86_400_000, True),
    ],
)
def test_archive_watermark_seals_after_next_midnight_plus_lateness(
    tmp_path: Path, watermark: int | None, sealed: bool
) -> None:
    lake = Lake(tmp_path)
    archive_day(lake)
    st = seal_status(lake, DAY, lateness_ms=5_000, watermark=lambda: watermark)
    assert st.sealed is sealed
    assert st.seals_at_ms == seals_at(DAY, 5_000) == NEXT + 5_000
    assert st.by == ("watermark" if sealed else "")
    if watermark is None:
        assert ARCHIVE_WATERMARK_KEY in st.reason
    elif not sealed:
        assert "2025-03-15T00:00:05Z" in st.reason


def test_complete_daily_dumps_seal_without_redis(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    import_day(lake, tmp_path, "BTCUSDT-trades-2025-03-14.csv")
    st = seal_status(lake, DAY, lateness_ms=5_000, watermark=never)
    assert st.sealed and st.by == "import"


def test_imports_that_do_not_cover_the_day_need_the_watermark(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    import_day(lake, tmp_path, "BTCUSDT-trades-2025-03-14.csv")
    import_day(lake, tmp_path, "partial.csv")  # no day in the name: completeness unknown
    st = seal_status(lake, DAY, lateness_ms=5_000, watermark=lambda: None)
    assert not st.sealed and "partial" in st.reason
    assert seal_status(lake, DAY, lateness_ms=5_000, watermark=lambda: NEXT + 5_000).sealed


def test_archived_files_beside_a_dump_need_the_watermark(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    import_day(lake, tmp_path, "BTCUSDT-trades-2025-03-14.csv")
    archive_day(lake)
    ok, why = import_seal(lake, DAY)
    assert not ok and "1 of its trade files come from the archive flow" in why
    st = seal_status(lake, DAY, lateness_ms=5_000, watermark=lambda: NEXT)
    assert not st.sealed and "watermark is at 2025-03-15T00:00:00Z" in st.reason


def test_unreadable_watermark_is_not_sealed(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    archive_day(lake)

    def down() -> int | None:
        raise WatermarkUnavailableError("no Redis answers")

    st = seal_status(lake, DAY, lateness_ms=5_000, watermark=down)
    assert not st.sealed and "no Redis answers" in st.reason
    assert parse_watermark(b"123") == 123 and parse_watermark(None) is None
    with pytest.raises(WatermarkUnavailableError):
        parse_watermark(b"soon")


def test_cli_refuses_an_unsealed_day_and_says_how_to_force(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    archive_day(Lake(home / "lake"))
    argv = ["batch", "run", "--date", "2025-03-14", "--home", str(home), "--redis-url", redis_url]
    assert main(argv) == EXIT_UNSEALED
    err = capsys.readouterr().err
    assert "2025-03-14 is not sealed" in err and "--force" in err
    assert ARCHIVE_WATERMARK_KEY in err
    redis_client.set(ARCHIVE_WATERMARK_KEY, NEXT + 1_000)
    assert main(argv) == EXIT_UNSEALED
    assert "2025-03-15T00:00:01Z" in capsys.readouterr().err


def test_cli_without_redis_explains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    archive_day(Lake(home / "lake"))
    url = f"redis://127.0.0.1:{free_port()}/0"
    argv = ["batch", "run", "--date", "2025-03-14", "--home", str(home), "--redis-url", url]
    assert main(argv) == EXIT_UNSEALED
    err = capsys.readouterr().err
    assert "watermark is unknown" in err and "--force" in err
