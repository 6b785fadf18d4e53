"""OpenAI request bodies as Gemini API requests. Pure functions, no I/O.

References (Gemini API, v1beta): ``GenerateContentRequest``, ``Content``, ``Part`` and
``GenerationConfig`` in https://ai.google.dev/api/generate-content; function calling (tools,
``toolConfig``, ``functionCall``/``functionResponse`` parts) in
https://ai.google.dev/gemini-api/docs/function-calling; thought signatures in
https://ai.google.dev/gemini-api/docs/thought-signatures; ``batchEmbedContents`` in
https://ai.google.dev/api/embeddings.

What Gemini cannot serve (non-function tools, content parts other than text, images, audio and
inline files, token-id inputs, several prompts in one legacy completion, ``echo``/``suffix``,
a completion's ``logit_bias`` and ``best_of`` above ``n``) is
refused with ``UnsupportedByProvider``, a retryable 400, so a model group mixing provider kinds is
served by a deployment that can; a malformed request is an ``InvalidRequest`` naming the
parameter. Parameters the answer rests on and Gemini is not asked for (``logit_bias``,
``web_search_options``, audio output) are refused too (``chat_features.py``); ``logprobs`` /
``top_logprobs`` are ``responseLogprobs`` / ``logprobs``, answered from ``logprobsResult``;
hints without an equivalent (``user``, ``seed``, ...) are left out, as sampling hints are;
``parallel_tool_calls: false`` is kept on the answer instead (its first function call only).
``thinking_budget`` (not OpenAI's: the Messages door's ``thinking.budget_tokens``, or -1 for its
adaptive thinking: Gemini's dynamic thinking), else
``reasoning_effort`` as Google's OpenAI-compatible endpoint maps it, becomes
``thinkingConfig.thinkingBudget``; for Gemini 3 and later (``thinking_by_level``) the effort and
dynamic thinking become ``thinkingConfig.thinkingLevel`` instead (never both: Google's 400).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from gateway.errors import InvalidRequest, UnsupportedByProvider
from gateway.providers.chat_features import refuse_unhonoured
from gateway.providers.gemini_schema import MAX_DEPTH, MAX_NODES, SchemaTooLarge, gemini_schema
from gateway.providers.tool_choice import narrowed
from gateway.wire.requests import JSONObject

KIND = "gemini"
# ``GenerationConfig.stopSequences``: "The set of character sequences (up to 5)".
MAX_STOP_SEQUENCES = 5
# Gemini 3 refuses a history whose function calls lack the signature it attached to them. Calls
# made by another model (a failover, a client-built history) have none: Google documents this
# value for them ("Thought signatures", FAQ), and only the first call of a step needs one.
SIGNATURE_FALLBACK = "skip_thought_signature_validator"

_GENERATION_FIELDS = (
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("top_k", "topK"),  # not OpenAI's, but vLLM-style clients send it
    ("n", "candidateCount"),
    ("seed", "seed"),
)
# OpenAI's sampling penalties, sent only to the models that take them (Gemini 1.5 and 2.0): later
# ones refuse a non-zero penalty with a 400 "Penalty is not enabled for this model"
# (google-gemini/cookbook#1290, every 2.5 and 3 model tested; PublicAffairs/openai-gemini#63), so
# elsewhere they are left out, as the hints they are (``chat_features.py``; Anthropic's adapter
# leaves them out too). An optional ``vendor/`` or ``models/`` prefix, as for ``_LEVEL_MODEL``.
_PENALTIES = (("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"))
_PENALTY_MODEL = re.compile(r"^(?:[\w.-]+/)?gemini-(?:1\.|2\.0)", re.IGNORECASE)
# A chat body's thinking budget in tokens (the Messages door's ``thinking.budget_tokens``; not an
# OpenAI field) -> ``generationConfig.thinkingConfig.thinkingBudget``. Gemini's thinking guide
# documents the range per model: 2.5 Pro 128 to 32768, 2.5 Flash 0 to 24576, 2.5 Flash-Lite 512
# to 24576, and a budget outside it is refused ("The thinking budget (52428) is invalid.",
# RooCodeInc/Roo-Code#4399); Gemini 3 still takes a budget "for backward compatibility". A budget
# is a ceiling the model may stay under, so one above what every 2.5 model takes is lowered to it.
THINKING_BUDGET = "thinking_budget"
MAX_THINKING_BUDGET = 24576
# Gemini's "dynamic thinking" (thinking guide: "Setting the thinkingBudget to -1 turns on dynamic
# thinking, meaning the model will adjust the budget based on the complexity of the request"),
# taken by every 2.5 model: the Messages door's adaptive thinking.
DYNAMIC_THINKING_BUDGET = -1
# OpenAI's ``reasoning_effort`` (chat; the Responses door's ``reasoning.effort``) as a thinking
# budget, as Google's own OpenAI-compatible endpoint maps it: "the OpenAI API offers three levels
# of thinking control: "low", "medium", and "high", which behind the scenes we map to 1K, 8K, and
# 24K thinking token budgets" (ai.google.dev/gemini-api/docs/openai). ``minimal`` is ``low``'s
# budget (above Flash-Lite's 512 floor), ``xhigh`` and ``max`` ``high``'s (the most every 2.5
# model takes). ``none`` sends nothing: 0 disables thinking on Flash but 2.5 Pro refuses it, so
# the model's default stands (as for the Messages door's ``thinking: disabled``).
EFFORT_BUDGETS = {
    "minimal": 1024,
    "low": 1024,
    "medium": 8192,
    "high": MAX_THINKING_BUDGET,
    "xhigh": MAX_THINKING_BUDGET,
    "max": MAX_THINKING_BUDGET,
}
# Gemini 3 and later take ``thinkingConfig.thinkingLevel`` ("Gemini 3 and later models" introduce
# it, Google's thinking guide; a budget is taken "for backwards compatibility", and "may result in
# suboptimal performance" on 3 Pro), and refuse a request with both (400: "thinking_budget and
# thinking_level are not supported together"); 2.5 refuses a level ("Thinking level is not
# supported for this model."). Levels by model: 3 Pro "low" and "high", 3 Flash also "minimal"
# and "medium" (Gemini 3 developer guide), so what every one takes is "low" and "high", and
# "medium" only where the name says Flash. An optional ``vendor/`` or ``models/`` prefix.
_LEVEL_MODEL = re.compile(r"^(?:[\w.-]+/)?gemini-[3-9]", re.IGNORECASE)
# OpenAI's ``reasoning_effort`` as a level; ``medium`` is ``MEDIUM_LEVEL`` on Flash ("high", 3
# Pro's default, elsewhere), ``minimal`` "low" (3.x Flash models differ on "minimal"), and ``none``
# sends nothing (3 Pro cannot turn thinking off), as for a budget.
EFFORT_LEVELS = {
    "minimal": "low",
    "low": "low",
    "medium": "high",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}
MEDIUM_LEVEL = "medium"
# Dynamic thinking (the Messages door's adaptive thinking) as a level: "high", each Gemini 3
# model's "dynamic thinking" default, the same promise as a budget of -1.
DYNAMIC_THINKING_LEVEL = "high"
_TOOL_MODES = {"none": "NONE", "auto": "AUTO", "required": "ANY"}
# ``FunctionDeclaration.name`` (v1beta reference: letters, digits, '_', ':', '.', '-', at most 64;
# Gemini's 400 also wants a letter or '_' first: "Invalid function name. Must start with a letter or
# an underscore...", google-gemini/gemini-cli#9535). OpenAI takes a leading digit, Anthropic up to 128.
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
# Gemini needs a MIME type for a file URL; guessed from the extension, images by default.
_MIME_TYPES = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
    "webp": "image/webp", "heic": "image/heic", "heif": "image/heif", "pdf": "application/pdf",
    "mp3": "audio/mp3", "wav": "audio/wav", "mp4": "video/mp4", "txt": "text/plain",
    "bmp": "image/bmp", "svg": "image/svg+xml", "tif": "image/tiff", "tiff": "image/tiff",
}  # fmt: skip
# The image types Gemini reads: "PNG - image/png, JPEG - image/jpeg, WEBP - image/webp, HEIC -
# image/heic, HEIF - image/heif" (its image understanding guide, "Supported image formats"; the
# same five in Vertex AI's model pages). Any other image type is its 400 ("Unsupported MIME
# type: image/gif", Mai-with-u/MaiBot#1435; earlier "MIME type must be image/png, image/jpeg,
# image/webp, image/heic, or image/heif.", EvanZhouDev/gemini-ai#3), ``image/jpg`` included
# (brianpetro/obsidian-smart-connections#1238): that one is sent as ``image/jpeg``, the rest are
# refused by name before sending (as Anthropic's adapter refuses the types it does not read).
_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}


def model_resource(model: str) -> str:
    """The resource name for ``model``: ``models/NAME`` unless it already names one."""
    return quote(model if "/" in model else f"models/{model}", safe="/")


def thinking_by_level(model: str) -> bool:
    """Whether ``model`` (Gemini 3 and later) is told how much to think by a level, not a budget."""
    return _LEVEL_MODEL.match(model) is not None


def chat_request(body: JSONObject, model: str = "") -> JSONObject:
    """A ``GenerateContentRequest`` for an OpenAI chat completion body to ``model`` (its name
    chooses a thinking level or a budget: ``thinking_by_level``)."""
    refuse_unhonoured(body, KIND, logprobs=True)
    body = narrowed(body)  # tool_choice allowed_tools: only the allowed tools are declared
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be an array.", param="messages")
    system, contents = _contents(messages)
    request: JSONObject = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    declarations = _declarations(body)
    if declarations:
        request["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(body)
        if tool_config is not None:
            request["toolConfig"] = tool_config
    config = _generation_config(body, model)
    if config:
        request["generationConfig"] = config
    return request


def completion_request(body: JSONObject, model: str = "") -> JSONObject:
    """A ``GenerateContentRequest`` for a legacy completion: the prompt as one user message."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise UnsupportedByProvider(
            KIND, "completions of several or token-id prompts (one text prompt only)", param="prompt"
        )
    for name in ("echo", "suffix"):
        if body.get(name):
            raise UnsupportedByProvider(KIND, f"the completion parameter '{name}'", param=name)
    # What the answer would silently lack: a bias of OpenAI token ids, and best_of's server-side
    # choice among more candidates than it returns. (``logprobs``, a count here, is Gemini's
    # ``responseLogprobs`` and ``logprobs``: ``completion_request``.)
    if body.get("logit_bias"):
        raise UnsupportedByProvider(KIND, "logit_bias (token ids of OpenAI's tokenizers)", param="logit_bias")
    if body.get("max_tokens") == 0:  # Gemini reads a maxOutputTokens of 0 as not set: a whole answer
        raise UnsupportedByProvider(KIND, "max_tokens 0 (no tokens generated)", param="max_tokens")
    best_of, n = body.get("best_of"), body.get("n")
    if isinstance(best_of, int) and best_of > (n if isinstance(n, int) else 1):
        raise UnsupportedByProvider(KIND, "best_of (a choice among more candidates than n)", param="best_of")
    request: JSONObject = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    config = _generation_config(body, model)
    top = body.get("logprobs")  # the legacy API's count of alternatives per token (0..5)
    if isinstance(top, int) and not isinstance(top, bool):
        config["responseLogprobs"] = True  # answered in the legacy shape (gemini_response.py)
        if top > 0:
            config["logprobs"] = top
    if config:
        request["generationConfig"] = config
    return request


