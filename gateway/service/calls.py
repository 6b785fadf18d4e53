"""The request service: one OpenAI call in, one answer out, every stage in one visible place.

    run(endpoint, body, ctx)
      1. validate       the fields the gateway interprets, request limits (n, max_tokens), cache
                        headers, the model group (404)
      2. admit          the admission gates in order (caller identity, limits, budgets)
      3. augment        memories added to a chat that asks for them
      4. cache          plan, single flight (identical misses wait for one leader), lookup
      5. route          with failover; a stream returns once its first chunk is in
      6. store          a whole answer (a stream's once it ended whole, from the stream itself)
      7. account        usage, cost, token metrics, the router's verdict, feedback's request map
      8. shadow         a group with ``shadow`` mirrors a share of served requests to its candidate,
                        in the background (``shadow.py``)

Handlers only parse and render; internal calls (embeddings for the semantic cache and the
memory service) take the same path through ``embed``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import orjson

from gateway.auth.gate import reservation_parts
from gateway.cache import fingerprint
from gateway.cache.service import (
    CachedAnswer,
    CacheOutcome,
    CachePlan,
    ResponseCache,
    readable_stream,
    reusable,
)
from gateway.errors import (
    GatewayError,
    ModelNotFound,
    ProviderFileNotAllowed,
    StreamInterrupted,
    UpstreamBadResponse,
    UpstreamStatusError,
)
from gateway.memory import augment as memory_augment
from gateway.memory.access import MemoryAccess
from gateway.memory.service import MemoryService
from gateway.observability import tracing
from gateway.observability.metrics import GatewayMetrics, HistogramChild, vendor_of
from gateway.observability.tracing import Span, Tracer
from gateway.policy.model import Limits, Shadow
from gateway.providers.base import StreamTranslator, UpstreamRequest
from gateway.routing.router import Router
from gateway.routing.target import RouteContext, Target
from gateway.service.chat_values import check_chat_values, check_completion_values
from gateway.service.context import ON_BEHALF_OF, CallContext, Route, on_behalf_of
from gateway.service.effort import chat_for, withheld
from gateway.service.front_door import FrontDoor
from gateway.service.grants import memory_access_of
from gateway.service.limits import check_limits
from gateway.service.media import check_served, image_usage, media_units, unit_cost_usd
from gateway.service.shadow import ShadowTraffic, door_answer
from gateway.service.streams import AnswerStream, ReplayStream, RoutedStream
from gateway.service.validation import CheckedBodies, check_request
from gateway.wire import provider_files
from gateway.wire.forms import FORM, UploadForm
from gateway.wire.requests import (
    BYTES_ENDPOINTS,
    ENDPOINT_CHAT,
    ENDPOINT_COMPLETIONS,
    ENDPOINT_EMBEDDINGS,
    FORM_ENDPOINTS,
    IMAGE_ENDPOINTS,
    MEDIA_ENDPOINTS,
    Endpoint,
    JSONObject,
)
from gateway.wire.usage import MOST_TOKENS, cache_counts

# OTel's gen_ai.operation.name for each endpoint.
_OPERATION = {
    Endpoint.CHAT: "chat",
    Endpoint.COMPLETIONS: "text_completion",
    Endpoint.EMBEDDINGS: "embeddings",
    # (no GenAI convention names these yet: OpenAI's own names)
    Endpoint.MODERATIONS: "moderations",
    Endpoint.IMAGES: "image_generation",
    Endpoint.SPEECH: "speech",
    Endpoint.TRANSCRIPTIONS: "transcription",
    Endpoint.TRANSLATIONS: "translation",
    Endpoint.IMAGE_EDITS: "image_edit",
    Endpoint.IMAGE_VARIATIONS: "image_variation",
}
# Streams whose events are not text tokens (speech's audio, image streams' partial pictures):
# none is counted as an output token when no usage comes (``RoutedStream.binary``).
_UNTOKENED = frozenset((Endpoint.SPEECH, *IMAGE_ENDPOINTS))
T = TypeVar("T")
Attempt = Callable[[Target], Awaitable[T]]  # one try of a routed call on a target (``Router.call``)
# Builds the memory service around the request service's own embeddings path.
MemoryFactory = Callable[["Embed"], MemoryService]


class Embed(Protocol):
    async def __call__(self, model: str, texts: Sequence[str]) -> list[list[float]]: ...


class AdmissionGate(Protocol):
    """A check every client call passes before it costs anything (keys, limits, budgets).

    Raises a ``GatewayError`` (401, 403, 429, ...) to refuse; runs after validation, so a gate
    sees the model group, and before memory, cache and providers are touched."""

    async def admit(self, endpoint: Endpoint, model: str, body: JSONObject, ctx: CallContext) -> None: ...


@dataclass(slots=True)
class Answer:
    """What a call produced: exactly one of ``body`` (JSON bytes) and ``stream`` is set."""

    body: bytes | None = None
    stream: AnswerStream | None = None
    # A binary answer's content type (speech): ``stream`` holds its bytes, relayed as they are.
    media_type: str | None = None


# The hits' shared answers (``RequestService._hit``): how many, their bodies' bytes in all, and
# the largest body shared (the cache decodes a larger entry anew on each hit, so its body is a
# new object whose hash would be computed each time).
_MOST_SHARED_REPLIES = 1024
_MOST_SHARED_REPLIES_BYTES = 4 << 20
_MOST_SHARED_REPLY_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class Tuning:
    """Single-flight limits: how long an identical request waits for its leader, and how many
    leaders may fail in a row before waiters go upstream on their own. One: a leader that could
    not share its answer (it failed, its client left, the answer was too big to store) sends its
    waiters upstream at once, side by side. With three, each waiter led in turn and the others
    waited again: six identical requests to a failing provider failed at 4.6, 9.3, 13.9 and
    18.5 s instead of together at 4.6 s, for the same number of provider calls."""

    follower_wait_s: float = 300.0
    max_follow_rounds: int = 1


class RequestService:
    """Runs OpenAI calls end to end (see the module docstring)."""

    def __init__(
        self,
        router: Router,
        cache: ResponseCache,
        metrics: GatewayMetrics,
        *,
        memory: MemoryFactory | None = None,
        gates: Sequence[AdmissionGate] = (),
        tuning: Tuning = Tuning(),
        limits: Limits | None = None,
        rng: random.Random | None = None,
        tracer: Tracer = tracing.OFF,
    ) -> None:
        self.router = router
        self.cache = cache
        self._metrics = metrics
        self._gates = tuple(gates)
        self._limits = limits if limits is not None else Limits()  # the policy's defaults
        self._tuning = tuning
        self._tracer = tracer  # tracing.OFF: each hook below costs one ``on`` check
        self._checked = CheckedBodies()  # chat bodies found valid: a repeated one is not checked again
        self._replies: dict[bytes, Answer] = {}  # hits' answers, by their body (``_hit``)
        self._reply_bytes = 0
        self._genai: dict[tuple[Endpoint, str, int], tuple[Target, _GenAISeries]] = {}
        self.memory: MemoryService | None = memory(self.embed) if memory is not None else None
        # Shadow traffic (``shadow.py``): ``rng`` draws which requests are mirrored.
        self.shadow = ShadowTraffic(router, metrics, self._fetch, self.embed, rng=rng)

    def reconfigure(self, limits: Limits) -> None:
        """Follow a policy reload: ``limits`` bound the next request (one in flight keeps the
        ones it was checked against)."""
        self._limits = limits

    # ----- the call

    async def run(
        self, endpoint: Endpoint, body: JSONObject, ctx: CallContext, door: FrontDoor | None = None
    ) -> Answer:
        """Serve ``body`` on ``endpoint``; raise the ``GatewayError`` the client should see.

        ``door``: a front door's call (``front_door.py``): ``body`` is its chat translation."""
        # 1. validate: nothing below runs for a request that will be refused anyway
        body_json = None
        if endpoint is ENDPOINT_CHAT and door is None:  # a door's translation holds its own values
            if self.cache.may_key(body, ctx.headers):
                # Its key will need the body's JSON: made now, it also finds a body checked before
                body_json = orjson.dumps(body)
                model, stream = self._checked.check(body, body_json, self._limits)
            else:
                model, stream = check_request(endpoint, body)
                check_limits(endpoint, body, self._limits)  # n, max_tokens: bounded before any provider
                check_chat_values(body)
        else:
            model, stream = check_request(endpoint, body)
            check_limits(endpoint, body, self._limits)
        identity = ctx.identity
        if identity is not None and not identity.provider_files and endpoint is ENDPOINT_CHAT:
            # A key not allowed to name the organisation's provider-side objects (file ids,
            # Gemini Files URIs), before any provider sees them; open mode and allowed keys skip it.
            where = provider_files.in_chat(body) if door is None else door.provider_file()
            if where is not None:
                raise ProviderFileNotAllowed(where, identity.team)
        elif endpoint is ENDPOINT_COMPLETIONS:
            check_completion_values(body)
        elif identity is not None and not identity.provider_files and endpoint in FORM_ENDPOINTS:
            # An upload's form fields: none may be a file id's bracketed path (``mask[file_id]``).
            form = body.get(FORM)
            named = provider_files.in_form(form.fields) if isinstance(form, UploadForm) else None
            if named is not None:
                raise ProviderFileNotAllowed(named, identity.team)
        allowed = None
        if identity is not None and not ctx.internal:  # (open mode: one test)
            allowed = identity.models
            if not identity.may_use(model):
                # (An internal call made for a caller, ``OnBehalf``, uses the policy's models: the
                # memory's embedding model is the gateway's choice, not the key's.)
                # As if it did not exist (OpenAI's answer for a model a key cannot see): a 404
                # naming only the key's own models, before resolve, whose 404 would list every group.
                raise ModelNotFound(model, [m for m in self.router.model_names if identity.may_use(m)])
        # An unknown model is a 404 before any store is read. A group without rules is itself
        # whatever the request: its ``RouteContext`` waits until routing (a hit never needs it).
        route: RouteContext | None = None
        if self.router.unruled(model):
            group = model
        else:
            route = RouteContext(
                model, body, stream=stream, tags=ctx.tags, allowed=allowed, request_id=ctx.request_id
            )
            group = self.router.resolve(route)
        ctx.record.model = model
        if endpoint in MEDIA_ENDPOINTS:  # only OpenAI-compatible deployments serve these
            check_served(endpoint, group, self.router.policy)
            ctx.units = media_units(endpoint, body)  # what a per-unit price counts
        variant = "" if group == model else _served_by(model, group)  # (no call for most)
        if door is None:  # ``_cache_plan``, inline for a client's own request
            plan = self.cache.plan(
                endpoint,
                body,
                ctx.headers,
                tenant=ctx.tenant,
                tags=ctx.tags,
                variant=variant,
                body_json=body_json,
                internal=not ctx.request_id,  # (``CallContext.internal``, without the call)
            )
        else:
            plan = self._cache_plan(endpoint, body, ctx, variant, door)
        # 2. admit
        for gate in self._gates:
            await gate.admit(endpoint, model, body, ctx)
        lead = False
        try:
            # 3. augment
            if (
                endpoint is ENDPOINT_CHAT
                and door is None
                and ("memory" in body or memory_augment.HEADER in ctx.headers)  # ``wanted``, inline
            ):
                access = memory_access_of(ctx.identity)  # only memories the caller's team may read
                with on_behalf_of(ctx.identity, admit=False):  # the query's embedding is charged
                    body, recalled_ids = await memory_augment.augment(self.memory, body, ctx.headers, access)
                    ctx.record.memory_ids = _shown(recalled_ids, access)
                route = RouteContext(
                    model, body, stream=stream, tags=ctx.tags, allowed=allowed, request_id=ctx.request_id
                )
                group = self.router.resolve(route)  # a rule may look at the longer prompt
                plan = self._cache_plan(endpoint, body, ctx, _served_by(model, group), None)
            elif door is not None and memory_augment.HEADER in ctx.headers:
                # A front door's request: recalled for its chat translation's question, placed in
                # the door's own format (a native provider gets the client's body with them).
                access = memory_access_of(ctx.identity)
                with on_behalf_of(ctx.identity, admit=False):
                    recalled = await memory_augment.recall(self.memory, body, ctx.headers, access)
                if recalled.ids:
                    door = door.remembered(recalled.trusted, recalled.reference)
                    body = door.chat
                    ctx.record.memory_ids = _shown(recalled.ids, access)
                    route = RouteContext(
                        model, body, stream=stream, tags=ctx.tags, allowed=allowed, request_id=ctx.request_id
                    )
                    group = self.router.resolve(route)
                    plan = self._cache_plan(endpoint, body, ctx, _served_by(model, group), door)
            # 4. cache: lead the single flight or wait for its leader, then look up
            if plan.read:
                if self._tracer.on:
                    found, lead = await self._find_traced(plan)
                elif self.cache.answers_now(plan) and not self.cache.flights.leading(plan.key):
                    # ``_find`` without awaiting (no flight for the key yet, an in-process store,
                    # no semantic index: the default gateway), inline: two coroutines fewer per
                    # in-process lookup, and no call of its own
                    found = self.cache.exact_now(plan)
                    if found is None:
                        self.cache.flights.lead(plan.key)  # checked and taken with no await between
                        lead = True
                else:
                    found, lead = await self._find(plan)
                if found is not None:
                    return self._hit(plan, found, ctx, stream)
            ctx.record.cache = plan.outcome or CacheOutcome(plan.status, plan.category)
            if plan.counter is not None:  # a shared bypass plan: its series was found once
                plan.counter.value += 1
            else:
                self.cache.count(plan.category, plan.status)
            # 5. route with failover (6 and 7 follow, or in the stream when it ends)
            if route is None:  # (by position: a call with keywords matches each name)
                route = RouteContext(model, body, stream, ctx.tags, allowed, ctx.request_id)
            if stream:
                return await self._stream(endpoint, body, route, group, plan, ctx, lead, door)
            # A whole answer, here rather than in a coroutine of its own (one frame less).
            called_s = time.perf_counter()
            try:
                fetch: Attempt[tuple[bytes, object]]
                if door is None and endpoint is ENDPOINT_EMBEDDINGS:
                    kept: _KeptSlices = {}  # slices that came back, per deployment: a retry keeps them
                    fetch = lambda t: self._fetch(t, endpoint, body, kept)  # noqa: E731
                elif door is None:
                    fetch = lambda t: self._fetch(t, endpoint, body)  # noqa: E731
                else:
                    fetch = lambda t: self._fetch_door(t, door)  # noqa: E731
                if ctx.limit_ticket is not None:
                    fetch = _noting(ctx, fetch)
                routed = await self.router.call(route, fetch, group)
            except GatewayError as error:
                self.record_operation(endpoint, model, None, called_s, type(error).__name__)
                raise
            raw, usage = routed.value
            target = routed.target
            series = self.genai_series(endpoint, model, target)  # looked up once for both below
            series.duration.observe(time.perf_counter() - called_s)  # record_operation's success
            self._served(ctx, routed, body, door)
            # 6. store (not an answer made without the client's effort: ``_storable``)
            answer = (
                CachedAnswer(raw, target.provider, target.model)
                if plan.write and _storable(ctx) and reusable(raw)
                else None
            )
            if answer is not None:
                await self.cache.store_answer(plan, answer, self._embed_one)
            if lead:
                lead = False
                self.cache.land(plan, answer)
            # 7. account
            exact = None if ctx.units is None else unit_cost(ctx, target, usage)
            used = self.account_usage(endpoint, model, routed.group, target, usage, series, exact)
            if used[0] + used[1] == 0:  # an answer without usage: its estimate is charged, counted
                used = self.account_unreported(ctx, endpoint, body, routed.group, target, 0, exact)
            if ctx.limit_ticket is not None:
                ctx.limit_ticket.settle_later(*used)
            # Shadow traffic: one attribute check for a group without it (read now: reloads apply)
            group_config = self.router.policy.models.get(routed.group)
            if (
                group_config is not None
                and group_config.shadow is not None
                and not ctx.internal
                and endpoint not in MEDIA_ENDPOINTS  # an image paid twice, its answer not text
            ):
                if door is None:
                    self.shadow.offer(routed.group, group_config.shadow, endpoint, body, raw)
                elif self.shadow.draw(group_config.shadow):  # its chat translation, its answer's text
                    self.shadow.mirror(
                        routed.group, group_config.shadow, endpoint, body, door_answer(raw), sse=False
                    )
            return Answer(raw)
        except BaseException as error:
            if lead:
                self.cache.land(plan, None)
            ticket = ctx.limit_ticket
            if ticket is not None:
                sent_to = ctx.sent_to  # (noted for keyed calls only: ``_noting``)
                if sent_to is not None and isinstance(error, asyncio.CancelledError):
                    # The client left while a provider worked on its request: tokens were spent
                    # (as for a stream left half way), so the reservation stands, at its prices;
                    # counted for ``group``, the one routing tried it in (``Router.call``).
                    exact = unit_cost(ctx, sent_to, None)  # (speech's characters: known)
                    if exact is not None:  # as exact as a reported cost: counted where it is
                        self.router.record_usage(group, sent_to, 0, 0, cost_usd=exact)
                    ticket.settle_later(
                        *self.account_unreported(ctx, endpoint, body, group, sent_to, 0, exact)
                    )
                else:  # no provider answered: the reservation is released
                    ticket.settle_later(0, 0, 0.0)
            raise

    async def embed(
        self, model: str, texts: Sequence[str], tenant: str = fingerprint.ANONYMOUS_TENANT
    ) -> list[list[float]]:
        """One embedding per text from model group ``model``, through the whole request path
        (cache and single flight included); raises ``GatewayError`` on failure. Inside
        ``on_behalf_of`` (the memory API, augmentation) they pass, or are charged to, the caller's
        limits, and are cached as its team's; else as ``tenant``'s (the semantic cache's prompt
        is the requesting call's). An embedding is the same for every caller, but one cache
        entry shared by all let a team time another's texts: a hit answers in a millisecond, a
        miss waits for the provider, so an exact memory, upload chunk or prompt of another team
        showed by the time its embedding took (an outside probe)."""
        body = {"model": model, "input": list(texts), "encoding_format": "float"}
        ctx = CallContext("", 0.0)
        behalf = ON_BEHALF_OF.get()
        if behalf is not None:  # a caller's memory work: its limits admit or are charged
            ctx.identity, ctx.charge_only = behalf.caller, not behalf.admit
            ctx.tenant = behalf.caller.tenant
        else:
            ctx.tenant = tenant
        try:
            answer = await self.run(Endpoint.EMBEDDINGS, body, ctx)
        finally:
            if behalf is not None and behalf.record is not None and ctx.record.rate_limits is not None:
                behalf.record.rate_limits = ctx.record.rate_limits  # the client's answer says them
        try:
            data = sorted(orjson.loads(answer.body or b"")["data"], key=lambda d: d["index"])
            vectors = [list(map(float, d["embedding"])) for d in data]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UpstreamBadResponse(
                f"model '{model}' returned an embeddings body the gateway cannot read"
            ) from None
        if len(vectors) != len(texts):
            raise UpstreamBadResponse(
                f"model '{model}' returned {len(vectors)} embeddings for {len(texts)} texts"
            )
        return vectors

    async def _embed_one(self, model: str, text: str, tenant: str) -> list[float] | None:
        return (await self.embed(model, [text], tenant))[0]

    # ----- 4. cache

    def _cache_plan(
        self, endpoint: Endpoint, body: JSONObject, ctx: CallContext, variant: str, door: FrontDoor | None
    ) -> CachePlan:
        """The cache's plan for a request; ``variant``: what besides the body changes the answer
        (``_served_by``). A front door's call is keyed by the client's own body under its door:
        its answers are served in one shape only."""
        if door is None:
            return self.cache.plan(
                endpoint,
                body,
                ctx.headers,
                tenant=ctx.tenant,
                tags=ctx.tags,
                variant=variant,
                internal=not ctx.request_id,
            )
        if door.cache_variant:
            variant = f"{door.cache_variant};{variant}" if variant else door.cache_variant
        return self.cache.plan(
            door.endpoint, door.body, ctx.headers, tenant=ctx.tenant, tags=ctx.tags, variant=variant
        )

    async def _find(self, plan: CachePlan) -> tuple[CachedAnswer | None, bool]:
        """(the answer, whether this request leads the flight for ``plan.key``).

        The leader registers its flight *before* looking up, so an identical request arriving
        while it looks up or fetches waits for it instead of missing the store by a hair. If the
        leader's answer cannot be shared (it failed, or was not to be stored), its waiters go
        upstream on their own, side by side (``Tuning.max_follow_rounds``). Checking for a leader
        and becoming one happen with no await."""
        flights = self.cache.flights
        for _ in range(self._tuning.max_follow_rounds):
            waiter = flights.waiter(plan.key)
            if waiter is None:
                flights.lead(plan.key)
                break
            try:
                answer = await asyncio.wait_for(asyncio.shield(waiter), self._tuning.follower_wait_s)
            except TimeoutError:
                return None, False
            if answer is not None:
                return answer, False
        else:
            return None, False
        try:
            answer = await self.cache.lookup(plan, self._embed_one)
        except BaseException:
            self.cache.land(plan, None)
            raise
        if answer is not None:
            flights.land(plan.key, answer)
            return answer, False
        return None, True

    async def _find_traced(self, plan: CachePlan) -> tuple[CachedAnswer | None, bool]:
        """``_find`` inside the cache span."""
        span = self._tracer.cache(plan.category)
        try:
            found, lead = await self._find(plan)
            span.set("gateway.cache.status", "miss" if found is None else "hit")
            if found is not None:
                span.set("gateway.cache.match", found.match or "exact")
            return found, lead
        except BaseException as error:
            span.fail(type(error).__name__)
            raise
        finally:
            span.end()

    def _hit(self, plan: CachePlan, answer: CachedAnswer, ctx: CallContext, stream: bool) -> Answer:
        ctx.record.cache = self.cache.hit(plan.category, answer)  # counted, its outcome shared
        if ctx.limit_ticket is not None:  # a hit costs no provider tokens
            ctx.limit_ticket.settle_later(0, 0, 0.0)
        if stream:
            return Answer(stream=ReplayStream(answer.body))
        # A whole answer's ``Answer``, made once per stored body and shared, as nothing changes
        # an ``Answer`` once made: the cache hands back the same body object for each hit of an
        # entry it decoded once, whose hash Python keeps (a dataclass's ``__init__``: ~2.7k
        # instructions, callgrind). Bounded by entries and bytes; then it starts again.
        body = answer.body
        size = len(body)
        if size > _MOST_SHARED_REPLY_BYTES:  # not kept, so not hashed to be looked for either
            return Answer(body=body)
        replies = self._replies
        reply = replies.get(body)
        if reply is None:
            reply = Answer(body=body)
            self._reply_bytes += size
            if len(replies) >= _MOST_SHARED_REPLIES or self._reply_bytes > _MOST_SHARED_REPLIES_BYTES:
                replies.clear()
                self._reply_bytes = size
            replies[body] = reply
        return reply

    # ----- 5 for a whole answer

    async def _fetch(
        self, target: Target, endpoint: Endpoint, body: JSONObject, kept: _KeptSlices | None = None
    ) -> tuple[bytes, object]:
        """One attempt's whole answer from ``target``: (its bytes, its usage). ``kept``: an
        embeddings request's slices already answered by each deployment in earlier attempts."""
        client, adapter = target.client, target.client.adapter
        if endpoint is Endpoint.EMBEDDINGS and adapter.embedding_batch is not None:
            inputs = body.get("input")
            if isinstance(inputs, list) and len(inputs) > adapter.embedding_batch:
                done = {} if kept is None else kept.setdefault(target, {})
                return await self._fetch_slices(target, body, inputs, adapter.embedding_batch, done)
        if self._tracer.on:
            return await self._fetch_traced(target, endpoint, body)
        sent = body if target.deployment.reasoning is not False else chat_for(body, target)  # (a call fewer)
        raw, parsed = await client.fetch_json(adapter.build_request(endpoint, sent, target.model))
        translated = adapter.translate_response(endpoint, parsed, body, target.model)
        if translated is None:  # OpenAI format already: forward the provider's bytes
            if endpoint in IMAGE_ENDPOINTS:
                return raw, image_usage(parsed)
            return raw, parsed.get("usage")
        return orjson.dumps(translated), translated.get("usage")

    async def _fetch_slices(
        self, target: Target, body: JSONObject, inputs: list[object], size: int, done: dict[int, JSONObject]
    ) -> tuple[bytes, object]:
        """An embeddings request longer than the provider takes at once (``embedding_batch``),
        sent in slices to the same deployment, at most ``SLICES_IN_FLIGHT`` at a time, and
        answered as one list: the items numbered across slices, usage summed. A slice that fails
        fails the attempt (the others still running are cancelled); the slices that came back
        are kept in ``done`` (by their first input's place), so a retry on the same deployment
        asks only for the others. Another deployment has a ``done`` of its own: the vectors of
        one answer always come from one model."""
        gate = asyncio.Semaphore(SLICES_IN_FLIGHT)

        async def one(start: int) -> JSONObject:
            kept = done.get(start)
            if kept is not None:
                return kept
            async with gate:
                raw, _ = await self._fetch(
                    target, Endpoint.EMBEDDINGS, {**body, "input": inputs[start : start + size]}
                )
            answer: JSONObject = orjson.loads(raw)
            items = answer.get("data")
            if not isinstance(items, list) or len(items) != min(size, len(inputs) - start):
                raise UpstreamBadResponse(
                    f"{target.provider}: an embeddings slice came back with a different number of items",
                    provider=target.provider,
                )
            done[start] = answer
            return answer

        starts = range(0, len(inputs), size)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(start)) for start in starts]
        except BaseExceptionGroup as failed:  # the first slice's error, as one fetch raises it
            raise failed.exceptions[0] from None
        data: list[object] = []
        prompt = total = 0
        answer: JSONObject = {}
        for start, task in zip(starts, tasks, strict=True):
            answer = task.result()
            for offset, item in enumerate(answer["data"]):
                if isinstance(item, dict):
                    item["index"] = start + offset
                data.append(item)
            usage = answer.get("usage")
            if isinstance(usage, dict):
                counts = usage.get("prompt_tokens"), usage.get("total_tokens")
                prompt += counts[0] if isinstance(counts[0], int) else 0
                total += counts[1] if isinstance(counts[1], int) else 0
        answer["data"] = data
        answer["usage"] = {"prompt_tokens": prompt, "total_tokens": total}
        return orjson.dumps(answer), answer["usage"]

    async def _fetch_traced(
        self, target: Target, endpoint: Endpoint, body: JSONObject
    ) -> tuple[bytes, object]:
        """``_fetch`` inside an attempt span, its ``traceparent`` sent upstream."""
        client, adapter = target.client, target.client.adapter
        request = adapter.build_request(endpoint, chat_for(body, target), target.model)
        span = self._attempt_span(target, endpoint, body, request)
        try:
            raw, parsed = await client.fetch_json(request)
            translated = adapter.translate_response(endpoint, parsed, body, target.model)
            answer = parsed if translated is None else translated
            _answer_attributes(span, answer, target)
            usage = image_usage(answer) if endpoint in IMAGE_ENDPOINTS else answer.get("usage")
            tracing.usage_attributes(span, usage)
            return (raw if translated is None else orjson.dumps(translated)), usage
        except BaseException as error:
            span.fail(type(error).__name__)
            raise
        finally:
            span.end()

    def _attempt_span(
        self, target: Target, endpoint: Endpoint, body: JSONObject, request: UpstreamRequest
    ) -> Span:
        """An upstream attempt's span; ``request`` carries its ``traceparent`` from now on."""
        config = target.client.config
        name, attributes = tracing.attempt_attributes(
            endpoint.value,
            config.kind,
            target.provider,
            config.base_url,
            self.router.group_of(target),
            target.model,
            body,
        )
        span, headers = self._tracer.attempt(name, attributes)
        request.headers = {**request.headers, **headers} if request.headers else headers
        return span

    async def _fetch_door(self, target: Target, door: FrontDoor) -> tuple[bytes, object]:
        raw, parsed = await target.client.fetch_json(self._door_request(target, door))
        return door.answer(target, raw, parsed)

    def _door_request(self, target: Target, door: FrontDoor) -> UpstreamRequest:
        request = door.build(target)  # raises first for a kind the door cannot serve: not counted
        m = self._metrics
        m.child(m.front_door_attempts, door.endpoint.value, door.mode(target)).inc()
        return request

    # ----- 5-7 for a stream

    async def _stream(
        self,
        endpoint: Endpoint,
        body: JSONObject,
        route: RouteContext,
        group: str,
        plan: CachePlan,
        ctx: CallContext,
        lead: bool,
        door: FrontDoor | None = None,
    ) -> Answer:
        book = _StreamBook(
            self, endpoint, body, plan, ctx, lead, door.endpoint if door is not None else endpoint
        )
        capture = self.cache.capture_bytes(plan)

        open_stream: Attempt[RoutedStream]
        open_stream = lambda t: self._open_stream(t, endpoint, body, book, capture, door)  # noqa: E731
        if ctx.limit_ticket is not None:
            open_stream = _noting(ctx, open_stream)
        try:
            routed = await self.router.call(route, open_stream, group)
        except GatewayError as error:
            self.record_operation(endpoint, route.model, None, book.called_s, type(error).__name__)
            raise
        # The book and the call's record keep the route without the stream: the stream holds the
        # book, so keeping ``routed`` (whose value is the stream) would make a reference cycle per
        # stream, the whole request (its task, response and buffers) then waiting for the cyclic
        # GC instead of being freed when it ends.
        served = Route(routed.group, routed.target, routed.attempts, routed.fallback)
        book.route = served
        self._served(ctx, served, body, door)
        group_config = self.router.policy.models.get(routed.group)
        shadow = group_config.shadow if group_config is not None else None
        if (
            shadow is not None
            and not ctx.internal
            and endpoint not in MEDIA_ENDPOINTS
            and self.shadow.draw(shadow)
        ):
            book.mirror = (shadow, endpoint, body)  # sent once the stream has ended
        if endpoint in BYTES_ENDPOINTS:
            return Answer(stream=routed.value, media_type=routed.value.content_type)
        return Answer(stream=routed.value)

    async def _open_stream(
        self,
        target: Target,
        endpoint: Endpoint,
        body: JSONObject,
        book: _StreamBook,
        capture: int,
        door: FrontDoor | None = None,
    ) -> RoutedStream:
        client, adapter = target.client, target.client.adapter
        if door is None:
            request = adapter.build_request(endpoint, chat_for(body, target), target.model)
            if self._tracer.on:
                return await self._open_stream_traced(target, endpoint, body, book, capture, request)
        else:
            request = self._door_request(target, door)
        response = await client.send(request)
        chunks = client.chunks(response)
        try:
            if door is None:
                translator = adapter.stream_translator(endpoint, body, target.model, target.provider)
            else:
                translator = door.stream_translator(target)
            first = await _first_answer(endpoint, translator, chunks)
            if first is not None:
                return RoutedStream(
                    first, response, chunks, translator, book, capture=capture, binary=endpoint in _UNTOKENED
                )
        except BaseException:
            await chunks.aclose()
            response.close()
            raise
        response.close()
        raise UpstreamBadResponse(
            f"{target.provider}: provider ended the stream without data", provider=target.provider
        )

    async def _open_stream_traced(
        self,
        target: Target,
        endpoint: Endpoint,
        body: JSONObject,
        book: _StreamBook,
        capture: int,
        request: UpstreamRequest,
    ) -> RoutedStream:
        """``_open_stream`` inside an attempt span, which the stream's book ends with the stream."""
        span = self._attempt_span(target, endpoint, body, request)
        try:
            response = await target.client.send(request)
            chunks = target.client.chunks(response)
            try:
                translator = target.client.adapter.stream_translator(
                    endpoint, body, target.model, target.provider
                )
                first = await _first_answer(endpoint, translator, chunks)
                if first is not None:
                    book.span = span  # ended with the stream (_StreamBook)
                    return RoutedStream(
                        first,
                        response,
                        chunks,
                        translator,
                        book,
                        capture=capture,
                        binary=endpoint in _UNTOKENED,
                    )
            except BaseException:
                await chunks.aclose()
                response.close()
                raise
            response.close()
            raise UpstreamBadResponse(
                f"{target.provider}: provider ended the stream without data", provider=target.provider
            )
        except BaseException as error:
            span.fail(type(error).__name__)
            span.end()
            raise

    # ----- 7. accounting

    def _served(self, ctx: CallContext, route: Route, body: JSONObject, door: FrontDoor | None) -> None:
        ctx.record.route = route
        # The client's effort withheld from a model without reasoning: the response's header
        # and the access log say so (``effort.py``).
        if door is not None:
            if door.withheld(route.target):
                ctx.record.effort_dropped = True
        elif route.target.deployment.reasoning is False and withheld(body, route.target):
            ctx.record.effort_dropped = True
        if ctx.request_id:  # not ``internal``: only the same caller may vote on it later (/v1/feedback)
            self.router.remember(ctx.request_id, route.group, route.target, ctx.tenant)

    def account_usage(
        self,
        endpoint: Endpoint,
        model: str,
        group: str,
        target: Target,
        usage: object,
        series: _GenAISeries | None = None,
        exact_usd: float | None = None,
    ) -> tuple[int, int, float]:
        """Export the token counts a provider reported and their cost (no-op without usage);
        ``model`` is the group the client asked for, ``group`` the one that served it, ``series``
        their GenAI series when the caller has it; ``exact_usd``: the call's cost by a per-unit
        price (``media.unit_cost_usd``), which replaces its tokens' and counts without them.
        Returns (prompt tokens, completion tokens, cost in US dollars)."""
        if not isinstance(usage, dict) or ("prompt_tokens" not in usage and "completion_tokens" not in usage):
            if exact_usd is None:  # (a DALL-E answer's usage holds only the images it returned)
                return 0, 0, 0.0
            return 0, 0, self.router.record_usage(group, target, 0, 0, cost_usd=exact_usd)
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        # A provider's counts are bounded before they reach limits, budgets and metrics: a
        # negative count would give back tokens and spend, a huge one exhaust a budget at once.
        prompt = prompt if isinstance(prompt, int) and 0 <= prompt <= MOST_TOKENS else 0
        completion = completion if isinstance(completion, int) and 0 <= completion <= MOST_TOKENS else 0
        if series is None:
            series = self.genai_series(endpoint, model, target)
        series.tokens_in.observe(prompt)
        if completion or "completion_tokens" in usage:
            (series.tokens_out or series.output_tokens()).observe(completion)
        if exact_usd is not None:
            return (
                prompt,
                completion,
                self.router.record_usage(group, target, prompt, completion, cost_usd=exact_usd),
            )
        if target.prices_cache:  # else cache counts change nothing: not read
            return (
                prompt,
                completion,
                self.router.record_usage(group, target, prompt, completion, *cache_counts(usage)),
            )
        return prompt, completion, self.router.record_usage(group, target, prompt, completion)

    def account_unreported(
        self,
        ctx: CallContext,
        endpoint: Endpoint,
        body: JSONObject,
        group: str,
        target: Target,
        out: int,
        exact_usd: float | None,
    ) -> tuple[int, int, float]:
        """(tokens in, tokens out, cost in US dollars) charged for a call ``target`` served in
        ``group`` whose provider never said its usage (or whose client left before it did), with
        ``out`` output tokens seen: ``unreported`` of the call's estimate (the admission's, else
        made now from ``body``: only such calls pay for it). Its cost, unless ``exact_usd`` (a
        per-unit price, counted as reported cost is), goes to ``gateway_cost_usd_total`` and the
        deployment's cost as an estimate (``Router.record_estimated_cost``), keyed or not, so
        the metric's sum is what budgets were charged."""
        ticket = ctx.limit_ticket
        if ticket is None and exact_usd is not None:
            return 0, 0, exact_usd  # nothing to charge the tokens to
        estimate = ticket.estimate if ticket is not None else None
        prompt = ticket.estimate_prompt if ticket is not None else None
        if estimate is None:
            prompt, estimate = reservation_parts(endpoint, body)
        used = unreported(estimate, target, out, exact_usd, prompt)
        if exact_usd is None and used[2] > 0:
            self.router.record_estimated_cost(group, target, used[2])
        return used

    def record_operation(
        self, endpoint: Endpoint, model: str, target: Target | None, called_s: float, error_type: str = ""
    ) -> None:
        """``gen_ai_client_operation_duration_seconds`` for a routed call that started at
        ``called_s`` (``perf_counter``) and ends now: answered by ``target``, or failed with
        ``error_type`` (a gateway error class; then nobody answered and ``target`` is None)."""
        elapsed = time.perf_counter() - called_s
        if target is not None and not error_type:
            self.genai_series(endpoint, model, target).duration.observe(elapsed)
            return
        m = self._metrics
        if target is None:  # no vendor, response model or provider: nobody answered
            labels = (_OPERATION[endpoint], "", model, "", "")
        else:
            labels = genai_labels(endpoint, model, target)
        m.child(m.operation_duration, *labels, error_type).observe(elapsed)

    def genai_series(self, endpoint: Endpoint, model: str, target: Target) -> _GenAISeries:
        """The GenAI series of calls on ``endpoint`` for group ``model`` answered by ``target``."""
        key = (endpoint, model, id(target))
        found = self._genai.get(key)
        if found is not None and found[0] is target:  # the entry holds its target: its id stays its own
            return found[1]
        if len(self._genai) >= _MOST_SERIES:
            self._genai.clear()
        series = _GenAISeries(self._metrics, genai_labels(endpoint, model, target))
        self._genai[key] = (target, series)
        return series


