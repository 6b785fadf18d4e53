"""Routing and failover probed from outside (h-route): real gateway and fake-provider processes
of two kinds (OpenAI and Anthropic wire formats), the official ``openai`` and ``anthropic`` SDKs
as clients, faults injected through ``POST /_fake/faults``.

Each test has its own model group (so its own per-deployment figures and breakers) and each
mutable fake is put back to health after every test. The mutable fakes are named for what they
speak: ``gpt_m`` (OpenAI) and ``claude_m`` (Anthropic); ``gpt`` and ``claude`` stay healthy.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

CLAUDE_KEY = "sk-ant-route-probe-0123456789abcdef"
GPT_KEY = "sk-gpt-route-probe-0123456789abcdef"
WRONG_KEY = "sk-wrong-route-probe-0123456789abcdef"
FAKES = {
    "gpt_m": ["--require-key", GPT_KEY],
    "claude_m": ["--flavor", "anthropic", "--require-key", CLAUDE_KEY],
    "gpt": [],
    "claude": ["--flavor", "anthropic"],
    "hang_a": ["--hang-rate", "1"],
    "hang_b": ["--flavor", "anthropic", "--hang-rate", "1"],
}
HEALTHY = {
    "latency_ms": 0, "ttft_ms": 0, "tokens_per_s": 0, "error_rate": 0, "error_status": 500,
    "retry_after": None, "hang_rate": 0, "reset_rate": 0, "malformed_rate": 0, "disconnect_rate": 0,
}  # fmt: skip
FIRST_BYTE_S = 1.5
DEADLINE_S = 2.0
COOLDOWN_S = 2.0
# More than one test's requests to a failing deployment, so the breakers stay shut in the
# failover tests; the breaker test fails this many requests first.
BREAKER_FAILURES = 20

GROUPS = """\
claude-first:
  strategy: ordered
  deployments:
    - {provider: claude_m, model: claude-first}
    - {provider: gpt, model: gpt-after-claude}
gpt-first:
  strategy: ordered
  deployments:
    - {provider: gpt_m, model: gpt-first}
    - {provider: claude, model: claude-after-gpt}
rate-limited:
  strategy: ordered
  deployments:
    - {provider: claude_m, model: claude-rl}
    - {provider: gpt, model: gpt-rl}
client-fault:
  strategy: ordered
  deployments:
    - {provider: claude_m, model: claude-400}
    - {provider: gpt, model: gpt-400}
bad-key:
  strategy: ordered
  deployments:
    - {provider: claude_badkey, model: claude-badkey}
    - {provider: gpt, model: gpt-badkey}
all-down:
  deployments:
    - {provider: gpt_m, model: down-a}
    - {provider: claude_m, model: down-b}
all-hang:
  retry: {max_attempts: 4, deadline_s: %(deadline)s}
  strategy: ordered
  deployments:
    - {provider: hang_a, model: hang-a}
    - {provider: hang_b, model: hang-b}
    - {provider: gpt, model: never-reached}
left:
  strategy: ordered
  deployments:
    - {provider: hang_a, model: left-a}
    - {provider: hang_b, model: left-b}
every-attempt-fails:
  strategy: ordered
  deployments:
    - {provider: gpt_m, model: fails-a}
    - {provider: claude_m, model: fails-b}
weighted-down:
  strategy: weighted
  deployments:
    - {provider: claude_m, model: claude-w, weight: 1}
    - {provider: gpt, model: gpt-w, weight: 0}
