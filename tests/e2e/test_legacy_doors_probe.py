"""A stranger's probe of the ``/v1/embeddings``, ``/v1/completions`` (legacy) and ``/v1/models``
doors: requests per OpenAI's API reference, sent with the official ``openai`` SDK to a group of
each deployment kind (OpenAI-compatible and Azure passed through to the OpenAI fake, Anthropic and
Gemini translated). Each must be answered in the shape the SDK parses, or refused with a 400 in
OpenAI's envelope naming the parameter; never a 500, never a hang, never a provider key shown."""

from __future__ import annotations

import json
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

GEMINI_KEY = "gm-test-gemini-secret-0123456789abcdef"
OPENAI_KEY = "sk-test-openai-secret-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-secret-0123456789abcdef"
FAKES = {
    "gpt": ["--require-key", OPENAI_KEY],
    "az": ["--require-key", OPENAI_KEY],
    "claude": ["--flavor", "anthropic", "--require-key", ANTHROPIC_KEY],
    "gem": ["--flavor", "gemini", "--require-key", GEMINI_KEY],
}
KINDS = ["gpt", "azure", "claude", "gemini"]
# The kinds that serve completions and embeddings (Anthropic has neither).
SERVING = ["gpt", "azure", "gemini"]


def policy(fakes: dict[str, ManagedProcess]) -> str:
    def provider(name: str, kind: str, path: str, key: str) -> str:
        return (
            f"  {name}:\n    kind: {kind}\n    base_url: {fakes[name].url}{path}\n"
            f"    api_key_env: {key}\n"
            f"    timeouts: {{connect_s: 1, first_byte_s: 5, total_s: 20}}\n"
        )

    head = textwrap.dedent(
        """\
        version: 1
        auth: {mode: open}
        breaker: {consecutive_failures: 1000000, min_requests: 1000000}
        retry: {max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}
        providers:
        """
    )
    models = textwrap.dedent(
        """\
        models:
          gpt: {deployments: [{provider: gpt, model: gpt-test}]}
          azure: {deployments: [{provider: az, model: az-deployment}]}
          claude: {deployments: [{provider: claude, model: claude-test}]}
          gemini: {deployments: [{provider: gem, model: gemini-test}]}
        memory: {enabled: false}
        """
    )
    return (
        head
        + provider("gpt", "openai", "/v1", "E2E_OPENAI_KEY")
        + provider("az", "azure", "", "E2E_OPENAI_KEY")
        + provider("claude", "anthropic", "/v1", "E2E_ANTHROPIC_KEY")
        + provider("gem", "gemini", "/v1beta", "E2E_GEMINI_KEY")
        + models
    )


class Probe:
    def __init__(self, gateway: ManagedProcess, fakes: dict[str, ManagedProcess]) -> None:
        self.gateway = gateway
        self.fakes = fakes


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probe]:
    fakes = start_fakes(FAKES)
    path: Path = tmp_path_factory.mktemp("eprobe") / "policy.yaml"
    path.write_text(policy(fakes))
    gateway = None
    env = {"E2E_OPENAI_KEY": OPENAI_KEY, "E2E_ANTHROPIC_KEY": ANTHROPIC_KEY, "E2E_GEMINI_KEY": GEMINI_KEY}
    try:
        gateway = start_gateway(path, env=env)
        yield Probe(gateway, fakes)
    finally:
        if gateway is not None:
            gateway.stop()
            for key in env.values():
                assert key not in gateway.output
        for fake in fakes.values():
            fake.stop()


@pytest.fixture(scope="module")
def client(probe: Probe) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=probe.gateway.url + "/v1", api_key="client-key", max_retries=0, timeout=10
    ) as made:
        yield made


