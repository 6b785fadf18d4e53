"""Progressive rollout with automatic rollback: the state machine, run on every replica.

A deployment with ``rollout:`` in the policy is the candidate of its group. Its state lives in the
store (``rollout_store.py``) and is read by every replica about once a second (``tick``):

  pending_smoke -> the smoke prompts are sent to the candidate (through its client, not streamed);
                   all pass: rolling at step 0; any fails: rolled_back
  rolling       -> the candidate is the first choice of exactly its step's share of the group's
                   requests (``Router._plan``); the gates are judged over the step's window each
                   tick (from the replica's own traffic); a failing gate rolls back at once; after
                   ``hold_s`` with the gates holding and at least ``min_requests`` attempts it
                   advances (reaching the last step, 100, is promotion); fewer attempts: it holds on
  paused / promoted / rolled_back / aborted: see ``rollout_state.py``; pause, resume, promote and
  abort are the operator's (``act``)

Step changes are compare-and-set, so of two replicas advancing the same step one wins; a rollback
applies over any step change. The counters (``gateway_rollouts_total``) count the writes this
replica made, so their sum over replicas counts each rollout once.

Replicas do not all run the same policy at every moment (a ConfigMap reaches pods within a minute
or so, a rolling update runs old and new pods side by side), so one replica's policy never
deletes what another's still runs: a replica whose policy drops a rollout writes a tombstone
(``removed``, with when it saw that); a replica whose policy has had the rollout since before
then holds it at share 0 until its own policy follows, and one that added the rollout after it
starts it over (removing ``rollout:`` and adding it back starts over, as documented). A
replica that starts with the rollout in its policy cannot tell an older policy from one that
added it back, so it holds while the tombstone is younger than ``HOLD_S`` and starts over after
(a re-added rollout deployed by restarting every replica waits that long). A stored
state is deleted only once no replica has run it for ``ORPHAN_S`` (replicas running it touch its
``seen_at`` every ``TOUCH_S``). Deleting every state not in one's own policy, as the sweep did,
reset the rollouts of every replica still on the older policy: their smoke prompts ran again,
and a rolled-back candidate came back at its first step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.errors import GatewayError, HTTPStatusError, NotFound, ServiceUnavailable, quoted
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import Policy, Rollout
from gateway.quoting import listed
from gateway.routing.rollout_state import (
    FINISHED,
    RolloutKey,
    RolloutSlot,
    RolloutState,
    RolloutWatch,
    Status,
    judge,
    share_of,
)
from gateway.routing.rollout_store import RolloutStore, WriteMode
from gateway.routing.router import Router
from gateway.routing.target import DeploymentState, Target
from gateway.tasks import stop as stop_task
from gateway.wire.requests import Endpoint

log = logging.getLogger("gateway.rollout")

Action = Literal["pause", "resume", "promote", "abort"]
ACTIONS: tuple[Action, ...] = ("pause", "resume", "promote", "abort")
_SMOKE_TIMEOUT_S = 120.0
TOUCH_S = 30.0  # a replica running a rollout sets its seen_at at least this often
ORPHAN_S = 86400.0  # a stored state no replica has run for this long is forgotten (deleted)
HOLD_S = 300.0  # a tombstone holds the replicas that started with the rollout this long at most


def _conflict(message: str) -> HTTPStatusError:
    """409: the action does not apply to the rollout's state (e.g. pausing a promoted rollout)."""
    return HTTPStatusError(409, message)


@dataclass(slots=True)
class _Rollout:
    key: RolloutKey
    config: Rollout
    added_at: float  # wall clock: when this replica's policy took it in (-inf: in it at start)
    state: RolloutState | None = None
    smoke: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Watched:
    live: DeploymentState
    watch: RolloutWatch = field(repr=False)