def embedding_request(body: JSONObject, resource: str) -> JSONObject:
    """A ``batchEmbedContents`` request, one ``EmbedContentRequest`` per OpenAI input."""
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise UnsupportedByProvider(KIND, "embeddings of token-id inputs (text only)", param="input")
    extra: JSONObject = {}
    dimensions = body.get("dimensions")
    if dimensions is not None:
        extra["outputDimensionality"] = dimensions
    return {"requests": [{"model": resource, "content": {"parts": [{"text": t}]}, **extra} for t in inputs]}


_OPENING = "."  # the text of a user turn put before a history that opens with a function call


def _contents(messages: list[Any]) -> tuple[list[JSONObject], list[JSONObject]]:
    """System parts (every system/developer message, wherever it stands) and the contents.

    Consecutive messages of one Gemini role are merged into one ``Content``, so parallel tool
    results travel together as the function-calling guide shows.
    """
    system: list[JSONObject] = []
    contents: list[JSONObject] = []
    call_names: dict[str, str] = {}  # tool call id -> function name (Gemini matches by name)
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content"), where))
            continue
        if role == "user":
            gemini_role, parts = "user", _user_parts(message.get("content"), where)
        elif role == "assistant":
            gemini_role, parts = "model", _assistant_parts(message, where, call_names)
        elif role in ("tool", "function"):
            gemini_role, parts = "user", [_tool_result(message, where, call_names)]
        else:
            raise InvalidRequest(f"{where}.role: unsupported role {role!r}.", param=f"{where}.role")
        if not parts:
            continue  # an empty message: Gemini refuses empty parts
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
    if not contents and not system:
        raise UnsupportedByProvider(KIND, "a conversation without user or assistant messages")
    if not contents or contents[0]["role"] == "model":
        # Gemini refuses a history that opens with a model turn ("Please ensure that multiturn
        # requests alternate between user and model", NousResearch/hermes-agent#55427), and "a
        # function call turn" not right after a user or function response turn: a chat UI's
        # greeting, a history trimmed to its last exchange, an agent seeded with a call (OpenAI
        # and Anthropic take them). A user turn that says next to nothing goes first; and it is
        # the whole conversation of a request made of system messages only (Gemini refuses
        # empty contents; OpenAI answers the instructions, the Anthropic adapter does the same).
        contents.insert(0, {"role": "user", "parts": [{"text": _OPENING}]})
    if contents[-1]["role"] == "model":
        # Gemini refuses a history that ends on the model's turn ("Please ensure that multiturn
        # requests ends with a user role or a function response", microsoft/semantic-kernel#13288,
        # crewAIInc/crewAI#6973): a chat client's trailing assistant message, or the Messages
        # door's prefill. Gemini cannot continue the model's text, so the same one-character user
        # turn closes the conversation and the model answers after it, as OpenAI does.
        contents.append({"role": "user", "parts": [{"text": _OPENING}]})
    return system, contents


