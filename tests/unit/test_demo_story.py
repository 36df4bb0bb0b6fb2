"""The story `make demo` tells (hack/demo.py), without a cluster: optional mTLS then strict, across a renewal, with
throw-away certificates in kubelet-style folders. The demo's checks must pass on the real thing and fail loudly when an
outcome does not happen, since its exit code is what tests/integration/test_demo.py relies on."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

import demo
from mtls_operator import pki, workload
from tests.kit import swap_volume

NOW = dt.datetime.now(dt.UTC)
GREETER = "spiffe://td/ns/demo/sa/greeter"
CALLER = "spiffe://td/ns/demo/sa/caller"


@pytest.fixture(scope="module")
def root():
    key = pki.generate_key("ECDSA", 256)
    return pki.self_signed_ca(key, "demo root", "test", NOW, dt.timedelta(days=1)), key


def _identity(root, spiffe: str, server: bool) -> dict[str, bytes]:
    cert, ca_key = root
    key = pki.generate_key("ECDSA", 256)
    leaf = pki.issue_leaf(pki.LeafRequest(spiffe, (demo.SERVER_NAME,) if server else (), (), server, True,
                                          dt.timedelta(hours=1)), key.public_key(), cert, ca_key, NOW,
                          dt.timedelta(minutes=5))
    return {"tls.crt": pki.to_pem(leaf), "tls.key": pki.key_to_pem(key), "ca.crt": pki.to_pem(cert)}


@pytest.fixture
def story(tmp_path: Path, root):
    swap_volume(tmp_path / "greeter", _identity(root, GREETER, True))
    swap_volume(tmp_path / "caller", _identity(root, CALLER, False))
    swap_volume(tmp_path / "legacy", {"ca.crt": pki.to_pem(root[0])})
    story = demo.Story(tmp_path / "greeter", tmp_path / "caller", tmp_path / "legacy", CALLER, GREETER)
    yield story
    story.close()


def _renew(tmp_path: Path, root) -> tuple[str, str]:
    """What the kubelet does after the operator renews both: new files swapped in; returns the new serials."""
    greeter, caller = _identity(root, GREETER, True), _identity(root, CALLER, False)
    swap_volume(tmp_path / "greeter", greeter)
    swap_volume(tmp_path / "caller", caller)
    return demo.serial_of_pem(greeter["tls.crt"]), demo.serial_of_pem(caller["tls.crt"])


def test_optional_then_strict_across_a_renewal(story: demo.Story, tmp_path: Path, root,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    story.optional()
    port = story.greeter.port
    story.strict()
    assert story.greeter.port == port, "the strict greeter is a restart on the same port"
    strict_greeter = story.greeter
    story.renewed(*_renew(tmp_path, root))
    assert story.greeter is strict_greeter, "nothing restarts for a renewal"
    assert strict_greeter.reloader.reloads == 2 and story.caller.reloads == 2

    out = capsys.readouterr().out
    assert "[optional] legacy, no certificate" in out and "-> served   'hello anonymous'" in out
    assert f"-> served   'hello {CALLER}'" in out
    assert f"caller saw {GREETER}, serial" in out
    refusals = [line for line in out.splitlines() if "-> refused" in line]
    assert len(refusals) == 2 and "[strict] legacy" in refusals[0] and "[strict, renewed] legacy" in refusals[1]
    assert "CERTIFICATE_REQUIRED" in refusals[0] or "Connection reset" in refusals[0], refusals[0]
    assert "greeter logged: SSLError" in out


def test_a_strict_greeter_that_lets_the_legacy_client_in_fails_the_demo(
        story: demo.Story, monkeypatch: pytest.MonkeyPatch) -> None:
    story.optional()
    optional_only = workload.reloading_server
    monkeypatch.setattr(workload, "reloading_server",
                        lambda folder, require_client_cert=True: optional_only(folder, require_client_cert=False))
    with pytest.raises(demo.DemoFailed, match=r"\[strict\] legacy should be refused"):
        story.strict()


def test_a_greeter_still_serving_the_old_certificate_fails_the_demo(story: demo.Story, tmp_path: Path, root) -> None:
    story.optional()
    story.strict()
    unswapped = _identity(root, GREETER, True)  # renewed, but never reached greeter's folder
    caller = _identity(root, CALLER, False)
    swap_volume(tmp_path / "caller", caller)
    with pytest.raises(demo.DemoFailed, match="not the renewed"):
        story.renewed(demo.serial_of_pem(unswapped["tls.crt"]), demo.serial_of_pem(caller["tls.crt"]))


def test_tls_errors_are_shown_without_the_source_location() -> None:
    import ssl

    error = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)")
    shown = demo.tls_error(error)
    assert shown == "SSLError: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"
