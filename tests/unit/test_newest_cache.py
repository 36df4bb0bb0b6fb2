"""The reconciler's caches: the newest version of each object wins, and which namespaces hold any stays current
without a walk over every object (a trust-bundle check asks it per namespace, at 10,000 identities)."""

from __future__ import annotations

from mtls_operator.reconciler import NewestCache


def body(namespace: str, name: str, uid: str, rv: str) -> dict:
    return {"metadata": {"namespace": namespace, "name": name, "uid": uid, "resourceVersion": rv}}


def test_namespaces_follow_puts_and_drops() -> None:
    cache = NewestCache()
    cache.put(("a", "x"), body("a", "x", "u1", "1"))
    cache.put(("a", "y"), body("a", "y", "u2", "2"))
    cache.put(("a", "y"), body("a", "y", "u2", "3"))  # a newer version: still one object
    cache.put(("b", "z"), body("b", "z", "u3", "4"))
    assert cache.namespaces() == {"a", "b"}
    cache.drop(("a", "x"), body("a", "x", "u1", "5"))
    assert cache.namespaces() == {"a", "b"}
    cache.drop(("a", "y"))
    assert cache.namespaces() == {"b"}


def test_a_late_delete_of_an_older_object_keeps_its_successor_and_its_namespace() -> None:
    cache = NewestCache()
    cache.put(("a", "x"), body("a", "x", "new", "7"))
    cache.drop(("a", "x"), body("a", "x", "old", "6"))
    assert cache.get(("a", "x")) is not None and cache.namespaces() == {"a"}
    cache.drop(("a", "x"), body("a", "x", "new", "8"))
    cache.drop(("a", "x"))  # twice: nothing left to count down
    assert cache.namespaces() == set() and len(cache) == 0


def test_a_deleted_object_does_not_come_back_or_count() -> None:
    cache = NewestCache()
    cache.put(("a", "x"), body("a", "x", "u1", "1"))
    cache.drop(("a", "x"), body("a", "x", "u1", "2"))
    cache.put(("a", "x"), body("a", "x", "u1", "3"))  # a write's answer landing after the deletion
    assert cache.get(("a", "x")) is None and cache.namespaces() == set()