def _refused(client: openai.OpenAI, call: Any, **kwargs: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        result = call(**kwargs)
        if kwargs.get("stream"):
            list(result)
    error = caught.value
    body = error.body if isinstance(error.body, dict) else {}
    for key in (OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY):
        assert key not in str(error.response.text) and key not in str(error.response.headers)
    assert {"message", "type", "param", "code"} <= set(body), body
    return error


def _param(error: openai.APIStatusError) -> object:
    body = error.body if isinstance(error.body, dict) else {}
    return body.get("param")


# ----- completions: values OpenAI's API refuses are refused on every kind, before any call

BAD_COMPLETIONS: dict[str, tuple[dict[str, Any], str]] = {
    "best_of streamed": ({"best_of": 2, "n": 1, "stream": True}, "best_of"),
    "best_of below n": ({"best_of": 1, "n": 2}, "best_of"),
    "best_of above 20": ({"best_of": 21}, "best_of"),
    "temperature above 2": ({"temperature": 3}, "temperature"),
    "top_p above 1": ({"top_p": 1.5}, "top_p"),
    "presence_penalty below -2": ({"presence_penalty": -3}, "presence_penalty"),
    "frequency_penalty above 2": ({"frequency_penalty": 2.5}, "frequency_penalty"),
    "seed a string": ({"extra_body": {"seed": "x"}}, "seed"),
    "logprobs above 5": ({"logprobs": 6}, "logprobs"),
    "logprobs a boolean": ({"extra_body": {"logprobs": True}}, "logprobs"),
    "echo a string": ({"extra_body": {"echo": "yes"}}, "echo"),
    "suffix a number": ({"extra_body": {"suffix": 3}}, "suffix"),
    "logit_bias out of range": ({"logit_bias": {"50256": 101}}, "logit_bias.50256"),
    "n zero": ({"n": 0}, "n"),
    "stream_options without stream": ({"stream_options": {"include_usage": True}}, "stream_options"),
    "prompt mixing strings and token arrays": ({"prompt": ["a", [1, 2]]}, "prompt"),
    "prompt an empty array": ({"prompt": []}, "prompt"),
    "stop a number": ({"extra_body": {"stop": 5}}, "stop"),
    "five stop sequences": ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    "user a number": ({"extra_body": {"user": 5}}, "user"),
}


@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("case", list(BAD_COMPLETIONS))
def test_a_completion_value_openai_refuses_is_refused_naming_it_on_every_kind(
    probe: Probe, client: openai.OpenAI, model: str, case: str
) -> None:
    fields, param = BAD_COMPLETIONS[case]
    before = _requests_seen(probe)
    error = _refused(client, client.completions.create, **{"model": model, "prompt": "hi there", **fields})
    assert error.status_code == 400, error.body
    assert _param(error) == param, error.body
    assert _requests_seen(probe) == before  # refused before any call


def test_an_embeddings_input_mixing_strings_and_token_arrays_is_refused_on_every_kind(
    probe: Probe, client: openai.OpenAI
) -> None:
    for model in KINDS:
        error = _refused(client, client.embeddings.create, model=model, input=["a", [1, 2]])
        assert error.status_code == 400 and _param(error) == "input", error.body


def _requests_seen(probe: Probe) -> int:
    """How many API requests the fakes have answered so far."""
    total = 0
    for fake in probe.fakes.values():
        with urllib.request.urlopen(fake.url + "/_fake/stats", timeout=5) as resp:
            total += int(json.loads(resp.read())["requests"])
    return total


# ----- completions: what Gemini cannot honour is refused naming it, not dropped

GEMINI_UNHONOURED: dict[str, dict[str, Any]] = {
    "logit_bias": {"logit_bias": {"50256": -100}},
    "best_of": {"best_of": 3, "n": 2},
}


@pytest.mark.parametrize("param", list(GEMINI_UNHONOURED))
def test_a_completion_parameter_gemini_cannot_honour_is_refused_naming_it(
    client: openai.OpenAI, param: str
) -> None:
    error = _refused(
        client, client.completions.create, model="gemini", prompt="hi there", **GEMINI_UNHONOURED[param]
    )
    assert error.status_code == 400, error.body
    assert _param(error) == param.split()[0], error.body
    assert (error.body or {}).get("code") == "unsupported_endpoint"  # type: ignore[union-attr]


@pytest.mark.parametrize("top", [0, 2])
def test_gemini_completions_answer_logprobs_in_the_legacy_shape_whole_and_streamed(
    client: openai.OpenAI, top: int
) -> None:
    """Gemini's ``logprobsResult`` (``responseLogprobs``) is the legacy ``logprobs``: tokens,
    their log probabilities, up to ``logprobs``+1 alternatives each (the chosen one among them),
    and each token's character offset from the prompt's start. It was refused (400 naming
    ``logprobs``), so a group mixing kinds could not serve it from Gemini at all."""
    prompt = "hi there"
    answer = client.completions.create(model="gemini", prompt=prompt, logprobs=top, max_tokens=8)
    choice = answer.choices[0]
    found = choice.logprobs
    assert found is not None and found.tokens and "".join(found.tokens) == choice.text, answer
    assert found.token_logprobs is not None and len(found.token_logprobs) == len(found.tokens)
    assert all(isinstance(v, float) and v <= 0 for v in found.token_logprobs)
    assert found.top_logprobs is not None and len(found.top_logprobs) == len(found.tokens)
    for token, value, alternatives in zip(
        found.tokens, found.token_logprobs, found.top_logprobs, strict=True
    ):
        assert alternatives[token] == value and 1 <= len(alternatives) <= top + 1
    offsets = [len(prompt) + len("".join(found.tokens[:k])) for k in range(len(found.tokens))]
    assert found.text_offset == offsets

    streamed_tokens: list[str] = []
    streamed_offsets: list[int] = []
    text = ""
    for chunk in client.completions.create(
        model="gemini", prompt=prompt, logprobs=top, max_tokens=8, stream=True
    ):
        for part in chunk.choices:
            text += part.text
            if part.logprobs is not None:
                streamed_tokens += part.logprobs.tokens or []
                streamed_offsets += part.logprobs.text_offset or []
    assert text == choice.text and streamed_tokens == found.tokens and streamed_offsets == offsets


def test_best_of_equal_to_n_is_served_by_gemini(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="gemini", prompt="hi there", best_of=2, n=2)
    assert [c.index for c in answer.choices] == [0, 1]


# ----- completions served: the reference's prompt shapes, n, echo, stop, logprobs

PROMPTS: dict[str, tuple[Any, list[str]]] = {
    "string": ("one two", ["Echo: one two"]),
    "strings": (["one", "two three"], ["Echo: one", "Echo: two three"]),
    "token ids": ([11, 12], ["Echo: 11 12"]),
    "token-id arrays": ([[11, 12], [13]], ["Echo: 11 12", "Echo: 13"]),
}


@pytest.mark.parametrize("model", ["gpt", "azure"])
@pytest.mark.parametrize("shape", list(PROMPTS))
@pytest.mark.parametrize("streamed", [False, True])
def test_every_prompt_shape_is_answered_one_choice_per_prompt_and_n(
    client: openai.OpenAI, model: str, shape: str, streamed: bool
) -> None:
    prompt, texts = PROMPTS[shape]
    expected = [t for t in texts for _ in range(2)]
    if not streamed:
        answer = client.completions.create(model=model, prompt=prompt, n=2)
        assert [c.text for c in answer.choices] == expected
        assert [c.index for c in answer.choices] == list(range(len(expected)))
        return
    got: dict[int, str] = {}
    for chunk in client.completions.create(model=model, prompt=prompt, n=2, stream=True):
        for choice in chunk.choices:
            got[choice.index] = got.get(choice.index, "") + choice.text
    assert [got[i] for i in sorted(got)] == expected


@pytest.mark.parametrize("model", ["gpt", "azure"])
def test_echo_stop_and_logprobs_come_back_in_the_legacy_shape(client: openai.OpenAI, model: str) -> None:
    answer = client.completions.create(
        model=model, prompt="say more", echo=True, stop=["more"], logprobs=2, max_tokens=5
    )
    choice = answer.choices[0]
    assert choice.text == "say moreEcho: say"
    assert choice.logprobs is not None and choice.logprobs.tokens == ["say", " more", "Echo:", " say"]
    assert choice.logprobs.token_logprobs is not None and choice.logprobs.token_logprobs[0] is None
    assert choice.logprobs.top_logprobs is not None and len(choice.logprobs.top_logprobs[2]) == 2
    assert answer.usage is not None and answer.usage.completion_tokens == 2


@pytest.mark.parametrize("model", ["gpt", "azure"])
def test_max_tokens_0_with_echo_scores_the_prompt_as_openai_does(client: openai.OpenAI, model: str) -> None:
    """OpenAI's completions take ``max_tokens: 0`` (its reference's minimum) and, with ``echo``,
    answer the prompt's log probabilities without generating: the gateway refused it (at least 1)."""
    answer = client.completions.create(
        model=model, prompt="score this prompt", echo=True, logprobs=0, max_tokens=0
    )
    choice = answer.choices[0]
    assert choice.text == "score this prompt" and choice.finish_reason == "length"
    assert choice.logprobs is not None and choice.logprobs.tokens == ["score", " this", " prompt"]
    assert answer.usage is not None and answer.usage.completion_tokens == 0


def test_max_tokens_0_on_gemini_is_refused_naming_it(client: openai.OpenAI) -> None:
    """Gemini reads ``maxOutputTokens: 0`` as not set (a whole answer): refused naming the field,
    and failed over to a kind that can, like the other parameters it cannot honour."""
    error = _refused(client, client.completions.create, model="gemini", prompt="one two", max_tokens=0)
    assert error.status_code == 400 and _param(error) == "max_tokens"
    error = _refused(client, client.completions.create, model="gpt", prompt="one two", max_tokens=-1)
    assert error.status_code == 400 and _param(error) == "max_tokens"


def test_gemini_serves_a_plain_prompt_with_n_whole_and_streamed(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="gemini", prompt="one two", n=2, stop=["two"])
    assert [(c.index, c.text) for c in answer.choices] == [(0, "Echo: one"), (1, "Echo: one")]
    got: dict[int, str] = {}
    for chunk in client.completions.create(
        model="gemini", prompt="one two", n=2, stream=True, stream_options={"include_usage": True}
    ):
        for choice in chunk.choices:
            got[choice.index] = got.get(choice.index, "") + choice.text
    assert got == {0: "Echo: one two", 1: "Echo: one two"}


# ----- embeddings


def test_gemini_refusing_dimensions_names_the_openai_param(client: openai.OpenAI) -> None:
    error = _refused(client, client.embeddings.create, model="gemini", input="hello", dimensions=5000)
    assert error.status_code == 400 and _param(error) == "dimensions", error.body


@pytest.mark.parametrize("endpoint", ["completions", "embeddings"])
def test_anthropic_refuses_the_endpoints_it_lacks_naming_the_model(
    client: openai.OpenAI, endpoint: str
) -> None:
    call = client.completions.create if endpoint == "completions" else client.embeddings.create
    field = {"prompt": "hi"} if endpoint == "completions" else {"input": "hi"}
    error = _refused(client, call, model="claude", **field)
    assert error.status_code == 400 and _param(error) == "model", error.body
    assert (error.body or {}).get("code") == "unsupported_endpoint"  # type: ignore[union-attr]
