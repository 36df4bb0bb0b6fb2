"""Cached bodies: equal to what the API sent (less managedFields), with repeated strings held once."""

from __future__ import annotations

import json

from mtls_operator.compact import Shared, compact

RAW = json.dumps({
    "apiVersion": "mtls-operator.io/v1alpha1", "kind": "MtlsIdentity",
    "metadata": {"name": "web", "namespace": "shop", "uid": "0f3c1e8a-5b7d-4c2e-9a61-2f1d0c9b8e7a",
                 "resourceVersion": "4711", "labels": {"team": "payments"},
                 "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
    "spec": {"dnsNames": ["web.shop.svc", "x" * 200]},
    "status": {"conditions": [{"type": "Ready", "status": "True", "message": "certificate 30bd… valid"}]},
})


def test_equal_but_for_managed_fields() -> None:
    body = json.loads(RAW)
    kept = compact(body)
    del body["metadata"]["managedFields"]
    assert kept == body


def test_repeated_strings_are_shared_and_unique_ones_left_alone() -> None:
    a, b = compact(json.loads(RAW)), compact(json.loads(RAW))
    assert next(iter(a["metadata"])) is next(iter(b["metadata"]))  # a key
    assert a["apiVersion"] is b["apiVersion"] and a["metadata"]["namespace"] is b["metadata"]["namespace"]
    assert a["status"]["conditions"][0]["status"] is b["status"]["conditions"][0]["status"]
    assert a["metadata"]["labels"]["team"] is b["metadata"]["labels"]["team"]
    assert a["metadata"]["uid"] is not b["metadata"]["uid"]  # unique to an object: not worth a table slot
    assert a["status"]["conditions"][0]["message"] is not b["status"]["conditions"][0]["message"]
    assert a["spec"]["dnsNames"][1] is not b["spec"]["dnsNames"][1]  # long: a certificate, a key, a bundle


def test_the_original_is_not_changed() -> None:
    body = json.loads(RAW)
    compact(body)
    assert body == json.loads(RAW)


def test_the_table_is_bounded() -> None:
    """Tenants choose label values: churning unique ones must not grow the table past its size."""
    table = Shared(4)
    for i in range(10):
        table(f"value-{i}")
        assert len(table.values) <= 4
    assert "value-9" in table.values
