"""A progressive rollout's state, what the router reads of it, and how its gates are judged.

Pure values and arithmetic: no I/O, no clock of its own (callers pass ``now``, wall-clock seconds,
since rollout steps are shared by replicas through the store). ``rollout.py`` runs the state
machine on these; ``rollout_store.py`` keeps the states.

States (``status``):

    pending_smoke  the smoke prompts have not passed yet: share 0, never served
    rolling        the current step's share of the group's first choices; gates judged
    paused         by hand: the step's share is kept, no advancing (gates still roll back)
    promoted       done: the deployment routes by the group's strategy like any other
    rolled_back    a gate or a smoke prompt failed (``reason`` says which, with the figures): share 0
    aborted        stopped by hand: share 0
    removed        a replica's policy dropped the rollout (``updated_at``: when it saw that); a
                   replica whose policy has had it since before then holds it at share 0 (its
                   policy is the older one, as during a ConfigMap's sync), one that added it
                   later starts it over

``seen_at`` is when a replica running the rollout last said so (``rollout.TOUCH_S``): a state no
replica has run for ``rollout.ORPHAN_S`` is forgotten.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import quote, unquote

from gateway.policy.model import RolloutGates
from gateway.routing.target import Target

Status = Literal["pending_smoke", "rolling", "paused", "promoted", "rolled_back", "aborted", "removed"]
STATUSES: tuple[Status, ...] = (
    "pending_smoke",
    "rolling",
    "paused",
    "promoted",
    "rolled_back",
    "aborted",
    "removed",
)
FINISHED: frozenset[str] = frozenset({"promoted", "rolled_back", "aborted"})
# Latency samples kept per watched deployment (a step's window is the last of these at most).
SAMPLES_KEPT = 20_000
# The latency gate compares only once the other deployments have this many samples in the window.
MIN_OTHER_SAMPLES = 10


@dataclass(frozen=True, slots=True, order=True)
class RolloutKey:
    """A rollout: a model group and the deployment (provider, upstream model) rolled out in it."""

    group: str
    provider: str
    model: str

    @property
    def id(self) -> str:
        """``group:provider:model``, each part percent-encoded (names may hold ``:`` or ``/``)."""
        return ":".join(quote(part, safe="") for part in (self.group, self.provider, self.model))

    @classmethod
    def from_id(cls, text: str) -> RolloutKey | None:
        parts = text.split(":")
        if len(parts) != 3:
            return None
        return cls(*(unquote(p) for p in parts))


@dataclass(frozen=True, slots=True)
class RolloutState:
    """One rollout's shared state. ``version`` grows by one with every write (compare-and-set);
    ``step_started_at`` and ``updated_at`` are wall-clock seconds (replicas share them)."""

    status: Status
    step_index: int
    step_started_at: float
    reason: str
    updated_at: float
    version: int = 0
    seen_at: float = 0.0  # not versioned: a replica running the rollout sets it (``touch``)

    @classmethod
    def initial(cls, now: float) -> RolloutState:
        return cls("pending_smoke", 0, now, "", now, 0, now)

    @classmethod
    def removed(cls, at: float) -> RolloutState:
        """The tombstone a replica writes when its policy drops the rollout ``at`` then."""
        return cls("removed", 0, at, "removed from the policy", at, 0, at)

    def moved(
        self, status: Status, now: float, *, step_index: int | None = None, reason: str = ""
    ) -> RolloutState:
        """This state changed to ``status`` at ``now`` (the step's clock restarts when the step or
        the status changes); the store sets the version."""
        return replace(
            self,
            status=status,
            step_index=self.step_index if step_index is None else step_index,
            step_started_at=now,
            reason=reason,
            updated_at=now,
            seen_at=now,
        )

    def fields(self) -> dict[str, str]:
        """As a flat string mapping (a Redis hash, a JSON object)."""
        return {
            "status": self.status,
            "step_index": str(self.step_index),
            "step_started_at": repr(self.step_started_at),
            "reason": self.reason,
            "updated_at": repr(self.updated_at),
            "version": str(self.version),
            "seen_at": repr(self.seen_at),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> RolloutState | None:
        """The state ``fields`` hold, or None when they are not a whole valid state."""
        # We write strings only; a rollouts.json edited by hand may hold null, a number or a list
        # (``int(None)`` raised TypeError, and every tick failed on that one entry, so no rollout
        # of the replica advanced).
        if not all(isinstance(value, str) for value in fields.values()):
            return None
        try:
            status = fields["status"]
            if status not in STATUSES:
                return None
            return cls(
                status,  # checked just above
                int(fields["step_index"]),
                float(fields["step_started_at"]),
                fields.get("reason", ""),
                float(fields["updated_at"]),
                int(fields["version"]),
                # A state written before seen_at existed: as if run now (never forgotten before
                # a replica running it touches it, never started over for its age).
                float(fields.get("seen_at") or math.inf),
            )
        except (KeyError, ValueError):
            return None


def share_of(state: RolloutState | None, steps: list[float]) -> float:
    """The candidate's share (0..1) of its group's first choices in ``state``; 1.0 once promoted
    (then it is not a rollout any more: the strategy decides)."""
    if state is None:
        return 0.0
    if state.status == "promoted":
        return 1.0
    if state.status in ("rolling", "paused"):
        return steps[min(state.step_index, len(steps) - 1)] / 100
    return 0.0


@dataclass(slots=True)
class RolloutSlot:
    """What the router reads of a group's rollout on every plan: the candidate and the group's
    other targets (the plan when the candidate is not drawn), and the candidate's share of first
    choices. The controller replaces the slot or changes ``share``; the views read the rest."""

    key: RolloutKey
    candidate: Target
    others: tuple[Target, ...]
    share: float
    status: Status | None  # None: not read from the store yet (share 0)
    step_index: int
    steps: tuple[float, ...]
    reason: str


class RolloutWatch:
    """One deployment's attempts, as the router reports them, while a rollout needs them: each
    ``(at, latency_s or nan, attempts, errors)``, the last ``SAMPLES_KEPT`` of them. Attached to
    the deployment's live state (``DeploymentState.watch``) by the controller."""

    __slots__ = ("_clock", "samples")

    def __init__(self, clock: Callable[[], float], kept: int = SAMPLES_KEPT) -> None:
        self._clock = clock
        self.samples: deque[tuple[float, float, int, int]] = deque(maxlen=kept)

    def succeeded(self, latency_s: float) -> None:
        """An attempt answered (a stream: its first chunk came) after ``latency_s`` seconds."""
        self.samples.append((self._clock(), latency_s, 1, 0))

    def failed(self, counts: bool, *, answered: bool = False) -> None:
        """An attempt failed; ``counts``: against the provider (an error for the gates).
        ``answered``: a stream already counted at its first chunk, cut since (no new attempt)."""
        self.samples.append((self._clock(), math.nan, 0 if answered else 1, 1 if counts else 0))

    def since(self, start: float) -> list[tuple[float, float, int, int]]:
        """The samples at or after ``start`` (wall-clock seconds)."""
        out: list[tuple[float, float, int, int]] = []
        for sample in reversed(self.samples):
            if sample[0] < start:
                break
            out.append(sample)
        return out


