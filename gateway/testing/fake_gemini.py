"""The Gemini flavor of the fake provider: ``sophia-gateway fake-provider --flavor gemini``.

Answers the Gemini API under ``/v1beta`` (and ``/v1``), so a provider's ``base_url`` is
``http://HOST:PORT/v1beta``:

* ``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse`` (one
  ``data: {GenerateContentResponse}`` event per word, the last with ``finishReason`` and
  ``usageMetadata``, and no end marker, like the real stream);
* ``POST /v1beta/models/{model}:batchEmbedContents`` and ``:embedContent`` (the OpenAI fake's
  vectors, so the same text embeds the same through either flavor).

Replies are deterministic: with ``tools``, when ``toolConfig`` mode ``ANY`` forces a call (the
first allowed function, else the first declared) or the last user turn says "call NAME" for a
declared function (mode ``AUTO``), the reply is one ``functionCall`` part (arguments built from
the parameter schema as the Anthropic fake builds them, plus a fake ``thoughtSignature``);
otherwise it echoes the last user turn ("Echo: ...", or ``--reply``), cut at ``maxOutputTokens``
(``MAX_TOKENS``) or at a ``stopSequences`` match. Usage counts words over the system instruction
and every text part (function responses included), so a request the gateway translated counts
the same as its OpenAI original at the OpenAI fake.

``--require-key`` checks ``x-goog-api-key`` (or ``?key=``): a missing key is a 403
``PERMISSION_DENIED``, a wrong one the 400 ``API_KEY_INVALID`` Gemini sends. Injected errors use
Google's error body (``--error-status 429`` is ``RESOURCE_EXHAUSTED`` with a ``RetryInfo`` delay
instead of a Retry-After header, 503 ``UNAVAILABLE``). Faults, pacing and the control endpoints
are the OpenAI fake's (``fake_provider``), drawn and applied the same way.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web

from gateway.testing import fake_wire
from gateway.testing.fake_provider import (
    FAKE_STATE,
    FakeConfig,
    FakeState,
    Fault,
    SeenRequest,
    _echo,
    _inject,
    _json,
    _stream,
    draw_fault,
)
from gateway.testing.fake_wire import Usage, asked_to_call, tool_input

# google.rpc.Code names by HTTP status (https://cloud.google.com/apis/design/errors).
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_METHODS = frozenset({"generateContent", "streamGenerateContent", "embedContent", "batchEmbedContents"})
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS"}
_MAX_STOPS = 5


def add_routes(app: web.Application) -> None:
    """Register the Gemini API on the fake provider's ``app``."""
    for version in ("v1beta", "v1"):
        app.router.add_post(f"/{version}/models/{{target}}", _models)


def refusal(status: int, message: str, details: Sequence[dict[str, object]] = ()) -> web.HTTPException:
    """A refusal (400, 403 or 404) with Google's error body, to raise from a handler."""
    kinds: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
    }
    return kinds[status](text=error_body(status, message, details).decode(), content_type="application/json")


def error_body(status: int, message: str, details: Sequence[dict[str, object]] = ()) -> bytes:
    """Google's error envelope for ``status``."""
    name = STATUS_NAMES.get(status, "FAILED_PRECONDITION" if status < 500 else "UNKNOWN")
    error: dict[str, object] = {"code": status, "message": message, "status": name}
    if details:
        error["details"] = list(details)
    return orjson.dumps({"error": error})