def genai_labels(endpoint: Endpoint, model: str, target: Target) -> tuple[str, str, str, str, str]:
    """The GenAI label values (``metrics.GENAI_LABELS``) of a call on ``endpoint`` for model
    group ``model`` (what the client asked for) answered by ``target``."""
    client = target.client
    return (
        _OPERATION[endpoint],
        vendor_of(client.config.kind),
        model,
        target.deployment.model,
        client.name,
    )


# An embeddings request's slices answered so far, per deployment, by their first input's place.
_KeptSlices = dict[Target, dict[int, JSONObject]]
# Slices of one long embeddings request sent to the provider at once (``_fetch_slices``): 2,048
# inputs are 21 of Gemini's 100; one after another they took 21 round trips.
SLICES_IN_FLIGHT = 4
_MOST_SERIES = 4096  # (endpoint, group, target) combinations kept; reloads leave old targets behind


class _GenAISeries:
    """The GenAI histogram series of one (endpoint, model group, target): looked up once, not
    per request (building their five labels and four lookups cost ~1 % of a proxied call). Output
    tokens and time per token are made on first use, so no empty series is exported."""

    __slots__ = ("_labels", "_metrics", "duration", "per_token", "tokens_in", "tokens_out", "ttft")

    def __init__(self, metrics: GatewayMetrics, labels: tuple[str, str, str, str, str]) -> None:
        self._metrics, self._labels = metrics, labels
        self.duration = metrics.child(metrics.operation_duration, *labels, "")
        self.tokens_in = metrics.child(metrics.token_usage, *labels, "input")
        self.tokens_out: HistogramChild | None = None
        self.ttft: HistogramChild | None = None
        self.per_token: HistogramChild | None = None

    def output_tokens(self) -> HistogramChild:
        if self.tokens_out is None:
            self.tokens_out = self._metrics.child(self._metrics.token_usage, *self._labels, "output")
        return self.tokens_out

    def time_to_first_token(self) -> HistogramChild:
        if self.ttft is None:
            self.ttft = self._metrics.child(self._metrics.time_to_first_token, *self._labels)
        return self.ttft

    def time_per_output_token(self) -> HistogramChild:
        if self.per_token is None:
            self.per_token = self._metrics.child(self._metrics.time_per_output_token, *self._labels)
        return self.per_token


