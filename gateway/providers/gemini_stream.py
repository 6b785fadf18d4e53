"""Gemini's ``streamGenerateContent?alt=sse`` stream as OpenAI chunks, event by event.

With ``alt=sse`` every event is ``data: {GenerateContentResponse}`` holding the next slice of each
candidate (https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent); the
last one carries the final ``usageMetadata``, and the stream simply ends: there is no
``[DONE]``. So each event is translated as soon as it is complete (chunks may split it anywhere,
lines may end in CRLF). ``finishReason`` may come with every slice, not only the last (the
Streaming REST quickstart shows ``STOP`` on each), so the finish chunk of each choice goes out
from ``finish()``, when the stream has ended, with the usage chunk the client asked for and
``data: [DONE]``: no content is held back, only the verdict. A function call arrives whole in one
part, so it becomes one complete ``tool_calls`` delta (id, name, all arguments). A stream that
ends before any candidate gave a finish reason was cut: ``finish()`` raises, so the client gets
an error event and the cache keeps nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from gateway.errors import UpstreamBadResponse
from gateway.providers.gemini_errors import error_from_object
from gateway.providers.gemini_response import (
    FAILED_REASONS,
    failed_empty,
    finish_reason,
    legacy_logprobs,
    logprobs,
    model_name,
    parts,
    response_key,
    tool_call,
    usage,
)
from gateway.wire.requests import JSONObject
from gateway.wire.sse import DONE, DONE_DATA, SSEDecoder, encode_json


@dataclass(slots=True)
class _Choice:
    """What one candidate's stream has sent so far."""

    started: bool = False
    content: bool = False  # text or a call was sent
    tool_calls: int = 0
    finish_reason: object = None  # Gemini's, the latest seen
    text_offset: int = 0  # a completion's next token's, from the prompt's start


