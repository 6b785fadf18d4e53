"""What the official SDKs do with each error the gateway answers, as an application sees it.

The installed ``openai`` and ``anthropic`` clients run with their default retry settings
(``max_retries=2``) against a real gateway and fake providers on loopback. For each error the
table pins the exception class the SDK raises, how many HTTP requests it sent (counted at the
gateway: ``gateway_requests_total``) and the waits it chose between them (from the answer's
``retry-after-ms`` / ``retry-after`` / ``x-should-retry``, by the SDK's own
``_calculate_retry_timeout``). The clients record each wait instead of sleeping it, so the file
runs in seconds; a retry thus comes back sooner than the SDK would send it, which only matters
for the RPM case (its row says so).
"""

from __future__ import annotations

import json
import textwrap
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.process import ManagedProcess, free_port, start
from tests.e2e.conftest import start_fakes

PROVIDER_KEY = "sk-test-provider-secret-0123456789abcdef"
NOT_COUNTED = ("/metrics", "/admin", "metrics", "admin")
ASK = [{"role": "user", "content": "hi"}]

FAKES: dict[str, list[str]] = {
    "ok": [],
    "f500": ["--error-rate", "1", "--error-status", "500"],
    "f503": ["--error-rate", "1", "--error-status", "503"],
    "f429": ["--error-rate", "1", "--error-status", "429", "--retry-after", "7"],
    "f429day": ["--error-rate", "1", "--error-status", "429", "--retry-after", "3600"],
    "hang": ["--hang-rate", "1"],
    "keyed": ["--require-key", PROVIDER_KEY],
    "cut": ["--disconnect-rate", "1", "--tokens-per-s", "200", "--reply", "a b c d e f g h"],
}


def policy_text(fakes: dict[str, ManagedProcess], dead_port: int) -> str:
    def provider(name: str, url: str, extra: str = "") -> str:
        return (
            f"  {name}:\n    kind: openai\n    base_url: {url}/v1\n"
            f"    timeouts: {{connect_s: 1, first_byte_s: 0.3, total_s: 20}}\n{extra}"
        )

    providers = "".join(provider(n, p.url) for n, p in fakes.items() if n != "keyed")
    providers += provider("keyed", fakes["keyed"].url, "    api_key_env: SDKERR_WRONG_KEY\n")
    providers += provider("unset", fakes["ok"].url, "    api_key_env: SDKERR_KEY_NOT_SET\n")
    providers += provider("dead", f"http://127.0.0.1:{dead_port}")

    def model(name: str, *deps: tuple[str, str], extra: str = "") -> str:
        lines = "".join(f"      - {{provider: {p}, model: {m}}}\n" for p, m in deps)
        return f"  {name}:\n{extra}    deployments:\n{lines}"

    one = "    retry: {max_attempts: 1}\n"
    models = "".join(
        [
            model("chat", ("ok", "up-chat")),
            model("f500-chat", ("f500", "bad"), extra=one),
            model("f500-twice", ("f500", "bad2"), ("f500", "bad3"), extra="    strategy: ordered\n"),
            model("f503-chat", ("f503", "bad"), extra=one),
            model("f429-chat", ("f429", "rl")),
            model("f429day-chat", ("f429day", "rlday")),
            model("hang-chat", ("hang", "slow"), extra=one),
            model("dead-chat", ("dead", "gone"), extra=one),
            model("keyed-chat", ("keyed", "refused")),
            model("nokey-chat", ("unset", "needs-key")),
            model("cut-chat", ("cut", "cutter")),
        ]
    )
    return (
        textwrap.dedent(
            """\
        version: 1
        auth:
          mode: keys
          store: data/keys.sqlite3
          teams:
            free: {}
            tight: {rpm: 1}
            broke: {budget_usd: 0}
            small: {tpm: 20}
            chatonly: {models: [chat]}
        server: {max_body_bytes: 65536}
        breaker: {consecutive_failures: 1000000, min_requests: 1000000}
        retry: {max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}
        providers:
        """
        )
        + providers
        + "models:\n"
        + models
    )