class _StreamBook:
    """A routed stream's bookkeeping, run by the stream itself as it goes and when it ends."""

    __slots__ = (
        "_body",
        "_ctx",
        "_door",
        "_endpoint",
        "_lead",
        "_plan",
        "_service",
        "called_s",
        "mirror",
        "route",
        "series",
        "span",
    )

    def __init__(
        self,
        service: RequestService,
        endpoint: Endpoint,
        body: JSONObject,
        plan: CachePlan,
        ctx: CallContext,
        lead: bool,
        door: Endpoint,
    ) -> None:
        self._service = service
        self._endpoint = endpoint
        self._body = body  # what an answer without usage is estimated from
        self._door = door  # the client's endpoint (a front door's own)
        self._plan = plan
        self._ctx = ctx
        self._lead = lead
        self.route: Route | None = None
        self.called_s = time.perf_counter()  # when routing began (the operation's start)
        self.mirror: tuple[Shadow, Endpoint, JSONObject] | None = None  # shadow traffic's draw
        self.span: Span | None = None  # the serving attempt's span, when tracing is on
        self.series: _GenAISeries | None = None  # the serving route's GenAI series, found once

    def first_chunk(self, stream: RoutedStream) -> None:
        route = self.route
        if route is not None and not self._ctx.internal:
            self._series(route).time_to_first_token().observe(stream.first_at - self._ctx.started_s)

    def _series(self, route: Route) -> _GenAISeries:
        """The serving route's GenAI series, looked up on first use and kept for the stream."""
        if self.series is None:
            self.series = self._service.genai_series(self._endpoint, self._ctx.record.model, route.target)
        return self.series

    async def ended(self, stream: RoutedStream) -> None:
        """The provider's stream ended: a whole answer if its translator says so."""
        route = self.route
        assert route is not None
        service = self._service
        seconds = max(0.0, time.perf_counter() - (stream.first_at or self._ctx.started_s))
        error = None if stream.translator.completed else _incomplete(route.target)
        output_tokens = stream.output_tokens()
        service.router.stream_ended(route.target, error, output_tokens, seconds)
        series = self._series(route)
        self._timed(route.target, error, output_tokens, seconds, series)
        usage = stream.translator.usage()
        exact = unit_cost(self._ctx, route.target, usage)
        used = service.account_usage(
            self._endpoint, self._ctx.record.model, route.group, route.target, usage, series, exact
        )
        self._settle(stream, used, exact)
        if error is not None:
            # Ended without raising yet not whole: a translator that wrote the door's error event
            # itself (the Responses bridge, for an error event a translator hands it), or a
            # stream whose last event after its end marker could not be read. (A pass-through's
            # mid-stream error event is raised, and counted by ``failed``.)
            self._count_failure(route, "provider_error")
        if self.span is not None:
            self._end_span(usage, None if error is None else type(error).__name__)
        if self.mirror is not None:
            # The served text is known cheaply only when the stream was captured for the cache.
            shadow, endpoint, body = self.mirror
            served = (
                bytes(stream.captured)
                if error is None and stream.captured is not None and self._door is self._endpoint
                else None  # (a front door's events are not chat's: its text is not read)
            )
            service.shadow.mirror(route.group, shadow, endpoint, body, served, sse=True)
        answer: CachedAnswer | None = None
        try:
            if (
                error is None
                and stream.captured
                and _storable(self._ctx)
                and reusable(stream.captured)
                and readable_stream(stream.captured)
            ):
                answer = CachedAnswer(bytes(stream.captured), route.target.provider, route.target.model)
                await service.cache.store_answer(self._plan, answer, service._embed_one)
        finally:
            self._land(answer)  # even if cancelled while storing: waiters must never hang

    def failed(self, stream: RoutedStream, error: GatewayError, reason: str) -> GatewayError:
        """The provider failed after the first chunk went out (``reason``: one of
        ``streams.STREAM_ERROR_REASONS``): the client gets an error event, of the
        ``StreamInterrupted`` returned (its fixed text; ``error``'s own words go to the log)."""
        route = self.route
        assert route is not None
        self._count_failure(route, reason)
        seconds = max(0.0, time.perf_counter() - (stream.first_at or self._ctx.started_s))
        output_tokens = stream.output_tokens()
        self._service.router.stream_ended(route.target, error, output_tokens, seconds)
        series = self._series(route)
        self._timed(route.target, error, output_tokens, seconds, series)
        usage = stream.translator.usage()
        exact = unit_cost(self._ctx, route.target, usage)
        used = self._service.account_usage(
            self._endpoint, self._ctx.record.model, route.group, route.target, usage, series, exact
        )
        self._settle(stream, used, exact)
        if self.span is not None:
            self._end_span(usage, type(error).__name__)
        self._land(None)
        if isinstance(error, UpstreamStatusError):
            # A provider's error event mid-stream passed only the stream's whole-key scrub; its
            # words reach the client (``said``) and the log (``message``): a run of the key
            # quoted cut short is taken out too (``ProviderClient.scrub``).
            error.scrub_words(route.target.client.scrub)
        return StreamInterrupted(reason, route.target.provider, error)

    def _count_failure(self, route: Route, reason: str) -> None:
        """``gateway_stream_errors_total`` and the access log's ``stream_error`` for a stream
        that failed after its first byte."""
        ctx = self._ctx
        ctx.record.stream_error = reason
        m = self._service._metrics
        path = "/v1/" + self._door.value  # as routes are labelled (made on failure only)
        m.child(m.stream_errors, path, ctx.record.model, route.target.provider, reason).inc()

    def _timed(
        self,
        target: Target,
        error: GatewayError | None,
        output_tokens: int,
        seconds: float,
        series: _GenAISeries,
    ) -> None:
        """The operation's duration, and for a whole stream its time per output token after the
        first: ``seconds`` (first chunk to end) over ``output_tokens - 1``. ``series``: the
        route's GenAI series."""
        if error is not None:
            self._service.record_operation(
                self._endpoint, self._ctx.record.model, target, self.called_s, type(error).__name__
            )
            return
        series.duration.observe(time.perf_counter() - self.called_s)  # record_operation's success
        if output_tokens > 1:
            series.time_per_output_token().observe(seconds / (output_tokens - 1))

    def drained(self, stream: RoutedStream) -> None:
        """The gateway's drain cut the stream (its grace ran out): a failed stream the provider
        is not to blame for (``abandoned`` follows, with no verdict on it)."""
        if self.route is not None:
            self._count_failure(self.route, "draining")

    def abandoned(self, stream: RoutedStream) -> None:
        """The client left (or was never sent the stream): no verdict on the provider."""
        route, exact = self.route, None
        if route is not None:
            self._service.router.stream_abandoned(route.target)
            exact = unit_cost(self._ctx, route.target, None)  # (speech's characters: known)
            if exact is not None:  # a cost as exact as one reported: counted where theirs is
                self._service.router.record_usage(route.group, route.target, 0, 0, cost_usd=exact)
        self._settle(stream, None, exact)
        if self.span is not None:
            self._end_span(None, "client_closed")
        self._land(None)

    def _end_span(self, usage: object, error_type: str | None) -> None:
        span, self.span = self.span, None
        assert span is not None
        tracing.usage_attributes(span, usage)
        if self.route is not None:
            span.set("gen_ai.response.model", self.route.target.model)
        if error_type is not None:
            span.fail(error_type)
        span.end()

    def _settle(
        self, stream: RoutedStream, used: tuple[int, int, float] | None, exact_usd: float | None = None
    ) -> None:
        """Settle the call's cost. Without the provider's usage (it never said, or the client
        left) tokens were spent all the same: the estimate stands, or the output seen if larger,
        and its cost at the deployment's price (or ``exact_usd``, by a per-unit price) counts
        against a keyed call's budget and, keyed or not, in the deployment's cost
        (``RequestService.account_unreported``)."""
        route, ticket = self.route, self._ctx.limit_ticket
        if (used is None or used[0] + used[1] == 0) and route is not None:
            used = self._service.account_unreported(
                self._ctx,
                self._endpoint,
                self._body,
                route.group,
                route.target,
                stream.output_tokens(),
                exact_usd,
            )
        if ticket is None:
            return
        if used is None:  # (left before a route was known: the reservation stands, unpriced)
            used = max(0, (ticket.estimate or 0) - stream.output_tokens()), 0, exact_usd or 0.0
        ticket.settle_later(*used)

    def _land(self, answer: CachedAnswer | None) -> None:
        if self._lead:
            self._lead = False
            self._service.cache.land(self._plan, answer)


