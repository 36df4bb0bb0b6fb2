"""Flags and their MTLS_ environment twins: a flag wins over the environment, which wins over the default."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from mtls_operator import config


def parse(argv: list[str]) -> config.Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.from_args(parser.parse_args(argv))


def test_defaults_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse([]).ca_grace == dt.timedelta(minutes=10)
    monkeypatch.setenv("MTLS_CA_GRACE", "7m")
    monkeypatch.setenv("MTLS_NAMESPACES", "a, b")
    settings = parse([])
    assert settings.ca_grace == dt.timedelta(minutes=7)
    assert settings.namespaces == ("a", "b")
    assert parse(["--ca-grace", "1h30m"]).ca_grace == dt.timedelta(minutes=90)


@pytest.mark.parametrize("argv, env", [(["--ca-grace", "soon"], {}), ([], {"MTLS_MIN_DURATION": "1d"}),
                                       (["--min-duration", "2h", "--max-duration", "1h"], {})])
def test_bad_settings_stop_the_start(monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises((SystemExit, ValueError)):
        parse(argv)