@dataclass(frozen=True, slots=True)
class Verdict:
    """The gates over one step's window: the figures, and the failed gate (None: all hold)."""

    attempts: int
    errors: int
    error_rate: float
    p95_s: float | None
    others_p95_s: float | None
    failed: str | None

    @property
    def figures(self) -> str:
        ratio = (
            f", p95 {self.p95_s * 1000:.0f} ms vs others {self.others_p95_s * 1000:.0f} ms"
            if self.p95_s is not None and self.others_p95_s is not None
            else ""
        )
        return f"{self.errors}/{self.attempts} errors ({self.error_rate:.1%}){ratio}"


def p95(latencies: list[float]) -> float | None:
    """The 95th percentile (nearest rank) of ``latencies``; None when empty."""
    if not latencies:
        return None
    ordered = sorted(latencies)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def judge(
    candidate: Iterable[tuple[float, float, int, int]],
    others: Iterable[tuple[float, float, int, int]],
    gates: RolloutGates,
    floor_s: float = 0.0,
) -> Verdict:
    """The gates over a step's samples: nothing fails before ``min_requests`` attempts; then the
    error rate, and the p95 latency against the other deployments' (once they have
    ``MIN_OTHER_SAMPLES``), both plus ``floor_s`` (the policy's ``routing.latency_floor_ms``, so
    jitter between two fast deployments is no failure: 1.2 ms against 0.8 ms is not 1.5x)."""
    attempts = errors = 0
    latencies: list[float] = []
    for _, latency, tried, erred in candidate:
        attempts += tried
        errors += erred
        if latency == latency:  # not nan
            latencies.append(latency)
    other_latencies = [s[1] for s in others if s[1] == s[1]]
    rate = errors / attempts if attempts else 0.0
    own = p95(latencies)
    theirs = p95(other_latencies) if len(other_latencies) >= MIN_OTHER_SAMPLES else None
    failed: str | None = None
    if attempts >= gates.min_requests:
        if rate > gates.max_error_rate:
            failed = f"error rate {rate:.1%} > max_error_rate {gates.max_error_rate:.1%}"
        elif own is not None and theirs is not None and theirs + floor_s > 0:
            ratio = (own + floor_s) / (theirs + floor_s)
            if ratio > gates.max_latency_ratio:
                failed = (
                    f"p95 latency {own * 1000:.0f} ms is {ratio:.2f}x the other deployments' "
                    f"{theirs * 1000:.0f} ms > max_latency_ratio {gates.max_latency_ratio:g}"
                )
    return Verdict(attempts, errors, rate, own, theirs, failed)
