"""What to do about a failure, per reason: the one table the plugin reads its advice from (`status`, `check`).

The reasons are the operator's own (`status.Ready` for identities, the MtlsAuthority's Ready reasons for the CA); the
recoveries are the ones README.md and docs/ document, shortened to the steps a user takes. A reason missing from the
table gets a generic hint rather than none, and a unit test keeps every failure reason of `status.Ready` covered.

Placeholders ({name}, {namespace}, {secret}, {service_account}, {authority}) are filled in from the object at hand; one
that is unknown stays visible as <name>, so a hint never shows a wrong value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ..status import Ready

# Reasons that are not the operator's Ready reasons, but states the plugin itself recognises.
NOT_OBSERVED = "NotObserved"  # no Ready condition yet: the operator has not looked at the identity
EXPIRED = "Expired"  # Ready said True, but the certificate's notAfter has passed
CA_INVALID = "CAInvalid"  # the MtlsAuthority's Ready reason for a CA Secret that cannot be used
RENEWAL_DEFERRED = "RenewalDeferred"  # the Event the operator posts when a renew request is over its rate limit

README = "README.md"


@dataclasses.dataclass(frozen=True)
class Hint:
    reason: str
    meaning: str  # what the reason says happened, in a sentence
    actions: tuple[str, ...]  # what to do, in order
    docs: str  # where the recovery is documented

    def filled(self, values: Mapping[str, str]) -> Hint:
        """The hint with the object's names put in."""
        fill = _Fill(values)
        return dataclasses.replace(self, meaning=self.meaning.format_map(fill),
                                   actions=tuple(a.format_map(fill) for a in self.actions))

    def to_dict(self) -> dict[str, object]:
        return {"reason": self.reason, "meaning": self.meaning, "actions": list(self.actions), "docs": self.docs}


class _Fill(dict):
    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__({k: v for k, v in values.items() if v})

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


_CA_BROKEN = (
    "The CA Secret cannot be used to issue (broken, expired, key mismatch); the operator never overwrites it. "
    "Identities whose certificate is still good keep it; new and due ones wait.",
    ("look at the CA's problem: `kubectl mtls check` and `kubectl get mtlsauthorities`, and the Events on the CA "
     "Secret (`kubectl describe secret -n <operator-namespace> mtls-operator-ca`)",
     "fix or replace the CA Secret (tls.crt, tls.key, and ca.crt for an intermediate): it is picked up live"),
    f"{README}: What you get, The CA",
)

_TABLE: dict[str, Hint] = {h.reason: h for h in (
    Hint(Ready.INVALID_SPEC,
         "The spec fails the operator's validation; the message names the field and the rule.",
         ("fix the spec: `kubectl edit mtlsidentity {name} -n {namespace}`",
          "a server identity whose name has a dot or more than 63 characters must list spec.dnsNames or be "
          "`usages: [client]`; a name over 248 characters must set spec.secretName"),
         f"{README}: What you get; docs/security.md (bad inputs)"),
    Hint(Ready.POLICY_DENIED,
         "A DNS name or IP address in the spec is not one of the namespace's own Service names, and no "
         "MtlsIdentityPolicy grants it. Nothing new is issued: a certificate already in the Secret stays valid until "
         "its notAfter, but is not renewed.",
         ("dial the qualified name instead (e.g. `vault.{namespace}.svc`, allowed by default) and drop the entry the "
          "message names from spec.dnsNames / spec.ipAddresses",
          "or ask a cluster admin for an MtlsIdentityPolicy listing namespace {namespace} and that exact name or "
          "address (examples/policy.yaml); it is picked up live"),
         f"{README}: Upgrading: single-label DNS names now need a policy"),
    Hint(Ready.SERVICE_ACCOUNT_NOT_FOUND,
         "The ServiceAccount the SPIFFE ID would name does not exist (a typo, or the workload is not deployed yet).",
         ("create it: `kubectl create serviceaccount {service_account} -n {namespace}`, or fix "
          "spec.serviceAccountName; the certificate is issued as soon as it exists",),
         f"{README}: What you get, Zero-trust policy by default"),
    Hint(Ready.SECRET_CONFLICT,
         "A Secret named {secret} exists and is not this identity's; the operator never touches it.",
         ("delete or rename that Secret if it is stale (`kubectl delete secret {secret} -n {namespace}`), or set "
          "spec.secretName to a free name",),
         f"{README}: What you get, The Secret"),
    Hint(Ready.SECRET_UNWRITABLE,
         "The Secret cannot be renewed: it is `immutable: true`, or an admission policy refuses its writes. The "
         "current certificate holds until its notAfter; retries back off up to 5 minutes.",
         ("delete the Secret (`kubectl delete secret {secret} -n {namespace}`): the operator recreates it at once, "
          "mutable",
          "or lift the admission rule, then `kubectl mtls renew {name} -n {namespace}`"),
         f"{README}: Secrets that cannot be written"),
    Hint(Ready.CA_UNAVAILABLE, *_CA_BROKEN),
    Hint(CA_INVALID, *_CA_BROKEN),
    Hint(Ready.CA_LOST,
         "The CA Secret is gone while the cluster shows its root in use; the operator mints nothing until you "
         "decide. Identities whose certificate is still good stay Ready.",
         ("best: restore the CA Secret from a backup (`kubectl apply -f ca-backup.yaml`); picked up live, nothing "
          "is reissued",
          "or approve a new root naming the lost one: `kubectl annotate mtlsauthority {authority} "
          "mtls-operator.io/replace-lost-root=<first 16 hex characters of its status.issuerFingerprint> --overwrite`"),
         f"{README}: Recovering a lost CA Secret"),
    Hint(Ready.ISSUANCE_FAILED,
         "Issuing failed for a reason that may pass (an API error, a timeout); the operator retries with backoff.",
         ("if it persists, look at the operator: `kubectl mtls check` and its log (`kubectl logs -n "
          "<operator-namespace> -l app.kubernetes.io/name=mtls-operator`)",),
         f"{README}: Running the operator"),
    Hint(NOT_OBSERVED,
         "The operator has not reported on this identity (or on its latest generation) yet.",
         ("if this lasts more than a few seconds, is the operator running and leading? `kubectl mtls check`",
          "an operator started with --namespace serves only those namespaces: is {namespace} one of them?"),
         f"{README}: Running the operator"),
    Hint(EXPIRED,
         "The certificate's notAfter has passed although the status says Ready: the operator has not renewed it.",
         ("`kubectl mtls check` (is the operator running and leading?), then `kubectl mtls renew {name} -n "
          "{namespace}`",),
         f"{README}: What you get, Renewal"),
    Hint(RENEWAL_DEFERRED,
         "A renew request was over the rate limit (per identity 3 at once, then one a minute; per namespace 10 "
         "tokens, then one every 6 s). It is deferred, not lost: served at the time the Event names.",
         ("nothing to do: wait for the time in the Event, or renew fewer identities at once",),
         f"{README}: What you get, Renewal"),
)}


def for_reason(reason: str, values: Mapping[str, str] | None = None) -> Hint:
    """The hint for a reason, filled in; a generic one for a reason this table does not know."""
    hint = _TABLE.get(reason) or Hint(
        reason or "Unknown", "The operator reported a reason this plugin does not know (a newer operator?).",
        ("read the Ready message and the Events: `kubectl describe mtlsidentity {name} -n {namespace}`",), README)
    return hint.filled(values or {})


def known_reasons() -> frozenset[str]:
    return frozenset(_TABLE)
