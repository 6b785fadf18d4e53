"""The Gemini flavor of the fake provider over real HTTP: wire format, key check, Google errors."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.testing.fake_provider import FakeConfig, build_app

Client = TestClient[web.Request, web.Application]
KEY = {"x-goog-api-key": "k"}
ASK = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}
WEATHER = {"functionDeclarations": [{"name": "get_weather", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}}}}]}  # fmt: skip


async def fake(aiohttp_client: AiohttpClient, **config: Any) -> Client:
    return await aiohttp_client(build_app(FakeConfig(flavor="gemini", **config)))


async def post(
    client: Client, target: str, body: object, headers: dict[str, str] | None = None
) -> aiohttp.ClientResponse:
    return await client.post(f"/v1beta/models/{target}", data=orjson.dumps(body), headers=headers or KEY)


def events(text: str) -> list[Any]:
    return [orjson.loads(e.removeprefix("data: ")) for e in text.split("\n\n") if e.strip()]


async def test_generate_whole_and_streamed(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    resp = await post(
        client, "gem:generateContent", {**ASK, "systemInstruction": {"parts": [{"text": "be nice"}]}}
    )
    body = await resp.json()
    assert body["candidates"][0]["content"] == {"parts": [{"text": "Echo: hello there"}], "role": "model"}
    assert body["candidates"][0]["finishReason"] == "STOP"
    assert body["usageMetadata"] == {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7}
    resp = await client.post("/v1beta/models/gem:streamGenerateContent?alt=sse", data=orjson.dumps(ASK))
    streamed = events(await resp.text())
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in streamed) == "Echo: hello there"
    assert [e["candidates"][0].get("finishReason") for e in streamed] == [None, None, None, "STOP"]
    assert "usageMetadata" in streamed[-1] and "[DONE]" not in await resp.text()
    assert (
        await client.post("/v1beta/models/gem:streamGenerateContent", data=orjson.dumps(ASK))
    ).status == 400


async def test_limits_and_stop_sequences(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, reply="one two three four")
    config = {"generationConfig": {"maxOutputTokens": 2}}
    body = await (await post(client, "gem:generateContent", {**ASK, **config})).json()
    assert body["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert body["candidates"][0]["content"]["parts"][0]["text"] == "one two"
    config = {"generationConfig": {"stopSequences": [" three"]}}
    body = await (await post(client, "gem:generateContent", {**ASK, **config})).json()
    assert body["candidates"][0]["content"]["parts"][0]["text"] == "one two"


async def test_function_calls_asked_forced_or_answered(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    asked = {
        "contents": [{"role": "user", "parts": [{"text": "please call get_weather"}]}],
        "tools": [WEATHER],
    }
    part = (await (await post(client, "gem:generateContent", asked)).json())["candidates"][0]["content"][
        "parts"
    ][0]
    assert part["functionCall"] == {"name": "get_weather", "args": {"location": "location-value"}}
    assert part["thoughtSignature"].startswith("fake-signature-")
    forced = {**ASK, "tools": [WEATHER], "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}
    body = await (await post(client, "gem:generateContent", forced)).json()
    assert "functionCall" in body["candidates"][0]["content"]["parts"][0]
    never = {**asked, "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}
    body = await (await post(client, "gem:generateContent", never)).json()
    assert body["candidates"][0]["content"]["parts"][0]["text"].startswith("Echo: please call")
    answer = {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "rain"}}}],
    }
    answered = {**asked, "contents": [*asked["contents"], {"role": "model", "parts": [part]}, answer]}
    body = await (await post(client, "gem:generateContent", answered)).json()
    assert body["candidates"][0]["content"]["parts"] == [{"text": "Echo: rain"}]


async def test_embeddings_single_and_batch(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, embedding_dim=4)
    one = {"model": "models/emb", "content": {"parts": [{"text": "alpha"}]}}
    single = await (await post(client, "emb:embedContent", one)).json()
    batch = await (
        await post(client, "emb:batchEmbedContents", {"requests": [one, {**one, "outputDimensionality": 2}]})
    ).json()
    assert len(single["embedding"]["values"]) == 4
    assert batch["embeddings"][0] == single["embedding"] and len(batch["embeddings"][1]["values"]) == 2
    resp = await post(client, "emb:batchEmbedContents", {"requests": [{**one, "model": "models/other"}]})
    assert resp.status == 400 and (await resp.json())["error"]["status"] == "INVALID_ARGUMENT"
    for size in (True, 0, "2", 2**31, 2**63, 3073):  # as Gemini refuses one that is not a positive int32
        # (or past the model's largest: a huge one made the fake allocate 4 bytes per dimension)
        resp = await post(
            client, "emb:batchEmbedContents", {"requests": [{**one, "outputDimensionality": size}]}
        )
        assert resp.status == 400 and (await resp.json())["error"]["status"] == "INVALID_ARGUMENT", size


async def test_key_checks_answer_as_google_does(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, require_key="k")
    missing = await post(client, "gem:generateContent", ASK, headers={"x-other": "1"})
    assert missing.status == 403 and (await missing.json())["error"]["status"] == "PERMISSION_DENIED"
    wrong = await post(client, "gem:generateContent", ASK, headers={"x-goog-api-key": "nope"})
    error = (await wrong.json())["error"]
    assert wrong.status == 400 and error["details"][0]["reason"] == "API_KEY_INVALID"
    by_query = await client.post("/v1beta/models/gem:generateContent?key=k", data=orjson.dumps(ASK))
    assert by_query.status == 200


async def test_injected_errors_use_google_bodies(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, error_rate=1.0, error_status=429)
    resp = await post(client, "gem:generateContent", ASK)
    error = (await resp.json())["error"]
    assert resp.status == 429 and error["status"] == "RESOURCE_EXHAUSTED" and error["code"] == 429
    assert error["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
    assert "Retry-After" not in resp.headers  # Gemini says it in RetryInfo
    await client.post("/_fake/faults", data=orjson.dumps({"error_status": 503}))
    resp = await post(client, "gem:generateContent", ASK)
    assert resp.status == 503 and (await resp.json())["error"]["status"] == "UNAVAILABLE"
    unknown = await post(client, "gem:countTokens", ASK)
    assert unknown.status == 404 and (await unknown.json())["error"]["status"] == "NOT_FOUND"


async def test_it_refuses_what_gemini_refuses_in_batches_and_call_turns(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await fake(aiohttp_client)
    one = {"model": "models/e", "content": {"parts": [{"text": "x"}]}}
    resp = await post(client, "e:batchEmbedContents", {"requests": [one] * 101})
    assert resp.status == 400 and "at most 100 requests" in (await resp.json())["error"]["message"]
    assert (await post(client, "e:batchEmbedContents", {"requests": [one] * 100})).status == 200
    call = {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]}
    answer = {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 1}}}]}
    resp = await post(client, "gem:generateContent", {"contents": [call, answer], "tools": [WEATHER]})
    assert resp.status == 400 and "function call turn" in (await resp.json())["error"]["message"]
    ok = {"contents": [ASK["contents"][0], call, answer], "tools": [WEATHER]}
    assert (await post(client, "gem:generateContent", ok)).status == 200
    greeting = {"role": "model", "parts": [{"text": "Hello! How can I help?"}]}
    resp = await post(client, "gem:generateContent", {"contents": [greeting, ASK["contents"][0]]})
    assert (
        resp.status == 400 and "alternate between user and model" in (await resp.json())["error"]["message"]
    )


async def test_more_than_five_stop_sequences_are_refused(aiohttp_client: AiohttpClient) -> None:
    """GenerationConfig.stopSequences: "up to 5" (https://ai.google.dev/api/generate-content)."""
    client = await fake(aiohttp_client)
    for n, status in ((5, 200), (6, 400)):
        config = {"generationConfig": {"stopSequences": [f"s{i}" for i in range(n)]}}
        resp = await post(client, "gem:generateContent", {**ASK, **config})
        assert resp.status == status, await resp.text()
    assert "stop_sequences" in (await resp.json())["error"]["message"]


async def test_an_image_type_gemini_does_not_read_is_refused(aiohttp_client: AiohttpClient) -> None:
    """Gemini reads PNG, JPEG, WebP, HEIC and HEIF images only; other image types (``image/jpg``
    too) are its 400 "Unsupported MIME type: ..." (h-xlate2). Other modalities are not judged."""
    client = await fake(aiohttp_client)
    for mime, status in (
        ("image/png", 200),
        ("image/heif", 200),
        ("application/pdf", 200),
        ("image/gif", 400),
        ("image/jpg", 400),
        ("image/svg+xml", 400),
    ):
        for part in (
            {"inlineData": {"mimeType": mime, "data": "AAAA"}},
            {"fileData": {"mimeType": mime, "fileUri": "https://example.com/a"}},
        ):
            body = {"contents": [{"role": "user", "parts": [{"text": "what is it?"}, part]}]}
            resp = await post(client, "gem:generateContent", body)
            assert resp.status == status, (mime, await resp.text())
            if status == 400:
                assert (await resp.json())["error"]["message"] == f"Unsupported MIME type: {mime}"


async def test_a_thinking_budget_no_model_takes_is_refused(aiohttp_client: AiohttpClient) -> None:
    """The thinking guide's ranges (2.5 Pro: 128 to 32768; -1 is dynamic); Gemini's message
    (RooCodeInc/Roo-Code#4399)."""
    client = await fake(aiohttp_client)
    for budget, status in ((52428, 400), (32768, 200), (-1, 200), (-2, 400)):
        body = {**ASK, "generationConfig": {"thinkingConfig": {"thinkingBudget": budget}}}
        resp = await post(client, "gem:generateContent", body)
        assert resp.status == status, (budget, await resp.text())
    assert (await resp.json())["error"]["message"] == "The thinking budget (-2) is invalid."


async def test_a_thinking_level_is_taken_by_gemini_3_alone_and_never_beside_a_budget(
    aiohttp_client: AiohttpClient,
) -> None:
    """Google's docs: a request with both ``thinkingLevel`` and ``thinkingBudget`` is a 400;
    2.5 refuses a level (dhyansraj/mcp-mesh#1346); a level is one of four (h-effort2)."""
    client = await fake(aiohttp_client)

    async def ask(model: str, thinking: dict[str, Any]) -> tuple[int, str]:
        body = {**ASK, "generationConfig": {"thinkingConfig": thinking}}
        resp = await post(client, f"{model}:generateContent", body)
        text = await resp.text()
        return resp.status, (orjson.loads(text)["error"]["message"] if resp.status != 200 else "")

    assert await ask("gemini-3-pro-preview", {"thinkingLevel": "low"}) == (200, "")
    assert await ask("gemini-3-pro-preview", {"thinkingBudget": 1024}) == (200, "")
    assert await ask("gemini-3-pro-preview", {"thinkingLevel": "high", "thinkingBudget": 1024}) == (
        400,
        "thinking_budget and thinking_level are not supported together.",
    )
    assert await ask("gemini-2.5-flash", {"thinkingLevel": "low"}) == (
        400,
        "Thinking level is not supported for this model.",
    )
    status, message = await ask("gemini-3-flash-preview", {"thinkingLevel": "extreme"})
    assert status == 400 and "thinking_level" in message


async def test_json_mime_type_answers_in_json(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    schema = {"type": "OBJECT", "properties": {"city": {"type": "STRING"}, "degrees": {"type": "INTEGER"}}}
    config = {"responseMimeType": "application/json", "responseSchema": schema}
    body = await (await post(client, "gem:generateContent", {**ASK, "generationConfig": config})).json()
    text = body["candidates"][0]["content"]["parts"][0]["text"]
    assert orjson.loads(text) == {"city": "city-value", "degrees": 42}


async def test_candidate_count_gives_that_many_candidates(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    body = await (
        await post(client, "gem:generateContent", {**ASK, "generationConfig": {"candidateCount": 2}})
    ).json()
    assert [c["index"] for c in body["candidates"]] == [0, 1]
    assert body["candidates"][1]["content"]["parts"] == [{"text": "Echo: hello there"}]


async def test_response_logprobs_give_a_logprobs_result(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    config = {"responseLogprobs": True, "logprobs": 2}
    body = await (await post(client, "gem:generateContent", {**ASK, "generationConfig": config})).json()
    result = body["candidates"][0]["logprobsResult"]
    assert "".join(c["token"] for c in result["chosenCandidates"]) == "Echo: hello there"
    assert all(len(t["candidates"]) == 2 for t in result["topCandidates"])
    resp = await post(client, "gem:generateContent", {**ASK, "generationConfig": {"logprobs": 2}})
    assert resp.status == 400  # logprobs without responseLogprobs


async def test_requests_gemini_refuses_since_h_xlate(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    model_last = {"contents": [*ASK["contents"], {"role": "model", "parts": [{"text": "The answer is"}]}]}
    penalty = {**ASK, "generationConfig": {"presencePenalty": 0.5}}
    loose = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    refused = {
        "ends with a user role": model_last,
        "Penalty is not enabled": penalty,
        "candidate_count: must be at most 8": {**ASK, "generationConfig": {"candidateCount": 9}},
        'Unknown name "additionalProperties"': {
            **ASK,
            "generationConfig": {"responseMimeType": "application/json", "responseSchema": loose},
        },
        'Unknown name "$ref"': {
            **ASK,
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}},
                        }
                    ]
                }
            ],
        },
    }
    for words, body in refused.items():
        resp = await post(client, "gemini-2.5-flash:generateContent", body)
        assert resp.status == 400 and words in (await resp.json())["error"]["message"], words
    # Gemini 2.0 takes penalties; a zero penalty is no penalty anywhere.
    assert (await post(client, "gemini-2.0-flash:generateContent", penalty)).status == 200
    zero = {**ASK, "generationConfig": {"presencePenalty": 0, "candidateCount": 8}}
    assert (await post(client, "gemini-2.5-flash:generateContent", zero)).status == 200


async def test_a_function_name_gemini_refuses(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    for name, status in (("3d", 400), ("a/b", 400), ("x" * 65, 400), ("ns.tool:v-1", 200), ("_x", 200)):
        body = {**ASK, "tools": [{"functionDeclarations": [{"name": name}]}]}
        resp = await post(client, "gem:generateContent", body)
        assert resp.status == status, name
        if status == 400:
            assert "Invalid function name" in (await resp.json())["error"]["message"]


async def test_every_function_call_needs_its_response_in_the_next_turn(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    calls = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}] * 2}
    answer = {"functionResponse": {"name": "f", "response": {"result": 1}}}
    for responses, status in ((1, 400), (2, 200), (3, 400)):
        body = {"contents": [*ASK["contents"], calls, {"role": "user", "parts": [answer] * responses}]}
        resp = await post(client, "gem:generateContent", body)
        assert resp.status == status, responses
        if status == 400:
            assert "number of function response parts" in (await resp.json())["error"]["message"]