def _storable(ctx: CallContext) -> bool:
    """Whether the answer of ``ctx``'s call may be stored in the response cache: not when the
    client's effort (or encrypted reasoning) was withheld from the deployment that served it
    (``effort.py``). Its key is the client's body, effort included, so an identical request
    that a reasoning deployment would serve (the one that failed being back) would be answered
    from it, without the reasoning asked for. Stored neither under another key: the lookup comes
    before routing, which alone knows whether the effort will be withheld."""
    return not ctx.record.effort_dropped


def _noting(ctx: CallContext, attempt: Attempt[T]) -> Attempt[T]:
    """``attempt``, noting in ``ctx.sent_to`` the target a try is under way on, or has answered
    (keyed calls: see ``RequestService.run``'s settlement of a call its client left); a try that
    failed is forgotten (a failed call is charged nothing)."""

    async def note(target: Target) -> T:
        ctx.sent_to = target
        try:
            return await attempt(target)
        except GatewayError:
            ctx.sent_to = None
            raise

    return note


def _served_by(model: str, group: str) -> str:
    """The cache key's variant for a request a rule sent to another group than the one it named:
    that group (the tags rules match on are not in the body, so the key alone did not tell a
    premium caller's answer from a plain one's, nor keep a key from another group's answers)."""
    return "" if group == model else f"group={group}"


