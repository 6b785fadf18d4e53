"""Gemini responses as OpenAI responses, and the pieces the stream translator shares.

``GenerateContentResponse`` (https://ai.google.dev/api/generate-content#generatecontentresponse):
``candidates[].content.parts`` hold text and ``functionCall`` parts, ``finishReason`` says why a
candidate stopped (``Candidate.FinishReason``), ``usageMetadata`` counts tokens, and
``promptFeedback.blockReason`` replaces the candidates when the prompt itself was blocked.

Gemini gives function calls no id, so each gets ``call_<response id>_<n>``; the client's tool
results name that id and the request translation finds the function's name from it. A
``thoughtSignature`` on a call is handed to the client in ``extra_content.google`` (where
Google's OpenAI-compatible endpoint puts it) so that it comes back with the history. Thought
summaries (``thought: true`` parts) and non-text output (images, code execution) are dropped.
"""

from __future__ import annotations

import base64
import secrets
import struct
from typing import Any

import orjson

from gateway.errors import UpstreamBadResponse
from gateway.wire.requests import CHARS_PER_TOKEN, JSONObject

_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}  # anything else (OTHER, MALFORMED_FUNCTION_CALL, ...) ends the choice as "stop"
FAILED_REASONS = frozenset(
    {"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "OTHER",
     "MALFORMED_RESPONSE", "MISSING_THOUGHT_SIGNATURE"}
)  # fmt: skip
"""Reasons a candidate ends when the model failed to answer (a function call it could not write,
a tool it was not offered, ...): Gemini then sends no content at all. An answer whose every
candidate ended so, empty, is an ``UpstreamBadResponse`` (tried again, never cached), not an
empty "stop" a client would take for the model's answer; after content they end it as "stop"."""


def failed_empty(reasons: list[object]) -> UpstreamBadResponse:
    """The error for an answer whose candidates all ended with a failure and no content."""
    said = ", ".join(sorted({str(r) for r in reasons}))
    return UpstreamBadResponse(f"Gemini ended the answer with {said} and no content.")


def response_key(body: JSONObject) -> str:
    """A key for one response's ids: Gemini's ``responseId``, else a random one."""
    rid = body.get("responseId")
    return rid if isinstance(rid, str) and rid else secrets.token_hex(12)


def model_name(body: JSONObject, upstream_model: str) -> str:
    """The model to report: Gemini's ``modelVersion`` (as OpenAI reports a dated snapshot)."""
    version = body.get("modelVersion")
    return version if isinstance(version, str) and version else upstream_model


def finish_reason(gemini_reason: object, has_tool_calls: bool) -> str | None:
    """OpenAI's ``finish_reason`` for a candidate's ``finishReason`` (None: not finished)."""
    if not isinstance(gemini_reason, str) or gemini_reason == "FINISH_REASON_UNSPECIFIED":
        return None
    reason = _FINISH_REASONS.get(gemini_reason, "stop")
    return "tool_calls" if has_tool_calls and reason == "stop" else reason


