"""kube.watch against a scripted API server on a real socket: a list, then a watch whose events arrive cut at any
byte, a handler's failure that must not end the stream, an expired version (an ERROR event) that lists again and
goes on from the new list's version, and a cancel that closes the stream's connection."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kubernetes
import orjson
import pytest

from mtls_operator.kube import Kube, WatchHealth
from tests.unit.test_http1 import STREAMING, Streams, by_length, chunk, run

PATH = "/apis/example.io/v1/things"


def thing(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": version}}


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": kind, "object": obj}) + b"\n"


def test_a_watch_reads_events_cut_anywhere_outlives_a_handlers_bug_lists_again_when_expired_and_stops_on_cancel(
        caplog: pytest.LogCaptureFixture) -> None:
    lists = 0

    async def handler(n: int, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal lists
        target = server.paths[writer] = head.split(b" ")[1]
        if b"watch=true" not in target:
            lists += 1
            page = {"items": [thing("a", "3")], "metadata": {"resourceVersion": "5"}} if lists == 1 else \
                {"items": [thing("b", "9")], "metadata": {"resourceVersion": "9"}}
            writer.write(by_length(orjson.dumps(page)))
        elif b"resourceVersion=5" in target:
            stream = (event("ADDED", thing("b", "6")) + event("BOOKMARK", thing("", "7"))
                      + event("MODIFIED", thing("boom", "8")) + b"\n" + event("MODIFIED", thing("b", "8"))
                      + event("ERROR", {"kind": "Status", "code": 410}))
            writer.write(STREAMING)
            for i in range(0, len(stream), 10):  # pieces that cut lines, and JSON, anywhere
                writer.write(chunk(stream[i:i + 10]))
                await writer.drain()
        else:  # from the second list's version: open, and quiet
            writer.write(STREAMING)
        await writer.drain()

    server = Streams(handler)
    events: list[tuple[str, str, str]] = []
    listed: list[list[str]] = []

    def on_event(kind: str, body: dict[str, Any]) -> None:
        if body["metadata"]["name"] == "boom":
            raise RuntimeError("a handler's bug")
        events.append((kind, body["metadata"]["name"], body["metadata"]["resourceVersion"]))

    async def main() -> None:
        async with server:
            kube = Kube(kubernetes.client.Configuration(host=f"http://127.0.0.1:{server.port}"), workers=2)
            health = WatchHealth()
            health.down("not started")
            watching = asyncio.ensure_future(kube.watch(
                PATH, "", on_event, lambda items: listed.append([i["metadata"]["name"] for i in items]),
                metadata_only=False, health=health))
            while not any(b"resourceVersion=9" in target for target in server.paths.values()):
                await asyncio.sleep(0.01)
            while health.problem is not None:  # up once the answer's head is in
                await asyncio.sleep(0.01)
            assert listed == [["a"], ["b"]]  # the start, and again after the ERROR
            assert events == [("ADDED", "b", "6"), ("MODIFIED", "b", "8")]  # the bug's event skipped, no more
            first_watch = next(t for t in server.paths.values() if b"resourceVersion=5" in t)
            assert b"watch=true" in first_watch and b"allowWatchBookmarks=true" in first_watch
            watching.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watching
            while not any(b"resourceVersion=9" in target for target in server.ended):  # its connection is closed
                await asyncio.sleep(0.01)
            await kube.close()

    with caplog.at_level(logging.ERROR, logger="mtls_operator.kube"):
        run(main())
    assert [r.getMessage() for r in caplog.records] == [f"handling a change under {PATH} failed"]


def test_an_expired_version_answered_as_a_status_lists_again_and_any_other_error_takes_the_stream_down() -> None:
    lists = 0

    async def handler(n: int, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal lists
        target = server.paths[writer] = head.split(b" ")[1]
        if b"watch=true" not in target:
            lists += 1
            writer.write(by_length(orjson.dumps({"items": [], "metadata": {"resourceVersion": str(4 * lists)}})))
        elif b"resourceVersion=4&" in target:
            answer = b'{"kind": "Status", "code": 410, "reason": "Expired"}'
            writer.write(b"HTTP/1.1 410 Gone\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        else:
            error = {"kind": "Status", "code": 500, "reason": "InternalError", "message": "etcd is away"}
            writer.write(STREAMING + chunk(event("ERROR", error)))
        await writer.drain()

    server = Streams(handler)

    async def main() -> None:
        async with server:
            kube = Kube(kubernetes.client.Configuration(host=f"http://127.0.0.1:{server.port}"), workers=2)
            health = WatchHealth()
            watching = asyncio.ensure_future(kube.watch(PATH, "", lambda kind, body: None, lambda items: None,
                                                        health=health))
            while "etcd is away" not in (health.problem or ""):  # down, for /readyz to say why
                await asyncio.sleep(0.01)
            targets = list(server.paths.values())
            watches = [t for t in targets if b"watch=true" in t]
            assert [b"resourceVersion=4&" in t for t in watches[:2]] == [True, False]
            assert b"resourceVersion=8&" in watches[1]  # the 410 answer: listed again at once, watched from there
            watching.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watching
            await kube.close()

    run(main())
