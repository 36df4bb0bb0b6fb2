"""Private keys never leave their Secrets: not into the operator's output, not into Events, not into any status.

Runs after the other integration modules (alphabetical order), so it scans everything they made the operator do.
"""

from __future__ import annotations

import base64

from tests.kit import GROUP, PLURAL, VERSION, Api, OperatorProcess


def _key_fragments(api: Api) -> set[str]:
    """Recognisable pieces of every private key in the cluster's TLS Secrets: PEM body lines and their base64."""
    fragments = set()
    for secret in api.core.list_secret_for_all_namespaces().items:
        raw = (secret.data or {}).get("tls.key")
        if not raw:
            continue
        fragments.add(raw[:40])
        pem = base64.b64decode(raw).decode(errors="replace")
        fragments.update(line for line in pem.splitlines() if line and "-----" not in line and len(line) >= 32)
    return fragments


def test_no_private_key_material_in_operator_output_events_or_status(api: Api, operator: OperatorProcess) -> None:
    fragments = _key_fragments(api)
    assert len(fragments) > 20  # the other tests issued plenty

    logs = operator.all_logs()
    assert "issued" in logs  # the logs really are the operator's
    assert "PRIVATE KEY" not in logs
    leaked = [f for f in fragments if f in logs]
    assert not leaked, f"{len(leaked)} key fragments in the operator's output"

    events = api.core.list_event_for_all_namespaces().items
    text = "\n".join(f"{e.reason} {e.message}" for e in events)
    assert "PRIVATE KEY" not in text and not [f for f in fragments if f in text]

    statuses = api.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    text = "\n".join(str(o.get("status")) for o in statuses)
    assert "PRIVATE KEY" not in text and not [f for f in fragments if f in text]


def test_ca_key_lives_only_in_the_ca_secret(api: Api, operator: OperatorProcess) -> None:
    secrets = api.core.list_secret_for_all_namespaces().items
    ca = next(s for s in secrets if s.metadata.name == "mtls-operator-ca")
    ca_key = base64.b64decode(ca.data["tls.key"])
    holders = [f"{s.metadata.namespace}/{s.metadata.name}" for s in secrets
               if any(base64.b64decode(v) == ca_key or ca.data["tls.key"] in v for v in (s.data or {}).values())]
    assert holders == [f"{ca.metadata.namespace}/mtls-operator-ca"]