def unreported(
    estimate: int, target: Target, out: int, exact_usd: float | None = None, tier_prompt: int | None = None
) -> tuple[int, int, float]:
    """(tokens in, tokens out, cost) charged for a call whose provider never said its usage (or
    whose client left before it did): the ``estimate`` stands (``gate.reservation``: prompt
    characters / 4 plus the output it allowed), or the output seen if larger, at ``target``'s
    prices (of the tier ``tier_prompt``, the estimate's prompt alone, falls in: ``Price.at``); or,
    when a per-unit price gave it, at ``exact_usd`` (the tokens still count against TPM). With the
    estimate's prompt known (``tier_prompt``), the prompt is charged at the input price and the
    rest of the estimate, the output it allowed (or the output seen if larger), at the output
    price: charged whole as input, an unused allowance of ``max_tokens`` cost the input price."""
    if tier_prompt is None:
        prompt = max(0, estimate - out)
    else:
        prompt = min(max(0, tier_prompt), estimate)
        out = max(out, estimate - prompt)
    if exact_usd is not None:
        return prompt, out, exact_usd
    return prompt, out, target.deployment.price.cost_usd(prompt, out, tier_prompt=tier_prompt)


def unit_cost(ctx: CallContext, target: Target | None, usage: object) -> float | None:
    """A media call's exact cost by ``target``'s per-unit price (``media.unit_cost_usd``), or
    None: not a media call, no such price, or the count unknown."""
    units = ctx.units
    if units is None or target is None:
        return None
    return unit_cost_usd(units, target.deployment.price, usage)


