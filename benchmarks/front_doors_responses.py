"""Benchmark: what the Responses API front door (``POST /v1/responses``) costs against chat.

Two measurements, both in process on one core, in well under a minute:

  1. the translation functions alone (the best of 7 runs of ``timeit``, in us per call): the
     request (validation + ``chat_request`` + serialising the chat body, against chat's own
     validation + serialising), the whole answer (``whole_response`` + serialising, against
     chat's zero: its provider bytes are forwarded) and keeping the conversation for
     ``previous_response_id`` (parse the answer, serialise the record: the store's own round trip
     is not counted), then per stream chunk (``ChatToResponsesStream`` against chat's
     pass-through translator);
  2. the whole request path through the real app (aiohttp on loopback, MockTransport behind,
     sequential requests): chat vs responses, whole and streamed, in CPU time of the process
     (client and server: the machine is shared, so wall time would measure the neighbours),
     the cases interleaved over 7 rounds of 150 requests, the median round reported.

Run: python benchmarks/front_doors_responses.py   (writes its section of benchmarks/RESULTS.md)
"""

from __future__ import annotations

import asyncio
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from benchmarks.results import write_section  # noqa: E402
from gateway.app import build_app  # noqa: E402
from gateway.policy.loader import parse_policy  # noqa: E402
from gateway.policy.model import OpenAIProvider  # noqa: E402
from gateway.providers.base import UpstreamRequest  # noqa: E402
from gateway.providers.openai import OpenAIAdapter, OpenAIStreamTranslator  # noqa: E402
from gateway.providers.responses_bridge import ChatToResponsesStream  # noqa: E402
from gateway.service.validation import check_request  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from gateway.testing.mock_transport import MockResponse, MockTransport  # noqa: E402
from gateway.wire.requests import Endpoint  # noqa: E402
from gateway.wire.responses import chat_request  # noqa: E402
from gateway.wire.responses_output import ResponseIds, ResponsesEvents, whole_response  # noqa: E402

SECTION = "Front doors: Responses (issue 17)"
FIXTURES = ROOT / "tests" / "unit" / "wire" / "fixtures" / "responses"

CHAT_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "up",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there, " * 20},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 30, "completion_tokens": 60, "total_tokens": 90},
}


