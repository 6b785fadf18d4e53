"""Benchmark: what the Messages front door adds to a request, in microseconds (issue 17, item 5).

The front door runs the same request service as chat; what it adds is translation, measured
here in process, function by function, against the work chat does at the same step (the rest of
the path, HTTP, routing, the provider call, is the same code for both):

* request: validating the Messages head and translating it to chat (``MessagesDoor.parse``),
  against chat's own validation of the same conversation (``check_request``);
* answer: a translated deployment's whole answer made a message (``MessagesDoor.answer``: the
  completion parsed for choices, translated, serialised), against chat, which forwards the
  provider's bytes (its parse is the same in both and not counted);
* stream: a 100-chunk answer made Anthropic events (``TranslatedMessagesStream``), against chat's
  pass-through translator watching the same chunks;
* native: a ``kind: anthropic`` attempt's request (the client's body, model rewritten), against
  the chat path's translation of the same conversation for Anthropic.

Each figure is the best of ``--repeat`` timings of ``--number`` calls (the least disturbed by the
shared machine), per request. Run: python benchmarks/front_door_messages.py
Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_section  # noqa: E402
from gateway.policy.model import AnthropicProvider, OpenAIProvider  # noqa: E402
from gateway.providers.anthropic import AnthropicAdapter  # noqa: E402
from gateway.providers.openai import OpenAIAdapter, OpenAIStreamTranslator  # noqa: E402
from gateway.service.messages import MessagesDoor, TranslatedMessagesStream  # noqa: E402
from gateway.service.validation import check_request  # noqa: E402
from gateway.wire.requests import Endpoint  # noqa: E402

SECTION = "Front doors: Messages (issue 17)"
SYSTEM = "You are a helpful assistant. Answer briefly."
TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy? Answer in one word, please."},
]
MESSAGES_BODY: dict[str, Any] = {"model": "m", "max_tokens": 256, "system": SYSTEM, "messages": TURNS}
CHAT_BODY: dict[str, Any] = {
    "model": "m",
    "max_tokens": 256,
    "messages": [{"role": "system", "content": SYSTEM}, *TURNS],
}
COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-x",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Rome."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42},
    }
)
HEAD = (
    b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-x","choices":[{"index":0,"delta":'
)
CHUNKS = (
    [HEAD + b'{"role":"assistant","content":""},"finish_reason":null}]}']
    + [HEAD + b'{"content":"tok "},"finish_reason":null}]}'] * 98
    + [HEAD + b'{},"finish_reason":"stop"}]}']
)
STREAM = [b"data: " + c + b"\n\n" for c in CHUNKS] + [b"data: [DONE]\n\n"]


class _Client:
    def __init__(self, kind: str) -> None:
        if kind == "anthropic":
            self.config: Any = AnthropicProvider(kind="anthropic", base_url="http://a.test/v1")
            self.adapter: Any = AnthropicAdapter(self.config)
        else:
            self.config = OpenAIProvider(kind="openai", base_url="http://o.test/v1")
            self.adapter = OpenAIAdapter(self.config)


class _Target:
    def __init__(self, kind: str) -> None:
        self.client = _Client(kind)
        self.model = "upstream"
        self.provider = kind


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    n, r = args.number, args.repeat
    openai_target: Any = _Target("openai")
    anthropic_target: Any = _Target("anthropic")
    door = MessagesDoor.parse(dict(MESSAGES_BODY), {})
    stream_door = MessagesDoor.parse({**MESSAGES_BODY, "stream": True}, {})
    parsed_completion = orjson.loads(COMPLETION)
    chat_for_anthropic = AnthropicAdapter(anthropic_target.client.config)

    def messages_stream() -> None:
        translator = TranslatedMessagesStream(OpenAIStreamTranslator(), "upstream", "openai")
        for chunk in STREAM:
            translator.feed(chunk)
        translator.finish()

    def chat_stream() -> None:
        translator = OpenAIStreamTranslator()
        for chunk in STREAM:
            translator.feed(chunk)
        translator.finish()

    rows = [
        (
            "request: validate + translate",
            best_us(lambda: MessagesDoor.parse(dict(MESSAGES_BODY), {}), n, r),
            best_us(lambda: check_request(Endpoint.CHAT, CHAT_BODY), n, r),
        ),
        (
            "answer: completion -> message (whole)",
            best_us(lambda: door.answer(openai_target, COMPLETION, parsed_completion), n, r),
            0.0,
        ),
        (
            "stream: 100 chunks -> events",
            best_us(messages_stream, n // 10, r),
            best_us(chat_stream, n // 10, r),
        ),
        (
            "native attempt: request for kind anthropic",
            best_us(lambda: stream_door.build(anthropic_target), n, r),
            best_us(lambda: chat_for_anthropic.build_request(Endpoint.CHAT, CHAT_BODY, "upstream"), n, r),
        ),
    ]
    lines = [
        f"Run on {platform.python_implementation()} {platform.python_version()}, {platform.machine()}; "
        f"best of {r} x {n} calls (streams: {n // 10}); `python benchmarks/front_door_messages.py`.",
        "",
        "| step (per request) | /v1/messages (us) | /v1/chat/completions (us) | added (us) |",
        "|---|---:|---:|---:|",
    ]
    for name, messages_us, chat_us in rows:
        lines.append(f"| {name} | {messages_us:.1f} | {chat_us:.1f} | {messages_us - chat_us:+.1f} |")
    translated = rows[0][1] - rows[0][2] + rows[1][1]
    lines += [
        "",
        f"A whole answer through a translated deployment costs about {translated:.0f} us more than the "
        "same call on chat (request + answer rows); a stream adds the stream row's difference over "
        "100 chunks. A `kind: anthropic` deployment gets the client's body with the model rewritten, "
        "cheaper than the chat path's translation to Anthropic (last row), and its answer is relayed "
        "as is (the stream watched by the same translator chat uses).",
    ]
    print("\n".join(lines))
    write_section(SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
