"""Zero-downtime rotation of an operator-managed root: the phases, and the pure decision of when to move on.

A root cannot simply be replaced: a peer that does not yet trust the new root rejects every certificate issued from it.
So, like SPIRE, the operator keeps old and new side by side:

  Stable ──(near expiry, or asked)──► Propagating: the next root exists; every bundle (ca.crt) holds old + new.
  Propagating ──(a delay at least one kubelet sync, and every identity Secret carries the new bundle)──► Reissuing:
      the next root becomes the issuer; every leaf is reissued from it (bundles still hold both).
  Reissuing ──(every leaf issued by the new root)──► Retiring: a grace period for workloads to load the new leaves.
  Retiring ──(grace over, and every pod certificate from the old root expired)──► Stable: bundles hold the new root
      only.

The phase lives in the CA Secret itself (annotations, and next.crt/next.key while the next root waits), so an operator
killed in any phase resumes where it was. Only roots the operator created are rotated; a brought-in CA is the
enterprise's to rotate (replacing its Secret is picked up live).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping

from . import timestamps
from .spec import GROUP

ANN_PHASE = f"{GROUP}/rotation-phase"
ANN_SINCE = f"{GROUP}/rotation-since"
ANN_REQUEST = f"{GROUP}/rotate"  # set by a user on the CA Secret: any new value asks for one rotation
ANN_HANDLED = f"{GROUP}/rotate-handled"
# With an operator-made intermediate, ANN_REQUEST renews the intermediate; these ask for a rotation of the root.
ANN_ROOT_REQUEST = f"{GROUP}/rotate-root"
ANN_ROOT_HANDLED = f"{GROUP}/rotate-root-handled"
# The fingerprint of the CA certificate the operator itself put into a Secret: only while tls.crt still is that one
# does the operator rotate it. A CA someone pasted into that Secret is theirs, and never overwritten.
ANN_MADE = f"{GROUP}/made-fingerprint"
MANAGED_LABEL = f"{GROUP}/ca"  # "root" on a root the operator created (and may therefore rotate)


class Phase(enum.StrEnum):
    STABLE = ""
    PROPAGATING = "Propagating"
    REISSUING = "Reissuing"
    RETIRING = "Retiring"


class Step(enum.Enum):
    START = "start"  # make the next root, publish old + new
    PROMOTE = "promote"  # issue from the next root
    RETIRE = "retire"  # every leaf moved: start the grace period
    FINISH = "finish"  # drop the old root from the bundles


@dataclasses.dataclass(frozen=True)
class State:
    phase: Phase
    since: dt.datetime | None
    request: str
    handled: str
    handled_key: str = ANN_HANDLED  # where a started rotation records the request it answered


@dataclasses.dataclass(frozen=True)
class Timing:
    rotate_before: dt.timedelta  # start when the root has less than this left
    propagation: dt.timedelta  # at least a kubelet sync period (about a minute) plus its cache TTL
    grace: dt.timedelta  # after the last leaf moved, before the old root is distrusted
    # A phase waiting for Secrets that never catch up (their identity is denied by policy, say) moves on after this,
    # so a rotation always completes before the old root expires; the stragglers are named in an Event.
    stall: dt.timedelta = dt.timedelta(hours=1)


@dataclasses.dataclass(frozen=True)
class Progress:
    """Counted over the identity Secrets the operator manages."""

    stale_bundle: int  # Secrets (and bundle ConfigMaps) whose ca.crt is not yet the current bundle
    old_issuer: int  # Secrets whose certificate the current issuer did not sign
    # Since when every bundle is current, or (stalled) since the last one was brought up to date; None: not yet. The
    # propagation wait counts from here, not from the start of the phase, so a slow fleet still gets the full kubelet
    # sync time after its last bundle was written.
    bundles_current_since: dt.datetime | None = None
    # The counts have not fallen for --ca-stall: the stragglers are not coming (denied, broken), move on without them.
    stalled: bool = False
    # Retiring: pod certificates signed under the old root may be valid until then (their requests are long gone, so
    # the signer records it: clustertrustbundle.py). The old root stays in every bundle until they have expired.
    pod_certificates_until: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Wait:
    """How a phase's wait for identity Secrets stands. The stall is counted from the last *progress*: the number waited
    for falling below the fewest seen so far in this phase. A count that rises and falls again (a tenant's churn, a
    Secret edited then healed) is no progress, so it cannot restart the stall timer: only a straggler truly moving on
    can, and that happens at most once per straggler."""

    phase: Phase
    fewest: int  # the fewest Secrets (and bundle ConfigMaps) waited for so far in this phase
    progressed_at: dt.datetime  # when `fewest` last fell, or the phase's wait began


def track_wait(previous: Wait | None, phase: Phase, waiting: int, now: dt.datetime) -> Wait:
    if previous is None or previous.phase is not phase or waiting < previous.fewest:
        return Wait(phase, waiting, now)
    return previous


def waiting_for(phase: Phase, stale_bundle: int, old_issuer: int) -> int:
    """What the phase waits for: new bundles everywhere (Propagating); also leaves from the new root (Reissuing)."""
    if phase is Phase.PROPAGATING:
        return stale_bundle
    if phase is Phase.REISSUING:
        return stale_bundle + old_issuer
    return 0


def describe_wait(phase: Phase, stale: list[str], old: list[str], configmaps: int, moves_on_at: dt.datetime,
                  shown: int = 5) -> str:
    """One line for an Event, the MtlsAuthority condition and the log: what the phase waits for, by name, and when it
    gives up waiting."""
    parts = []
    if stale:
        parts.append(f"{len(stale)} Secrets without the new trust bundle ({_names(stale, shown)})")
    if configmaps:
        parts.append(f"{configmaps} trust bundles (ConfigMaps, the ClusterTrustBundle) not yet updated")
    if old and phase is Phase.REISSUING:
        parts.append(f"{len(old)} Secrets with a certificate from the old root ({_names(old, shown)})")
    when = timestamps.text(moves_on_at)
    return f"root rotation phase {phase.value} waits for {'; '.join(parts)}; moves on without them at {when}"


def _names(names: list[str], shown: int) -> str:
    first = sorted(names)[:shown]
    return ", ".join(first) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def parse_state(annotations: Mapping[str, str], request_key: str = ANN_REQUEST,
                handled_key: str = ANN_HANDLED) -> State:
    try:
        phase = Phase(annotations.get(ANN_PHASE, ""))
    except ValueError:
        phase = Phase.STABLE
    since = None
    if annotations.get(ANN_SINCE):
        try:
            since = dt.datetime.fromisoformat(annotations[ANN_SINCE].replace("Z", "+00:00"))
        except ValueError:
            since = None
    return State(phase, since, annotations.get(request_key, ""), annotations.get(handled_key, ""), handled_key)


def needs_progress(state: State) -> bool:
    """Counting progress walks every managed Secret: only the phases that wait for it pay for it."""
    return state.phase in (Phase.PROPAGATING, Phase.REISSUING)


def next_step(state: State, root_not_after: dt.datetime, now: dt.datetime, timing: Timing,
              progress: Progress) -> tuple[Step | None, dt.datetime | None]:
    """What to do now, and when at the latest to look again (None: only when something changes)."""
    since = state.since or now
    if state.phase is Phase.STABLE:
        due = root_not_after - timing.rotate_before
        if (state.request and state.request != state.handled) or now >= due:
            return Step.START, None
        return None, due
    if state.phase is Phase.PROPAGATING:
        settled = progress.bundles_current_since
        if settled is None:
            # Bundles still being written: look again soon, so the propagation time starts when the last one is
            # current, not a whole propagation time after this look.
            return None, now + dt.timedelta(seconds=1)
        ready_at = max(since, settled) + timing.propagation
        if now >= ready_at:
            return Step.PROMOTE, None
        return None, ready_at
    if state.phase is Phase.REISSUING:
        if (progress.old_issuer == 0 and progress.stale_bundle == 0) or progress.stalled:
            return Step.RETIRE, None
        return None, now + dt.timedelta(seconds=1)
    ready_at = max(since + timing.grace, progress.pod_certificates_until or since)
    if now >= ready_at:
        return Step.FINISH, None
    return None, ready_at