def injected_error(config: FakeConfig) -> web.Response:
    """An injected ``--error-status`` answer; a 429's delay travels as ``RetryInfo``."""
    status = config.error_status
    retry_after = config.retry_after if config.retry_after is not None else (1.0 if status == 429 else None)
    details: list[dict[str, object]] = []
    if retry_after is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after:g}s"}
        )
    body = error_body(status, f"fake-provider: injected {status} error", details)
    return web.Response(status=status, body=body, content_type="application/json")


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """What a ``generateContent`` request asks for, as far as the fake cares."""

    model: str
    prompt: str  # the text of the last user turn
    prompt_tokens: int
    max_tokens: int | None
    stop_sequences: tuple[str, ...]
    function: dict[str, object] | None  # the declaration to call, if the reply is a call
    json_reply: str | None = None  # the reply when ``responseMimeType`` is application/json
    candidates: int = 1  # ``generationConfig.candidateCount``: each candidate the same reply
    top_logprobs: int | None = None  # ``responseLogprobs``: that many top candidates per step


@dataclass(frozen=True, slots=True)
class Reply:
    tokens: list[str]  # streamed text pieces; empty for a function call
    finish_reason: str  # Gemini's
    usage: Usage
    call: dict[str, object] | None = None  # the functionCall part's value
    candidates: int = 1
    top_logprobs: int | None = None


async def _models(request: web.Request) -> web.StreamResponse:
    model, _, method = request.match_info["target"].partition(":")
    state = request.app[FAKE_STATE]
    body = await _admit(request, state)
    if method in _METHODS and not state.config.serves(model):
        version = request.path.split("/", 2)[1]  # v1beta or v1
        raise refusal(
            404,
            f"models/{model} is not found for API version {version}, or is not supported for "
            f"{method}. Call ListModels to see the list of available models and their supported methods.",
        )
    if method == "generateContent":
        return await _generate(request, state, parse_generate(model, body), stream=False)
    if method == "streamGenerateContent":
        if request.query.get("alt") != "sse":
            raise refusal(400, "This fake streams with alt=sse only.")
        return await _generate(request, state, parse_generate(model, body), stream=True)
    if method in ("batchEmbedContents", "embedContent"):
        return await _embed(request, state, model, body, batch=method == "batchEmbedContents")
    raise refusal(404, f"Method models.{method or '(none)'} is not found.")


async def _generate(
    request: web.Request, state: FakeState, ask: GenerateRequest, *, stream: bool
) -> web.StreamResponse:
    config = state.config  # one snapshot per request
    fault = draw_fault(config, state.rng)
    early = await _inject(request, config, state.rng, fault, stream=stream, error_response=injected_error)
    if early is not None:
        return early
    reply = plan_reply(config, ask)
    fmt = GenerateFormat(next(state.serials), ask.model, reply)
    if not stream:
        return _json(fmt.whole(reply.tokens, reply.finish_reason, reply.usage))
    cut = fault is Fault.DISCONNECT
    return await _stream(request, config, fmt, reply.tokens, reply.finish_reason, None, cut, done=b"")


# gemini-embedding-001's largest output (its model card: 128 to 3072).
MAX_OUTPUT_DIMENSIONALITY = 3072