def _text_parts(content: object, where: str) -> list[JSONObject]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            text = part.get("text", part.get("refusal")) if isinstance(part, dict) else None
            if not isinstance(text, str):
                raise InvalidRequest(
                    f"{where}.content[{j}]: only text parts are allowed here.", param=f"{where}.content"
                )
            if text:
                parts.append({"text": text})
        return parts
    raise InvalidRequest(f"{where}.content must be a string or an array of parts.", param=f"{where}.content")


def _user_parts(content: object, where: str) -> list[JSONObject]:
    if not isinstance(content, list):
        return _text_parts(content, where)
    parts = []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_media_part(url, param))
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict):
                audio = {}  # refused below, as one without its data
            mime = _AUDIO_TYPES.get(str(audio.get("format")))
            if mime is None or not isinstance(audio.get("data"), str):
                raise InvalidRequest(
                    f"{param}: input_audio needs base64 'data' and format wav or mp3.", param=param
                )
            parts.append({"inlineData": {"mimeType": mime, "data": audio["data"]}})
        elif kind == "file" and isinstance(part.get("file"), dict) and "file_data" in part["file"]:
            parts.append(_media_part(part["file"]["file_data"], param))
        elif kind == "file":
            raise UnsupportedByProvider(
                KIND, "file parts other than inline data: URLs (file_data)", param=param
            )
        else:
            raise UnsupportedByProvider(KIND, f"content parts of type '{kind}'", param=param)
    return parts


