"""Every field of every CRD carries a description: `kubectl explain` is where users read what a field does, its
default and its limits, so a field without one is documented nowhere they look."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

CRDS = sorted((Path(__file__).resolve().parents[2] / "crds").glob("*.yaml"))
# The root's `metadata` may hold nothing but restrictions on name and generateName: the API server refuses a CRD whose
# metadata schema has a description ("must not specify anything other than name and generateName"), and publishes
# ObjectMeta's own description in its place.
EXEMPT = {"metadata"}


def undescribed(schema: Mapping[str, Any], path: str, own: bool = True) -> Iterator[str]:
    """The field paths under `schema`, itself included when `own`, that lack a non-empty description. The items of a
    list, and the values of a map, are a field of their own only when they are objects: `kubectl explain` shows a list
    of strings with the list's description."""
    if own and not str(schema.get("description") or "").strip():
        yield path
    for name, child in (schema.get("properties") or {}).items():
        yield from undescribed(child, f"{path}.{name}")
    for child, suffix in ((schema.get("items"), "[]"), (schema.get("additionalProperties"), "{}")):
        if isinstance(child, Mapping):  # additionalProperties may also be a bare true/false
            yield from undescribed(child, path + suffix, own=child.get("type") == "object")


def missing_descriptions(crd: Mapping[str, Any]) -> list[str]:
    out = []
    for version in crd["spec"]["versions"]:
        root = version["schema"]["openAPIV3Schema"]
        prefix = f"{crd['spec']['names']['kind']}/{version['name']}"
        if not str(root.get("description") or "").strip():
            out.append(prefix)
        for name, child in (root.get("properties") or {}).items():
            if name not in EXEMPT:
                out.extend(undescribed(child, f"{prefix}.{name}"))
    return out


def test_the_walk_finds_nested_fields() -> None:
    """The walk itself: a field deep in a list of objects, or in a map of objects, is not missed."""
    schema = {"description": "root", "properties": {
        "metadata": {"type": "object"},
        "spec": {"description": "s", "properties": {
            "targets": {"description": "t", "type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}}}},
            "tags": {"description": "m", "type": "array", "items": {"type": "string"}},
            "byName": {"description": "b", "type": "object", "additionalProperties": {"type": "object"}},
            "labels": {"description": "l", "type": "object", "additionalProperties": {"type": "string"}}}}}}
    crd = {"spec": {"names": {"kind": "K"}, "versions": [{"name": "v1", "schema": {"openAPIV3Schema": schema}}]}}
    assert missing_descriptions(crd) == ["K/v1.spec.targets[]", "K/v1.spec.targets[].name", "K/v1.spec.byName{}"]


def test_there_are_crds() -> None:
    assert {p.name for p in CRDS} >= {"mtlsidentities.yaml", "mtlsidentitypolicies.yaml", "mtlsauthorities.yaml"}


@pytest.mark.parametrize("path", CRDS, ids=lambda p: p.name)
def test_every_field_has_a_description(path: Path) -> None:
    missing = missing_descriptions(yaml.safe_load(path.read_text()))
    assert not missing, f"{len(missing)} fields without a description:\n" + "\n".join(missing)
