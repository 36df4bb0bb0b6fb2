"""The plugin's API calls — a few reads and one merge patch — with the user's own credentials, and every failure made
into an `ApiProblem` that says what to do: which object was not found, which RBAC verb on which resource is missing,
which server could not be reached.

Credentials are found the way kubectl finds them: --kubeconfig, else $KUBECONFIG, else ~/.kube/config, else the pod's
service account (in-cluster). Raw JSON over the official client (as the operator's kube.py does), so the reports are
built from the same shapes the API serves and `kubectl get -o json` shows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import kubernetes
import urllib3

from ..spec import GROUP, PLURAL, VERSION

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
IDENTITIES = f"{PLURAL}.{GROUP}"
AUTHORITIES = f"mtlsauthorities.{GROUP}"


@dataclasses.dataclass
class ApiProblem(Exception):
    """Why a call failed, in the user's terms. `kind`: NotFound, Forbidden, Unauthorized, Unreachable, Config, Invalid,
    Error. For Forbidden, `verb` and `resource` name the permission that is missing."""

    kind: str
    message: str
    verb: str = ""
    resource: str = ""
    namespace: str = ""
    name: str = ""
    status: int = 0

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.kind, "message": self.message, "status": self.status or None}
        if self.kind == "Forbidden":
            out["missing"] = {"verb": self.verb, "resource": self.resource, "namespace": self.namespace or None}
        return out


def _where(namespace: str) -> str:
    return f"in namespace {namespace}" if namespace else "cluster-wide"


@dataclasses.dataclass(frozen=True)
class Call:
    """What a call means, for its error message: `get secrets` in namespace x, `list mtlsidentities.mtls-operator.io`
    cluster-wide."""

    verb: str
    resource: str
    namespace: str = ""
    name: str = ""

    def problem(self, status: int, payload: Mapping[str, Any], server: str) -> ApiProblem:
        said = str(payload.get("message") or "").strip()
        target = f"{self.resource} {self.namespace + '/' if self.namespace else ''}{self.name}".strip()
        common = dict(verb=self.verb, resource=self.resource, namespace=self.namespace, name=self.name, status=status)
        if status == 404:
            details = payload.get("details") or {}
            if self.name and details.get("name"):
                return ApiProblem("NotFound", f"{target} not found", **common)
            if self.namespace and details.get("kind") == "namespaces":
                return ApiProblem("NotFound", f"namespace {self.namespace} not found", **common)
            return ApiProblem("NotFound", f"the server does not serve {self.resource}: are the mtls-operator CRDs "
                                          f"installed in this cluster? ({said or 'not found'})", **common)
        if status == 403:
            return ApiProblem("Forbidden", f"forbidden: you may not {self.verb} {self.resource} "
                                           f"{_where(self.namespace)} — your RBAC needs verb '{self.verb}' on "
                                           f"'{self.resource}' {_where(self.namespace)} ({said})", **common)
        if status == 401:
            return ApiProblem("Unauthorized", f"unauthorized: {server} did not accept your credentials (expired "
                                              f"token or certificate? check your kubeconfig's user)", **common)
        if status in (400, 409, 422):
            return ApiProblem("Invalid", f"{self.verb} {target} refused: {said}", **common)
        return ApiProblem("Error", f"{self.verb} {target}: HTTP {status}: {said or 'no message'}", **common)


class Cluster:
    """The API, as the user's kubeconfig (or service account) reaches it."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, timeout: float = 15.0) -> None:
        self.timeout = timeout
        config = kubernetes.client.Configuration()
        self.default_namespace = "default"
        explicit = kubeconfig or None
        try:
            if explicit or os.environ.get("KUBECONFIG") or Path("~/.kube/config").expanduser().exists() or \
                    not os.environ.get("KUBERNETES_SERVICE_HOST"):
                # persist_config=False: the plugin never writes to the user's kubeconfig.
                kubernetes.config.load_kube_config(config_file=explicit, context=context,
                                                   client_configuration=config, persist_config=False)
                contexts, active = kubernetes.config.list_kube_config_contexts(config_file=explicit)
                if context:
                    active = next((c for c in contexts if c.get("name") == context), active)
                self.default_namespace = (active or {}).get("context", {}).get("namespace") or "default"
            else:
                kubernetes.config.load_incluster_config(client_configuration=config)
                if SA_NAMESPACE_FILE.exists():
                    self.default_namespace = SA_NAMESPACE_FILE.read_text().strip() or "default"
        except (kubernetes.config.ConfigException, OSError, ValueError, TypeError) as e:
            where = explicit or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise ApiProblem("Config", f"no usable kubeconfig ({where}): {e}") from None
        config.retries = 1  # an unreachable cluster should say so in seconds, not after urllib3's three retries
        self.server = config.host
        self._client = kubernetes.client.ApiClient(config)
        self._client.user_agent = "kubectl-mtls"

    def close(self) -> None:
        self._client.close()

    def _request(self, call: Call, method: str, path: str, query: Mapping[str, str] | None = None,
                 body: Any = None, content_type: str = "application/json") -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            m, url, h, b, p = self._client.param_serialize(
                method, path, query_params=list((query or {}).items()), header_params=headers, body=body,
                auth_settings=["BearerToken"])
            resp = self._client.call_api(m, url, h, b, p, _request_timeout=self.timeout)
            data = resp.read()
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiProblem("Unreachable", f"cannot reach the cluster at {self.server}: {_short(e)}",
                             verb=call.verb, resource=call.resource, namespace=call.namespace) from None
        except kubernetes.client.exceptions.ApiException as e:  # TLS trouble (status 0), or retries given up
            if not e.status:
                raise ApiProblem("Unreachable", f"cannot talk to the cluster at {self.server}: {_short(e)}",
                                 verb=call.verb, resource=call.resource, namespace=call.namespace) from None
            raise call.problem(e.status, {"message": e.reason}, self.server) from None
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            payload = {"message": data[:200].decode(errors="replace")}
        if resp.status >= 400:
            raise call.problem(resp.status, payload if isinstance(payload, dict) else {}, self.server)
        return payload

    # ---- identities ----

    def _identities_path(self, namespace: str) -> str:
        base = f"/apis/{GROUP}/{VERSION}"
        return f"{base}/namespaces/{quote(namespace)}/{PLURAL}" if namespace else f"{base}/{PLURAL}"

    def identity(self, namespace: str, name: str) -> dict[str, Any]:
        return self._request(Call("get", IDENTITIES, namespace, name), "GET",
                             f"{self._identities_path(namespace)}/{quote(name)}")

    def identities(self, namespace: str | None) -> list[dict[str, Any]]:
        """All identities of a namespace, or of every namespace (None)."""
        return self._list(Call("list", IDENTITIES, namespace or ""), self._identities_path(namespace or ""))

    def annotate_identity(self, namespace: str, name: str, annotations: Mapping[str, str]) -> dict[str, Any]:
        """A JSON merge patch of annotations only: nothing else of the object is touched, and no resourceVersion is
        needed (a renew request does not depend on what was read before)."""
        return self._request(Call("patch", IDENTITIES, namespace, name), "PATCH",
                             f"{self._identities_path(namespace)}/{quote(name)}",
                             body={"metadata": {"annotations": dict(annotations)}},
                             content_type="application/merge-patch+json")

    def identity_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        selector = f"involvedObject.kind=MtlsIdentity,involvedObject.name={name}"
        return self._list(Call("list", "events", namespace), f"/api/v1/namespaces/{quote(namespace)}/events",
                          {"fieldSelector": selector})

    # ---- the rest ----

    def authorities(self) -> list[dict[str, Any]]:
        return self._list(Call("list", AUTHORITIES), f"/apis/{GROUP}/{VERSION}/mtlsauthorities")

    def secret(self, namespace: str, name: str) -> dict[str, Any]:
        return self._request(Call("get", "secrets", namespace, name), "GET",
                             f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}")

    def configmap(self, namespace: str, name: str) -> dict[str, Any]:
        return self._request(Call("get", "configmaps", namespace, name), "GET",
                             f"/api/v1/namespaces/{quote(namespace)}/configmaps/{quote(name)}")

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self._list(Call("list", "pods", namespace), f"/api/v1/namespaces/{quote(namespace)}/pods",
                          {"labelSelector": selector})

    def lease(self, namespace: str, name: str) -> dict[str, Any]:
        return self._request(Call("get", "leases.coordination.k8s.io", namespace, name), "GET",
                             f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases/{quote(name)}")

    def _list(self, call: Call, path: str, query: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Every page of a list (500 at a time)."""
        items: list[dict[str, Any]] = []
        params = {**(query or {}), "limit": "500"}
        while True:
            page = self._request(call, "GET", path, params)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            params["continue"] = token


def _short(error: BaseException) -> str:
    """urllib3's errors nest the real cause (connection refused, name resolution) in a long repr."""
    reason = getattr(error, "reason", None)
    text = str(reason or error)
    return text if len(text) < 300 else text[:300] + "…"