async def _embed(
    request: web.Request, state: FakeState, model: str, body: dict[str, object], *, batch: bool
) -> web.StreamResponse:
    config = state.config
    requests = body.get("requests") if batch else [body]
    if not isinstance(requests, list) or not requests:
        raise refusal(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
    if len(requests) > MAX_EMBED_BATCH:
        raise refusal(
            400,
            f"* BatchEmbedContentsRequest.requests: at most {MAX_EMBED_BATCH} requests can be in one batch",
        )
    texts, dims = [], []
    for i, item in enumerate(requests):
        if not isinstance(item, dict) or item.get("model") != f"models/{model}":
            raise refusal(400, f"* requests[{i}].model: must be models/{model}, the model in the URL")
        texts.append(_text(item.get("content")))
        size = item.get("outputDimensionality")
        if size is not None and (type(size) is not int or not 1 <= size < 2**31):  # as Gemini refuses it
            shown = str(size) if type(size) is int else orjson.dumps(size).decode()
            raise refusal(
                400, f"Invalid value at 'requests[{i}].output_dimensionality' (TYPE_INT32), {shown}"
            )
        if size is not None and size > MAX_OUTPUT_DIMENSIONALITY:
            raise refusal(
                400, f"* requests[{i}].output_dimensionality: must be at most {MAX_OUTPUT_DIMENSIONALITY}"
            )
        dims.append(size if size is not None else config.embedding_dim)
    fault = draw_fault(config, state.rng)
    early = await _inject(request, config, state.rng, fault, stream=False, error_response=injected_error)
    if early is not None:
        return early
    vectors = [
        {"values": _vector(text, dim, config.embedding_kind)} for text, dim in zip(texts, dims, strict=True)
    ]
    return _json(orjson.dumps({"embeddings": vectors} if batch else {"embedding": vectors[0]}))


async def _admit(request: web.Request, state: FakeState) -> dict[str, object]:
    """Record the request, then refuse it unless authorised and a JSON object, as Gemini does."""
    raw = await request.read()
    try:
        body: object = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    state.record(SeenRequest(request.path, request.headers, body))
    key = state.config.require_key
    given = request.headers.get("x-goog-api-key") or request.query.get("key")
    if key is not None and given is None:
        raise refusal(403, "Method doesn't allow unregistered callers. Please use an API key.")
    if key is not None and given != key:
        info: dict[str, object] = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
        }
        raise refusal(400, "API key not valid. Please pass a valid API key.", [info])
    if not isinstance(body, dict):
        raise refusal(400, "Invalid JSON payload received. Expected a JSON object.")
    return body


MAX_EMBED_BATCH = 100
_CALL_TURN = (
    "Please ensure that function call turn comes immediately after a user turn or after a "
    "function response turn."
)


def _calls_a_function(content: dict[str, object]) -> bool:
    parts = content.get("parts")
    return isinstance(parts, list) and any(isinstance(p, dict) and "functionCall" in p for p in parts)


def _check_responses(call_turn: dict[str, object], answer: dict[str, object]) -> None:
    """The turn after a function call turn answers each call: Gemini's 400 otherwise, in the words
    its users quote (google-gemini/gemini-cli#4217, #16415)."""

    def count(content: dict[str, object], key: str) -> int:
        parts = content.get("parts")
        return sum(isinstance(p, dict) and key in p for p in parts) if isinstance(parts, list) else 0

    if count(answer, "functionResponse") != count(call_turn, "functionCall"):
        raise refusal(
            400,
            "Please ensure that the number of function response parts is equal to the number of "
            "function call parts of the function call turn.",
        )


def _after_user_or_response(contents: list[object], i: int) -> bool:
    before = contents[i - 1] if i > 0 else None
    return isinstance(before, dict) and before.get("role") == "user"  # (a function response is a user turn)


