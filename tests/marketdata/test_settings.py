import pytest

from marketdata.settings import env_int


@pytest.mark.parametrize(
    ("environ", "default", "expected"),
    [
        ({}, 7, 7),  # unset: the default
        ({"N": "  "}, 7, 7),  # blank: the default
        ({"N": " 42 "}, 7, 42),
        ({"N": "-3"}, 7, -3),  # ranges are the caller's to check
        ({}, None, None),  # no default: the caller keeps its own
        ({"N": "0"}, None, 0),
    ],
)
def test_env_int(environ: dict[str, str], default: int | None, expected: int | None) -> None:
    assert env_int("N", default, environ) == expected


def test_env_int_names_the_variable_and_what_it_expects() -> None:
    with pytest.raises(ValueError, match=r"^N='1m': expected a whole number of milliseconds"):
        env_int("N", 0, {"N": "1m"}, unit="milliseconds")