class GeminiStreamTranslator:
    """One Gemini stream in, OpenAI chat (or legacy text completion) SSE out."""

    __slots__ = ("_calls", "_chat", "_choices", "_completed", "_created", "_decoder", "_head",
                 "_include_usage", "_key", "_legacy", "_model", "_one_call", "_prompt_chars", "_provider",
                 "_usage")  # fmt: skip

    def __init__(
        self,
        *,
        chat: bool,
        include_usage: bool,
        model: str,
        created: int,
        provider: str = "gemini",
        one_call: bool = False,
        legacy: bool = False,
        prompt_chars: int = 0,
    ) -> None:
        self._prompt_chars = prompt_chars  # a completion's: where its text_offset counts from
        self._provider = provider  # the policy's name, which its error events name
        # parallel_tool_calls: false, or the deprecated functions API: a candidate's first call only
        self._one_call = one_call or legacy
        self._legacy = legacy  # the call as delta.function_call, finish_reason function_call
        self._chat = chat
        self._include_usage = include_usage
        self._model = model
        self._created = created
        self._decoder = SSEDecoder()
        self._completed = False
        self._head: JSONObject | None = None  # id, object, created, model: set by the first event
        self._key = ""
        self._choices: dict[int, _Choice] = {}
        self._calls = 0
        self._usage: JSONObject | None = None

    def feed(self, chunk: bytes) -> bytes:
        out = bytearray()
        for event in self._events(self._decoder.feed(chunk)):
            out += self._translate(event)
        return bytes(out)

    def finish(self) -> bytes:
        out = bytearray()
        for event in self._events(self._decoder.flush()):  # a last event without its blank line
            out += self._translate(event)
        reasons = {i: finish_reason(c.finish_reason, c.tool_calls > 0) for i, c in self._choices.items()}
        if self._legacy:
            reasons = {i: "function_call" if r == "tool_calls" else r for i, r in reasons.items()}
        if not any(reasons.values()):
            raise UpstreamBadResponse("Gemini stream ended before any candidate finished.")
        failed = [c.finish_reason for c in self._choices.values() if not c.content]
        if len(failed) == len(self._choices) and all(r in FAILED_REASONS for r in failed):
            raise failed_empty(failed)  # (before any data, so the call fails over: _candidate)
        for index in sorted(reasons):
            out += self._chunk(index, {} if self._chat else "", reasons[index] or "stop")
        if self._include_usage and self._usage is not None and self._head is not None:
            out += encode_json({**self._head, "choices": [], "usage": self._usage})
        self._completed = True
        return bytes(out + DONE)

    def usage(self) -> JSONObject | None:
        return self._usage

    @property
    def failing(self) -> bool:
        return False  # an error event raises at once

    @property
    def completed(self) -> bool:
        return self._completed

    @staticmethod
    def _events(events: list[bytes]) -> Iterator[JSONObject]:
        """Each event's parsed data, in order."""
        for data in events:
            if not data.strip() or data.strip() == DONE_DATA:
                continue  # keep-alives, or a proxy's end marker
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamBadResponse("Gemini sent a stream event that is not valid JSON.") from None
            if not isinstance(event, dict):
                raise UpstreamBadResponse("Gemini sent a stream event that is not a JSON object.")
            yield event

    def _translate(self, event: JSONObject) -> bytes:
        error = event.get("error")
        if isinstance(error, dict):
            raise error_from_object(0, error, None, self._provider)
        if self._head is None:
            self._key = response_key(event)
            prefix, kind = (
                ("chatcmpl", "chat.completion.chunk") if self._chat else ("cmpl", "text_completion")
            )
            model = model_name(event, self._model)
            self._head = {
                "id": f"{prefix}-{self._key}",
                "object": kind,
                "created": self._created,
                "model": model,
            }
        found = usage(event.get("usageMetadata"))
        if found is not None:
            self._usage = found  # cumulative: the last one counts
        out = bytearray()
        candidates = event.get("candidates")
        feedback = event.get("promptFeedback")
        if not candidates and isinstance(feedback, dict) and feedback.get("blockReason"):
            candidates = [{"index": 0, "finishReason": "SAFETY"}]  # the prompt itself was blocked
        if candidates is not None and not isinstance(candidates, list):
            raise UpstreamBadResponse("Gemini sent stream candidates that are not a list.")
        for position, candidate in enumerate(candidates or []):
            if isinstance(candidate, dict):
                out += self._candidate(candidate, position)
        return bytes(out)

    def _candidate(self, candidate: JSONObject, position: int) -> bytes:
        index = candidate.get("index")
        index = index if isinstance(index, int) else position
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _Choice(text_offset=self._prompt_chars)
        out = bytearray()
        found = parts(candidate)
        if self._chat and not state.started:
            if not found and candidate.get("finishReason") in FAILED_REASONS:
                # Failed before a word: nothing is sent, so the stream has no data and is tried
                # again (calls.py), rather than a role chunk committing the client to it.
                state.finish_reason = candidate["finishReason"]
                return b""
            out += self._chunk(index, {"role": "assistant", "content": ""}, None)
        state.started = True
        if self._chat:
            event_logprobs = logprobs(candidate)
        else:
            event_logprobs, state.text_offset = legacy_logprobs(candidate, state.text_offset)
        for part in found:
            text = part.get("text")
            if isinstance(text, str) and text:
                out += self._chunk(index, {"content": text} if self._chat else text, None, event_logprobs)
                event_logprobs = None  # an event's steps go with its first text
                state.content = True
            wanted = self._chat and not (self._one_call and state.tool_calls)
            call = tool_call(part, f"call_{self._key}_{self._calls}") if wanted else None
            if call is not None:
                if self._legacy:
                    out += self._chunk(index, {"function_call": call["function"]}, None)
                else:
                    out += self._chunk(index, {"tool_calls": [{"index": state.tool_calls, **call}]}, None)
                state.tool_calls += 1
                state.content = True
                self._calls += 1
        if candidate.get("finishReason") is not None:
            state.finish_reason = candidate["finishReason"]
        return bytes(out)

    def _chunk(
        self, index: int, delta: JSONObject | str, reason: str | None, found: JSONObject | None = None
    ) -> bytes:
        if isinstance(delta, str):
            choice = {"index": index, "text": delta, "logprobs": found, "finish_reason": reason}
        else:
            choice = {"index": index, "delta": delta, "logprobs": found, "finish_reason": reason}
        return encode_json({**(self._head or {}), "choices": [choice]})
