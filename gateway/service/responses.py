"""The Responses API front door (``POST /v1/responses``, issue 17) on the request service.

    run(body, ctx)
      1. expand      ``previous_response_id``: the kept conversation (its input and output items)
                     goes before this request's input; unknown or another tenant's id: 400
      2. translate   to a chat request once (``wire/responses.py``): what cannot be served is a
                     400 here, before anything is read or routed
      3. serve       ``RequestService.run(Endpoint.CHAT, chat, ctx, door=ResponsesDoor)``, as
                     every front door (``front_door.py``): the same validation, limits, admission,
                     routing, failover and accounting as chat, over the chat translation; the
                     cache keyed by the client's body under ``responses`` (chat answers are never
                     served here); each attempt's provider request and answer from the door
                     (pass-through to a provider that speaks Responses, else the chat bridge)
      4. keep        with ``store`` (the API's default) and the policy's ``responses.store``: the
                     conversation so far, for ``responses.store_ttl_s``, in the response cache's
                     store under the tenant (a stream's when its ``response.completed`` passes)

The gateway keeps the state itself rather than relying on a provider's: a conversation may move
between deployments and provider kinds from one turn to the next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from gateway.auth.identity import Caller
from gateway.cache.memory_store import entry_size
from gateway.cache.store import CacheStore, CategoryBudget
from gateway.errors import InvalidRequest, ModelNotFound, UpstreamBadResponse
from gateway.policy.model import Policy
from gateway.providers.base import StreamTranslator, UpstreamRequest
from gateway.providers.openai import stream_error
from gateway.providers.responses_bridge import (
    ChatToResponsesStream,
    NativeResponsesStream,
    native_request,
    speaks_responses,
)
from gateway.routing.target import RouteContext, Target
from gateway.service.calls import Answer, RequestService
from gateway.service.context import CallContext
from gateway.service.effort import chat_for, responses_for, responses_withheld, withheld
from gateway.service.front_door import has_choice
from gateway.service.limits import check_limits
from gateway.service.streams import AnswerStream, ReplayStream
from gateway.wire import provider_files
from gateway.wire.requests import CHARS_PER_TOKEN, Endpoint, JSONObject
from gateway.wire.responses import (
    ResponsesInputError,
    chat_request,
    check_fields,
    client_input_param,
    responses_param,
)
from gateway.wire.responses_output import (
    Renewal,
    ResponseIds,
    ResponsesEvents,
    chat_usage,
    whole_response,
)
from gateway.wire.sse import SSEDecoder

log = logging.getLogger("gateway.responses")

# The store category of kept responses, beside the policy's cache categories (which cannot
# clash with it: it is not a name the response cache ever plans).
STORED_CATEGORY = "_responses"
# output items a later turn can take back
_KEPT_ITEMS = ("message", "function_call", "custom_tool_call")  # (a tuple: a type may be unhashable JSON)
# item_reference input items resolved per request (each one store read; a long agent run with
# a reference per assistant turn and tool call stays far below it)
MAX_ITEM_REFERENCES = 1000


def cache_budgets(policy: Policy) -> dict[str, CategoryBudget]:
    """Every category the cache store holds: the policy's, and the kept responses'."""
    budgets = {name: CategoryBudget(name, c.max_bytes) for name, c in policy.cache.categories.items()}
    budgets[STORED_CATEGORY] = CategoryBudget(STORED_CATEGORY, policy.responses.store_max_bytes)
    return budgets


class ResponsesService:
    """Serves Responses requests through ``service`` (see the module docstring)."""

    def __init__(
        self,
        service: RequestService,
        store: CacheStore,
        new_id: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._service = service
        self._store = store
        self._new_id = new_id  # never the client's x-request-id: a response id must be ours
        self._clock = clock

    async def run(self, body: JSONObject, ctx: CallContext) -> Answer:
        policy = self._service.router.policy  # read per request: reloads apply
        settings = policy.responses
        try:
            check_fields(body)  # before any lookup: store, metadata, ... as OpenAI types them
        except ResponsesInputError as exc:
            raise InvalidRequest(exc.message, param=exc.param, code=exc.code) from None
        check_limits(Endpoint.RESPONSES, body, policy.limits)  # named as the client named them
        previous = body.get("previous_response_id")
        kept = 0  # the items of the previous response's conversation before the client's input
        if previous is not None:
            body, kept = await self._expand(body, previous, ctx.tenant, settings.store)
        ids = ResponseIds(self._new_id(), int(self._clock()))
        try:
            answer = await self._answer(body, ids, ctx)
        except InvalidRequest as exc:
            # Named as the client sent it: its own input[2], never an index of the merged
            # history, nor the chat translation's messages[5] (the request service's checks).
            exc.message = client_input_param(responses_param(body, exc.message), kept)
            if exc.param is not None:
                exc.param = client_input_param(responses_param(body, exc.param), kept)
            raise
        if ctx.record.cache is not None and ctx.record.cache.status == "hit":
            answer = _renewed(answer, body, ids)  # this request's id and settings, not the first's
        if not settings.store or body.get("store") is False or ctx.internal:
            return answer
        keep = _Keeper(self._store, ctx.tenant, _input_items(body), settings.store_ttl_s)
        if answer.body is not None:
            await keep.response(answer.body)
            return answer
        assert answer.stream is not None
        return Answer(stream=_KeepingStream(answer.stream, keep))

    async def _answer(self, body: JSONObject, ids: ResponseIds, ctx: CallContext) -> Answer:
        body = await self._resolve_references(body, ctx.tenant)
        try:
            chat = chat_request(body)
        except ResponsesInputError as exc:
            raise InvalidRequest(exc.message, param=exc.param, code=exc.code) from None
        door = ResponsesDoor(body, chat, ids)
        return await self._service.run(Endpoint.CHAT, chat, ctx, door=door)

    async def _expand(
        self, body: JSONObject, previous: object, tenant: str, enabled: bool
    ) -> tuple[JSONObject, int]:
        """(``body`` with the kept conversation of ``previous`` before its input, how many
        items that conversation holds)."""
        if not enabled:
            raise InvalidRequest(
                "This gateway keeps no responses (policy responses.store: false), so "
                "'previous_response_id' cannot be used: send the conversation in 'input'.",
                param="previous_response_id",
            )
        if not isinstance(previous, str) or not previous:
            raise InvalidRequest(
                "'previous_response_id' must be a response id.", param="previous_response_id"
            )
        raw = await self._store.get(STORED_CATEGORY, _key(tenant, previous))
        size = _too_large(raw)
        if size is not None:
            raise InvalidRequest(
                f"Previous response with id '{previous}' was not kept: its conversation "
                f"({size:,} bytes) is larger than this gateway keeps for one response "
                f"({self._store.largest_entry(STORED_CATEGORY):,} bytes); send the conversation "
                "in 'input' instead.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        kept = _decoded(raw)
        items = None if kept is None else kept[0]
        if items is None:
            raise InvalidRequest(
                f"Previous response with id '{previous}' not found (responses are kept for a "
                "while, for the key that made them, and only when asked with store: true).",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return {**body, "input": items + _input_items(body)}, len(items)

    async def _resolve_references(self, body: JSONObject, tenant: str) -> JSONObject:
        """``body`` with each ``item_reference`` input item replaced by the item it names: an
        output item (message, function call) of a response this tenant had kept. The Vercel AI
        SDK's Responses provider sends earlier assistant turns so when ``store`` is on (its
        default), so without this every second turn of such an app was a 400."""
        given = body.get("input")
        if not isinstance(given, list) or not any(
            isinstance(i, dict) and i.get("type") == "item_reference" for i in given
        ):
            return body
        references = sum(1 for i in given if isinstance(i, dict) and i.get("type") == "item_reference")
        if references > MAX_ITEM_REFERENCES:  # each is a store read: a body must not ask for 100,000
            raise InvalidRequest(
                f"'input' holds {references} item references; at most {MAX_ITEM_REFERENCES} are "
                "resolved per request (send older items themselves, or use previous_response_id).",
                param="input",
            )
        items: list[Any] = []
        resolved: dict[str, JSONObject | None] = {}
        for index, item in enumerate(given):
            if not (isinstance(item, dict) and item.get("type") == "item_reference"):
                items.append(item)
                continue
            item_id = item.get("id")
            if not isinstance(item_id, str) or not item_id:
                raise InvalidRequest(
                    f"'input[{index}].id' must be the id of an item.", param=f"input[{index}].id"
                )
            if item_id not in resolved:
                found = await self._store.get(STORED_CATEGORY, _item_key(tenant, item_id))
                resolved[item_id] = _json_object(found)
            kept = resolved[item_id]
            if kept is None:
                raise InvalidRequest(
                    f"Item with id '{item_id}' not found (items of responses kept with store: true "
                    "can be referenced, for a while, by the key that made them).",
                    param=f"input[{index}]",
                    code="item_not_found",
                )
            items.append(kept)
        return {**body, "input": items}

    async def input_tokens(self, body: JSONObject, tenant: str, caller: Caller | None) -> int:
        """``POST /v1/responses/input_tokens``: the input tokens of a Responses request, the
        gateway's estimate (as the Messages door's ``count_tokens``: ``RouteContext.prompt_tokens``
        over the chat translation, images and PDFs included, plus the tools' JSON / 4, at least
        1); nothing is called or spent. ``model`` is optional, as OpenAI documents it; named, it
        must be a group ``caller`` may use (404 otherwise, as for a call). ``previous_response_id``
        expands as for a call, for the same tenant."""
        body = {k: v for k, v in body.items() if k not in _COUNT_ONLY}
        body.setdefault("input", [])  # (optional here: instructions alone can be counted)
        try:
            check_fields(body)
        except ResponsesInputError as exc:
            raise InvalidRequest(exc.message, param=exc.param, code=exc.code) from None
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise InvalidRequest(
                "Invalid type for 'model': expected a string.", param="model", code="invalid_type"
            )
        if model is not None:
            names = self._service.router.model_names
            if model not in names or (caller is not None and not caller.may_use(str(model))):
                raise ModelNotFound(str(model), [n for n in names if caller is None or caller.may_use(n)])
        previous = body.get("previous_response_id")
        kept = 0
        if previous is not None:
            store = self._service.router.policy.responses.store
            body, kept = await self._expand(body, previous, tenant, store)
        try:
            body = await self._resolve_references(body, tenant)
            chat = chat_request(body)
        except ResponsesInputError as exc:
            raise InvalidRequest(
                client_input_param(exc.message, kept),
                param=None if exc.param is None else client_input_param(exc.param, kept),
                code=exc.code,
            ) from None
        tools = body.get("tools")
        size = sum(len(orjson.dumps(t)) for t in tools) if isinstance(tools, list) else 0
        return max(1, RouteContext(str(model or ""), chat).prompt_tokens + size // CHARS_PER_TOKEN)

    async def retrieve(self, tenant: str, response_id: str) -> JSONObject | None:
        """``GET /v1/responses/{id}``: the response as it was answered, if this tenant's and
        still kept (None otherwise, and for one kept before the gateway stored whole responses)."""
        kept = _decoded(await self._store.get(STORED_CATEGORY, _key(tenant, response_id)))
        return None if kept is None else kept[1]

    async def input_items(self, tenant: str, response_id: str) -> list[JSONObject] | None:
        """``GET /v1/responses/{id}/input_items``: the items the model was given for a kept
        response of this tenant, oldest first, as OpenAI lists them (each with an ``id`` and a
        ``status``; a message's string content as its one text part): the conversation of its
        ``previous_response_id`` included, as the model saw it. None when none is kept."""
        kept = _decoded(await self._store.get(STORED_CATEGORY, _key(tenant, response_id)))
        response = None if kept is None else kept[1]
        if kept is None or response is None:
            return None
        items = kept[0]
        output = response.get("output")
        answered = sum(
            1
            for item in (output if isinstance(output, list) else ())
            if isinstance(item, dict) and item.get("type") in _KEPT_ITEMS
        )
        token = response_id.removeprefix("resp_")
        return [_listed(item, f"{token}_in{i}") for i, item in enumerate(items[: len(items) - answered])]

    async def delete(self, tenant: str, response_id: str) -> bool:
        """``DELETE /v1/responses/{id}``: forget a kept response; False when there is none."""
        key = _key(tenant, response_id)
        kept = _decoded(await self._store.get(STORED_CATEGORY, key))
        if kept is None:
            return False
        await self._store.delete(STORED_CATEGORY, key)
        output = kept[1].get("output") if kept[1] is not None else None
        for item in output if isinstance(output, list) else ():  # its items go with it
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                await self._store.delete(STORED_CATEGORY, _item_key(tenant, item["id"]))
        return True


_LISTED_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
    "reasoning": "rs",
}


def _listed(item: Any, suffix: str) -> JSONObject:
    """A kept input item as ``input_items`` lists it (the SDK's ``ResponseItem``): its own ``id``
    or one made from the response's, ``status`` ``completed``, a message's string content as its
    text part (``input_text``; an assistant's ``output_text``)."""
    if not isinstance(item, dict):
        return {"id": f"item_{suffix}", "type": "unknown"}
    kind = item.get("type", "message" if "role" in item else "unknown")
    listed: JSONObject = {**item, "type": kind}
    listed.setdefault("id", f"{_LISTED_PREFIXES.get(str(kind), 'item')}_{suffix}")
    if kind in (
        "message",
        "function_call",
        "function_call_output",
        "custom_tool_call",
        "custom_tool_call_output",
    ):
        listed.setdefault("status", "completed")
    content = item.get("content")
    if kind == "message" and isinstance(content, str):
        if item.get("role") == "assistant":
            listed["content"] = [{"type": "output_text", "text": content, "annotations": []}]
        else:
            listed["content"] = [{"type": "input_text", "text": content}]
    return listed


# Fields of an ``input_tokens`` request that change no count (a style preset).
_COUNT_ONLY = frozenset({"personality"})


def _renewed(answer: Answer, body: JSONObject, ids: ResponseIds) -> Answer:
    """A cache hit's answer with this request's ids and unkeyed settings (``Renewal``)."""
    renewal = Renewal(body, ids)
    if answer.body is not None:
        return Answer(body=renewal.body(answer.body))
    if isinstance(answer.stream, ReplayStream):
        return Answer(stream=ReplayStream(renewal.events(answer.stream.body)))
    return answer


class ResponsesDoor:
    """One Responses request (``previous_response_id`` already expanded into its input), its
    chat translation and the ids its answer gets; per attempt, a provider that speaks Responses
    (``speaks_responses``) gets the client's body passed through, any other provider the chat
    translation through its own adapter, its answer made a ``response`` (``FrontDoor``)."""

    __slots__ = ("body", "chat", "ids")

    endpoint = Endpoint.RESPONSES
    cache_variant = ""  # no request header reaches the provider

    def __init__(self, body: JSONObject, chat: JSONObject, ids: ResponseIds) -> None:
        self.body = body
        self.chat = chat
        self.ids = ids

    def provider_file(self) -> str | None:
        """``FrontDoor.provider_file``: in the input items (the kept conversation's too: its
        paths are named as the client's by ``ResponsesService.run``)."""
        return provider_files.in_responses(self.body)

    def remembered(self, trusted: str, reference: str) -> ResponsesDoor:
        """``FrontDoor.remembered``: ``trusted`` a system message after the input's leading
        system and developer messages (so after ``instructions`` too), ``reference`` a user
        message before the last user message. The input kept for ``previous_response_id`` is the
        client's own (``ResponsesService.run``): memories are recalled again for each turn,
        never carried from one to the next."""
        given = self.body.get("input")
        items: list[Any] = (
            [{"role": "user", "content": given}] if isinstance(given, str) else list(given or [])
        )
        if reference:
            users = [
                i for i, item in enumerate(items) if isinstance(item, dict) and item.get("role") == "user"
            ]
            if users:
                items.insert(users[-1], {"role": "user", "content": reference})
        if trusted:
            at = 0
            while (
                at < len(items)
                and isinstance(items[at], dict)
                and items[at].get("role") in ("system", "developer")
            ):
                at += 1
            items.insert(at, {"role": "system", "content": trusted})
        body = {**self.body, "input": items}
        try:
            chat = chat_request(body)
        except ResponsesInputError as exc:  # pragma: no cover - the input was translated before
            raise InvalidRequest(exc.message, param=exc.param, code=exc.code) from None
        return ResponsesDoor(body, chat, self.ids)

    def build(self, target: Target) -> UpstreamRequest:
        adapter = target.client.adapter
        if speaks_responses(target.client.config):
            native = responses_for(native_request(self.body), target)
            return adapter.build_request(Endpoint.RESPONSES, native, target.model)
        try:
            return adapter.build_request(Endpoint.CHAT, chat_for(self.chat, target), target.model)
        except InvalidRequest as exc:
            # The adapter names the chat translation's fields (messages[1].tool_calls[0]...): the
            # client sent input[2].arguments.
            exc.message = responses_param(self.body, exc.message)
            if exc.param is not None:
                exc.param = responses_param(self.body, exc.param)
            raise

    def withheld(self, target: Target) -> bool:
        if speaks_responses(target.client.config):  # ``reasoning``, or encrypted reasoning asked
            return responses_withheld(self.body, target)
        return withheld(self.chat, target)  # ``reasoning.effort`` is the translation's ``reasoning_effort``

    def mode(self, target: Target) -> str:
        return "native" if speaks_responses(target.client.config) else "translated"

    def answer(self, target: Target, raw: bytes, parsed: JSONObject) -> tuple[bytes, object]:
        if speaks_responses(target.client.config):
            return self._native_answer(target, parsed)
        chat = target.client.adapter.translate_response(Endpoint.CHAT, parsed, self.chat, target.model)
        chat = chat if chat is not None else parsed
        if not has_choice(chat):
            raise UpstreamBadResponse(
                f"{target.provider}: provider returned a chat completion without choices",
                provider=target.provider,
            )
        return orjson.dumps(whole_response(self.body, chat, self.ids)), chat.get("usage")

    def _native_answer(self, target: Target, parsed: JSONObject) -> tuple[bytes, object]:
        """A provider's own ``response``, with the gateway's ids and the client's ``store`` and
        ``previous_response_id`` (``Renewal.native``). An error answered with a 2xx (a
        compatible server's ``{"error": ...}``, or a response whose status is ``failed``) is
        raised as the error it stands for, so the request fails over and it is never cached or
        kept; a body that is no ``response`` object at all is a bad answer, likewise."""
        error = parsed.get("error")
        if error is not None or parsed.get("status") == "failed":
            raise stream_error(
                error if error is not None else {"message": "the provider's response failed"},
                "provider answered an error with a 2xx status",
            )
        if parsed.get("object") != "response" or not isinstance(parsed.get("output"), list):
            raise UpstreamBadResponse(
                f"{target.provider}: provider answered /responses with something that is not a "
                "response object",
                provider=target.provider,
            )
        usage = chat_usage(parsed.get("usage"))
        return orjson.dumps(Renewal.native(self.body, self.ids).whole(parsed)), usage

    def stream_translator(self, target: Target) -> StreamTranslator:
        if speaks_responses(target.client.config):
            return NativeResponsesStream(Renewal.native(self.body, self.ids))
        inner = target.client.adapter.stream_translator(
            Endpoint.CHAT, self.chat, target.model, target.provider
        )
        return _Scrubbing(ChatToResponsesStream(inner, ResponsesEvents(self.body, self.ids)), target)


class _Scrubbing:
    """A Responses stream whose events are scrubbed of the provider's key once more: the
    ``.done`` events and ``response.completed`` hold text this door joined from the provider's
    deltas, where a key the provider sent in pieces (each piece passing the byte scrub) is
    whole again. The kept copy is made from these events."""

    __slots__ = ("_client", "_inner")

    def __init__(self, inner: StreamTranslator, target: Target) -> None:
        self._inner = inner
        self._client = target.client

    def feed(self, chunk: bytes) -> bytes:
        return self._client.scrub_bytes(self._inner.feed(chunk))

    def finish(self) -> bytes:
        return self._client.scrub_bytes(self._inner.finish())

    def usage(self) -> JSONObject | None:
        return self._inner.usage()

    @property
    def completed(self) -> bool:
        return self._inner.completed

    @property
    def failing(self) -> bool:
        return self._inner.failing


class _Keeper:
    """Writes one conversation (input items + a response's output) under the response's id."""

    __slots__ = ("_items", "_store", "_tenant", "_ttl_s")

    def __init__(self, store: CacheStore, tenant: str, items: list[Any], ttl_s: float) -> None:
        self._store = store
        self._tenant = tenant
        self._items = items
        self._ttl_s = ttl_s

    async def response(self, raw: bytes) -> None:
        try:
            response = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if isinstance(response, dict):
            await self.whole(response)

    async def whole(self, response: JSONObject) -> None:
        response_id, output = response.get("id"), response.get("output")
        if not isinstance(response_id, str) or not isinstance(output, list):
            return
        kept = [item for item in output if isinstance(item, dict) and item.get("type") in _KEPT_ITEMS]
        # The conversation for previous_response_id, and the response itself for retrieval.
        value = orjson.dumps({"items": self._items + kept, "response": response})
        key = _key(self._tenant, response_id)
        largest = self._store.largest_entry(STORED_CATEGORY)
        if entry_size(key, value) > largest:
            # The store would drop it (with Redis, past 4 MiB: a few images sent as data: URLs
            # make it), and naming it next turn was a bare "not found" for a response answered
            # with store: true. A marker in its place makes that 400 say why.
            log.warning(
                "response not kept: its conversation is larger than the store keeps for one",
                extra={"fields": {"response_id": response_id, "bytes": len(value), "largest": largest}},
            )
            value = orjson.dumps({"too_large": len(value)})
        await self._store.set(STORED_CATEGORY, key, value, self._ttl_s)
        for item in kept:  # each output item on its own, for an item_reference to it
            if isinstance(item.get("id"), str):
                key = _item_key(self._tenant, item["id"])
                await self._store.set(STORED_CATEGORY, key, orjson.dumps(item), self._ttl_s)


class _KeepingStream:
    """A Responses stream that keeps its conversation when its final event passes (before that
    event is sent on, so the client's next request can already name it)."""

    __slots__ = ("_decoder", "_keep", "_stream")

    def __init__(self, stream: AnswerStream, keep: _Keeper) -> None:
        self._stream = stream
        self._keep = keep
        self._decoder = SSEDecoder()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            for data in self._decoder.feed(chunk):
                if data.find(b'"response.completed"') >= 0 or data.find(b'"response.incomplete"') >= 0:
                    await self._kept(data)
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()

    def drained(self) -> None:
        self._stream.drained()

    async def _kept(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        response = event.get("response") if isinstance(event, dict) else None
        if isinstance(response, dict):
            await self._keep.whole(response)


def _input_items(body: JSONObject) -> list[Any]:
    given = body.get("input")
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    return list(given) if isinstance(given, list) else []


def _decoded(raw: bytes | None) -> tuple[list[Any], JSONObject | None] | None:
    """(conversation items, the response) of a kept value; a value kept before responses were
    stored whole is the items alone (the response is then None)."""
    if raw is None:
        return None
    try:
        kept = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(kept, list):
        return kept, None
    if isinstance(kept, dict) and isinstance(kept.get("items"), list):
        response = kept.get("response")
        return kept["items"], response if isinstance(response, dict) else None
    return None


def _too_large(raw: bytes | None) -> int | None:
    """The size of the conversation a kept value stands in for, if it is the marker of one too
    large to keep (``_Keeper.whole``)."""
    if raw is None or not raw.startswith(b'{"too_large":'):
        return None
    try:
        size = orjson.loads(raw).get("too_large")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return size if isinstance(size, int) else None


def _key(tenant: str, response_id: str) -> str:
    return f"{tenant}/{response_id}"


def _item_key(tenant: str, item_id: str) -> str:
    """A kept output item's key: apart from responses' (an item id is not a response id)."""
    return f"{tenant}/item/{item_id}"


def _json_object(raw: bytes | None) -> JSONObject | None:
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