def usage(metadata: object) -> JSONObject | None:
    """OpenAI's ``usage`` for ``usageMetadata``; thinking tokens count as completion tokens,
    as OpenAI counts reasoning tokens."""
    if not isinstance(metadata, dict) or "promptTokenCount" not in metadata:
        return None
    prompt = _count(metadata, "promptTokenCount")
    thoughts = _count(metadata, "thoughtsTokenCount")
    completion = _count(metadata, "candidatesTokenCount") + thoughts
    out: JSONObject = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _count(metadata, "totalTokenCount") or prompt + completion,
    }
    cached = _count(metadata, "cachedContentTokenCount")
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    if thoughts:
        out["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return out


def parts(candidate: object) -> list[JSONObject]:
    """A candidate's output parts, thought summaries left out."""
    content = candidate.get("content") if isinstance(candidate, dict) else None
    found = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(found, list):
        return []
    return [p for p in found if isinstance(p, dict) and not p.get("thought")]


def logprobs(candidate: object) -> JSONObject | None:
    """OpenAI's ``logprobs`` for a candidate's ``logprobsResult`` (None without one): per decoding
    step the chosen token (``chosenCandidates``) and its ``topCandidates``, each with its UTF-8
    bytes as OpenAI gives them."""
    result = candidate.get("logprobsResult") if isinstance(candidate, dict) else None
    chosen = result.get("chosenCandidates") if isinstance(result, dict) else None
    if not isinstance(chosen, list):
        return None
    tops = result.get("topCandidates") if isinstance(result, dict) else None
    tops = tops if isinstance(tops, list) else []
    content = []
    for step, token in enumerate(chosen):
        entry = _token_logprob(token)
        if entry is None:
            continue
        top = tops[step].get("candidates") if step < len(tops) and isinstance(tops[step], dict) else None
        alternatives = [_token_logprob(t) for t in top] if isinstance(top, list) else []
        content.append({**entry, "top_logprobs": [a for a in alternatives if a is not None]})
    return {"content": content, "refusal": None}


def legacy_logprobs(candidate: object, offset: int) -> tuple[JSONObject | None, int]:
    """The legacy completions API's ``logprobs`` for a candidate's ``logprobsResult`` (None
    without one), and the offset after its last token: ``tokens``, ``token_logprobs``,
    ``top_logprobs`` (per token, its alternatives by text, the chosen one among them, as
    OpenAI's "up to logprobs+1 elements") and ``text_offset`` (characters from the start of the
    prompt, ``offset`` being the first token's)."""
    found = logprobs(candidate)
    if found is None:
        return None, offset
    tokens: list[str] = []
    values: list[object] = []
    tops: list[JSONObject] = []
    offsets: list[int] = []
    for entry in found["content"]:
        token = entry["token"]
        tokens.append(token)
        values.append(entry["logprob"])
        top = {token: entry["logprob"]}
        for alternative in entry["top_logprobs"]:
            top.setdefault(alternative["token"], alternative["logprob"])
        tops.append(top)
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}, offset


def _token_logprob(token: object) -> JSONObject | None:
    if not isinstance(token, dict) or not isinstance(token.get("token"), str):
        return None
    value = token.get("logProbability")
    text = token["token"]
    return {
        "token": text,
        "logprob": value if isinstance(value, int | float) and not isinstance(value, bool) else 0.0,
        "bytes": list(text.encode()),
    }


def tool_call(part: JSONObject, call_id: str) -> JSONObject | None:
    """The OpenAI tool call for a ``functionCall`` part (None for any other part)."""
    call = part.get("functionCall")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    args = call.get("args")
    out: JSONObject = {
        "id": call_id,
        "type": "function",
        "function": {"name": call["name"], "arguments": orjson.dumps(args or {}).decode()},
    }
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        out["extra_content"] = {"google": {"thought_signature": signature}}
    return out


def chat_completion(
    body: JSONObject, upstream_model: str, created: int, *, one_call: bool = False, legacy: bool = False
) -> JSONObject:
    """A ``chat.completion`` for a ``GenerateContentResponse``; ``one_call`` keeps only each
    candidate's first function call (the request's ``parallel_tool_calls: false``, which Gemini
    has no setting for); ``legacy`` (a request with the deprecated ``functions``) gives that call
    as ``message.function_call`` with ``finish_reason: function_call``, as OpenAI answers it."""
    one_call = one_call or legacy
    key = response_key(body)
    calls = 0
    choices = []
    failed: list[object] = []  # the reasons of candidates that ended failed and empty
    for position, candidate in enumerate(_candidates(body)):
        texts: list[str] = []
        tool_calls: list[JSONObject] = []
        for part in parts(candidate):
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            call = tool_call(part, f"call_{key}_{calls}") if not (one_call and tool_calls) else None
            if call is not None:
                tool_calls.append(call)
                calls += 1
        reason = finish_reason(candidate.get("finishReason"), bool(tool_calls)) or "stop"
        message: JSONObject = {
            "role": "assistant",
            "content": "".join(texts) if texts or not (tool_calls or reason == "content_filter") else None,
            "refusal": None,
        }
        if tool_calls and legacy:
            message["function_call"] = tool_calls[0]["function"]
            reason = "function_call"
        elif tool_calls:
            message["tool_calls"] = tool_calls
        choices.append(
            {
                "index": _index(candidate, position),
                "message": message,
                "logprobs": logprobs(candidate),
                "finish_reason": reason,
            }
        )
        if not texts and not tool_calls and candidate.get("finishReason") in FAILED_REASONS:
            failed.append(candidate["finishReason"])
    if failed and len(failed) == len(choices):
        raise failed_empty(failed)
    if not choices:  # the prompt was blocked: no candidate at all
        message = {"role": "assistant", "content": None, "refusal": None}
        choices.append({"index": 0, "message": message, "logprobs": None, "finish_reason": "content_filter"})
    return _envelope(body, f"chatcmpl-{key}", "chat.completion", upstream_model, created, choices)