def parse_generate(model: str, body: dict[str, object]) -> GenerateRequest:
    """The request's essentials; a request the real API would refuse gets its 400."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise refusal(400, "* GenerateContentRequest.contents: contents is not specified")
    words = len(_text(body.get("systemInstruction")).split())
    prompt = ""
    for i, content in enumerate(contents):
        role = content.get("role") if isinstance(content, dict) else None
        if role not in ("user", "model"):
            raise refusal(400, f"* GenerateContentRequest.contents[{i}].role: must be user or model")
        if role == "model" and _calls_a_function(content) and not _after_user_or_response(contents, i):
            raise refusal(400, _CALL_TURN)
        if role == "user" and i > 0 and _calls_a_function(contents[i - 1]):
            _check_responses(contents[i - 1], content)
        if role == "model" and i == 0:  # (NousResearch/hermes-agent#55427)
            raise refusal(400, "Please ensure that multiturn requests alternate between user and model.")
        _check_media(content)
        text = _text(content)
        words += len(text.split())
        if role == "user":
            prompt = text
    last = contents[-1]
    if isinstance(last, dict) and last.get("role") == "model":
        # The API's words for a history ending on the model's turn (songquanpeng/one-api#836), still
        # refused by current models (microsoft/semantic-kernel#13288, crewAIInc/crewAI#6973: "Gemini's
        # generateContent API rejects a request whose history ends on a model turn").
        raise refusal(400, _LAST_TURN)
    config = body.get("generationConfig")
    config = config if isinstance(config, dict) else {}
    _check_penalties(model, config)
    _check_schemas(body, config)
    limit = config.get("maxOutputTokens")
    _check_thinking(model, config.get("thinkingConfig"))
    stops = config.get("stopSequences")
    if isinstance(stops, list) and len(stops) > _MAX_STOPS:
        # GenerationConfig.stopSequences: "The set of character sequences (up to 5) that will
        # stop output generation" (https://ai.google.dev/api/generate-content).
        raise refusal(
            400,
            "* GenerateContentRequest.generation_config.stop_sequences: "
            f"at most {_MAX_STOPS} stop sequences are allowed",
        )
    return GenerateRequest(
        model,
        prompt,
        words,
        limit if isinstance(limit, int) and limit > 0 else None,
        tuple(s for s in stops if isinstance(s, str) and s) if isinstance(stops, list) else (),
        _chosen_function(body, contents[-1], prompt),
        fake_wire.json_text(config.get("responseSchema"), prompt)
        if config.get("responseMimeType") == "application/json"
        else None,
        _candidate_count(config.get("candidateCount")),
        _top_logprobs(config),
    )


# The image types Gemini reads (its image understanding guide, "Supported image formats");
# another image type is refused in these words (Mai-with-u/MaiBot#1435: image/gif;
# brianpetro/obsidian-smart-connections#1238: image/jpg; charmbracelet/crush#995).
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")


def _check_media(content: object) -> None:
    parts = content.get("parts") if isinstance(content, dict) else None
    for part in parts if isinstance(parts, list) else ():
        media = (part.get("inlineData") or part.get("fileData")) if isinstance(part, dict) else None
        mime = media.get("mimeType") if isinstance(media, dict) else None
        if isinstance(mime, str) and mime.startswith("image/") and mime not in _IMAGE_TYPES:
            raise refusal(400, f"Unsupported MIME type: {mime}")


_LAST_TURN = "Please ensure that multiturn requests ends with a user role or a function response."
# Models that take ``presencePenalty`` / ``frequencyPenalty`` (Gemini 2.0 and 1.5); later ones
# refuse a non-zero penalty: "Penalty is not enabled for this model" (google-gemini/cookbook#1290,
# on every 2.5 and 3 model tested; PublicAffairs/openai-gemini#63 for 2.5 Flash; a Google team
# member on the forum: frequencyPenalty is supported on gemini-2.0-flash only). The fake's own
# models (``gemini-test``) play a current model.
_PENALTY_MODELS = re.compile(r"^gemini-(?:1\.|2\.0)")


def _check_penalties(model: str, config: dict[str, object]) -> None:
    if _PENALTY_MODELS.match(model):
        return
    for name in ("presencePenalty", "frequencyPenalty"):
        if config.get(name) not in (None, 0, 0.0):
            raise refusal(400, "Penalty is not enabled for this model")


# The fields of Gemini's ``Schema`` ("a select subset of an OpenAPI 3.0 schema object",
# https://ai.google.dev/api/caching#Schema); the API refuses any other key, in protobuf's JSON
# words ('Invalid JSON payload received. Unknown name "additionalProperties" at
# 'generation_config.response_schema': Cannot find field.', as clients quote it). (A JSON Schema
# goes in ``responseJsonSchema`` / ``parametersJsonSchema`` instead, which this fake leaves alone.)
_SCHEMA_FIELDS = frozenset(
    [
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    ]
)


# ``FunctionDeclaration.name``: "Must be a-z, A-Z, 0-9, or contain underscores, colons, dots, and
# dashes, with a maximum length of 64" (the v1beta reference); the API also wants a letter or an
# underscore first, in its words as clients quote them (google-gemini/gemini-cli#9535).
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
_BAD_FUNCTION_NAME = (
    "Invalid function name. Must start with a letter or an underscore. Must be alphameric (a-z, "
    "A-Z, 0-9), underscores (_), dots (.), colons (:), or dashes (-), with a maximum length of 64."
)


def _declarations(body: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
    """Each function declaration of ``body`` with its place (``tools[i].function_declarations[j]``)."""
    found = []
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        declarations = tool.get("functionDeclarations") if isinstance(tool, dict) else None
        for j, declaration in enumerate(declarations if isinstance(declarations, list) else []):
            if isinstance(declaration, dict):
                found.append((f"tools[{i}].function_declarations[{j}]", declaration))
    return found


def _check_schemas(body: dict[str, object], config: dict[str, object]) -> None:
    schemas: list[tuple[object, str]] = [(config.get("responseSchema"), "generation_config.response_schema")]
    schemas += [(d.get("parameters"), f"{where}.parameters") for where, d in _declarations(body)]
    for where, declaration in _declarations(body):
        name = declaration.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
            raise refusal(400, f"* GenerateContentRequest.{where}.name: {_BAD_FUNCTION_NAME}")
    while schemas:
        node, where = schemas.pop()
        if not isinstance(node, dict):
            continue
        unknown = sorted(set(node) - _SCHEMA_FIELDS)
        if unknown:
            raise refusal(
                400,
                f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at '{where}': Cannot find field.",
            )
        properties = node.get("properties")
        for name, sub in properties.items() if isinstance(properties, dict) else ():
            schemas.append((sub, f"{where}.properties[{name}].value"))
        schemas.append((node.get("items"), f"{where}.items"))
        branches = node.get("anyOf")
        for k, sub in enumerate(branches if isinstance(branches, list) else []):
            schemas.append((sub, f"{where}.any_of[{k}]"))


def _top_logprobs(config: dict[str, object]) -> int | None:
    """``GenerationConfig.responseLogprobs`` and ``logprobs`` (top candidates per decoding
    step, "Only valid if responseLogprobs=True"): None when not asked."""
    top = config.get("logprobs")
    if config.get("responseLogprobs") is not True:
        if top is not None:
            raise refusal(
                400, "* GenerateContentRequest.generation_config.logprobs: requires response_logprobs"
            )
        return None
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20):
        raise refusal(400, "* GenerateContentRequest.generation_config.logprobs: must be between 0 and 20")
    return top if isinstance(top, int) else 0


def _candidate_count(count: object) -> int:
    """``GenerationConfig.candidateCount``: "Number of generated responses to return. If unset,
    this will default to 1." (https://ai.google.dev/api/generate-content)"""
    if count is None:
        return 1
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise refusal(400, "* GenerateContentRequest.generation_config.candidate_count: must be positive")
    if count > MAX_CANDIDATES:  # the v1beta GenerationConfig reference: "must be between [1, 8]"
        raise refusal(
            400,
            f"* GenerateContentRequest.generation_config.candidate_count: must be at most {MAX_CANDIDATES}",
        )
    return count