def best_us(fn: Callable[[], object], number: int = 2000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def translation_rows() -> list[str]:
    rows = []
    ids = ResponseIds("0" * 32, 1)
    answer_raw = orjson.dumps(CHAT_ANSWER)
    for name in ("request_text.json", "request_functions.json", "request_function_results.json"):
        case = orjson.loads((FIXTURES / name).read_bytes())
        body, chat = case["responses"], case["chat"]
        body = {k: v for k, v in body.items() if k != "stream"}
        chat = {k: v for k, v in chat.items() if k not in ("stream", "stream_options")}

        def chat_request_cost(chat: dict[str, Any] = chat) -> None:
            check_request(Endpoint.CHAT, chat)
            orjson.dumps(chat)

        def responses_request_cost(body: dict[str, Any] = body) -> None:
            translated = chat_request(body)  # the service validates the door's chat translation
            check_request(Endpoint.CHAT, translated)
            orjson.dumps(translated)

        def answer_cost(body: dict[str, Any] = body) -> None:
            orjson.dumps(whole_response(body, orjson.loads(answer_raw), ids))

        response_raw = orjson.dumps(whole_response(body, CHAT_ANSWER, ids))

        def keep_cost(response_raw: bytes = response_raw) -> None:
            response = orjson.loads(response_raw)
            orjson.dumps([{"role": "user", "content": "x"}, *response["output"]])

        base = best_us(chat_request_cost)
        request = best_us(responses_request_cost)
        whole = best_us(answer_cost)
        keep = best_us(keep_cost)
        rows.append(
            f"| {name.removesuffix('.json')} | {base:.1f} | {request:.1f} | {request - base:+.1f} | "
            f"{whole:.1f} | {keep:.1f} | **{request - base + whole + keep:+.1f}** |"
        )
    return rows


def stream_row(chunks: int = 100) -> str:
    events = [
        b'data: {"id":"c","object":"chat.completion.chunk","model":"up","choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n'
    ] * chunks
    events.append(b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":100}}\n\n')
    events.append(b"data: [DONE]\n\n")
    body = {"model": "m", "input": "hi", "stream": True}
    chat = chat_request(body)
    adapter = OpenAIAdapter(OpenAIProvider(kind="openai", base_url="http://x/v1"))

    def chat_stream() -> None:
        t = OpenAIStreamTranslator()
        for e in events:
            t.feed(e)
        t.finish()

    def responses_stream() -> None:
        # what ResponsesDoor.stream_translator gives a provider without the Responses API
        t = ChatToResponsesStream(
            adapter.stream_translator(Endpoint.CHAT, chat, "up"),
            ResponsesEvents(body, ResponseIds("0" * 32, 1)),
        )
        for e in events:
            t.feed(e)
        t.finish()

    base = best_us(chat_stream, 50) / len(events)
    translated = best_us(responses_stream, 50) / len(events)
    return f"| per stream chunk ({chunks}-chunk stream) | {base:.2f} | {translated:.2f} | {translated - base:+.2f} |"


POLICY = """
version: 1
auth: {mode: open}
memory: {enabled: false}
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: up}]}
"""


def upstream(request: UpstreamRequest) -> MockResponse:
    body = orjson.loads(request.body)
    if body.get("stream"):
        chunk = b'data: {"id":"c","object":"chat.completion.chunk","model":"up","choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n'
        return MockResponse.stream([chunk] * 20 + [b"data: [DONE]\n\n"])
    return MockResponse.json(CHAT_ANSWER)


async def path_rows(requests: int = 150, rounds: int = 7) -> list[str]:
    app = build_app(
        Settings(access_log=False), parse_policy(POLICY), {}, transports={"a": MockTransport(upstream)}
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    responses = {"model": "m", "input": "hi", "store": False}
    responses_kept = {"model": "m", "input": "hi"}

    async def run(path: str, body: dict[str, Any]) -> float:
        start = time.process_time()
        for _ in range(requests):
            resp = await client.post(path, json=body)
            await resp.read()
            assert resp.status == 200
        return (time.process_time() - start) / requests * 1e6

    cases = [
        ("whole, chat", "/v1/chat/completions", chat),
        ("whole, responses (store: false)", "/v1/responses", responses),
        ("whole, responses (store: true, kept in memory)", "/v1/responses", responses_kept),
        ("stream of 20 chunks, chat", "/v1/chat/completions", {**chat, "stream": True}),
        ("stream of 20 chunks, responses (store: false)", "/v1/responses", {**responses, "stream": True}),
    ]
    samples: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    try:
        for _, path, body in cases:
            await run(path, body)  # warm up
        for _ in range(rounds):
            for label, path, body in cases:
                samples[label].append(await run(path, body))
    finally:
        await client.close()
    results = {label: statistics.median(values) for label, values in samples.items()}
    rows = []
    for label, _, _ in cases:
        base = results["stream of 20 chunks, chat" if label.startswith("stream") else "whole, chat"]
        rows.append(f"| {label} | {results[label]:.0f} | {results[label] - base:+.0f} |")
    return rows


def main() -> None:
    translation = translation_rows()
    stream = stream_row()
    path = asyncio.run(path_rows())
    body = "\n".join(
        [
            f"`python benchmarks/front_doors_responses.py`, Python {platform.python_version()}, one process, "
            "in process (no network beyond loopback). Fixtures: OpenAI's documented examples "
            "(tests/unit/wire/fixtures/responses).",
            "",
            "Translation cost (best of 7 `timeit` runs, us per call). *chat* = chat's own validation "
            "and serialising of the same request; *request* = Responses validation, translation to chat "
            "and serialising; *answer* = chat answer to a `response` object, serialised (chat forwards "
            "the provider's bytes: 0); *keep* = parsing the answer and serialising the record kept for "
            "`previous_response_id` (`store: true`, the default; the store's round trip not counted).",
            "",
            "| request | chat (us) | request (us) | extra | answer (us) | keep (us) | added per request (us) |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *translation,
            "",
            "| stream | chat pass-through (us) | responses events (us) | added (us) |",
            "|---|---:|---:|---:|",
            stream,
            "",
            "Whole request path, in process (aiohttp client on loopback, MockTransport upstream, "
            "sequential; CPU time of the process, client included, so only the differences matter; "
            "the median of 7 interleaved rounds of 150 requests):",
            "",
            "| request | CPU us per request | vs chat (us) |",
            "|---|---:|---:|",
            *path,
        ]
    )
    write_section(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