"""


def _provider(name: str, kind: str, url: str, key_env: str | None = None) -> str:
    key = f"    api_key_env: {key_env}\n" if key_env else ""
    return (
        f"  {name}:\n    kind: {kind}\n    base_url: {url}/v1\n"
        f"    timeouts: {{connect_s: 1, first_byte_s: {FIRST_BYTE_S}, total_s: 20}}\n{key}"
    )


def policy(fakes: dict[str, ManagedProcess]) -> str:
    u = {n: p.url for n, p in fakes.items()}
    providers = "".join(
        [
            _provider("gpt_m", "openai", u["gpt_m"], "R_GPT_KEY"),
            _provider("claude_m", "anthropic", u["claude_m"], "R_CLAUDE_KEY"),
            _provider("claude_badkey", "anthropic", u["claude_m"], "R_WRONG_KEY"),
            _provider("gpt", "openai", u["gpt"]),
            _provider("claude", "anthropic", u["claude"]),
            _provider("hang_a", "openai", u["hang_a"]),
            _provider("hang_b", "anthropic", u["hang_b"]),
        ]
    )
    head = textwrap.dedent(
        f"""\
        version: 1
        auth: {{mode: open}}
        breaker: {{consecutive_failures: {BREAKER_FAILURES}, min_requests: 1000, cooldown_s: {COOLDOWN_S}}}
        retry: {{max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}}
        providers:
        """
    )
    groups = GROUPS % {"deadline": DEADLINE_S}
    return head + providers + "models:\n" + textwrap.indent(groups, "  ")


@dataclass
class Stack:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]

    def openai(self, timeout_s: float = 20) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.url + "/v1", api_key="c", max_retries=0, timeout=timeout_s)

    def azure(self) -> openai.AzureOpenAI:
        return openai.AzureOpenAI(
            azure_endpoint=self.gateway.url, api_key="c", api_version="2024-10-21", max_retries=0, timeout=20
        )

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gateway.url, api_key="c", max_retries=0, timeout=20)

    def faults(self, fake: str, **faults: object) -> None:
        _post(self.fakes[fake].url + "/_fake/faults", {**HEALTHY, **faults})
        _post(self.fakes[fake].url + "/_fake/reset", {})

    def calls(self, fake: str) -> int:
        with urllib.request.urlopen(self.fakes[fake].url + "/_fake/stats", timeout=5) as resp:
            return int(json.loads(resp.read())["requests"])


def _post(url: str, body: object) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=5).read()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    fakes = start_fakes(FAKES)
    path = tmp_path_factory.mktemp("route") / "route.yaml"
    path.write_text(policy(fakes))
    gateway = None
    try:
        env = {"R_GPT_KEY": GPT_KEY, "R_CLAUDE_KEY": CLAUDE_KEY, "R_WRONG_KEY": WRONG_KEY}
        gateway = start_gateway(path, env=env)
        yield Stack(gateway, fakes)
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()


@pytest.fixture(autouse=True)
def healthy_again(stack: Stack) -> Iterator[None]:
    yield
    for name in ("gpt_m", "claude_m"):
        stack.faults(name)


ASK: Any = [{"role": "user", "content": "hello"}]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SCHEMA: Any = {
    "type": "json_schema",
    "json_schema": {
        "name": "w",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def _route(headers: Any) -> tuple[str, str, str]:
    return (headers["x-gateway-provider"], headers["x-gateway-attempts"], headers["x-gateway-fallback"])


def _every_door(stack: Stack, model: str) -> dict[str, tuple[str, str, str]]:
    """One request per door and shape to ``model``; each door's route headers, checked after
    its answer was read whole (a stream to its end)."""
    oc, az, ac = stack.openai(), stack.azure(), stack.anthropic()
    seen: dict[str, tuple[str, str, str]] = {}
    raw: Any = oc.chat.completions.with_raw_response.create(model=model, messages=ASK)
    assert raw.parse().choices[0].message.content
    seen["chat"] = _route(raw.headers)
    raw = oc.chat.completions.with_raw_response.create(
        model=model, messages=ASK, tools=[WEATHER], tool_choice="required"
    )
    assert raw.parse().choices[0].message.tool_calls[0].function.name == "get_weather"
    seen["chat tools"] = _route(raw.headers)
    raw = oc.chat.completions.with_raw_response.create(model=model, messages=ASK, response_format=SCHEMA)
    assert json.loads(raw.parse().choices[0].message.content)["city"]
    seen["chat json_schema"] = _route(raw.headers)
    raw = oc.chat.completions.with_raw_response.create(model=model, messages=ASK, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    seen["chat stream"] = _route(raw.headers)
    raw = ac.messages.with_raw_response.create(model=model, max_tokens=50, messages=ASK)
    assert raw.parse().content[0].type == "text"
    seen["messages"] = _route(raw.headers)
    raw = ac.messages.with_raw_response.create(model=model, max_tokens=50, messages=ASK, stream=True)
    assert [e.type for e in raw.parse()][-1] == "message_stop"
    seen["messages stream"] = _route(raw.headers)
    raw = oc.responses.with_raw_response.create(model=model, input="hello")
    assert raw.parse().output_text
    seen["responses"] = _route(raw.headers)
    raw = oc.responses.with_raw_response.create(model=model, input="hello", stream=True)
    assert [e.type for e in raw.parse()][-1] == "response.completed"
    seen["responses stream"] = _route(raw.headers)
    raw = az.chat.completions.with_raw_response.create(model=model, messages=ASK)
    assert raw.parse().choices[0].message.content
    seen["azure"] = _route(raw.headers)
    raw = az.chat.completions.with_raw_response.create(model=model, messages=ASK, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    seen["azure stream"] = _route(raw.headers)
    return seen


@pytest.mark.parametrize(
    ("model", "down", "fault", "serving"),
    [
        ("claude-first", "claude_m", {"error_rate": 1, "error_status": 500}, "gpt"),
        ("claude-first", "claude_m", {"reset_rate": 1}, "gpt"),
        ("gpt-first", "gpt_m", {"error_rate": 1, "error_status": 503}, "claude"),
        ("gpt-first", "gpt_m", {"malformed_rate": 1}, "claude"),
    ],
    ids=[
        "anthropic-500-to-openai",
        "anthropic-reset-to-openai",
        "openai-503-to-anthropic",
        "openai-junk-to-anthropic",
    ],
)
def test_a_request_fails_over_across_provider_kinds_on_every_door(
    stack: Stack, model: str, down: str, fault: dict[str, object], serving: str
) -> None:
    """Each door and shape (tools, json_schema, streams before their first byte) is served by
    the other kind, the client none the wiser but for ``x-gateway-attempts: 2`` and
    ``x-gateway-fallback: true``; the failing deployment is asked once per request."""
    stack.faults(down, **fault)
    seen = _every_door(stack, model)
    assert set(seen.values()) == {(serving, "2", "true")}, seen
    assert stack.calls(down) == len(seen)


def test_a_429_sets_its_deployment_aside_for_its_retry_after_on_every_door(stack: Stack) -> None:
    """An Anthropic deployment answering 429 with ``retry-after: 2``: the request that met it
    is served by the OpenAI one at once; requests in the next two seconds, on any door, do not
    call it at all, and say ``x-gateway-fallback: true`` with one attempt (the policy's first
    choice is set aside: the service is degraded, though nothing failed them); after them, one
    request asks it again."""
    stack.faults("claude_m", error_rate=1, error_status=429, retry_after=2)
    oc, ac = stack.openai(), stack.anthropic()
    started = time.monotonic()
    raw: Any = oc.chat.completions.with_raw_response.create(model="rate-limited", messages=ASK)
    assert _route(raw.headers) == ("gpt", "2", "true")
    routes = []
    while time.monotonic() - started < 1.5:
        raw = ac.messages.with_raw_response.create(model="rate-limited", max_tokens=20, messages=ASK)
        routes.append(_route(raw.headers))
        raw = oc.responses.with_raw_response.create(model="rate-limited", input="hello")
        routes.append(_route(raw.headers))
        time.sleep(0.1)
    assert set(routes) == {("gpt", "1", "true")}
    assert stack.calls("claude_m") == 1  # not hammered while it said to wait
    time.sleep(max(0.0, 2.2 - (time.monotonic() - started)))
    raw = oc.chat.completions.with_raw_response.create(model="rate-limited", messages=ASK)
    assert _route(raw.headers) == ("gpt", "2", "true") and stack.calls("claude_m") == 2


def test_the_clients_400_is_not_retried_but_a_kind_that_cannot_serve_is(stack: Stack) -> None:
    """A provider's 400 is the request's fault: relayed on each door, no other deployment asked.
    A request only the OpenAI kind can serve (``n: 2``, ``logprobs``) moves on from Anthropic."""
    stack.faults("claude_m", error_rate=1, error_status=400)
    before = stack.calls("gpt")
    oc, ac = stack.openai(), stack.anthropic()
    with pytest.raises(openai.BadRequestError) as chat_err:
        oc.chat.completions.create(model="client-fault", messages=ASK)
    with pytest.raises(anthropic.BadRequestError) as msg_err:
        ac.messages.create(model="client-fault", max_tokens=20, messages=ASK)
    with pytest.raises(openai.BadRequestError):
        list(oc.chat.completions.create(model="client-fault", messages=ASK, stream=True))
    assert chat_err.value.response.headers["x-gateway-attempts"] == "1"
    assert msg_err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert stack.calls("gpt") == before and stack.calls("claude_m") == 3
    stack.faults("claude_m")
    for extra in ({"n": 2}, {"logprobs": True}):
        raw: Any = oc.chat.completions.with_raw_response.create(model="claude-first", messages=ASK, **extra)
        assert _route(raw.headers) == ("gpt", "2", "true")


def test_a_refused_provider_key_fails_over_and_is_logged_without_the_key(stack: Stack) -> None:
    before = stack.calls("claude_m")
    oc, ac = stack.openai(), stack.anthropic()
    raw: Any = oc.chat.completions.with_raw_response.create(model="bad-key", messages=ASK)
    assert _route(raw.headers) == ("gpt", "2", "true")
    raw = ac.messages.with_raw_response.create(model="bad-key", max_tokens=20, messages=ASK)
    assert _route(raw.headers) == ("gpt", "2", "true")
    assert stack.calls("claude_m") == before + 2
    lines = [json.loads(line) for line in stack.gateway.output.splitlines() if line.startswith("{")]
    refused = [x for x in lines if x.get("msg") == "provider refused the gateway's credentials"]
    assert refused and refused[-1]["provider"] == "claude_badkey" and refused[-1]["status"] == 401
    assert WRONG_KEY not in stack.gateway.output and WRONG_KEY[-8:] not in stack.gateway.output


def test_a_group_all_down_answers_fast_in_each_doors_envelope(stack: Stack) -> None:
    """Both deployments refusing connections: once their breakers open, each door answers at
    once, in its own envelope, with a Retry-After; with every breaker half-open and its probe
    in flight (a hanging provider), ``Retry-After: 1``, not 0."""
    stack.faults("gpt_m", reset_rate=1)
    stack.faults("claude_m", reset_rate=1)
    oc, ac, az = stack.openai(), stack.anthropic(), stack.azure()
    for _ in range(BREAKER_FAILURES):
        with pytest.raises(openai.APIStatusError):
            oc.chat.completions.create(model="all-down", messages=ASK)
    calls = stack.calls("gpt_m") + stack.calls("claude_m")
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as chat_err:
        oc.chat.completions.create(model="all-down", messages=ASK)
    with pytest.raises(anthropic.APIStatusError) as msg_err:
        ac.messages.create(model="all-down", max_tokens=20, messages=ASK)
    with pytest.raises(openai.InternalServerError) as az_err:
        az.chat.completions.create(model="all-down", messages=ASK)
    assert time.monotonic() - started < 0.5
    assert stack.calls("gpt_m") + stack.calls("claude_m") == calls  # nobody was called
    assert chat_err.value.status_code == 503 and chat_err.value.code == "no_healthy_deployment"
    assert az_err.value.status_code == 503 and az_err.value.code == "no_healthy_deployment"
    assert msg_err.value.status_code == 529
    assert msg_err.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    for err in (chat_err, msg_err, az_err):
        assert err.value.response.headers["retry-after"] in ("1", "2")
        assert err.value.response.headers["x-should-retry"] == "false"

    stack.faults("gpt_m", hang_rate=1)
    stack.faults("claude_m", hang_rate=1)
    time.sleep(COOLDOWN_S + 0.1)  # both half-open

    async def probe_and_ask() -> openai.APIStatusError:
        client = openai.AsyncOpenAI(base_url=stack.gateway.url + "/v1", api_key="c", max_retries=0)
        async with client:
            probes = [
                asyncio.ensure_future(client.chat.completions.create(model="all-down", messages=ASK))
                for _ in range(2)
            ]
            await asyncio.sleep(0.3)  # both probes taken, both hanging
            try:
                await client.chat.completions.create(model="all-down", messages=ASK)
            except openai.APIStatusError as exc:
                return exc
            finally:
                await asyncio.gather(*probes, return_exceptions=True)
            raise AssertionError("served while every probe was in flight")

    err = asyncio.run(probe_and_ask())
    assert err.status_code == 503 and err.response.headers["retry-after"] == "1"
    assert "Retry in 1 s" in err.message


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_retries_end_at_the_deadline_not_after_another_first_byte_timeout(stack: Stack, stream: bool) -> None:
    """Every deployment hanging, ``first_byte_s`` 1.5, ``retry.deadline_s`` 2: the second attempt
    started at 1.5 s waited out its own 1.5 s, so the client waited 3 s for a 2 s deadline."""
    oc = stack.openai()
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        answer = oc.chat.completions.create(model="all-hang", messages=ASK, stream=stream)
        if stream:
            list(answer)  # type: ignore[arg-type]
    took = time.monotonic() - started
    assert DEADLINE_S - 0.1 < took < DEADLINE_S + 0.6, took
    assert err.value.status_code == 504 and err.value.code == "deadline_exceeded"
    assert err.value.response.headers["x-gateway-attempts"] == "2"


def test_no_upstream_call_after_the_client_left(stack: Stack) -> None:
    """A client that gives up while the first deployment hangs: the attempt is cancelled and no
    failover starts for nobody, whole or streamed."""
    before = (stack.calls("hang_a"), stack.calls("hang_b"))
    for stream in (False, True):
        with pytest.raises(openai.APITimeoutError):
            stack.openai(timeout_s=0.5).chat.completions.create(model="left", messages=ASK, stream=stream)
    time.sleep(FIRST_BYTE_S + 0.5)  # when a failover would have started
    assert (stack.calls("hang_a"), stack.calls("hang_b")) == (before[0] + 2, before[1])


def _access_line(stack: Stack, request_id: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for line in stack.gateway.output.splitlines():
            if line.startswith("{") and request_id in line:
                entry = json.loads(line)
                if entry.get("logger") == "gateway.access" and entry["request_id"] == request_id:
                    return entry  # type: ignore[no-any-return]
        return None

    deadline = time.monotonic() + 5
    while (entry := found()) is None:  # the access log writes in batches every 50 ms
        assert time.monotonic() < deadline, "no access-log line"
        time.sleep(0.02)
    return entry


def test_the_access_line_of_a_request_every_attempt_failed_names_each_attempt(stack: Stack) -> None:
    """Both deployments answering 500: three attempts (OpenAI, Anthropic, OpenAI again). The
    line said ``fallback: false`` and named only the last provider; now ``fallback: true`` (the
    request went past its first choice) and ``failed_attempts`` lists each, in order."""
    stack.faults("gpt_m", error_rate=1, error_status=500)
    stack.faults("claude_m", error_rate=1, error_status=503)
    with pytest.raises(openai.InternalServerError) as err:
        stack.openai().chat.completions.create(model="every-attempt-fails", messages=ASK)
    assert err.value.response.headers["x-gateway-attempts"] == "3"
    line = _access_line(stack, err.value.response.headers["x-request-id"])
    assert (line["attempts"], line["fallback"], line["provider"]) == (3, True, "gpt_m")
    assert [(a["provider"], a["upstream_model"], a["status"]) for a in line["failed_attempts"]] == [
        ("gpt_m", "fails-a", 502),
        ("claude_m", "fails-b", 503),
        ("gpt_m", "fails-a", 502),
    ]
    assert all(a["code"] for a in line["failed_attempts"])


def test_weighted_fallback_only_deployment_serves_when_the_weighted_one_fails(stack: Stack) -> None:
    stack.faults("claude_m", error_rate=1, error_status=500)
    oc = stack.openai()
    routes = {
        _route(oc.chat.completions.with_raw_response.create(model="weighted-down", messages=ASK).headers)
        for _ in range(5)
    }
    assert routes == {("gpt", "2", "true")}