MAX_CANDIDATES = 8


# The largest thinking budget any model takes (the thinking guide: 2.5 Pro "128 to 32768"; the
# fake does not know which model it plays, so it takes the widest range, -1 being "dynamic").
_MAX_THINKING_BUDGET = 32768


# Thinking levels (``ThinkingConfig.thinkingLevel``), taken by Gemini 3 and later only.
_THINKING_LEVELS = ("minimal", "low", "medium", "high")
_LEVEL_MODEL = re.compile(r"^(?:[\w.-]+/)?gemini-[3-9]", re.IGNORECASE)


def _check_thinking(model: str, thinking: object) -> None:
    """Refuse a thinking budget no Gemini model takes, in Gemini's words
    (RooCodeInc/Roo-Code#4399: "The thinking budget (52428) is invalid."), a budget beside a
    level (Google's docs: both in one request is a 400; the words as quoted in help.apiyi.com's
    write-up), a level to a model before Gemini 3 (dhyansraj/mcp-mesh#1346, measured against the
    API), and a level that is none of ``_THINKING_LEVELS`` (Google's words for a bad enum)."""
    if not isinstance(thinking, dict):
        return
    budget = thinking.get("thinkingBudget")
    if isinstance(budget, int) and not -1 <= budget <= _MAX_THINKING_BUDGET:
        raise refusal(400, f"The thinking budget ({budget}) is invalid.")
    level = thinking.get("thinkingLevel")
    if level is None:
        return
    if budget is not None:
        raise refusal(400, "thinking_budget and thinking_level are not supported together.")
    if not isinstance(level, str) or level.lower() not in _THINKING_LEVELS:
        raise refusal(
            400,
            "Invalid value at 'generation_config.thinking_config.thinking_level' "
            f"(type.googleapis.com/google.ai.generativelanguage.v1beta.ThinkingConfig.ThinkingLevel), {level!r}",
        )
    if _LEVEL_MODEL.match(model) is None:
        raise refusal(400, "Thinking level is not supported for this model.")