def _media_part(url: object, param: str) -> JSONObject:
    """A ``data:`` URL as ``inlineData``; an http(s)/gs URL as ``fileData``, which Gemini fetches
    itself: the Files API and, for recent models, public URLs (the gateway downloads nothing)."""
    if isinstance(url, str) and url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        mime, *params = header.split(";")
        if comma and "base64" in params:
            return {
                "inlineData": {"mimeType": _readable(mime, param) or "application/octet-stream", "data": data}
            }
    elif isinstance(url, str) and url.startswith(("https://", "http://", "gs://")):
        extension = urlsplit(url).path.rpartition(".")[2].lower()
        mime = _readable(_MIME_TYPES.get(extension, "image/jpeg"), param)
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise InvalidRequest(f"{param}: expected a base64 data: URL or an http(s) URL.", param=param)


def _readable(mime: str, param: str) -> str:
    """``mime`` as Gemini is sent it; an image type it does not read is refused by name (a URL's
    by its extension: ``.gif``, ``.bmp``, ``.svg``, ``.tif``)."""
    lowered = mime.lower()
    if not lowered.startswith("image/"):
        return mime
    if lowered == "image/jpg":  # a common misspelling OpenAI accepts; Gemini refuses it
        return "image/jpeg"
    if lowered not in _IMAGE_TYPES:
        raise UnsupportedByProvider(
            KIND, f"images of type '{mime}' (PNG, JPEG, WebP, HEIC and HEIF only)", param=param
        )
    return lowered


