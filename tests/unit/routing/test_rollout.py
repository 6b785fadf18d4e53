"""The rollout state machine on a real router and real provider clients answered in process
(MockTransport), with a fake clock, the file store in a temporary directory, and exact draws."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import orjson
import pytest

from gateway.errors import GatewayError, HTTPStatusError, UpstreamStatusError
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.loader import PolicyError, parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.providers.client import ProviderClient
from gateway.providers.openai import OpenAIAdapter
from gateway.routing.explain import render, snapshot
from gateway.routing.rollout import RolloutController
from gateway.routing.rollout_state import RolloutKey, RolloutState, judge
from gateway.routing.rollout_store import FileRolloutStore, RolloutStore
from gateway.routing.router import Router
from gateway.routing.target import RouteContext, Target
from gateway.testing.mock_transport import MockResponse, MockTransport

POLICY = """
version: 1
providers:
  old: {kind: openai, base_url: http://old/v1}
  new: {kind: openai, base_url: http://new/v1}
models:
  chat:
    strategy: ordered
    deployments:
      - {provider: old, model: o1}
      - provider: new
        model: n1
        rollout:
          steps: [10, 25, 50, 100]
          hold_s: 60
          gates: {max_error_rate: 0.05, max_latency_ratio: 1.5, min_requests: 20}
          smoke: [{messages: [{role: user, content: ping}], expect: PONG}]
  other: {deployments: [{provider: old, model: o2}]}
"""
KEY = RolloutKey("chat", "new", "n1")
WITHOUT_ROLLOUT = re.sub(r"        rollout:\n(?:          .*\n)+", "", POLICY)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _reply(text: str) -> MockResponse:
    return MockResponse.json({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})


class Rig:
    """A router, a controller and the answer the candidate's smoke prompts get."""

    def __init__(
        self, tmp: Path, text: str = POLICY, *, store: RolloutStore | None = None, clock: Clock | None = None
    ) -> None:
        self.clock = clock or Clock()
        self.smoke_answer = "pong!"
        self.smoke_calls = 0

        def new(request: UpstreamRequest) -> MockResponse:
            self.smoke_calls += 1
            return _reply(self.smoke_answer)

        self.policy = parse_policy(text)
        adapter = OpenAIAdapter()
        clients = {
            name: ProviderClient(
                name, cfg, adapter, None, MockTransport(new if name == "new" else lambda r: _reply("ok"))
            )
            for name, cfg in self.policy.providers.items()
        }
        self.metrics = GatewayMetrics()
        self.router = Router(self.policy, clients, self.metrics, rng=random.Random(3), clock=self.clock)
        self.store = store or FileRolloutStore(tmp / "rollouts.json")
        self.ctl = RolloutController(self.router, self.store, self.metrics, clock=self.clock)

    async def state(self) -> RolloutState:
        state = await self.store.load(KEY)
        assert state is not None
        return state

    async def started(self) -> RolloutState:
        """Tick until the smoke prompts ran: the rollout's state after them."""
        await self.ctl.tick()  # creates the state, starts the smoke task
        await self.ctl.smoke_finished()
        return await self.state()

    def targets(self) -> tuple[Target, Target]:
        old, new = self.router.targets("chat")
        return old, new

    def traffic(
        self, n: int, *, errors: int = 0, latency_s: float = 0.01, old_latency_s: float = 0.01
    ) -> None:
        """``n`` attempts on the candidate (``errors`` of them 5xx) and ``n`` on the incumbent,
        reported as the router reports them."""
        old, new = self.targets()
        for i in range(n):
            if i < errors:
                self.router._attempt_failed(new, UpstreamStatusError(500, "boom"))
            else:
                self.router._attempt_succeeded(new, RouteContext("chat", {}), latency_s)
            self.router._attempt_succeeded(old, RouteContext("chat", {}), old_latency_s)

    def share(self) -> float:
        slot = self.router.rollout("chat")
        return -1.0 if slot is None else slot.share

    def counted(self, result: str) -> float:
        child = self.metrics.rollouts.children.get((result,))
        return child.value if child is not None else 0.0


async def test_advances_through_every_step_and_is_promoted(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    assert rig.share() == 0  # before anything is read: never served
    state = await rig.started()
    assert (state.status, state.step_index, rig.share()) == ("rolling", 0, 0.10)
    assert rig.smoke_calls == 1
    for step, share in ((1, 0.25), (2, 0.50)):
        rig.traffic(30)
        rig.clock.now += 59
        await rig.ctl.tick()
        assert (await rig.state()).step_index == step - 1  # hold not over yet
        rig.clock.now += 1
        await rig.ctl.tick()
        state = await rig.state()
        assert (state.status, state.step_index, rig.share()) == ("rolling", step, share)
        gauge = rig.metrics.rollout_step.children[("chat", "new", "n1")].value
        assert gauge == share * 100
    rig.traffic(30)
    rig.clock.now += 60
    await rig.ctl.tick()
    state = await rig.state()
    assert state.status == "promoted"
    assert rig.router.rollout("chat") is None  # the strategy routes it like any other
    assert rig.counted("promoted") == 1
    assert rig.targets()[1].live.watch is None  # the hot path pays nothing once it is over


async def test_rolls_back_on_error_rate_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.started()
    rig.traffic(19, errors=5)
    await rig.ctl.tick()
    assert (await rig.state()).status == "rolling"  # 19 < min_requests: not judged yet
    rig.traffic(1)
    await rig.ctl.tick()  # long before the hold ends
    state = await rig.state()
    assert state.status == "rolled_back"
    assert "error rate 25.0% > max_error_rate 5.0%" in state.reason
    assert "5/20 errors" in state.reason
    assert rig.share() == 0
    assert rig.counted("rolled_back") == 1


async def test_rolls_back_on_latency_ratio(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.started()
    rig.traffic(20, latency_s=0.200, old_latency_s=0.100)  # (200+20)/(100+20) = 1.83 > 1.5
    await rig.ctl.tick()
    state = await rig.state()
    assert state.status == "rolled_back"
    assert "p95 latency 200 ms is 1.83x the other deployments' 100 ms" in state.reason


async def test_latency_floor_keeps_jitter_between_fast_deployments_from_failing(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.started()
    rig.traffic(20, latency_s=0.0012, old_latency_s=0.0008)  # 1.5x, but far below the 20 ms floor
    await rig.ctl.tick()
    assert (await rig.state()).status == "rolling"


async def test_holds_with_too_few_requests(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.started()
    rig.traffic(19)
    rig.clock.now += 600  # ten holds
    await rig.ctl.tick()
    assert ((await rig.state()).status, (await rig.state()).step_index) == ("rolling", 0)
    rig.traffic(1)
    await rig.ctl.tick()
    assert (await rig.state()).step_index == 1


async def test_a_step_judges_only_its_own_window(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.started()
    rig.traffic(20, errors=1)  # 5 %: at the limit, holds
    rig.clock.now += 60
    await rig.ctl.tick()
    assert (await rig.state()).step_index == 1
    rig.traffic(19)  # the old error is not in this step
    rig.traffic(1, errors=1)  # 1/20 again
    await rig.ctl.tick()
    assert (await rig.state()).status == "rolling"


async def test_smoke_failure_rolls_back_and_never_serves(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.smoke_answer = "something else"
    state = await rig.started()
    assert state.status == "rolled_back"
    assert "does not contain 'PONG'" in state.reason and "something else" in state.reason
    ctx = RouteContext("chat", {})
    assert all(rig.router.plan(ctx)[0].provider == "old" for _ in range(200))
    assert all(len(rig.router.plan(ctx)) == 1 for _ in range(50))  # not even as a fallback


async def test_pause_resume_promote_abort(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.started()
    paused = await rig.ctl.act("chat", "pause")
    assert (paused.status, rig.share()) == ("paused", 0.10)
    rig.traffic(30)
    rig.clock.now += 600
    await rig.ctl.tick()
    assert (await rig.state()).status == "paused"  # no advancing while paused
    with pytest.raises(HTTPStatusError) as caught:
        await rig.ctl.act("chat", "pause")
    assert caught.value.http_status == 409 and "it is paused" in caught.value.message
    resumed = await rig.ctl.act("chat", "resume")
    assert (resumed.status, resumed.step_started_at) == ("rolling", rig.clock.now)  # a fresh hold
    aborted = await rig.ctl.act("chat", "abort")
    assert (aborted.status, rig.share(), aborted.reason) == ("aborted", 0, "aborted by hand")
    assert rig.counted("aborted") == 1
    restarted = await rig.ctl.act("chat", "resume")  # starts over, smoke first
    assert (restarted.status, restarted.step_index, rig.share()) == ("pending_smoke", 0, 0)
    promoted = await rig.ctl.act("chat", "promote")
    assert promoted.status == "promoted" and rig.router.rollout("chat") is None
    with pytest.raises(GatewayError) as missing:
        await rig.ctl.act("other", "pause")
    assert missing.value.http_status == 404


async def test_paused_rollout_still_rolls_back(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.started()
    await rig.ctl.act("chat", "pause")
    rig.traffic(20, errors=10)
    await rig.ctl.tick()
    assert (await rig.state()).status == "rolled_back"


async def test_state_survives_a_restart_and_a_reconfigure(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.started()
    rig.traffic(20)
    rig.clock.now += 60
    await rig.ctl.tick()
    assert (await rig.state()).step_index == 1
    again = Rig(tmp_path)  # a new process on the same store
    await again.ctl.tick()
    assert (again.router.rollout("chat") or pytest.fail()).share == 0.25
    assert again.smoke_calls == 0  # not smoke-tested again
    # New steps for the same deployment: the state is kept, its index read against them.
    changed = parse_policy(POLICY.replace("steps: [10, 25, 50, 100]", "steps: [5, 50, 100]"))
    again.ctl.reconfigure(changed)
    assert again.share() == 0.50
    # The rollout removed from the policy: its tombstone is written, the deployment routes normally.
    again.ctl.reconfigure(parse_policy(WITHOUT_ROLLOUT))
    assert again.router.rollout("chat") is None
    await again.ctl.tick()
    assert (await again.state()).status == "removed"
    assert ("chat", "new", "n1") not in again.metrics.rollout_step.children


async def test_a_replica_whose_policy_drops_the_rollout_does_not_reset_the_others(tmp_path: Path) -> None:
    """Two replicas on one store, as during a ConfigMap's sync: A's policy drops the rollout, B's
    still has it. B holds it at share 0 (it used to find no state, create one, run the smoke
    prompts again and roll the candidate at its first step: a rolled-back candidate came back)."""
    clock = Clock()
    a, b = Rig(tmp_path, clock=clock), Rig(tmp_path, clock=clock)
    await a.started()
    await b.ctl.tick()  # B reads the rolling state and watches its traffic
    b.traffic(20)
    clock.now += 60
    await b.ctl.tick()
    assert (await b.state()).step_index == 1 and b.share() == 0.25
    clock.now += 1
    a.ctl.reconfigure(parse_policy(WITHOUT_ROLLOUT))
    await a.ctl.tick()
    clock.now += 1
    await b.ctl.tick()
    await b.ctl.smoke_finished()
    assert (await b.state()).status == "removed"
    assert b.share() == 0 and b.smoke_calls == 0  # held: not created again, not smoke-tested
    with pytest.raises(HTTPStatusError) as refused:
        await b.ctl.act("chat", "promote")
    assert refused.value.http_status == 409
    # A replica starting on the older policy (a rolling update's old pod) holds it too.
    late = Rig(tmp_path, clock=clock)
    await late.ctl.tick()
    assert late.share() == 0 and (await late.state()).status == "removed"
    assert late.ctl.views()[0]["status"] == "removed"
    # Added back to the policy later: started over, smoke first (README: adding it back starts over).
    clock.now += 5
    a.ctl.reconfigure(parse_policy(POLICY))
    state = await a.started()
    assert (state.status, state.step_index, a.smoke_calls) == ("rolling", 0, 2)
    await b.ctl.tick()
    assert b.share() == 0.10  # B follows the new state


async def test_replicas_that_started_with_it_hold_a_tombstone_for_hold_s_then_start_over(
    tmp_path: Path,
) -> None:
    """A replica cannot tell an older policy it started with from one that added the rollout
    back (every pod restarted with it): it holds while the tombstone is young, then starts over."""
    from gateway.routing.rollout import HOLD_S

    remover = Rig(tmp_path)
    await remover.started()
    remover.ctl.reconfigure(parse_policy(WITHOUT_ROLLOUT))
    await remover.ctl.tick()
    restarted = Rig(tmp_path, clock=remover.clock)
    await restarted.ctl.tick()
    assert (await restarted.state()).status == "removed"
    remover.clock.now += HOLD_S
    state = await restarted.started()
    assert (state.status, restarted.smoke_calls) == ("rolling", 1)


def test_a_state_stored_before_seen_at_is_neither_forgotten_nor_started_over() -> None:
    fields = RolloutState("promoted", 3, 5.0, "", 5.0, 7).fields()
    del fields["seen_at"]
    loaded = RolloutState.from_fields(fields)
    assert loaded is not None and loaded.seen_at == float("inf")


async def test_removing_and_adding_back_before_a_tick_starts_over(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.started()
    await rig.ctl.act("chat", "abort")
    rig.ctl.reconfigure(parse_policy(WITHOUT_ROLLOUT))
    rig.clock.now += 0.5
    rig.ctl.reconfigure(parse_policy(POLICY))  # within the same second: no tick in between
    state = await rig.started()
    assert (state.status, state.step_index, rig.smoke_calls) == ("rolling", 0, 2)  # not "aborted"


async def test_only_states_no_replica_ran_for_a_day_are_forgotten(tmp_path: Path) -> None:
    from gateway.routing.rollout import ORPHAN_S, TOUCH_S

    runner = Rig(tmp_path)
    await runner.started()
    runner.clock.now += TOUCH_S
    await runner.ctl.tick()
    assert (await runner.state()).seen_at == runner.clock.now  # running it says so
    # A replica whose policy never had the rollout leaves a state another replica runs.
    other = Rig(tmp_path, WITHOUT_ROLLOUT, clock=runner.clock)
    await other.ctl.tick()
    assert (await runner.state()).status == "rolling"
    # Nobody ran it for a day: the next sweep forgets it.
    runner.clock.now += ORPHAN_S + 1
    other.ctl.reconfigure(other.policy)  # a reload sweeps again
    await other.ctl.tick()
    assert await other.store.load(KEY) is None


async def test_share_is_exact(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.started()
    rig.traffic(30)
    rig.clock.now += 60
    await rig.ctl.tick()
    assert rig.share() == 0.25
    ctx = RouteContext("chat", {})
    firsts: Counter[str] = Counter()
    for _ in range(10_000):
        plan = rig.router.plan(ctx)
        firsts[plan[0].provider] += 1
        if plan[0].provider == "new":
            assert [t.provider for t in plan] == ["new", "old"]  # the rest follow
        else:
            assert [t.provider for t in plan] == ["old"]  # the candidate is out
    assert abs(firsts["new"] / 10_000 - 0.25) <= 0.015


async def test_admin_view_and_explain_show_the_rollout(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    view = snapshot(rig.router)
    deps = view["models"]["chat"]["deployments"]
    assert deps[1]["rollout"] == {"status": "not started", "steps": [10, 25, 50, 100]}
    assert deps[0]["rollout"] is None
    await rig.started()
    view = orjson.loads(orjson.dumps(snapshot(rig.router, rig.ctl.views())))
    chat = view["models"]["chat"]["deployments"]
    assert chat[1]["rollout"]["status"] == "rolling" and chat[1]["rollout"]["step_percent"] == 10
    assert (chat[0]["share"], chat[1]["share"]) == (0.9, 0.1)
    text = render(view, "chat", rig.policy, "live")
    assert "rollout rolling 10% (step 1/4)" in text


def test_policy_refuses_two_rollouts_or_a_lone_candidate() -> None:
    two = POLICY.replace(
        "      - {provider: old, model: o1}\n",
        "      - {provider: old, model: o1, rollout: {}}\n",
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(two)
    assert "models.chat.deployments[1].rollout: a group may roll out one deployment at a time" in str(
        caught.value
    )
    lone = POLICY.replace(
        "other: {deployments: [{provider: old, model: o2}]}",
        "other: {deployments: [{provider: old, model: o2, rollout: {}}]}",
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(lone)
    assert "models.other.deployments[0].rollout: the group's only deployment cannot be rolled out" in str(
        caught.value
    )
    for steps, message in (
        ("[10, 5, 100]", "strictly increasing"),
        ("[10, 50]", "the last step must be 100"),
        ("[0, 100]", "must be above 0"),
        ("[50, 100.0000001]", "step 1 (100.0000001) must be above 0 and at most 100"),  # not "(100)"
        ("[10, 10, 100]", "strictly increasing (10 then 10)"),
    ):
        with pytest.raises(PolicyError) as caught:
            parse_policy(POLICY.replace("[10, 25, 50, 100]", steps))
        assert message in str(caught.value)


def test_judge_counts_a_cut_stream_once() -> None:
    from gateway.policy.model import RolloutGates
    from gateway.routing.rollout_state import RolloutWatch

    clock = Clock()
    watch = RolloutWatch(clock)
    watch.succeeded(0.1)  # the stream's first chunk
    watch.failed(True, answered=True)  # then cut
    watch.failed(False)  # a 400: an attempt, not an error
    verdict = judge(watch.since(0), [], RolloutGates(min_requests=1))
    assert (verdict.attempts, verdict.errors) == (2, 1)


async def test_a_damaged_entry_in_the_state_file_does_not_stop_the_others(tmp_path: Path) -> None:
    """An entry of rollouts.json edited by hand (``step_index: null``) raised TypeError in every
    tick: the rollout of the policy stayed at pending_smoke for good, and the log had an error
    each second."""
    (tmp_path / "rollouts.json").write_text(
        '{"rollouts": {"other:p:m": {"status": "rolling", "step_index": null, "step_started_at": "1",'
        ' "updated_at": "1", "version": "1"}, "more:p:m": {"status": ["rolling"]}}}'
    )
    rig = Rig(tmp_path)
    state = await rig.started()
    assert (state.status, rig.smoke_calls) == ("rolling", 1)