class RolloutController:
    """Runs the policy's rollouts on this replica (see the module docstring)."""

    def __init__(
        self,
        router: Router,
        store: RolloutStore,
        metrics: GatewayMetrics,
        *,
        clock: Callable[[], float] = time.time,
        poll_s: float = 1.0,
    ) -> None:
        self._router = router
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self.poll_s = poll_s
        self._rollouts: dict[RolloutKey, _Rollout] = {}
        self._watched: dict[tuple[str, str], _Watched] = {}
        # Removed from the policy (and when): their tombstones to write at the next tick.
        self._dropped: dict[RolloutKey, float] = {}
        self._sweep = True  # forget stored states no replica has run for ORPHAN_S
        self._store_down = False  # said once per outage, by the loop or an action by hand
        self.reconfigure(router.policy)
        for rollout in self._rollouts.values():
            rollout.added_at = float("-inf")  # in the policy this replica started with

    # ----- policy

    def reconfigure(self, policy: Policy) -> None:
        """Follow a new policy (call after ``Router.reconfigure``). A rollout that stays (same
        group, provider and upstream model) keeps its state, under its new settings (a step index
        beyond the new steps means the last step); a new one starts at pending_smoke; a removed
        one gets its tombstone at the next tick (the module docstring). Stored states are written
        by ``tick``."""
        wanted: dict[RolloutKey, Rollout] = {}
        for group, models in policy.models.items():
            for dep in models.deployments:
                if dep.rollout is not None:
                    wanted[RolloutKey(group, dep.provider, dep.model)] = dep.rollout
        now = self._clock()
        for key in list(self._rollouts):
            if key not in wanted:
                self._forget(self._rollouts.pop(key))
                self._dropped[key] = now
        for key, config in wanted.items():
            found = self._rollouts.get(key)
            if found is None:
                # Added back before its tombstone was written: it is still written (removed at
                # ``_dropped[key]``, before ``added_at``), and the rollout starts over.
                self._rollouts[key] = _Rollout(key, config, now)
            else:
                found.config = config
        self._sweep = True
        for group in policy.models:
            if not any(k.group == group for k in wanted):
                self._router.set_rollout(group, None)
        for rollout in self._rollouts.values():
            self._apply(rollout)

    def _forget(self, rollout: _Rollout) -> None:
        if rollout.smoke is not None:
            rollout.smoke.cancel()
        child = (rollout.key.group, rollout.key.provider, rollout.key.model)
        self._metrics.rollout_step.children.pop(child, None)

    # ----- the loop

    async def running(self, _: object = None) -> AsyncIterator[None]:
        """Start the store, run ``tick`` every ``poll_s`` until the app stops (a cleanup context)."""
        await self._store.start()
        task = asyncio.create_task(self._loop())
        try:
            yield
        finally:
            await stop_task(task)
            for rollout in self._rollouts.values():
                if rollout.smoke is not None:
                    rollout.smoke.cancel()
            await self._store.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except self._store.failures as exc:  # the store is down: keep the last state
                self._store_failed(exc)
            except Exception:  # a bug: keep the last state, say so, try again
                log.exception("rollout tick failed")
            else:
                self._store_answered()
            await asyncio.sleep(self.poll_s)

    def _store_failed(self, exc: BaseException) -> None:
        """Say that the store failed, once an outage: the loop retries every ``poll_s`` and an
        operator's action may be retried as often meanwhile."""
        if not self._store_down:
            self._store_down = True
            log.warning("rollout store unavailable: %s: %s", type(exc).__name__, exc)

    def _store_answered(self) -> None:
        if self._store_down:
            self._store_down = False
            log.info("rollout store recovered")

    async def tick(self) -> None:
        """One round: write the tombstones of rollouts the policy dropped, read every rollout's
        state (creating new ones, starting over removed ones this policy added back), start
        smoke prompts, judge the gates and advance steps; forget orphaned states."""
        for key, removed_at in list(self._dropped.items()):
            await self._store.write(key, "remove", RolloutState.removed(removed_at))
            if self._dropped.get(key) == removed_at:
                del self._dropped[key]
        if self._sweep:
            self._sweep = False
            await self._forget_orphans()
        for rollout in list(self._rollouts.values()):
            now = self._clock()
            state = await self._store.load(rollout.key)
            if state is None:
                _, state = await self._store.write(rollout.key, "create", RolloutState.initial(now))
            elif self._starts_over(rollout, state, now):
                # Removed before this replica's policy took it in (added back), or run by no
                # replica for ORPHAN_S: a new rollout.
                log.info("rollout %s starts over (%s before)", rollout.key.id, state.status)
                _, state = await self._store.write(
                    rollout.key, "cas", RolloutState.initial(now), state.version
                )
            elif now - state.seen_at >= TOUCH_S:
                await self._store.touch(rollout.key, now)
            if rollout.key not in self._rollouts:  # dropped by a reconfigure meanwhile
                continue
            self._set(rollout, state)
            if state is None or state.status == "removed":
                continue  # held at share 0: a newer policy dropped it, this one follows soon
            if state.status == "pending_smoke":
                if rollout.smoke is None or rollout.smoke.done():
                    rollout.smoke = asyncio.create_task(self.smoke(rollout.key))
            elif state.status in ("rolling", "paused"):
                await self._judge(rollout, state, now)

    @staticmethod
    def _starts_over(rollout: _Rollout, state: RolloutState, now: float) -> bool:
        if state.status == "removed":
            return state.updated_at <= rollout.added_at or now - state.updated_at >= HOLD_S
        return now - state.seen_at > ORPHAN_S

    async def _forget_orphans(self) -> None:
        """Delete the stored states of rollouts not in this policy that no replica has run (nor
        removed) for ``ORPHAN_S``; another replica may run the rest."""
        now = self._clock()
        for key in await self._store.keys():
            if key in self._rollouts or key in self._dropped:
                continue
            state = await self._store.load(key)
            if state is not None and now - max(state.seen_at, state.updated_at) > ORPHAN_S:
                await self._store.delete(key)
                log.info("rollout %s forgotten: no replica has run it for %g s", key.id, ORPHAN_S)

    async def _judge(self, rollout: _Rollout, state: RolloutState, now: float) -> None:
        slot = self._router.rollout(rollout.key.group)
        if slot is None:
            return
        gates = rollout.config.gates
        since = state.step_started_at
        own = self._samples(slot.candidate, since)
        others = [s for t in slot.others for s in self._samples(t, since)]
        floor_s = self._router.policy.routing.latency_floor_ms / 1000
        verdict = judge(own, others, gates, floor_s)
        step = rollout.config.steps[min(state.step_index, len(rollout.config.steps) - 1)]
        if verdict.failed is not None:
            reason = f"step {step:g}%: {verdict.failed} ({verdict.figures})"
            await self._write(rollout, "rollback", state.moved("rolled_back", now, reason=reason))
            log.warning("rollout %s rolled back: %s", rollout.key.id, reason)
            return
        if state.status != "rolling" or now - since < rollout.config.hold_s:
            return
        if verdict.attempts < gates.min_requests:
            return  # too little traffic to judge: hold on
        last = len(rollout.config.steps) - 1
        nxt = state.step_index + 1
        moved = state.moved("promoted" if nxt >= last else "rolling", now, step_index=min(nxt, last))
        await self._write(rollout, "cas", moved, state.version)

    def _samples(self, target: Target, since: float) -> list[tuple[float, float, int, int]]:
        watched = self._watched.get((target.provider, target.model))
        return watched.watch.since(since) if watched is not None else []

    # ----- smoke prompts

    async def smoke(self, key: RolloutKey) -> None:
        """Send the rollout's smoke prompts to its candidate; all pass: rolling (or promoted when
        its only step is 100); one fails: rolled back with the reason."""
        rollout = self._rollouts.get(key)
        slot = self._router.rollout(key.group)
        if rollout is None or slot is None or rollout.state is None:
            return
        state = rollout.state
        with self._router.side_call():  # a reload does not close the candidate's client under it
            failure = await self._smoke_failure(slot.candidate, rollout.config)
        now = self._clock()
        if failure is not None:
            await self._write(rollout, "rollback", state.moved("rolled_back", now, reason=failure))
            log.warning("rollout %s failed its smoke prompts: %s", key.id, failure)
            return
        status: Status = "promoted" if len(rollout.config.steps) == 1 else "rolling"
        await self._write(rollout, "cas", state.moved(status, now, step_index=0), state.version)

    async def smoke_finished(self) -> None:
        """Wait for the smoke prompts running now (started by ``tick``) to finish."""
        tasks = [r.smoke for r in self._rollouts.values() if r.smoke is not None]
        if tasks:
            await asyncio.wait(tasks)

    async def _smoke_failure(self, target: Target, config: Rollout) -> str | None:
        """Why the smoke prompts failed on ``target``, None when every answer held its ``expect``."""
        client, adapter = target.client, target.client.adapter
        if not client.configured:
            return "smoke: the provider's key is not set"
        for i, prompt in enumerate(config.smoke):
            body: dict[str, Any] = {
                "model": target.model,
                "messages": [m.model_dump() for m in prompt.messages],
                "stream": False,
            }
            try:
                async with asyncio.timeout(_SMOKE_TIMEOUT_S):
                    _, parsed = await client.fetch_json(
                        adapter.build_request(Endpoint.CHAT, body, target.model)
                    )
                translated = adapter.translate_response(Endpoint.CHAT, parsed, body, target.model)
            except (GatewayError, TimeoutError) as exc:
                return f"smoke prompt {i}: {type(exc).__name__}: {exc}"[:500]
            text = _answer_text(translated if translated is not None else parsed)
            if prompt.expect.lower() not in text.lower():
                return f"smoke prompt {i}: the answer does not contain {prompt.expect!r}: {text[:200]!r}"
        return None

    # ----- by hand

    async def act(self, group: str, action: Action) -> RolloutState:
        """``action`` on the group's rollout, by the operator; 409 when it does not
        apply to the state (a concurrent change is retried on the state it left), 503 when the
        store cannot be reached (a traceback and a 500 per call before)."""
        rollout = self._find(group)
        try:
            state = await self._act(rollout, group, action)
        except self._store.failures as exc:
            self._store_failed(exc)
            raise ServiceUnavailable(
                f"The rollout store cannot be reached, so the rollout in model group {quoted(group)} "
                "was not changed; it keeps its last state. Try again once Redis answers.",
                code="rollout_store_unavailable",
            ) from None
        self._store_answered()
        return state

    async def _act(self, rollout: _Rollout, group: str, action: Action) -> RolloutState:
        for _ in range(5):
            state = await self._store.load(rollout.key)
            if state is None:
                raise _conflict(f"The rollout in model group {quoted(group)} has not started yet.")
            if state.status == "removed":
                raise _conflict(
                    f"The rollout in model group {quoted(group)} was removed by another replica's policy "
                    "(newer than this one's, which follows within a minute or so)."
                )
            moved = _manual(state, action, self._clock())
            if moved is None:
                raise _conflict(
                    f"Cannot {action} the rollout of {rollout.key.provider}/{rollout.key.model} in "
                    f"model group {quoted(group)}: it is {state.status}."
                )
            if await self._write(rollout, "cas", moved, state.version):
                log.info("rollout %s: %s by hand", rollout.key.id, action)
                return rollout.state or moved
        raise _conflict(f"The rollout in model group {quoted(group)} keeps changing; try again.")

    def _find(self, group: str) -> _Rollout:
        for key, rollout in self._rollouts.items():
            if key.group == group:
                return rollout
        raise NotFound(
            f"No rollout in model group {quoted(group)}; rollouts: "
            + (listed(sorted({k.group for k in self._rollouts})) or "none"),
            param="model",  # the field of the request body that named it
            code="rollout_not_found",
        )

    # ----- state changes

    async def _write(
        self, rollout: _Rollout, mode: WriteMode, state: RolloutState, expected: int = 0
    ) -> bool:
        written, stored = await self._store.write(rollout.key, mode, state, expected)
        if rollout.key in self._rollouts:
            self._set(rollout, stored)
        if written and stored is not None and stored.status in FINISHED:
            self._metrics.child(self._metrics.rollouts, stored.status).inc()
        return written

    def _set(self, rollout: _Rollout, state: RolloutState | None) -> None:
        if state != rollout.state:
            rollout.state = state
        self._apply(rollout)

    def _apply(self, rollout: _Rollout) -> None:
        """Hand the rollout's share to the router, its watches to the deployments it judges."""
        key, state = rollout.key, rollout.state
        steps = rollout.config.steps
        share = share_of(state, steps)
        self._metrics.child(self._metrics.rollout_step, key.group, key.provider, key.model).set(share * 100)
        targets = self._router.targets(key.group)
        candidate = next((t for t in targets if (t.provider, t.model) == (key.provider, key.model)), None)
        if candidate is None or (state is not None and state.status == "promoted"):
            self._router.set_rollout(key.group, None)
        else:
            self._router.set_rollout(
                key.group,
                RolloutSlot(
                    key,
                    candidate,
                    tuple(t for t in targets if t is not candidate),
                    share,
                    state.status if state is not None else None,
                    state.step_index if state is not None else 0,
                    tuple(steps),
                    state.reason if state is not None else "",
                ),
            )
        self._rewatch()

    def _rewatch(self) -> None:
        """Watch the deployments of every group whose rollout is judged now; unwatch the rest."""
        wanted: dict[tuple[str, str], DeploymentState] = {}
        for rollout in self._rollouts.values():
            if rollout.state is not None and rollout.state.status in ("rolling", "paused"):
                for t in self._router.targets(rollout.key.group):
                    wanted[(t.provider, t.model)] = t.live
        for dep, watched in list(self._watched.items()):
            if wanted.get(dep) is not watched.live:
                watched.live.watch = None
                del self._watched[dep]
        for dep, live in wanted.items():
            if dep not in self._watched:
                watch = RolloutWatch(self._clock)
                live.watch = watch
                self._watched[dep] = _Watched(live, watch)

    # ----- views

    def views(self) -> list[dict[str, Any]]:
        """Every rollout of the policy with its state (``GET /admin/rollouts``)."""
        return [self.view(r.key.group) for r in sorted(self._rollouts.values(), key=lambda r: r.key)]

    def view(self, group: str) -> dict[str, Any]:
        rollout = self._find(group)
        return rollout_json(rollout.key, rollout.config, rollout.state)


