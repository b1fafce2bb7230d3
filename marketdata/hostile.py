"""Hostile raw messages with known outcomes, for fault injection and robustness tests.

:func:`hostile_messages` yields ``(payload, expected)`` pairs, where ``expected`` is
either ``"trade"`` (the message is valid, however odd: microsecond timestamps,
extra fields, combined-stream envelopes) or the exact rejection reason the parser
must give. Deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

from marketdata.decimals import format_e8
from marketdata.parsing import MAX_PAYLOAD_BYTES

T0 = 1_741_910_400_000

Case = tuple[bytes, str]


def _base(rng: random.Random, tid: int) -> dict[str, Any]:
    return {
        "e": "trade",
        "E": T0 + tid,
        "s": rng.choice(("BTCUSDT", "ETHUSDT", "SOLUSDT")),
        "t": tid,
        "p": format_e8(rng.randrange(1, 10**13)),
        "q": format_e8(rng.randrange(1, 10**11)),
        "T": T0 + tid,
        "m": rng.random() < 0.5,
        "M": True,
    }


def _dump(d: dict[str, Any]) -> bytes:
    return json.dumps(d, allow_nan=True).encode()


_FIELDS = {
    "s": "symbol",
    "t": "trade_id",
    "p": "price",
    "q": "quantity",
    "T": "event_time",
    "m": "is_buyer_maker",
}


def _valid(rng: random.Random, d: dict[str, Any]) -> Case:
    variant = rng.randrange(4)
    if variant == 1:
        d["T"] = d["T"] * 1000 + rng.randrange(1000)  # µs, floored to ms
    elif variant == 2:
        d["extra"] = {"nested": [1, 2, {"x": None}]}
    elif variant == 3:
        return json.dumps({"stream": "x@trade", "data": d}).encode(), "trade"
    return _dump(d), "trade"


def _truncated(rng: random.Random, d: dict[str, Any]) -> Case:
    raw = _dump(d)
    return raw[: rng.randrange(0, len(raw) - 1)], "malformed_json"


def _garbage(rng: random.Random, d: dict[str, Any]) -> Case:
    return rng.choice([b"", b"null", b"[]", b"42", b'"trade"', b"{,}", b"{'p': 1}"]), (
        "malformed_json"
    )


def _non_utf8(rng: random.Random, d: dict[str, Any]) -> Case:
    raw = bytearray(_dump(d))
    raw[rng.randrange(len(raw))] = rng.choice((0xFF, 0xFE, 0xC0, 0x80))
    return bytes(raw), "malformed_json"


def _nan_literal(rng: random.Random, d: dict[str, Any]) -> Case:
    key = rng.choice(("p", "q"))
    d[key] = rng.choice((float("nan"), float("inf"), float("-inf")))
    return _dump(d), "malformed_json"  # bare NaN/Infinity are not JSON


def _nan_string(rng: random.Random, d: dict[str, Any]) -> Case:
    key = rng.choice(("p", "q"))
    d[key] = rng.choice(("NaN", "nan", "Infinity", "-Infinity", "inf", "sNaN"))
    return _dump(d), f"bad_number:{_FIELDS[key]}"


def _exponent(rng: random.Random, d: dict[str, Any]) -> Case:
    key = rng.choice(("p", "q"))
    d[key] = rng.choice(("1e5", "1E-3", "2.5e+2", "0e0"))
    return _dump(d), f"bad_number:{_FIELDS[key]}"


def _underscore(rng: random.Random, d: dict[str, Any]) -> Case:
    key = rng.choice(("p", "q"))
    d[key] = rng.choice(("1_000", "1_0.5", "100_000.00"))
    return _dump(d), f"bad_number:{_FIELDS[key]}"


def _json_number(rng: random.Random, d: dict[str, Any]) -> Case:
    key = rng.choice(("p", "q"))
    d[key] = rng.choice((1, 96000.01, 0.1))
    return _dump(d), f"bad_number:{_FIELDS[key]}"


def _huge(rng: random.Random, d: dict[str, Any]) -> Case:
    key = rng.choice(("p", "q"))
    d[key] = "9" * rng.randrange(13, 60)
    return _dump(d), f"bad_number:{_FIELDS[key]}"


def _huge_int(rng: random.Random, d: dict[str, Any]) -> Case:
    d["t"] = 2 ** rng.randrange(63, 200)
    # Past 2^63 - 1 the id is out of range; past 64 bits orjson reads a float: either way
    # it is not a trade id.
    return _dump(d), "bad_number:trade_id"


def _too_precise(rng: random.Random, d: dict[str, Any]) -> Case:
    key = rng.choice(("p", "q"))
    d[key] = "1." + "0" * 8 + str(rng.randrange(1, 10))
    return _dump(d), f"too_precise:{_FIELDS[key]}"


def _non_positive(rng: random.Random, d: dict[str, Any]) -> Case:
    key = rng.choice(("p", "q"))
    d[key] = rng.choice(("0", "0.00000000", "-1", "-0.5"))
    return _dump(d), f"non_positive:{_FIELDS[key]}"


def _wrong_type(rng: random.Random, d: dict[str, Any]) -> Case:
    key = rng.choice(("s", "t", "T", "m"))
    d[key] = rng.choice(([1], {"a": 1}, None, "x", 1.5) if key != "s" else ([1], None, 5))
    expected = {
        "s": "unknown_symbol",
        "t": "bad_number:trade_id",
        "T": "bad_timestamp",
        "m": "bad_bool:is_buyer_maker",
    }[key]
    return _dump(d), expected


def _missing(rng: random.Random, d: dict[str, Any]) -> Case:
    order = ("s", "t", "p", "q", "T", "m")
    drop = rng.sample(order, rng.randrange(1, 4))
    for k in drop:
        d.pop(k)
    first = next(k for k in order if k in drop)
    return _dump(d), f"missing_field:{_FIELDS[first]}"


def _duplicate(rng: random.Random, d: dict[str, Any]) -> Case:
    key = rng.choice(("p", "q", "t", "s"))
    raw = _dump(d).decode()
    raw = raw[:-1] + f", {json.dumps(key)}: {json.dumps(d[key])}}}"
    return raw.encode(), f"duplicate_key:{_FIELDS[key]}"


def _future(rng: random.Random, d: dict[str, Any]) -> Case:
    d["T"] = rng.choice((4_102_444_800_000, 9_999_999_999_999, T0 * 1_000_000))  # 2100+, ns
    return _dump(d), "bad_timestamp"


def _ancient(rng: random.Random, d: dict[str, Any]) -> Case:
    d["T"] = rng.choice((0, 1, 1_000_000_000_000, 1_230_940_799_999, -5))
    return _dump(d), "bad_timestamp"


def _unknown_symbol(rng: random.Random, d: dict[str, Any]) -> Case:
    d["s"] = rng.choice(("", "B", "BTC/USDT", "BTC USDT", "ÄÖÜ", "X" * 40, "btc-usdt"))
    return _dump(d), "unknown_symbol"


def _oversized(rng: random.Random, d: dict[str, Any]) -> Case:
    d["pad"] = "x" * (MAX_PAYLOAD_BYTES + rng.randrange(1, 5000))
    return _dump(d), "oversized"


def _other_event(rng: random.Random, d: dict[str, Any]) -> Case:
    d["e"] = rng.choice(("kline", "depthUpdate", "bookTicker"))
    return _dump(d), "unsupported_event"


GENERATORS: dict[str, Callable[[random.Random, dict[str, Any]], Case]] = {
    "valid": _valid,
    "truncated": _truncated,
    "garbage": _garbage,
    "non_utf8": _non_utf8,
    "nan_literal": _nan_literal,
    "nan_string": _nan_string,
    "exponent": _exponent,
    "underscore": _underscore,
    "json_number": _json_number,
    "huge": _huge,
    "huge_int": _huge_int,
    "too_precise": _too_precise,
    "non_positive": _non_positive,
    "wrong_type": _wrong_type,
    "missing": _missing,
    "duplicate": _duplicate,
    "future": _future,
    "ancient": _ancient,
    "unknown_symbol": _unknown_symbol,
    "oversized": _oversized,
    "other_event": _other_event,
}


def hostile_messages(
    count: int, seed: int = 0, *, first_trade_id: int = 1, oversized_share: float = 0.001
) -> Iterator[tuple[str, bytes, str]]:
    """``count`` messages as ``(kind, payload, expected)``; expected is ``trade`` or a reason.

    Trade ids are unique across the run (``first_trade_id`` upward), so the valid ones
    are distinct trades. Oversized payloads are 64 KiB each, so they are rare by default.
    """
    rng = random.Random(seed)
    kinds = [k for k in GENERATORS if k != "oversized"]
    for i in range(count):
        kind = "oversized" if rng.random() < oversized_share else rng.choice(kinds)
        payload, expected = GENERATORS[kind](rng, _base(rng, first_trade_id + i))
        yield kind, payload, expected
