"""The response cache service: what is cacheable, where it goes, and how it is found again.

``plan`` decides from the policy and the request (category, key, TTL, whether to read and write);
``lookup`` tries the exact key, then (for semantic categories) the nearest cached prompt;
``store`` writes a complete answer. ``Flights`` makes N identical concurrent misses cost one
upstream call in one process; across replicas the exact lookup claims the fetch in the same
store call (``CacheStore.get_or_claim``: no extra round trip, hit or miss), and a replica that
finds another's claim polls the store for that answer (``CLAIM_S`` at most, then fetches itself). Nothing here raises because the cache failed: the store fails open, and semantic
lookups that cannot embed simply miss.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.cache import fingerprint
from gateway.cache.store import CacheStore
from gateway.errors import GatewayError, InvalidRequest
from gateway.observability.metrics import CounterChild, GatewayMetrics
from gateway.policy.model import Cache
from gateway.wire.requests import ENDPOINT_EMBEDDINGS, MEDIA_ENDPOINTS, Endpoint

if TYPE_CHECKING:
    from gateway.cache.semantic import SemanticIndex, Vector

log = logging.getLogger("gateway.cache")

# (embedding model group, text) -> the embedding, or None when it could not be had.
# (model group, prompt text, tenant): the prompt's embedding, cached as the tenant's.
Embedder = Callable[[str, str, str], Awaitable[list[float] | None]]

CATEGORY_HEADER = "x-gateway-cache-category"
TTL_HEADER = "x-gateway-cache-ttl"
_MAX_TTL_S = 7 * 86400
# Cross-replica single flight: how long a claim to fetch a missing answer lasts (a leader that
# fails leaves it to expire), and how often a replica that met another's claim asks again.
CLAIM_S = 5.0
_CLAIM_POLL_S = (0.02, 0.5)  # first wait, doubling up to the second
_NUMBER = (int, float)
_MAX_HIT_OUTCOMES = 1024
_MAX_SHARED_PLANS = 2048  # exact plans kept to be shared (``plan``); then they start again
# Each endpoint's value, read without ``Enum.value``'s Python-level descriptor (one a plan).
_SCOPES = {endpoint: endpoint.value for endpoint in Endpoint}


# An answer a safety filter or a refusal ended: a verdict on one generation, not an answer to
# serve again (a filter may pass the same prompt next time, or be reconfigured). Chat and
# completions say ``finish_reason: content_filter`` (Gemini's SAFETY and Anthropic's refusal are
# translated to it), Messages ``stop_reason: refusal``, Responses ``incomplete_details.reason:
# content_filter``; whole bodies and streams alike. A string in the answer's text cannot match:
# JSON escapes its quotes.
_FILTERED = re.compile(rb'"(?:finish_reason|stop_reason|reason)"\s*:\s*"(?:content_filter|refusal)"')


def reusable(body: bytes | bytearray) -> bool:
    """Whether ``body`` (a whole answer, or a stream's bytes) may be stored: not one a content
    filter or a refusal ended. ``finish_reason: length`` is: ``max_tokens`` is in the key."""
    if b"content_filter" not in body and b'"refusal"' not in body:
        return True  # (an OpenAI message's ``"refusal": null`` still goes to the pattern)
    return _FILTERED.search(body) is None


def readable_stream(body: bytes | bytearray) -> bool:
    """Whether every event of a stream's bytes reads (its ``data`` JSON, or ``[DONE]``): an
    OpenAI-compatible stream's content events are relayed unparsed, so one that is not JSON
    reached the client as sent, and was stored: every identical request was then answered the
    same broken event from the cache (an outside probe). Read once, when the answer is stored."""
    for event in bytes(body).split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
        if not data or data == b"[DONE]":
            continue
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
    return True


@dataclass(slots=True)
class CachePlan:
    """How the cache treats one request."""

    category: str
    key: str
    ttl_s: float
    read: bool  # look the answer up (False for Cache-Control: no-cache)
    write: bool  # store the answer (False for no-store)
    status: str  # the x-gateway-cache value unless it is a hit: miss | refresh | bypass
    scope: str | None = None  # semantic categories: the neighbourhood the prompt lives in
    text: str | None = None
    vector: Vector | None = None  # the prompt's embedding, once computed (reused to store)
    outcome: CacheOutcome | None = None  # set on the shared bypass plans: their record, made once
    counter: CounterChild | None = None  # and their ``cache_requests`` series, found once
    tenant: str = fingerprint.ANONYMOUS_TENANT  # semantic categories: whose prompt is embedded


@dataclass(slots=True)
class CachedAnswer:
    """A stored answer: the body exactly as first sent (JSON, or the SSE stream's bytes)."""

    body: bytes
    provider: str
    model: str
    match: str = "exact"  # exact | semantic

    def encode(self) -> bytes:
        body = self.body
        head = {"p": self.provider, "m": self.model, "n": len(body), "c": zlib.crc32(body)}
        return orjson.dumps(head) + b"\n" + body

    @classmethod
    def decode(cls, raw: bytes, match: str, intact: bool = False) -> CachedAnswer | None:
        """The answer ``raw`` holds, or None (a miss) when it is not an entry of ours or its body
        is not the one stored: cut, emptied or overwritten in Redis, it was served as a hit (a
        truncated JSON body, a stream without its end). An entry written before the length and
        CRC-32 were kept is read as before. ``intact``: ``raw`` is known to be as ``encode`` made
        it (the in-process store's own bytes), so its body is not checked against them."""
        head, sep, body = raw.partition(b"\n")
        try:
            meta = orjson.loads(head) if sep else None
        except orjson.JSONDecodeError:
            meta = None
        if not isinstance(meta, dict):
            return None  # not ours (or corrupted): a miss, never an error
        if "c" in meta and not intact and (meta.get("n") != len(body) or meta["c"] != zlib.crc32(body)):
            return None
        return cls(body, str(meta.get("p", "")), str(meta.get("m", "")), match)


class DecodedAnswers:
    """Answers decoded recently, by the stored bytes they were decoded from: a hit on an entry
    read before gets its answer without ``CachedAnswer.decode`` (the head's ``loads``, the
    CRC-32 of the body and the answer's construction: ~12k instructions of a hit's ~370k,
    callgrind) for a dict lookup (the in-process store hands back the same bytes object, whose
    hash Python keeps; Redis's copy is hashed and compared, a C-speed pass over its bytes).
    Equal bytes decode alike, so the answer is the one ``decode`` would give; answers are never
    changed once made, so one may serve many requests (as a flight's leader's serves its
    followers). Bounded by entries and by bytes (an entry counts its stored bytes twice: the
    answer's body is a copy), least recently used first out; an entry above a 64th of the bytes
    bound is not kept, nor is a miss. One per response cache, on the event loop only."""

    __slots__ = ("_bytes", "_entries", "max_bytes", "max_entries")

    def __init__(self, max_entries: int = 1024, max_bytes: int = 4 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, CachedAnswer] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def exact(self, raw: bytes, intact: bool = False) -> CachedAnswer | None:
        """``CachedAnswer.decode(raw, "exact", intact)``, remembered."""
        size = 2 * len(raw)
        if size * 64 > self.max_bytes:  # never kept: not hashed to be looked for either
            return CachedAnswer.decode(raw, "exact", intact)
        entries = self._entries
        answer = entries.get(raw)
        if answer is not None:
            entries.move_to_end(raw)
            return answer
        answer = CachedAnswer.decode(raw, "exact", intact)
        if answer is not None:
            entries[raw] = answer
            self._bytes += size
            while self._bytes > self.max_bytes or len(entries) > self.max_entries:
                dropped, _ = entries.popitem(last=False)
                self._bytes -= 2 * len(dropped)
        return answer


@dataclass(slots=True)
class CacheOutcome:
    """What the cache did for a request (response headers and metrics read it)."""

    status: str  # hit | miss | bypass | refresh
    category: str
    match: str | None = None  # hits: exact | semantic
    model: str | None = None  # hits: the upstream model that first produced the answer
    # Its response header lines, serialised once by the first response that names it (an
    # outcome is shared and never changed: ``http/middleware.gateway_head``)
    head: str = ""


class Flights:
    """In-process single flight: the first miss for a key leads, identical ones wait for it.

    A leader's future is made only when a second request asks for it: most flights have no
    follower (a hit lands at once, a unique miss is alone), and then no future is built."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[CachedAnswer | None] | None] = {}

    def waiter(self, key: str) -> asyncio.Future[CachedAnswer | None] | None:
        if key not in self._pending:
            return None
        future = self._pending[key]
        if future is None:
            future = self._pending[key] = asyncio.get_running_loop().create_future()
        return future

    def leading(self, key: str) -> bool:
        """Whether a request leads a flight for ``key`` (``waiter`` would give a future)."""
        return key in self._pending

    def lead(self, key: str) -> None:
        self._pending[key] = None

    def land(self, key: str, answer: CachedAnswer | None) -> None:
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(answer)


def load_semantic_index(config: Cache) -> None:
    """Import the semantic index's module (numpy: ~0.1 s) if ``config`` has a semantic category.
    A policy reload calls this in a thread, so ``reconfigure``, on the event loop, finds it loaded."""
    if any(c.semantic is not None for c in config.categories.values()):
        import gateway.cache.semantic  # noqa: F401


class ResponseCache:
    def __init__(self, config: Cache, store: CacheStore, metrics: GatewayMetrics) -> None:
        self.store = store
        # An in-process store answers without a coroutine and claims nothing (one process has
        # no other replica to wait for): ``lookup`` calls it directly, three coroutines fewer
        # per cacheable request. Any other store (Redis) is awaited.
        self._get_now: Callable[[str, str], bytes | None] | None = getattr(store, "get_now", None)
        self.flights = Flights()
        self._keys = fingerprint.KeyMemo()  # a repeated request's key without its SHA-256
        self._decoded = DecodedAnswers()  # and its answer without decoding it again
        # A hit's outcome and its category's hit series, by (category, match, model): ``hit``
        self._hits: dict[tuple[str, str, str], tuple[CacheOutcome, CounterChild]] = {}
        # Exact categories' plans by (key, category, TTL, read, write), shared (``plan``)
        self._plans: dict[tuple[str, str, float, bool, bool], CachePlan] = {}
        self._releases: set[asyncio.Task[None]] = set()  # claims being released (``land``)
        self._metrics = metrics
        self.config = config
        self._indexes: dict[str, SemanticIndex] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Cache) -> None:
        """Follow a policy reload: new categories and rules apply to the next request; a
        semantic index is kept for a category that stays semantic with the same size bound.
        The store's budgets are the caller's to set (``CacheStore.set_budgets``)."""
        indexes: dict[str, SemanticIndex] = {}
        for name, c in config.categories.items():
            if c.semantic is None:
                continue
            kept = self._indexes.get(name)
            old = self.config.categories.get(name)
            same = old is not None and old.semantic is not None and old.semantic == c.semantic
            if kept is None or not same:
                # numpy (~0.07-0.17 s of imports) only once a policy has a semantic category.
                from gateway.cache.semantic import SemanticIndex

                kept = SemanticIndex(c.semantic.max_entries)
            indexes[name] = kept
        # One bypass plan per category, shared by every request that cannot be cached (most
        # requests, under the default ``deterministic``): nothing is hashed, parsed or built.
        m = self._metrics
        bypass = {
            name: CachePlan(
                name,
                "",
                c.ttl_s,
                False,
                False,
                "bypass",
                outcome=CacheOutcome("bypass", name),
                counter=m.child(m.cache_requests, name, "bypass"),
            )
            for name, c in config.categories.items()
        }
        self.config, self._indexes, self._bypass = config, indexes, bypass

    def plan(
        self,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        tenant: str,
        tags: frozenset[str],
        variant: str = "",
        body_json: bytes | None = None,
        internal: bool = False,
    ) -> CachePlan:
        """Decide how the cache treats this request; raises ``InvalidRequest`` for bad cache headers.

        ``tenant`` is whose answers these are (categories marked shared ignore it); ``variant``
        what besides the body changes the answer (a front door's ``cache_variant``: Anthropic
        betas), keyed apart. A request that cannot be cached gets its category's shared bypass
        plan (never to be changed). ``body_json``: ``orjson.dumps(body)``, when the caller made
        it already (``may_key``). ``internal``: the gateway's own call (an embedding for the
        semantic cache or the memory), cached as its tenant's, exactly, whatever the category.

        Embeddings are matched exactly in every category: a semantic category answered one text
        with another's vectors, and with a semantic default category the gateway's own
        embedding call looked itself up semantically, embedding its text again under the same
        key and waiting on its own single flight (a request hung for minutes). A shared category
        does not share the gateway's own calls: a prompt's embedding cached for all let one
        tenant time another's exact prompt (outside probes)."""
        cfg = self.config
        named = headers.get(CATEGORY_HEADER)
        if named is not None:  # (sent more than once: refused)
            named = _once(headers, CATEGORY_HEADER)
        if named is None and not cfg.rules and TTL_HEADER not in headers:
            # The common case, decided cheaply: no header names a category or a TTL and no rule
            # can pick one, so only the default category and the request's own fields matter.
            category = cfg.default_category
            if not (cfg.enabled and self._cacheable(endpoint, body, False)):
                return self._bypass[category]
            settings = cfg.categories[category]
            ttl_s = settings.ttl_s
        else:
            if named is not None and named not in cfg.categories:
                raise InvalidRequest(
                    f"Unknown cache category '{named}' in {CATEGORY_HEADER}. Known: {', '.join(sorted(cfg.categories))}.",
                    param=CATEGORY_HEADER,
                )
            if named is not None and not cfg.categories[named].selectable:
                raise InvalidRequest(
                    f"Cache category '{named}' shares its answers across tenants and may not be "
                    f"named in {CATEGORY_HEADER} (the policy's cache.rules pick it; "
                    f"cache.categories.{named}.client_selectable: true allows the header).",
                    param=CATEGORY_HEADER,
                    code="cache_category_not_selectable",
                )
            picked = named or self._rule_category(body, tags)
            chosen = picked is not None
            category = picked or cfg.default_category
            settings = cfg.categories[category]
            ttl_s = self._ttl(headers, settings.ttl_s)
            if not (cfg.enabled and self._cacheable(endpoint, body, chosen)):
                return self._bypass[category]
        control = headers.get("cache-control")
        if control is None:
            read = write = True
        else:
            # Every Cache-Control line counts (RFC 9110 5.3: repeated fields are one list): the
            # first alone dropped a ``no-store`` sent on a line of its own, and stored the answer
            directives = {d.strip().lower() for d in ",".join(_all(headers, "cache-control")).split(",")}
            read = "no-cache" not in directives
            write = "no-store" not in directives
            if not (read or write):
                return self._bypass[category]
        if settings.shared and not internal:
            tenant = fingerprint.SHARED_TENANT
        scope = _SCOPES[endpoint] if not variant else f"{_SCOPES[endpoint]};{variant}"
        key = self._keys.key(scope, tenant, body, body_json)
        text = (
            fingerprint.prompt_text(body)
            if settings.semantic is not None and not internal and endpoint is not ENDPOINT_EMBEDDINGS
            else None
        )
        if not (text and _has_words(text)):
            # (an exact category's; or a prompt with no text to embed, such as a completion's
            # token ids: every one embedded alike, and got the first one's answer)
            # An exact category's plan is never changed once made (only a semantic lookup sets
            # its ``vector``), so a repeated request shares the one made for its key: a hit builds
            # no plan (a slotted dataclass's ``__init__``: ~2.8k instructions, callgrind).
            shared = (key, category, ttl_s, read, write)
            plan = self._plans.get(shared)
            if plan is None:
                if len(self._plans) >= _MAX_SHARED_PLANS:
                    self._plans.clear()
                plan = self._plans[shared] = CachePlan(
                    category, key, ttl_s, read, write, "miss" if read else "refresh"
                )
            return plan
        plan = CachePlan(category, key, ttl_s, read, write, "miss" if read else "refresh")
        plan.scope = fingerprint.semantic_scope(scope, tenant, body)
        plan.text = text
        plan.tenant = tenant
        return plan

    def may_key(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
        """Whether ``plan`` may give a chat request a key (and so need its body's JSON): cheap,
        and never False for a request that gets one (True for some that do not: a header may name
        a category that turns out to be unknown, a rule may not match, Cache-Control may bypass)."""
        cfg = self.config
        if not cfg.enabled:
            return False
        if cfg.cacheable == "always" or cfg.rules or CATEGORY_HEADER in headers:
            return True
        if cfg.cacheable == "opt-in":
            return False
        temperature = body.get("temperature")
        return isinstance(temperature, _NUMBER) and not isinstance(temperature, bool) and temperature == 0

    def capture_bytes(self, plan: CachePlan) -> int:
        """How much of a streamed answer to keep for storing under ``plan``: none when it will
        not be stored, else at most its category's whole space (a larger one cannot be)."""
        if not plan.write:
            return 0
        settings = self.config.categories.get(plan.category)
        return settings.max_bytes if settings is not None else 0

    def answers_now(self, plan: CachePlan) -> bool:
        """Whether ``exact_now`` gives ``plan``'s whole lookup: an in-process store and a category
        with no semantic index (every default category). Otherwise ``lookup`` must be awaited."""
        return self._get_now is not None and plan.category not in self._indexes

    def exact_now(self, plan: CachePlan) -> CachedAnswer | None:
        """``lookup`` without a coroutine, where ``answers_now`` says it is the whole lookup."""
        assert self._get_now is not None
        raw = self._get_now(plan.category, plan.key)
        return None if raw is None else self._decoded.exact(raw, intact=True)

    async def lookup(self, plan: CachePlan, embed: Embedder) -> CachedAnswer | None:
        """The cached answer for ``plan``: exact key first, then the nearest prompt (embedded
        with ``embed``, which the request service gives: its own embeddings path)."""
        get_now = self._get_now
        if get_now is not None:
            raw = get_now(plan.category, plan.key)
        elif plan.write:
            # The first try here rather than in ``_await_claim`` (one frame fewer per lookup).
            raw, mine = await self.store.get_or_claim(plan.category, plan.key, CLAIM_S)
            if raw is None and not mine:
                raw = await self._await_claim(plan)
        else:
            raw = await self.store.get(plan.category, plan.key)
        if raw is not None:
            return self._decoded.exact(raw)
        near = await self._nearest(plan, embed)
        if near is not None and plan.write:
            self._release(plan)  # answered from another prompt's entry: nothing will be fetched
        return near

    async def _nearest(self, plan: CachePlan, embed: Embedder) -> CachedAnswer | None:
        """The answer of the nearest cached prompt (semantic categories), else None."""
        index = self._indexes.get(plan.category)
        category = self.config.categories.get(plan.category)  # None: removed by a reload since
        semantic = category.semantic if category is not None else None
        if index is None or semantic is None or plan.scope is None or not plan.text:
            return None
        plan.vector = await self._vector(embed, semantic.embedding_model, plan.text, plan.tenant)
        if plan.vector is None:
            # The embedding failed: an exact miss from here on, not tried again when the answer
            # is stored (the provider's failure, twice, made one miss wait twice its timeout).
            plan.text = None
            return None
        near = index.nearest(plan.scope, plan.vector, semantic.threshold)
        if near is None:
            return None
        raw = await self.store.get(plan.category, near)
        if raw is None:
            index.discard(plan.scope, near)  # expired or evicted from the store
            return None
        return CachedAnswer.decode(raw, "semantic")

    def land(self, plan: CachePlan, answer: CachedAnswer | None) -> None:
        """The leader of ``plan``'s flight is done: its followers here get ``answer``; without
        one (the fetch failed or is not stored), its claim is released in the background so
        another replica's waiters fetch now rather than when the claim expires."""
        self.flights.land(plan.key, answer)
        if answer is None and plan.write:
            self._release(plan)

    def _release(self, plan: CachePlan) -> None:
        task = asyncio.get_running_loop().create_task(self.store.release_claim(plan.category, plan.key))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _await_claim(self, plan: CachePlan) -> bytes | None:
        """Another replica claimed the fetch of ``plan.key``: the entry once it is stored, or
        None once this replica may fetch it (it claimed the fetch, or the other replica's claim
        ended: stored answer not found, or ``CLAIM_S`` passed)."""
        store = self.store
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLAIM_S
        wait_s, most_s = _CLAIM_POLL_S
        while loop.time() < deadline:
            await asyncio.sleep(wait_s)
            wait_s = min(most_s, wait_s * 2)
            raw, mine = await store.get_or_claim(plan.category, plan.key, CLAIM_S)
            if raw is not None or mine:
                return raw
        return None

    async def store_answer(self, plan: CachePlan, answer: CachedAnswer, embed: Embedder) -> None:
        """Write a complete answer (never an error or a cut stream: callers only pass those)."""
        if not plan.write:
            return
        evicted = await self.store.set(plan.category, plan.key, answer.encode(), plan.ttl_s)
        if evicted:
            self._metrics.child(self._metrics.cache_evictions, plan.category).inc(evicted)
        index = self._indexes.get(plan.category)
        category = self.config.categories.get(plan.category)  # None: removed by a reload since
        semantic = category.semantic if category is not None else None
        if index is not None and semantic is not None and plan.scope is not None and plan.text:
            if plan.vector is None:
                plan.vector = await self._vector(embed, semantic.embedding_model, plan.text, plan.tenant)
            if plan.vector is not None:
                index.add(plan.scope, plan.key, plan.vector)

    # ----- what the metrics collector reads (``observability.metrics.CacheView``)

    @property
    def categories(self) -> list[str]:
        return list(self.config.categories)

    def usage(self, category: str) -> tuple[int, int]:
        used = self.store.usage(category)
        return used.entries, used.bytes

    @property
    def healthy(self) -> bool:
        return self.store.healthy

    @property
    def errors(self) -> int:
        return self.store.errors

    def drop_semantic_indexes(self) -> int:
        """Forget every semantic category's prompts (a memory cleanup: exact hits still work,
        the index refills as answers are stored); returns how many prompts were dropped."""
        return sum(index.clear() for index in self._indexes.values())

    def count(self, category: str, result: str) -> None:
        self._metrics.child(self._metrics.cache_requests, category, result).inc()

    def hit(self, category: str, answer: CachedAnswer) -> CacheOutcome:
        """A hit in ``category`` answered by ``answer``: counted (``count``'s series, found once,
        made at the category's first hit as ``count`` makes it: none shows before) and its
        outcome, made once per category, match and model and shared (an outcome is never changed
        once made, as the bypass plans' shared ones are not)."""
        hits = self._hits
        found = hits.get((category, answer.match, answer.model))
        if found is None:
            if len(hits) >= _MAX_HIT_OUTCOMES:  # (models named by stored entries: bounded anyway)
                hits.clear()
            m = self._metrics
            found = hits[(category, answer.match, answer.model)] = (
                CacheOutcome("hit", category, answer.match, answer.model),
                m.child(m.cache_requests, category, "hit"),
            )
        found[1].value += 1  # inc(), without the call
        return found[0]

    def _rule_category(self, body: Mapping[str, Any], tags: frozenset[str]) -> str | None:
        if not self.config.rules:
            return None
        model = body.get("model")
        for rule in self.config.rules:
            when = rule.when
            if when.models is not None and model not in when.models:
                continue
            if when.tags is not None and not tags.intersection(when.tags):
                continue
            return rule.category
        return None

    def _cacheable(self, endpoint: Endpoint, body: Mapping[str, Any], chosen: bool) -> bool:
        if endpoint in MEDIA_ENDPOINTS:
            return False  # moderations, images, speech: never cached, whatever the policy says
        mode = self.config.cacheable
        if mode == "always" or chosen:
            return True
        if mode == "opt-in":
            return False
        if endpoint is ENDPOINT_EMBEDDINGS:
            return True  # embeddings are deterministic
        temperature = body.get("temperature")
        # (a tuple: ``int | float`` would build a union object on every request)
        return isinstance(temperature, _NUMBER) and not isinstance(temperature, bool) and temperature == 0

    @staticmethod
    def _ttl(headers: Mapping[str, str], default_s: float) -> float:
        given = _once(headers, TTL_HEADER)
        if given is None:
            return default_s
        try:
            ttl_s = float(given)
        except ValueError:
            ttl_s = -1.0
        if not 1 <= ttl_s <= _MAX_TTL_S:
            raise InvalidRequest(
                f"{TTL_HEADER} must be a number of seconds from 1 to {_MAX_TTL_S}.",
                param=TTL_HEADER,
            )
        return ttl_s

    @staticmethod
    async def _vector(embed: Embedder, model: str, text: str, tenant: str) -> Vector | None:
        try:
            values = await embed(model, text, tenant)
        except GatewayError as exc:  # the embeddings call failed: a miss, not an error
            log.warning(
                "semantic cache: could not embed the prompt", extra={"fields": {"error": exc.message}}
            )
            return None
        from gateway.cache.semantic import SemanticIndex  # imported by ``reconfigure`` already

        return SemanticIndex.normalise(values) if values else None


def _has_words(text: str) -> bool:
    """Whether a prompt's text (``fingerprint.prompt_text``: ``role: content`` lines) has any
    letter or digit beyond its role names: anything an embedding could tell apart."""
    return any(c.isalnum() for line in text.split("\n") for c in line.partition(": ")[2])


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of header ``name`` (a client's request headers are a multi-dict; an internal
    call's plain mapping holds one)."""
    getall: Callable[[str, list[str]], list[str]] | None = getattr(headers, "getall", None)
    if getall is None:
        value = headers.get(name)
        return [] if value is None else [value]
    return getall(name, [])


def _once(headers: Mapping[str, str], name: str) -> str | None:
    """Header ``name``'s value; sent more than once it is refused (which one the client meant
    cannot be told: the first alone was read, so ``ttl: 60`` then ``ttl: 99999999`` passed)."""
    value = headers.get(name)
    if value is not None and len(_all(headers, name)) > 1:
        raise InvalidRequest(f"{name} was sent more than once; send it once.", param=name)
    return value