def _answer_attributes(span: Span, answer: JSONObject, target: Target) -> None:
    """``gen_ai.response.*`` from an OpenAI-format answer (its model and id, never its text)."""
    model = answer.get("model")
    span.set("gen_ai.response.model", model if isinstance(model, str) and model else target.model)
    answer_id = answer.get("id")
    if isinstance(answer_id, str) and answer_id:
        span.set("gen_ai.response.id", answer_id[:128])


def _incomplete(target: Target) -> GatewayError:
    return UpstreamBadResponse(
        f"{target.provider}: stream ended without its end marker or carried an error event",
        provider=target.provider,
    )


async def _first_answer(
    endpoint: Endpoint, translator: StreamTranslator, chunks: AsyncIterator[bytes]
) -> bytes | None:
    """The first bytes of a provider's answer to relay, read from ``chunks`` through
    ``translator``; None when its body ended with none. The answer starts with its first event:
    comments before it (keep-alives) are not an answer, and a stream of nothing else is failed
    over as empty. (Speech's audio, a transcription's text, start with their first byte; one held
    whole, opening with ``{``: ``providers/openai.BytesRelay``, is judged at its end, where a 2xx
    error raised fails over.)"""
    async for chunk in chunks:
        first = translator.feed(chunk)
        if first.find(b"data:") >= 0 or (first and endpoint in BYTES_ENDPOINTS):
            return first
    if endpoint in BYTES_ENDPOINTS:
        return translator.finish() or None
    return None


def _shown(ids: Sequence[str] | None, access: MemoryAccess | None) -> list[str] | None:
    """The recalled memories' ids as the caller sees them (``x-gateway-memory-ids``): its team's
    without their prefix (``MemoryAccess.shown_id``), as the memory API shows them."""
    if ids is None:
        return None
    return list(ids) if access is None else [access.shown_id(i) for i in ids]
