"""`make demo` is the README's first command: run it as a user would (hack/demo.py, which starts its own throw-away
control plane and operator) and hold it to the story it tells — optional mTLS serves a legacy client without a
certificate ("anonymous") and the new client by its SPIFFE ID; strict refuses the legacy client and still serves the
new one; and the new client is served with both renewed certificates, by the same server and client contexts."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.kit import REPO

# Its own control plane and operator process: nothing to do with an in-cluster operator.
pytestmark = [pytest.mark.integration, pytest.mark.local_operator]

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _served(out: str, mode: str, who: str) -> re.Match:
    """The lines the demo prints for one served connection: the greeting, what greeter saw, what the client saw."""
    found = re.search(rf"\[{re.escape(mode)}\] {who}[^\n]*-> served +'hello ([^']+)'\n"
                      r" +greeter saw ([^\n,]+)(?:, serial (\w+))?\n"
                      r" +\w+ saw (spiffe://[^\n,]+), serial (\w+), TLSv1\.[23]\n", out)
    assert found, f"no served line for [{mode}] {who} in:\n{out}"
    return found


def _refused(out: str, mode: str) -> str:
    found = re.search(rf"\[{re.escape(mode)}\] legacy, no certificate +-> refused +(\S[^\n]*)\n"
                      r" +greeter logged: (SSLError[^\n]*)\n", out)
    assert found, f"no refusal of the legacy client for [{mode}] in:\n{out}"
    return found.group(1)


def _renewal(out: str, name: str) -> tuple[str, str]:
    found = re.search(rf"\n    {name}: serial (\w+)\n +-> (\w+) \(revision \d+\)", out)
    assert found, f"no renewal of {name} in:\n{out}"
    return found.group(1), found.group(2)


def test_the_demo_tells_the_optional_then_strict_story_across_a_renewal() -> None:
    run = subprocess.run([sys.executable, str(REPO / "hack" / "demo.py")], cwd=REPO, capture_output=True, text=True,
                         timeout=240)
    out = ANSI.sub("", run.stdout)
    assert run.returncode == 0, f"make demo failed ({run.returncode}):\n{out[-6000:]}\n{run.stderr[-3000:]}"
    assert "Demo complete" in out
    assert "PRIVATE KEY" not in out + run.stderr

    # Optional: the legacy client is let in anonymously, the new client is known by its SPIFFE ID.
    legacy = _served(out, "optional", "legacy, no certificate")
    assert legacy.group(1) == legacy.group(2) == "anonymous" and legacy.group(3) is None
    caller = _served(out, "optional", "caller")
    caller_id, greeter_id = caller.group(1), caller.group(4)
    assert re.fullmatch(r"spiffe://[^/]+/ns/demo/sa/caller", caller_id) and caller.group(2) == caller_id
    assert re.fullmatch(r"spiffe://[^/]+/ns/demo/sa/greeter", greeter_id)

    # Strict: the legacy client gets a TLS error, greeter logs why; the new client is still served.
    assert "require_client_cert=False" in out and "require_client_cert=True" in out
    assert re.match(r"(SSLError|ConnectionResetError)", _refused(out, "strict"))
    strict = _served(out, "strict", "caller")
    assert strict.group(1) == caller_id and strict.group(3) == caller.group(3)

    # Across a renewal of both: the same strict greeter and caller, each now presenting its renewed certificate.
    greeter_old, greeter_new = _renewal(out, "greeter")
    caller_old, caller_new = _renewal(out, "caller")
    assert greeter_old != greeter_new and caller_old != caller_new
    assert caller.group(5) == greeter_old and caller.group(3) == caller_old
    renewed = _served(out, "strict, renewed", "caller")
    assert renewed.group(1) == caller_id and renewed.group(4) == greeter_id
    assert renewed.group(5) == greeter_new, "caller was not served greeter's renewed certificate"
    assert renewed.group(3) == caller_new, "greeter did not see caller's renewed certificate"
    _refused(out, "strict, renewed")