def plan_reply(config: FakeConfig, ask: GenerateRequest) -> Reply:
    """A function call if one is asked for, else the echo (or ``--reply``), cut as the API would."""
    if ask.function is not None:
        args = tool_input({"input_schema": ask.function.get("parameters")})
        tokens, _ = fake_wire.reply_tokens(orjson.dumps(args).decode(), None)
        call = {"name": ask.function["name"], "args": args}
        return Reply(
            [], "STOP", config.usage(ask.prompt_tokens, len(tokens) * ask.candidates), call, ask.candidates
        )
    text = config.reply if config.reply is not None else _echo(ask.prompt)
    if ask.json_reply is not None and config.reply is None:  # a fixed reply stands
        text = ask.json_reply
    hits = [text.find(s) for s in ask.stop_sequences if s in text]
    if hits:
        text = text[: min(hits)]
    tokens, finish = fake_wire.reply_tokens(text, ask.max_tokens)
    usage = config.usage(ask.prompt_tokens, len(tokens) * ask.candidates)
    return Reply(tokens, _FINISH[finish], usage, None, ask.candidates, ask.top_logprobs)


class GenerateFormat:
    """Renders one reply as a ``GenerateContentResponse`` or as its stream events (the
    ``fake_wire.ReplyFormat`` shape, so ``fake_provider._stream`` paces and cuts it as it does
    OpenAI streams)."""

    __slots__ = ("_head", "_reply", "_signature")

    def __init__(self, serial: int, model: str, reply: Reply) -> None:
        self._reply = reply
        self._head = {"modelVersion": model, "responseId": f"fake{serial:08x}"}
        self._signature = f"fake-signature-{serial:08x}"

    def whole(self, tokens: Sequence[str], finish_reason: str, usage: Usage) -> bytes:
        return orjson.dumps(self._response(self._parts("".join(tokens)), finish_reason, usage))

    def opening(self) -> None:
        return None  # Gemini streams start with the first slice of text

    def token(self, text: str) -> bytes:
        return fake_wire.sse(self._response([{"text": text}], None, None))

    def closing(self, finish_reason: str) -> bytes:
        return fake_wire.sse(self._response(self._parts(""), finish_reason, self._reply.usage))

    def usage(self, usage: Usage) -> bytes:
        return b""  # the closing event carries usageMetadata

    def _parts(self, text: str) -> list[dict[str, object]]:
        call = self._reply.call
        if call is None:
            return [{"text": text}]
        return [{"functionCall": call, "thoughtSignature": self._signature}]

    def _logprobs(self, parts: list[dict[str, object]]) -> dict[str, object] | None:
        """``logprobsResult`` for the text of ``parts``, when asked: a step per token."""
        top = self._reply.top_logprobs
        if top is None:
            return None
        text = "".join(str(p["text"]) for p in parts if isinstance(p.get("text"), str))
        tokens, _ = fake_wire.reply_tokens(text, None)
        chosen: list[dict[str, object]] = [
            {"token": t, "tokenId": i, "logProbability": -0.25} for i, t in enumerate(tokens)
        ]
        # Each step's most likely candidates, most likely first: the chosen token, then others.
        alternatives = [
            {
                "candidates": [
                    {"token": t if k == 0 else f"{t}~{k}", "tokenId": i * 10 + k, "logProbability": -0.25 - k}
                    for k in range(top)
                ]
            }
            for i, t in enumerate(tokens)
        ]
        return {"topCandidates": alternatives, "chosenCandidates": chosen}

    def _response(
        self, parts: list[dict[str, object]], finish_reason: str | None, usage: Usage | None
    ) -> dict[str, object]:
        candidates: list[dict[str, object]] = []
        found = self._logprobs(parts)
        for index in range(self._reply.candidates):
            candidate: dict[str, object] = {"content": {"parts": parts, "role": "model"}, "index": index}
            if found is not None:
                candidate["logprobsResult"] = found
            if finish_reason is not None:
                candidate["finishReason"] = finish_reason
            candidates.append(candidate)
        out: dict[str, object] = {"candidates": candidates}
        if usage is not None:
            metadata: dict[str, object] = {
                "promptTokenCount": usage.prompt_tokens,
                "candidatesTokenCount": usage.completion_tokens,
                "totalTokenCount": usage.prompt_tokens + usage.completion_tokens,
            }
            if usage.cache_read_tokens:  # part of promptTokenCount (context caching docs)
                metadata["cachedContentTokenCount"] = usage.cache_read_tokens
            out["usageMetadata"] = metadata
        return {**out, **self._head}