def _assistant_parts(message: JSONObject, where: str, call_names: dict[str, str]) -> list[JSONObject]:
    parts = _text_parts(message.get("content"), where)
    calls = message.get("tool_calls") or []
    legacy = message.get("function_call")
    if isinstance(legacy, dict):  # the deprecated functions API
        calls = [*calls, {"function": legacy}]
    for j, call in enumerate(calls):
        param = f"{where}.tool_calls[{j}].function"
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str) or not name:
            raise InvalidRequest(f"{param}.name is missing.", param=f"{param}.name")
        part: JSONObject = {"functionCall": {"name": name, "args": _arguments(function, param)}}
        signature = _signature(call)
        if signature or j == 0:
            part["thoughtSignature"] = signature or SIGNATURE_FALLBACK
        parts.append(part)
        if isinstance(call.get("id"), str):
            call_names[call["id"]] = name
    return parts


def _arguments(function: JSONObject, param: str) -> JSONObject:
    raw = function.get("arguments")
    if raw is None or raw == "":
        return {}
    try:
        args = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise InvalidRequest(f"{param}.arguments must be a JSON object.", param=f"{param}.arguments")
    return args


def _signature(call: JSONObject) -> str | None:
    """The thought signature a Gemini response attached to a tool call (``extra_content``, as
    Google's own OpenAI-compatible endpoint carries it), if the client sent it back."""
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _tool_result(message: JSONObject, where: str, call_names: dict[str, str]) -> JSONObject:
    call_id = message.get("tool_call_id")
    name = call_names.get(call_id) if isinstance(call_id, str) else None
    name = name or message.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(
            f"{where}.tool_call_id: no earlier assistant tool call has id {call_id!r}; Gemini needs "
            "the function's name for a tool result.",
            param=f"{where}.tool_call_id",
        )
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return {"functionResponse": {"name": name, "response": _response_object(content)}}


def _response_object(content: object) -> JSONObject:
    """A tool result as the object ``functionResponse.response`` must be: a JSON object as it is,
    anything else wrapped as ``{"result": ...}`` (the key Google's examples use)."""
    if isinstance(content, str):
        try:
            parsed = orjson.loads(content)
        except orjson.JSONDecodeError:
            parsed = content
        return parsed if isinstance(parsed, dict) else {"result": parsed}
    return {"result": content}


def _declarations(body: JSONObject) -> list[JSONObject]:
    declarations = []
    tools = body.get("tools") or []
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise UnsupportedByProvider(
                KIND, f"tools of type '{kind}' (function tools only)", param=f"tools[{i}]"
            )
        declarations.append(_declaration(tool.get("function"), f"tools[{i}].function"))
    functions = body.get("functions") or []  # the deprecated functions API
    for i, function in enumerate(functions if isinstance(functions, list) else []):
        declarations.append(_declaration(function, f"functions[{i}]"))
    return declarations


def _declaration(function: object, param: str) -> JSONObject:
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(function, dict) or not isinstance(name, str) or not name:
        raise InvalidRequest(f"{param}.name is missing.", param=f"{param}.name")
    if _FUNCTION_NAME.fullmatch(name) is None:
        raise UnsupportedByProvider(
            KIND,
            "function names that do not open with a letter or '_' and hold up to 64 letters, "
            "digits, '_', '.', ':' and '-'",
            param=f"{param}.name",
        )
    declaration: JSONObject = {"name": name}
    if isinstance(function.get("description"), str):
        declaration["description"] = function["description"]
    parameters = function.get("parameters")
    if isinstance(parameters, dict):
        schema = _schema(parameters, f"{param}.parameters")
        # Gemini refuses an OBJECT schema with empty properties: a function without parameters
        # simply has none.
        if schema.get("properties") or schema.get("type") not in (None, "object"):
            declaration["parameters"] = schema
    return declaration


