"""Shadow traffic: a share of a group's requests also sent to a candidate, off the client's path.

A group's ``shadow: {deployment, share, max_in_flight, embedding_model?}`` (policy) names a
candidate. After a served request's answer is ready (a whole answer: before it is written out; a
stream: once it ended), the request service draws with its random generator; on a hit the same
body, with the candidate's upstream model, goes to the candidate as a background task, through
the same adapter path a routed attempt takes (``RequestService._fetch``), never streamed (a
stream's mirror asks for a whole answer). The candidate's answer is only measured: never sent to
the client, never cached, never seen by the router (its own throwaway live state, so its figures
cannot move routing), its cost counted apart. At most ``max_in_flight`` mirrors per group and
candidate are outstanding; one beyond is dropped and counted, never queued.

Recorded per (group, candidate): mirrored, ok, errors (by class), dropped, latency (p50/p95 over
the last ``LATENCY_SAMPLES`` answers), usage and cost, and agreement with the served answer: exact
match rate, mean length ratio (candidate characters over served characters) and, with an
``embedding_model``, mean cosine similarity of the two answers' embeddings (embedded through the
gateway's own path, as the semantic cache does). Embeddings answers compare their first vectors
directly. A stream's served text is known only when the stream was captured for the cache;
otherwise its mirror records latency, errors and cost only.

A front door's call (``/v1/messages``, ``/v1/responses``) is mirrored as its chat translation,
the body every deployment kind is asked with through its adapter; a whole answer's text is read
from the door's own shape (``door_answer``) for the agreement measures, a stream's is not (its
mirror records latency, errors and cost).

Settings are read at call time through ``router.policy``, so a reload applies to the next request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson

from gateway.errors import GatewayError
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import Breaker, Deployment, Price, Shadow
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.router import Router
from gateway.routing.stats import DeploymentStats
from gateway.routing.target import DeploymentState, Target
from gateway.wire.requests import Endpoint, JSONObject
from gateway.wire.usage import cache_counts

log = logging.getLogger("gateway.shadow")

LATENCY_SAMPLES = 1024  # latency percentiles are over this many of the latest answers
_BUCKETS = 10  # the agreement distribution: ten bins of 0.1 over 0..1


class Fetch(Protocol):
    async def __call__(
        self, target: Target, endpoint: Endpoint, body: JSONObject
    ) -> tuple[bytes, object]: ...


Embed = Callable[[str, Sequence[str]], Awaitable[list[list[float]]]]


class ShadowFigures:
    """What one group's mirrors to one candidate did (kept across reloads while the process runs)."""

    __slots__ = (
        "compared",
        "completion_tokens",
        "cosine_compared",
        "cosine_sum",
        "cost_usd",
        "distribution",
        "dropped",
        "error_types",
        "errors",
        "exact",
        "group",
        "in_flight",
        "latencies_s",
        "length_compared",
        "length_ratio_sum",
        "mirrored",
        "model",
        "ok",
        "prompt_tokens",
        "provider",
    )

    def __init__(self, group: str, provider: str, model: str) -> None:
        self.group, self.provider, self.model = group, provider, model
        self.mirrored = self.ok = self.errors = self.dropped = self.in_flight = 0
        self.error_types: Counter[str] = Counter()
        self.latencies_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.cost_usd = 0.0
        self.prompt_tokens = self.completion_tokens = 0
        self.compared = self.exact = self.length_compared = self.cosine_compared = 0
        self.length_ratio_sum = self.cosine_sum = 0.0
        self.distribution = [0] * _BUCKETS

    def view(self, shadow: Shadow | None) -> dict[str, Any]:
        """The figures as /admin/shadow shows them; ``shadow`` is the group's setting now."""
        done = self.ok + self.errors
        latencies = sorted(self.latencies_s)
        return {
            "model": self.group,
            "provider": self.provider,
            "upstream_model": self.model,
            "configured": shadow is not None,
            "share": shadow.share if shadow is not None else None,
            "max_in_flight": shadow.max_in_flight if shadow is not None else None,
            "embedding_model": shadow.embedding_model if shadow is not None else None,
            "mirrored": self.mirrored,
            "ok": self.ok,
            "errors": self.errors,
            "dropped": self.dropped,
            "in_flight": self.in_flight,
            "error_rate": round(self.errors / done, 6) if done else None,
            "error_types": dict(self.error_types),
            "latency_ms": {
                "samples": len(latencies),
                "p50": _percentile_ms(latencies, 0.50),
                "p95": _percentile_ms(latencies, 0.95),
            },
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
            "cost_usd": round(self.cost_usd, 9),
            "agreement": {
                "compared": self.compared,
                "exact_match_rate": round(self.exact / self.compared, 6) if self.compared else None,
                "mean_length_ratio": round(self.length_ratio_sum / self.length_compared, 6)
                if self.length_compared
                else None,
                "cosine_compared": self.cosine_compared,
                "mean_cosine": round(self.cosine_sum / self.cosine_compared, 6)
                if self.cosine_compared
                else None,
                "measure": "cosine" if shadow is not None and shadow.embedding_model else "length",
                "distribution": {
                    f"{i / _BUCKETS:.1f}-{(i + 1) / _BUCKETS:.1f}": n for i, n in enumerate(self.distribution)
                },
            },
        }