def _chosen_function(body: dict[str, object], last: object, prompt: str) -> dict[str, object] | None:
    tools = body.get("tools")
    declared = [
        d
        for tool in (tools if isinstance(tools, list) else [])
        if isinstance(tool, dict)
        for d in tool.get("functionDeclarations") or []
        if isinstance(d, dict) and isinstance(d.get("name"), str)
    ]
    parts = last.get("parts") if isinstance(last, dict) else None
    answered = isinstance(parts, list) and any(isinstance(p, dict) and "functionResponse" in p for p in parts)
    if not declared or answered:  # after a function's result, the model answers in text
        return None
    by_name = {str(d["name"]): d for d in declared}
    tool_config = body.get("toolConfig")
    calling = tool_config.get("functionCallingConfig") if isinstance(tool_config, dict) else None
    mode = calling.get("mode") if isinstance(calling, dict) else None
    if mode == "NONE":
        return None
    if mode == "ANY":
        allowed = calling.get("allowedFunctionNames") if isinstance(calling, dict) else None
        names = [n for n in allowed if n in by_name] if isinstance(allowed, list) else []
        return by_name[names[0]] if names else declared[0]
    return asked_to_call(prompt, by_name)


def _text(content: object) -> str:
    """The text of a ``Content``: its text parts, and function responses as the text the gateway
    wrapped (``{"result": TEXT}``) or as JSON."""
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return ""
    texts = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part.get("functionResponse"), dict):
            response = part["functionResponse"].get("response")
            result = response.get("result") if isinstance(response, dict) and len(response) == 1 else None
            texts.append(result if isinstance(result, str) else orjson.dumps(response).decode())
    return " ".join(t for t in texts if t)


def _vector(text: str, dim: int, kind: str) -> list[float]:
    packed = (
        fake_wire.embedding_bytes(text, dim) if kind == "hash" else fake_wire.word_embedding_bytes(text, dim)
    )
    return list(struct.unpack(f"<{dim}f", packed))