def _schema(schema: JSONObject, param: str) -> JSONObject:
    try:
        return gemini_schema(schema)
    except SchemaTooLarge:
        raise UnsupportedByProvider(
            KIND,
            f"a schema that unfolds past {MAX_NODES} nodes or {MAX_DEPTH} levels once its $refs are "
            "inlined (Gemini schemas cannot refer to definitions)",
            param=param,
        ) from None


def _tool_config(body: JSONObject) -> JSONObject | None:
    choice = body.get("tool_choice", body.get("function_call"))
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"functionCallingConfig": {"mode": _TOOL_MODES[choice]}}
    if isinstance(choice, dict):
        function = choice.get("function") if choice.get("type") == "function" else choice
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    raise UnsupportedByProvider(
        KIND, "this tool_choice (none, auto, required or one function only)", param="tool_choice"
    )


def _thinking_config(body: JSONObject, model: str) -> JSONObject | None:
    """``thinkingConfig`` from a chat body's ``thinking_budget`` (a number of tokens, taken by
    every model), else its ``reasoning_effort``: a budget for 2.5, a level for Gemini 3 and
    later, whose dynamic thinking is a level too. Never both (Google's 400). None: nothing
    asked, the model's default."""
    budget = body.get(THINKING_BUDGET)
    effort = body.get("reasoning_effort")
    if budget is None and isinstance(effort, str):
        if thinking_by_level(model):  # (the name is matched only when something is asked)
            level = EFFORT_LEVELS.get(effort)
            if level is None:
                return None
            if effort == "medium" and "flash" in model.lower():
                level = MEDIUM_LEVEL
            return {"thinkingLevel": level}
        budget = EFFORT_BUDGETS.get(effort)
    if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
        return {"thinkingBudget": min(budget, MAX_THINKING_BUDGET)}
    if budget == DYNAMIC_THINKING_BUDGET:
        return (
            {"thinkingLevel": DYNAMIC_THINKING_LEVEL}
            if thinking_by_level(model)
            else {"thinkingBudget": budget}
        )
    return None


# ``GenerationConfig.candidateCount``: "This value must be between [1, 8], inclusive" (the v1beta
# reference); OpenAI's ``n`` goes to 128. Refused above it (fewer choices would change the answer).
MAX_CANDIDATES = 8


def _generation_config(body: JSONObject, model: str) -> JSONObject:
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_CANDIDATES:
        raise UnsupportedByProvider(KIND, f"n > {MAX_CANDIDATES} (Gemini's most candidates)", param="n")
    config: JSONObject = {}
    for openai_name, gemini_name in _GENERATION_FIELDS:
        value = body.get(openai_name)
        if value is not None:
            config[gemini_name] = value
    for openai_name, gemini_name in _PENALTIES:
        value = body.get(openai_name)
        if value is not None and _PENALTY_MODEL.match(model):  # (matched only when one is sent)
            config[gemini_name] = value
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    if limit is not None:
        config["maxOutputTokens"] = limit
    if body.get("logprobs") is True:
        # GenerationConfig.responseLogprobs, and ``logprobs``: how many top candidates per step
        config["responseLogprobs"] = True
        top = body.get("top_logprobs")
        if isinstance(top, int) and not isinstance(top, bool) and top > 0:
            config["logprobs"] = top
    thinking = _thinking_config(body, model)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        if len(stop) > MAX_STOP_SEQUENCES:  # Gemini's 400; another kind of the group may serve it
            raise UnsupportedByProvider(KIND, f"more than {MAX_STOP_SEQUENCES} stop sequences", "stop")
        config["stopSequences"] = stop
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            # best effort: see gemini_schema.py
            config["responseSchema"] = _schema(schema, "response_format.json_schema.schema")
    elif kind not in (None, "text"):
        raise InvalidRequest(
            f"response_format type {kind!r} is not supported by Gemini.", param="response_format"
        )
    return config