class ShadowTraffic:
    """Mirrors requests to shadow candidates and keeps their figures (see the module docstring).

    ``fetch`` is the request service's attempt path, ``embed`` its embeddings path; ``rng`` draws
    which requests are mirrored, ``clock`` times the candidate (seconds)."""

    def __init__(
        self,
        router: Router,
        metrics: GatewayMetrics,
        fetch: Fetch,
        embed: Embed,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._router = router
        self._metrics = metrics
        self._fetch = fetch
        self._embed = embed
        self._rng = rng or random.Random()
        self._clock = clock
        self._figures: dict[tuple[str, str, str], ShadowFigures] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # The candidates' live state: a Target needs one; the router never sees it.
        self._live = DeploymentState(DeploymentStats(300.0, 0.2, 120.0), CircuitBreaker(Breaker()))

    # ----- on the request path (only for a group with a shadow)

    def draw(self, shadow: Shadow) -> bool:
        """Whether this request is mirrored (true for ``shadow.share`` of draws)."""
        return self._rng.random() < shadow.share

    def offer(
        self, group: str, shadow: Shadow, endpoint: Endpoint, body: JSONObject, served: bytes | None
    ) -> None:
        """Mirror a whole answer's request for ``shadow.share`` of calls (``served``: its JSON body)."""
        if self._rng.random() < shadow.share:
            self.mirror(group, shadow, endpoint, body, served, sse=False)

    def mirror(
        self,
        group: str,
        shadow: Shadow,
        endpoint: Endpoint,
        body: JSONObject,
        served: bytes | None,
        *,
        sse: bool,
    ) -> None:
        """Send ``body`` to the candidate in the background, or drop it when ``max_in_flight``
        are outstanding. ``served``: the answer the client got (JSON, or SSE when ``sse``), None
        when unknown (no agreement is then computed)."""
        candidate = shadow.deployment
        figures = self._figures_of(group, candidate.provider, candidate.model)
        if figures.in_flight >= shadow.max_in_flight or self._closed:
            figures.dropped += 1
            self._count(figures, "dropped")
            return
        figures.in_flight += 1
        figures.mirrored += 1
        task = asyncio.get_running_loop().create_task(self._run(figures, shadow, endpoint, body, served, sse))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    # ----- what /admin/shadow shows

    def snapshot(self) -> dict[str, Any]:
        """Every group and candidate mirrored to since start, and every one configured now."""
        models = self._router.policy.models
        for name, config in models.items():
            if config.shadow is not None:
                self._figures_of(name, config.shadow.deployment.provider, config.shadow.deployment.model)
        rows = []
        for (name, provider, model), figures in sorted(self._figures.items()):
            group = models.get(name)
            shadow = group.shadow if group is not None else None
            candidate = shadow.deployment if shadow is not None else None
            if candidate is not None and (candidate.provider, candidate.model) != (provider, model):
                shadow = None  # the group mirrors to another candidate now
            rows.append(figures.view(shadow))
        return {"object": "shadow", "data": rows}

    @property
    def in_flight(self) -> int:
        """Mirrors outstanding now (all groups)."""
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel the mirrors still outstanding and wait for them (app shutdown): they are
        measurements, not answers anyone waits for. Mirrors offered afterwards are dropped."""
        self._closed = True
        while self._tasks:
            tasks = tuple(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def settle(self) -> None:
        """Wait until no mirror is outstanding (tests, benchmarks)."""
        while self._tasks:
            await asyncio.gather(*tuple(self._tasks), return_exceptions=True)

    # ----- the mirror itself, in the background

    async def _run(
        self,
        figures: ShadowFigures,
        shadow: Shadow,
        endpoint: Endpoint,
        body: JSONObject,
        served: bytes | None,
        sse: bool,
    ) -> None:
        try:
            candidate = shadow.deployment
            # Counted while it uses the client: a reload that replaces it closes it after.
            with self._router.side_call():
                client = self._router.client(candidate.provider)
                if client is None or not client.configured:
                    self._failed(figures, "ProviderNotConfigured")
                    return
                deployment = Deployment(
                    provider=candidate.provider,
                    model=candidate.model,
                    price=candidate.price,
                    reasoning=candidate.reasoning,  # ``false`` withholds an effort (``effort.py``)
                )
                target = Target(deployment, client, self._live)
                if body.get("stream"):  # the candidate gives a whole answer: nobody reads its stream
                    body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
                started = self._clock()
                try:
                    raw, usage = await self._fetch(target, endpoint, body)
                except GatewayError as error:
                    self._failed(figures, type(error).__name__)
                    return
            self._succeeded(figures, candidate.price, self._clock() - started, usage)
            if served is not None:
                await self._compare(figures, shadow, endpoint, served, sse, raw)
        finally:
            figures.in_flight -= 1

    def _succeeded(self, figures: ShadowFigures, price: Price, seconds: float, usage: object) -> None:
        figures.ok += 1
        figures.latencies_s.append(seconds)
        m, labels = self._metrics, (figures.group, figures.provider, figures.model)
        self._count(figures, "ok")
        m.child(m.shadow_latency, *labels).observe(seconds)
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            prompt = prompt if isinstance(prompt, int) else 0
            completion = completion if isinstance(completion, int) else 0
            figures.prompt_tokens += prompt
            figures.completion_tokens += completion
            # (cache counts read only when the candidate's price gives the cache a price)
            counts = cache_counts(usage) if price.prices_cache else (0, 0, 0)
            cost = price.cost_usd(prompt, completion, *counts)
            if cost:
                figures.cost_usd += cost
                m.child(m.shadow_cost, *labels).inc(cost)

    def _failed(self, figures: ShadowFigures, error_type: str) -> None:
        figures.errors += 1
        figures.error_types[error_type] += 1
        self._count(figures, "error")

    async def _compare(
        self, figures: ShadowFigures, shadow: Shadow, endpoint: Endpoint, served: bytes, sse: bool, raw: bytes
    ) -> None:
        m, labels = self._metrics, (figures.group, figures.provider, figures.model)
        if endpoint is Endpoint.EMBEDDINGS:
            a, b = _first_vector(served), _first_vector(raw)
            if a is None or b is None or len(a) != len(b):
                return
            figures.compared += 1
            figures.exact += a == b
            self._cosine(figures, _cosine(a, b))
            return
        served_text = _sse_text(served, endpoint) if sse else _answer_text(_json_or_none(served), endpoint)
        candidate_text = _answer_text(_json_or_none(raw), endpoint)
        if served_text is None or candidate_text is None:
            return
        figures.compared += 1
        exact = served_text == candidate_text
        figures.exact += exact
        if served_text:
            figures.length_compared += 1
            figures.length_ratio_sum += len(candidate_text) / len(served_text)
        longest = max(len(served_text), len(candidate_text))
        similarity = 1.0 if exact or not longest else min(len(served_text), len(candidate_text)) / longest
        m.child(m.shadow_agreement, *labels, "length").observe(similarity)
        if shadow.embedding_model is None or not served_text or not candidate_text:
            self._bin(figures, similarity)
            return
        try:
            a, b = await self._embed(shadow.embedding_model, [served_text, candidate_text])
        except GatewayError as error:
            log.warning("shadow %s: agreement not measured, embeddings failed: %s", figures.group, error)
            self._bin(figures, similarity)
            return
        self._cosine(figures, _cosine(a, b))

    def _cosine(self, figures: ShadowFigures, value: float) -> None:
        figures.cosine_compared += 1
        figures.cosine_sum += value
        self._bin(figures, value)
        m = self._metrics
        m.child(m.shadow_agreement, figures.group, figures.provider, figures.model, "cosine").observe(value)

    @staticmethod
    def _bin(figures: ShadowFigures, value: float) -> None:
        figures.distribution[min(_BUCKETS - 1, max(0, int(value * _BUCKETS)))] += 1

    def _count(self, figures: ShadowFigures, result: str) -> None:
        m = self._metrics
        m.child(m.shadow_requests, figures.group, figures.provider, figures.model, result).inc()

    def _figures_of(self, group: str, provider: str, model: str) -> ShadowFigures:
        key = (group, provider, model)
        found = self._figures.get(key)
        if found is None:
            found = self._figures[key] = ShadowFigures(group, provider, model)
        return found

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a candidate's failure (those are GatewayErrors, counted as errors).
            log.error("shadow mirror failed", exc_info=task.exception())


def _json_or_none(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def door_answer(raw: bytes) -> bytes | None:
    """A front door's whole answer (Anthropic's Messages ``content`` blocks, or a Responses
    ``output``) as the chat answer its text would be, for the agreement measures; None when it
    holds no text."""
    answer = _json_or_none(raw)
    if not isinstance(answer, dict):
        return None
    texts: list[str] = []
    blocks = answer.get("content")
    if isinstance(blocks, list):  # Messages
        texts = [
            b["text"]
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
    output = answer.get("output")
    if isinstance(output, list):  # Responses
        for item in output:
            parts = item.get("content") if isinstance(item, dict) and item.get("type") == "message" else None
            for part in parts if isinstance(parts, list) else ():
                if (
                    isinstance(part, dict)
                    and part.get("type") == "output_text"
                    and isinstance(part.get("text"), str)
                ):
                    texts.append(part["text"])
    if not texts:
        return None
    return orjson.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(texts)}}]}
    )


def _answer_text(answer: object, endpoint: Endpoint) -> str | None:
    """The first choice's text of a whole OpenAI answer (chat or completions), None if absent."""
    if not isinstance(answer, dict):
        return None
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    if endpoint is Endpoint.CHAT:
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
    else:
        content = choice.get("text")
    return content if isinstance(content, str) else None


def _sse_text(stream: bytes, endpoint: Endpoint) -> str | None:
    """The first choice's text an OpenAI SSE stream delivered, None if it carried none."""
    parts: list[str] = []
    for line in stream.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        event = _json_or_none(data)
        choices = event.get("choices") if isinstance(event, dict) else None
        if not isinstance(choices, list):
            continue
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if endpoint is Endpoint.CHAT:
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else None
            else:
                text = choice.get("text")
            if isinstance(text, str):
                parts.append(text)
    return "".join(parts) if parts else None


def _first_vector(raw: bytes) -> list[float] | None:
    answer = _json_or_none(raw)
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return None
    vector = data[0].get("embedding")
    if not isinstance(vector, list) or not all(isinstance(v, int | float) for v in vector):
        return None
    return [float(v) for v in vector]


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=False)) / norm if norm else 0.0


def _percentile_ms(sorted_s: list[float], q: float) -> float | None:
    if not sorted_s:
        return None
    return round(sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000, 3)
