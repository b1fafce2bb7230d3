"""The field-count limit of raw-log entries, at the boundary, in the shared parser."""

from __future__ import annotations

from marketdata.rawmessage import MAX_ENTRY_FIELDS, ProgressMark, RawMessage
from marketdata.trade import Trade
from streaming.fastparse import FastParser

PAYLOAD = (
    b'{"e":"trade","E":1741946400001,"s":"BTCUSDT","t":7,"p":"96000.01000000",'
    b'"q":"0.00100000","T":1741946400000,"m":false,"M":true}'
)


def entry(head: dict[bytes, bytes], total_fields: int) -> list[bytes]:
    flat = [x for kv in head.items() for x in kv]
    for i in range(total_fields - len(head)):
        flat += [f"x{i}".encode(), b"1"]
    return flat


def test_at_the_limit_a_trade_is_read_one_more_field_is_rejected() -> None:
    head = RawMessage(PAYLOAD, "binance", 1741946400002).to_fields()
    at = FastParser().parse_batch([entry(head, MAX_ENTRY_FIELDS)])
    assert not at.rejects
    assert at.trades()[0].trade_id == 7
    over = FastParser().parse_batch([entry(head, MAX_ENTRY_FIELDS + 1), entry(head, 3)])
    assert [(i, r.reason, r.payload, r.exchange) for i, r, _ in over.rejects] == [
        (0, "too_many_fields", PAYLOAD, "binance")
    ]
    assert f"{MAX_ENTRY_FIELDS + 1} fields" in over.rejects[0][1].detail
    assert over.idx == [1]
    assert isinstance(over.trades()[0], Trade)


def test_an_oversized_entry_led_by_a_mark_is_rejected_and_real_marks_kept() -> None:
    mark = ProgressMark("binance", 1741946400000, 1741946400001).to_fields()
    batch = FastParser().parse_batch([entry(mark, MAX_ENTRY_FIELDS + 1), entry(mark, 3)])
    assert [(i, r.reason) for i, r, _ in batch.rejects] == [(0, "too_many_fields")]
    assert [i for i, _ in batch.marks] == [1]