def rollout_json(key: RolloutKey, config: Rollout, state: RolloutState | None) -> dict[str, Any]:
    steps = config.steps
    return {
        "object": "rollout",
        "model": key.group,
        "provider": key.provider,
        "upstream_model": key.model,
        "status": state.status if state is not None else "pending_smoke",
        "step_index": state.step_index if state is not None else 0,
        "step_percent": round(share_of(state, steps) * 100, 4),
        "steps": steps,
        "hold_s": config.hold_s,
        "gates": config.gates.model_dump(),
        "step_started_at": state.step_started_at if state is not None else None,
        "updated_at": state.updated_at if state is not None else None,
        "reason": state.reason if state is not None else "",
    }


def _manual(state: RolloutState, action: Action, now: float) -> RolloutState | None:
    """The state ``action`` leads to from ``state``, None when it does not apply."""
    status = state.status
    if action == "pause":
        return state.moved("paused", now) if status == "rolling" else None
    if action == "resume":
        if status == "paused":
            return state.moved("rolling", now)  # a fresh hold at the same step
        if status in ("rolled_back", "aborted"):
            return state.moved("pending_smoke", now, step_index=0)  # start over, smoke first
        return None
    if action == "promote":
        return state.moved("promoted", now) if status != "promoted" else None
    return state.moved("aborted", now, reason="aborted by hand") if status not in FINISHED else None


def _answer_text(body: object) -> str:
    """The text of a chat completion's first choice ('' when there is none)."""
    try:
        content = body["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""