def text_completion(body: JSONObject, upstream_model: str, created: int, prompt_chars: int = 0) -> JSONObject:
    """A ``text_completion`` (legacy completions API) for a ``GenerateContentResponse``;
    ``prompt_chars``: the prompt's length, where a token's ``text_offset`` starts counting."""
    choices = []
    failed: list[object] = []
    for position, candidate in enumerate(_candidates(body)):
        text = "".join(p["text"] for p in parts(candidate) if isinstance(p.get("text"), str))
        reason = finish_reason(candidate.get("finishReason"), False) or "stop"
        found, _ = legacy_logprobs(candidate, prompt_chars)
        choices.append(
            {"index": _index(candidate, position), "text": text, "logprobs": found, "finish_reason": reason}
        )
        if not text and candidate.get("finishReason") in FAILED_REASONS:
            failed.append(candidate["finishReason"])
    if failed and len(failed) == len(choices):
        raise failed_empty(failed)
    if not choices:
        choices.append({"index": 0, "text": "", "logprobs": None, "finish_reason": "content_filter"})
    return _envelope(body, f"cmpl-{response_key(body)}", "text_completion", upstream_model, created, choices)


def embeddings(body: JSONObject, request: JSONObject, upstream_model: str) -> JSONObject:
    """An OpenAI embeddings ``list`` for a ``BatchEmbedContentsResponse``; base64 (little-endian
    float32, as OpenAI encodes it) when the client asked for ``encoding_format: base64``.

    "The embeddings for each request, in the same order as provided in the batch request": an
    answer with another number of them than ``request`` has inputs cannot be matched to the
    inputs, and is a broken answer (502, failed over), never a short list the client would read
    as aligned. Usage is ``usageMetadata``'s where Gemini gives it, else estimated from the
    inputs' characters (``CHARS_PER_TOKEN``, rounded up per input): Gemini's embeddings answers
    carry no token count, and a 0 read as "free" by whoever bills the key."""
    found = body.get("embeddings")
    if not isinstance(found, list):
        raise UpstreamBadResponse("Gemini returned an embeddings response without 'embeddings'.")
    raw = request.get("input")
    inputs = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    if len(found) != len(inputs):
        raise UpstreamBadResponse(
            f"Gemini returned {len(found)} embeddings for {len(inputs)} inputs: the answer cannot be "
            "matched to the inputs."
        )
    as_base64 = request.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(found):
        values = item.get("values") if isinstance(item, dict) else None
        if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
            raise UpstreamBadResponse("Gemini returned an embedding that is not a list of numbers.")
        vector: Any = values
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    reported = (usage(body.get("usageMetadata")) or {}).get("prompt_tokens", 0)
    tokens = reported or sum(-(-len(text) // CHARS_PER_TOKEN) for text in inputs if isinstance(text, str))
    return {
        "object": "list",
        "data": data,
        "model": upstream_model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _candidates(body: JSONObject) -> list[JSONObject]:
    found = body.get("candidates")
    if found is None and not isinstance(body.get("promptFeedback"), dict):
        raise UpstreamBadResponse("Gemini returned a response with neither candidates nor promptFeedback.")
    if found is not None and not isinstance(found, list):
        raise UpstreamBadResponse("Gemini returned candidates that are not a list.")
    return [c for c in found or [] if isinstance(c, dict)]


def _envelope(
    body: JSONObject, rid: str, kind: str, upstream_model: str, created: int, choices: list[JSONObject]
) -> JSONObject:
    out: JSONObject = {
        "id": rid,
        "object": kind,
        "created": created,
        "model": model_name(body, upstream_model),
        "choices": choices,
    }
    found = usage(body.get("usageMetadata"))
    if found is not None:
        out["usage"] = found
    return out


def _index(candidate: JSONObject, position: int) -> int:
    index = candidate.get("index")
    return index if isinstance(index, int) else position


def _count(metadata: JSONObject, name: str) -> int:
    value = metadata.get(name)
    return value if isinstance(value, int) else 0