@dataclass
class Stack:
    gateway: ManagedProcess
    keys: dict[str, str]

    @property
    def api(self) -> str:
        return self.gateway.url + "/v1"

    def requests_answered(self) -> float:
        with urllib.request.urlopen(self.gateway.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "gateway_requests_total" and not s.labels.get("endpoint", "").startswith(NOT_COUNTED)
        )

    def new_key(self, team: str) -> str:
        request = urllib.request.Request(
            f"{self.gateway.url}/admin/keys",
            data=json.dumps({"team": team}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(json.loads(answer.read())["secret"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    fakes = start_fakes(FAKES)
    policy = tmp_path_factory.mktemp("sdkerr") / "policy.yaml"
    policy.write_text(policy_text(fakes, free_port()))
    gateway = None
    try:
        gateway = start(
            ["serve", "--policy", str(policy), "--port", "0"],
            env={"SDKERR_WRONG_KEY": "sk-wrong-provider-key", "SOPHIA_LOG_FORMAT": "json"},
        )
        s = Stack(gateway, {})
        s.keys = {team: s.new_key(team) for team in ("free", "broke", "small", "chatonly")}
        yield s
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()


# ----- clients that record the waits they would sleep ---------------------------------------


class WaitsOpenAI(openai.OpenAI):
    waits: list[float]

    def _sleep_for_retry(self, *, retries_taken: int, max_retries: int, options: Any, response: Any) -> None:
        headers = response.headers if response is not None else None
        self.waits.append(self._calculate_retry_timeout(max_retries - retries_taken, options, headers))


class WaitsAnthropic(anthropic.Anthropic):
    waits: list[float]

    def _sleep_for_retry(self, *, retries_taken: int, max_retries: int, options: Any, response: Any) -> None:
        headers = response.headers if response is not None else None
        self.waits.append(self._calculate_retry_timeout(max_retries - retries_taken, options, headers))


def oai(stack: Stack, key: str = "free") -> WaitsOpenAI:
    client = WaitsOpenAI(base_url=stack.api, api_key=stack.keys.get(key, key), timeout=10)
    client.waits = []
    assert client.max_retries == 2  # the SDK's default, untouched
    return client


def claude(stack: Stack, key: str = "free") -> WaitsAnthropic:
    client = WaitsAnthropic(base_url=stack.gateway.url, api_key=stack.keys.get(key, key), timeout=10)
    client.waits = []
    assert client.max_retries == 2
    return client


@dataclass
class Seen:
    error: Exception
    attempts: int
    waits: list[float] = field(default_factory=list)

    @property
    def body(self) -> dict[str, Any]:
        body = getattr(self.error, "body", None)
        return body if isinstance(body, dict) else {}


def seen(stack: Stack, client: WaitsOpenAI | WaitsAnthropic, call: Callable[[], Any]) -> Seen:
    before = stack.requests_answered()
    with pytest.raises(Exception) as caught:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, dict | str):
            for _ in result:
                pass
    attempts = stack.requests_answered() - before
    assert attempts == len(client.waits) + 1  # every request the SDK sent reached the gateway
    return Seen(caught.value, int(attempts), list(client.waits))


# The SDKs' own backoff (no Retry-After): 0.5 s then 1 s, each less up to 25 % jitter.
BACKOFF = "backoff"


def check_waits(waits: list[float], expected: str | tuple[float, float]) -> None:
    if expected == ():
        assert waits == []
    elif expected == BACKOFF:
        assert len(waits) == 2 and 0.375 <= waits[0] <= 0.5 and 0.75 <= waits[1] <= 1.0, waits
    else:
        low, high = expected
        assert all(low <= w <= high for w in waits), waits


def long_prompt() -> list[dict[str, str]]:
    return [{"role": "user", "content": "x" * 70_000}]  # past server.max_body_bytes (64 KiB)


# (case, key, model, extra arguments, exception, requests sent, waits between them)
# On /v1/chat/completions with the openai SDK.
CHAT_CASES: list[tuple[str, str, str, dict[str, Any], type[Exception], int, Any]] = [
    ("400 invalid_value", "free", "chat", {"temperature": 3}, openai.BadRequestError, 1, ()),
    ("401 invalid_api_key", "sk-sg-unknown", "chat", {}, openai.AuthenticationError, 1, ()),
    ("404 model_not_found", "free", "nope", {}, openai.NotFoundError, 1, ()),
    ("404 model not granted to the key", "chatonly", "f500-chat", {}, openai.NotFoundError, 1, ()),
    ("413 request_too_large", "free", "chat", {"messages": long_prompt()}, openai.APIStatusError, 1, ()),
    (
        "415 unsupported_media_type",
        "free",
        "chat",
        {"extra_headers": {"Content-Type": "text/plain"}},
        openai.APIStatusError,
        1,
        (),
    ),
    ("429 insufficient_quota (budget spent)", "broke", "chat", {}, openai.RateLimitError, 1, ()),
    ("429 request too large for TPM", "small", "chat", {"max_tokens": 1000}, openai.RateLimitError, 1, ()),
    ("429 provider's, Retry-After 7", "free", "f429-chat", {}, openai.RateLimitError, 3, (0.5, 7.0)),
    ("429 provider's, Retry-After 3600", "free", "f429day-chat", {}, openai.RateLimitError, 1, ()),
    ("502 provider 500, one attempt", "free", "f500-chat", {}, openai.InternalServerError, 3, BACKOFF),
    ("502 after the gateway's own failover", "free", "f500-twice", {}, openai.InternalServerError, 1, ()),
    ("502 connection_refused", "free", "dead-chat", {}, openai.InternalServerError, 3, BACKOFF),
    ("502 provider_auth_failed", "free", "keyed-chat", {}, openai.InternalServerError, 1, ()),
    ("503 provider's 503", "free", "f503-chat", {}, openai.InternalServerError, 3, BACKOFF),
    ("503 provider_not_configured", "free", "nokey-chat", {}, openai.InternalServerError, 1, ()),
    ("504 first_byte_timeout", "free", "hang-chat", {}, openai.InternalServerError, 3, BACKOFF),
]


@pytest.mark.parametrize(
    ("key", "model", "extra", "exception", "attempts", "waits"),
    [pytest.param(*case[1:], id=case[0]) for case in CHAT_CASES],
)
def test_what_the_openai_sdk_does_with_each_chat_error(
    stack: Stack,
    key: str,
    model: str,
    extra: dict[str, Any],
    exception: type[Exception],
    attempts: int,
    waits: Any,
) -> None:
    client = oai(stack, key)
    arguments = {"model": model, "messages": ASK, **extra}
    s = seen(stack, client, lambda: client.chat.completions.create(**arguments))
    assert type(s.error) is exception, s.error
    assert s.attempts == attempts
    check_waits(s.waits, waits)
    error = s.error
    assert isinstance(error, openai.APIStatusError)
    # The envelope parsed: the gateway's own message, code and type, and the request id.
    assert error.message.startswith(f"Error code: {error.status_code} - ") and "{" not in error.message
    assert error.type and error.request_id
    assert error.code == s.body.get("code")


def test_the_openai_sdk_waits_out_a_keys_rpm_as_retry_after_says(stack: Stack) -> None:
    """RPM used up: a RateLimitError after Retry-After waits (at most the minute's rest, under
    every SDK's bound); really waited, the second try lands in the next minute and is served."""
    client = oai(stack, stack.new_key("tight"))
    client.chat.completions.create(model="chat", messages=ASK)  # type: ignore[arg-type]
    s = seen(stack, client, lambda: client.chat.completions.create(model="chat", messages=ASK))  # type: ignore[arg-type]
    assert isinstance(s.error, openai.RateLimitError) and s.error.code == "rate_limit_exceeded"
    assert s.attempts == 3
    check_waits(s.waits, (1.0, 60.0))


def test_a_405_is_not_retried(stack: Stack) -> None:
    client = oai(stack)
    s = seen(stack, client, lambda: client.get("/chat/completions", cast_to=object))
    assert type(s.error) is openai.APIStatusError and s.error.status_code == 405
    assert s.attempts == 1


def test_a_stream_cut_by_its_provider_is_the_sdks_api_error_with_the_gateways_message(stack: Stack) -> None:
    client = oai(stack)
    s = seen(
        stack, client, lambda: client.chat.completions.create(model="cut-chat", messages=ASK, stream=True)
    )  # type: ignore[arg-type]
    assert type(s.error) is openai.APIError and s.attempts == 1
    assert s.error.message == "cut: the provider closed the stream before the answer was complete."
    assert s.error.code == "upstream_closed" and s.error.type == "upstream_error"


# On /v1/responses with the openai SDK: the same envelopes, the same verdicts.
RESPONSES_CASES: list[tuple[str, str, str, type[Exception], int, Any]] = [
    ("429 insufficient_quota (budget spent)", "broke", "chat", openai.RateLimitError, 1, ()),
    ("429 provider's, Retry-After 3600", "free", "f429day-chat", openai.RateLimitError, 1, ()),
    ("502 provider 500, one attempt", "free", "f500-chat", openai.InternalServerError, 3, BACKOFF),
    ("503 provider_not_configured", "free", "nokey-chat", openai.InternalServerError, 1, ()),
]


@pytest.mark.parametrize(
    ("key", "model", "exception", "attempts", "waits"),
    [pytest.param(*case[1:], id=case[0]) for case in RESPONSES_CASES],
)
def test_what_the_openai_sdk_does_with_each_responses_error(
    stack: Stack, key: str, model: str, exception: type[Exception], attempts: int, waits: Any
) -> None:
    client = oai(stack, key)
    s = seen(stack, client, lambda: client.responses.create(model=model, input="hi"))
    assert type(s.error) is exception, s.error
    assert s.attempts == attempts
    check_waits(s.waits, waits)
    assert isinstance(s.error, openai.APIStatusError) and s.error.request_id


# On /v1/messages with the anthropic SDK (Anthropic's envelope, its status classes).
MESSAGES_CASES: list[tuple[str, str, str, int, type[Exception], int, Any]] = [
    ("400 invalid_request_error", "free", "chat", -1, anthropic.BadRequestError, 1, ()),
    ("401 authentication_error", "sk-sg-unknown", "chat", 10, anthropic.AuthenticationError, 1, ()),
    ("404 not_found_error", "free", "nope", 10, anthropic.NotFoundError, 1, ()),
    ("429 budget spent", "broke", "chat", 10, anthropic.RateLimitError, 1, ()),
    ("429 request too large for TPM", "small", "chat", 1000, anthropic.RateLimitError, 1, ()),
    ("429 provider's, Retry-After 7", "free", "f429-chat", 10, anthropic.RateLimitError, 3, (0.5, 7.0)),
    ("429 provider's, Retry-After 3600", "free", "f429day-chat", 10, anthropic.RateLimitError, 1, ()),
    ("502 provider 500", "free", "f500-chat", 10, anthropic.InternalServerError, 3, BACKOFF),
    ("502 provider_auth_failed", "free", "keyed-chat", 10, anthropic.InternalServerError, 1, ()),
    ("529 provider's 503 (overloaded)", "free", "f503-chat", 10, anthropic.OverloadedError, 3, BACKOFF),
    ("503 provider_not_configured", "free", "nokey-chat", 10, anthropic.ServiceUnavailableError, 1, ()),
    ("504 first_byte_timeout", "free", "hang-chat", 10, anthropic.GatewayTimeoutError, 3, BACKOFF),
]


@pytest.mark.parametrize(
    ("key", "model", "max_tokens", "exception", "attempts", "waits"),
    [pytest.param(*case[1:], id=case[0]) for case in MESSAGES_CASES],
)
def test_what_the_anthropic_sdk_does_with_each_messages_error(
    stack: Stack,
    key: str,
    model: str,
    max_tokens: int,
    exception: type[Exception],
    attempts: int,
    waits: Any,
) -> None:
    client = claude(stack, key)
    s = seen(stack, client, lambda: client.messages.create(model=model, max_tokens=max_tokens, messages=ASK))  # type: ignore[arg-type]
    assert type(s.error) is exception, s.error
    assert s.attempts == attempts
    check_waits(s.waits, waits)
    error = s.error
    assert isinstance(error, anthropic.APIStatusError) and error.request_id
    assert s.body.get("type") == "error" and s.body["error"]["message"] in error.message


def test_the_anthropic_sdk_reads_a_body_too_large_as_its_content_too_large(stack: Stack) -> None:
    client = claude(stack)
    s = seen(
        stack, client, lambda: client.messages.create(model="chat", max_tokens=10, messages=long_prompt())
    )  # type: ignore[arg-type]
    assert type(s.error) is anthropic.ContentTooLargeError and s.attempts == 1


def test_a_messages_stream_cut_by_its_provider_raises_with_the_gateways_message(stack: Stack) -> None:
    client = claude(stack)
    s = seen(
        stack,
        client,
        lambda: client.messages.create(model="cut-chat", max_tokens=10, messages=ASK, stream=True),  # type: ignore[arg-type]
    )
    # (A 200 stream's error event: the anthropic SDK's class for any status it has no name for,
    # as it raises for Anthropic's own mid-stream ``overloaded_error``.)
    assert type(s.error) is anthropic.APIStatusError and s.attempts == 1
    assert "cut: the provider closed the stream before the answer was complete." in str(s.error)
