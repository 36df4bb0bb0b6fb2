"""The pod crash of 2026-11-27: under a uid with no passwd entry, kopf's own identity (POD_ID, else the user name)
raised KeyError from getpwuid before the operator did anything. The operator now names itself."""

from __future__ import annotations

import asyncio
import getpass
import pwd

import kopf
import pytest
from kopf._core.engines import peering

from mtls_operator.__main__ import kopf_options
from mtls_operator.config import Settings
from mtls_operator.leader import replica_identity


@pytest.fixture
def no_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """What uid 65532 sees in an image without a passwd entry for it."""

    def unknown(*_args: object) -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", unknown)
    monkeypatch.setattr(pwd, "getpwuid", unknown)
    monkeypatch.delenv("POD_ID", raising=False)
    monkeypatch.setenv("POD_NAME", "mtls-operator-7d4b9-x2x9q")


def test_kopf_left_alone_dies_without_a_passwd_entry(no_passwd_entry: None) -> None:
    with pytest.raises(KeyError, match="uid not found"):
        peering.detect_own_id(manual=False)


def test_kopf_starts_with_the_operators_options_without_a_passwd_entry(no_passwd_entry: None) -> None:
    async def start_and_stop() -> None:
        tasks = await kopf.spawn_tasks(registry=kopf.OperatorRegistry(), stop_flag=asyncio.Event(),
                                       **kopf_options(Settings(), replica_identity()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(start_and_stop())


def test_the_identity_names_the_pod_and_is_unique(no_passwd_entry: None) -> None:
    a, b = replica_identity(), replica_identity()
    assert a.startswith("mtls-operator-7d4b9-x2x9q-") and a != b


def test_kopf_peering_and_liveness_stay_off() -> None:
    options = kopf_options(Settings(namespaces=("a", "b")), "me")
    assert options["standalone"] is True and options["identity"] == "me"
    assert options["namespaces"] == ("a", "b") and options["clusterwide"] is False
    assert "liveness_endpoint" not in options  # health.py serves the port
