"""Every error path answers in OpenAI's envelope with the right status, and never leaks a key."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.e2e.conftest import MAX_BODY_BYTES, PROVIDER_KEY, Stack, start_fakes, start_gateway
from tests.e2e.test_openai_api import client


def post_raw(
    stack: Stack, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict, dict]:  # type: ignore[type-arg]
    req = urllib.request.Request(
        stack.url + path,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def assert_envelope(payload: dict) -> dict:  # type: ignore[type-arg]
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error  # type: ignore[no-any-return]


def test_malformed_json_is_400(stack: Stack) -> None:
    status, headers, payload = post_raw(stack, "/v1/chat/completions", b'{"model": "chat", "messages": [')
    assert status == 400
    error = assert_envelope(payload)
    assert error["type"] == "invalid_request_error" and "not valid JSON" in error["message"]
    assert headers["x-request-id"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "chat"}, "messages"),
        ({"model": "chat", "messages": []}, "messages"),
        ({"model": "chat", "messages": [{"content": "no role"}]}, "messages[0].role"),
        ({"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_missing_or_invalid_field_is_400_naming_it(stack: Stack, body: dict, param: str) -> None:  # type: ignore[type-arg]
    status, _, payload = post_raw(stack, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 400
    error = assert_envelope(payload)
    assert error["param"] == param and f"'{param}'" in error["message"]


def test_sdk_sees_bad_request(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(stack).embeddings.create(model="embed", input=None)  # type: ignore[arg-type]
    assert err.value.status_code == 400 and "input" in err.value.message


def test_unknown_model_is_404_naming_it(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(stack).chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    assert "gpt-17" in err.value.message
    assert err.value.code == "model_not_found"


def test_a_huge_model_name_is_a_small_404_that_still_names_it(stack: Stack) -> None:
    # The name was repeated whole: a 100,000-character model was a 100 KB error body (this
    # gateway takes bodies of 64 KiB at most).
    body = {"model": "m" * 60_000, "messages": [{"role": "user", "content": "x"}]}
    status, _, payload = post_raw(stack, "/v1/chat/completions", json.dumps(body).encode())
    error = assert_envelope(payload)
    assert status == 404 and error["code"] == "model_not_found"
    assert len(json.dumps(payload)) < 1500
    assert error["message"].startswith("The model '" + "m" * 256 + "…' (60000 chars) does not exist")


def test_body_over_limit_is_413(stack: Stack) -> None:
    big = json.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 10)}]}
    )
    status, _, payload = post_raw(stack, "/v1/chat/completions", big.encode())
    assert status == 413
    assert assert_envelope(payload)["code"] == "request_too_large"


async def test_chunked_body_over_limit_is_413(stack: Stack) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(MAX_BODY_BYTES // 1024 + 4):
            yield b"x" * 1024

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url + "/v1/chat/completions", data=chunks(), headers={"Content-Type": "application/json"}
        ) as resp,
    ):
        assert resp.status == 413
        assert_envelope(await resp.json())


@pytest.mark.parametrize(
    ("model", "status", "sdk_error"),
    [
        ("failing-chat", 502, openai.APIStatusError),
        ("malformed-chat", 502, openai.APIStatusError),
        ("dead-chat", 502, openai.APIStatusError),
        ("unavailable-chat", 503, openai.APIStatusError),
        ("hanging-chat", 504, openai.APIStatusError),
    ],
)
def test_upstream_failures(stack: Stack, model: str, status: int, sdk_error: type[Exception]) -> None:
    with pytest.raises(sdk_error) as err:
        client(stack).chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == status  # type: ignore[attr-defined]
    body = err.value.body  # type: ignore[attr-defined]
    assert isinstance(body, dict) and body["message"]
    assert "Traceback" not in body["message"]
    assert err.value.response.headers["x-request-id"]  # type: ignore[attr-defined]


def test_upstream_429_passes_retry_after(stack: Stack) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        client(stack).chat.completions.create(
            model="ratelimited-chat", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 429
    assert err.value.response.headers["retry-after"] == "7"


def test_missing_provider_key_is_503_naming_the_variable(stack: Stack) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client(stack).chat.completions.create(model="nokey-chat", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 503
    assert "E2E_KEY_THAT_IS_NOT_SET" in err.value.message


def test_unknown_path_and_method(stack: Stack) -> None:
    status, _, payload = post_raw(stack, "/v1/nothing-here", b"{}")
    assert status == 404 and assert_envelope(payload)["type"] == "invalid_request_error"
    req = urllib.request.Request(stack.url + "/v1/chat/completions", method="GET")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 405
    assert_envelope(json.loads(err.value.read()))


async def test_client_disconnect_cancels_the_upstream_request(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.post(
                stack.url + "/v1/chat/completions",
                json={"model": "hanging-chat", "messages": [{"role": "user", "content": "x"}]},
                timeout=aiohttp.ClientTimeout(total=0.3),
            )
        # The gateway notices the client left (499) well before its own 1.5 s upstream timeout.
        for _ in range(50):
            async with session.get(stack.url + "/metrics") as resp:
                text = await resp.text()
            if re.search(r'gateway_requests_total\{[^}]*model="hanging-chat"[^}]*status_code="499"', text):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("no 499 recorded for the abandoned request")


def test_provider_key_never_leaks(stack: Stack) -> None:
    c = client(stack)
    c.chat.completions.create(model="keyed-chat", messages=[{"role": "user", "content": "x"}])
    for model in ("failing-chat", "dead-chat", "nokey-chat"):
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        assert PROVIDER_KEY not in err.value.response.text
    with urllib.request.urlopen(stack.url + "/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert "gateway_requests_total" in metrics
    assert PROVIDER_KEY not in metrics
    assert PROVIDER_KEY not in stack.gateway.output


def test_a_provider_key_with_a_line_break_is_trimmed_or_refused_never_a_500(tmp_path: Path) -> None:
    """A key variable set from a file (a Kubernetes Secret, ``$(cat key.txt)``) ends in a line
    break: every request to the provider was a 500 internal error, aiohttp refusing to send the
    header. Surrounding whitespace is trimmed; a key with a line break inside is not sent at all
    (the provider is not configured, said at start-up without the value)."""
    fakes = start_fakes({"keyed": ["--require-key", PROVIDER_KEY]})
    path = tmp_path / "policy.yaml"
    # One gateway, three providers on the same fake, each key in its own variable.
    cases = {
        "newline": (PROVIDER_KEY + "\n", 200),
        "spaces": (f" {PROVIDER_KEY}\r\n", 200),
        "inside": ("sk-a\nsk-b-0123456789", 503),
    }
    url = fakes["keyed"].url
    path.write_text(
        "version: 1\nauth: {mode: open}\nproviders:\n"
        + "".join(
            f"  {name}: {{kind: openai, base_url: {url}/v1, api_key_env: E2E_KEY_{name.upper()}}}\n"
            for name in cases
        )
        + "models:\n"
        + "".join(f"  {name}: {{deployments: [{{provider: {name}, model: m}}]}}\n" for name in cases)
    )
    try:
        gateway = start_gateway(path, {f"E2E_KEY_{name.upper()}": key for name, (key, _) in cases.items()})
        try:
            for name, (_, status) in cases.items():
                chat = json.dumps({"model": name, "messages": [{"role": "user", "content": "hi"}]}).encode()
                got, _, body = post_raw(Stack(gateway, fakes, path), "/v1/chat/completions", chat)
                assert got == status, (name, body)
                if status == 503:
                    assert assert_envelope(body)["code"] == "provider_not_configured"
        finally:
            gateway.stop()
        assert "holds a space, line break or control character" in gateway.output
        assert "E2E_KEY_INSIDE" in gateway.output
        assert "sk-b-0123456789" not in gateway.output
        assert "unhandled error" not in gateway.output
    finally:
        for fake in fakes.values():
            fake.stop()
