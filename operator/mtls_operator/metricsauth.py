"""Who may read /metrics: the decision, apart from the HTTP server and the API calls that feed it.

/metrics names every namespace's identities and when each certificate expires: not for every pod in the cluster.
As controller-runtime's secure metrics do, a request must carry a bearer token that the API server accepts
(TokenReview) and whose user may `get` the non-resource URL /metrics (SubjectAccessReview), which the chart's
`metrics-reader` ClusterRole grants. Verdicts are cached briefly by a hash of the token (never the token itself), so a
scraper every few seconds costs the API server two requests per TTL, and a flood of bad tokens is bounded too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

PATH = "/metrics"
VERB = "get"
CACHE_TTL = 10.0  # seconds a verdict is reused (a revoked binding stops working within this)
CACHE_SIZE = 1024  # distinct tokens remembered; the oldest go first

# Callables the server provides (kube.py underneath), kept abstract so the decision is tested without an API server.
TokenReviewer = Callable[[str], Awaitable[Mapping[str, Any] | None]]  # token -> user info, or None if unauthenticated
AccessReviewer = Callable[[Mapping[str, Any], str, str], Awaitable[bool]]  # user info, path, verb -> allowed


@dataclasses.dataclass(frozen=True)
class Verdict:
    status: int  # 200, 401 (no or bad token), 403 (not allowed), 503 (could not ask the API server)
    reason: str
    user: str = ""


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for anything else."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


class MetricsAuth:
    def __init__(self, review_token: TokenReviewer, review_access: AccessReviewer,
                 clock: Callable[[], float] = time.monotonic, ttl: float = CACHE_TTL, size: int = CACHE_SIZE) -> None:
        self._review_token, self._review_access = review_token, review_access
        self._clock, self._ttl, self._size = clock, ttl, size
        self._cache: OrderedDict[str, tuple[float, Verdict]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Verdict]] = {}
        self.reviews = 0  # TokenReviews sent (for tests: the cache works)

    async def check(self, authorization: str | None) -> Verdict:
        token = bearer_token(authorization)
        if token is None:
            return Verdict(401, "a bearer token is required")
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached and cached[0] > now:
            self._cache.move_to_end(digest)
            return cached[1]
        pending = self._inflight.get(digest)
        if pending is not None:  # the same token being reviewed right now: one review for all of them
            return await asyncio.shield(pending)
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            verdict = await self._decide(token)
            future.set_result(verdict)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._inflight[digest]
        if verdict.status != 503:  # an API hiccup is not remembered
            self._cache[digest] = (now + self._ttl, verdict)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return verdict

    async def _decide(self, token: str) -> Verdict:
        try:
            self.reviews += 1
            user = await self._review_token(token)
            if user is None:
                return Verdict(401, "the token was not accepted by the API server")
            name = str(user.get("username", ""))
            if not await self._review_access(user, PATH, VERB):
                return Verdict(403, f"{name} may not {VERB} {PATH}", name)
            return Verdict(200, "allowed", name)
        except Exception as e:  # never the token in the message
            log.warning("could not review a /metrics request: %s", type(e).__name__)
            return Verdict(503, "the API server could not review the request")
