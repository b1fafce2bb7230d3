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


def test_flow_scales_from_the_environment_reach_the_supervisors_command_and_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from marketdata.settings import FlowScale, Settings
    from streaming.supervisor import Supervisor

    monkeypatch.setenv("CRYPTOPIPE_CANDLES_PROCESSES", "2")
    monkeypatch.setenv("CRYPTOPIPE_CANDLES_WORKERS", "3")
    monkeypatch.setenv("CRYPTOPIPE_ARCHIVE_WORKERS", "2")
    settings = Settings.from_env()
    assert settings.scale("candles") == FlowScale(2, 3)
    assert settings.scale("archive") == FlowScale(1, 2)
    assert settings.scale("metrics") == FlowScale()
    # A child process (a Dagster run, a supervised flow) gets the same settings.
    monkeypatch.delenv("CRYPTOPIPE_CANDLES_PROCESSES")
    for var, value in settings.env().items():
        monkeypatch.setenv(var, value)
    assert Settings.from_env() == settings
    sup = Supervisor.__new__(Supervisor)  # argv needs only the settings
    sup.settings, sup.flow_args, sup.feed = settings, {}, "simulate"
    assert " run candles --processes 2 --workers 3" in " ".join(sup.argv("candles"))
    assert " run archive --workers 2" in " ".join(sup.argv("archive"))
    assert "--workers" not in sup.argv("metrics")


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("CRYPTOPIPE_CANDLES_PROCESSES", "0"),
        ("CRYPTOPIPE_CANDLES_PROCESSES", "11"),
        ("CRYPTOPIPE_ARCHIVE_WORKERS", "two"),
        ("CRYPTOPIPE_ARCHIVE_PROCESSES", "0"),
    ],
)
def test_a_bad_flow_scale_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    from marketdata.settings import Settings

    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        Settings.from_env()
