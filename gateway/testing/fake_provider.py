"""A fake OpenAI-compatible provider with injectable faults: ``sophia-gateway fake-provider``.

A real HTTP server for tests, demos and benchmarks to use as the upstream. It answers
``/v1/chat/completions``, ``/v1/completions`` (both streamed or whole), ``/v1/embeddings``,
``/v1/moderations``, ``/v1/images/generations``, ``/v1/images/edits`` and ``/variations`` (forms),
``/v1/audio/speech``, ``/transcriptions`` and ``/translations`` (``fake_media.py``) and
``/v1/models`` (and Azure OpenAI's ``/openai/deployments/{deployment}/...`` paths, keyed by
``api-key``) deterministically (the default reply echoes the last user message; with ``tools``,
a forced ``tool_choice`` or "call NAME" in the last user message gets a function call whose
arguments follow the function's schema: ``fake_wire.ToolCallFormat``), and can be
told to misbehave: latency, slow streams, error statuses, hangs, dropped connections, malformed
bodies, streams cut mid-way.

Faults are drawn per ``/v1`` request with one uniform number, in the fixed order reset, hang,
malformed, error, disconnect: rates 0.1 and 0.2 give 10 % resets and 20 % hangs. Authorisation
(401), a body that is no JSON object (400), a model it does not serve when ``--models`` names
those it does (404, as the real API's ``model_not_found``, Azure's ``DeploymentNotFound``) and
request validation (400) come first; latency applies to every answer except resets
and hangs. Control endpoints for tests, never faulted:

* ``GET /_fake/stats``: request counts, the most API requests answered at once (``max_in_flight``)
  and the last ``/v1`` request (path, headers, JSON body);
* ``GET|POST /_fake/faults``: the current configuration; POST a JSON object of fault fields to
  change them (``{"latency_ms": 200, "error_rate": 0.3}``);
* ``POST /_fake/reset``: zero the stats and re-seed the random generator.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import math
import random
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from types import MappingProxyType
from typing import Any, TypeVar, cast

import orjson
from aiohttp import web

from gateway.testing import fake_media, fake_wire
from gateway.testing.fake_flavors import FLAVORS, add_flavor_routes
from gateway.testing.fake_wire import DONE, ReplyFormat, Usage

_T = TypeVar("_T")
_MAX_BODY_BYTES = 80 * 1024 * 1024  # image edits up to 50 MB a file (the gateway: 64 MiB a form)
_HANG_POLL_S = 0.05
# A fake has nothing worth draining for: in-flight streams and hangs are cut after this on SIGTERM.
_SHUTDOWN_GRACE_S = 1.0
_SSE_HEADERS = MappingProxyType({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})

# What /v1/models lists when no models were named (FakeConfig.models is None).
DEFAULT_MODELS = ("fake-model",)

LatencyDistribution = Callable[[random.Random, float, float], float]


def _fixed(rng: random.Random, base_ms: float, jitter_ms: float) -> float:
    return base_ms


def _uniform(rng: random.Random, base_ms: float, jitter_ms: float) -> float:
    return max(0.0, rng.uniform(base_ms - jitter_ms, base_ms + jitter_ms))


def _normal(rng: random.Random, base_ms: float, jitter_ms: float) -> float:
    return max(0.0, rng.gauss(base_ms, jitter_ms))


def _lognormal(rng: random.Random, base_ms: float, jitter_ms: float) -> float:
    # Median ``base_ms`` and standard deviation exactly ``jitter_ms``: with x = exp(sigma^2),
    # sd = median * sqrt(x * (x - 1)), so x = (1 + sqrt(1 + 4 (sd / median)^2)) / 2.
    if base_ms <= 0 or jitter_ms <= 0:
        return max(0.0, base_ms)
    x = (1 + math.sqrt(1 + 4 * (jitter_ms / base_ms) ** 2)) / 2
    return rng.lognormvariate(math.log(base_ms), math.sqrt(math.log(x)))


# How ``--latency-dist`` spreads latency around ``--latency-ms`` given ``--latency-jitter-ms``:
# fixed ignores the jitter; uniform is base ± jitter; normal has sd = jitter; lognormal has
# median = base and sd = jitter (a long right tail, like real providers). All are clipped at 0.
LATENCY_DISTRIBUTIONS: Mapping[str, LatencyDistribution] = MappingProxyType(
    {"fixed": _fixed, "uniform": _uniform, "normal": _normal, "lognormal": _lognormal}
)


class Fault(Enum):
    """What can go wrong with one request, in the order rate ranges are allotted."""

    RESET = "reset"  # close the connection without answering
    HANG = "hang"  # never answer, until the client gives up
    MALFORMED = "malformed"  # 200 with a JSON content type and a body that is not JSON
    ERROR = "error"  # an OpenAI error envelope with --error-status
    DISCONNECT = "disconnect"  # streams: cut after half the tokens; otherwise a reset


@dataclass(frozen=True, slots=True)
class FakeConfig:
    """Everything the fake provider can be told; fields match the command-line flags.

    Times are in milliseconds, rates are probabilities per request (0..1), every fault is off by default.
    """

    host: str = "127.0.0.1"
    port: int = 9000  # 0 binds any free port; the listening line names the one bound
    reply: str | None = None  # fixed reply text; None echoes the last user message
    # The models it serves. None (the default): any model name is answered and /v1/models lists
    # DEFAULT_MODELS. Named (--models): a request for another model is refused with the real
    # API's 404 (``unknown_model``), so a policy naming a model its provider lacks can be tested.
    models: tuple[str, ...] | None = None
    embedding_dim: int = 8
    flavor: str = "openai"  # wire format: openai | anthropic | gemini (see fake_flavors.py)
    embedding_kind: str = "hash"  # hash: unrelated texts, unrelated vectors; words: bag of words
    require_key: str | None = None
    seed: int | None = None
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    latency_dist: str = "fixed"
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0  # 0 sends every token at once
    error_rate: float = 0.0
    error_status: int = 500
    retry_after: float | None = None  # seconds; None sends no Retry-After, except 1 for 429
    hang_rate: float = 0.0
    reset_rate: float = 0.0
    malformed_rate: float = 0.0
    disconnect_rate: float = 0.0
    # False (--no-reasoning): the models served do not reason, and ``reasoning_effort`` is refused
    # as OpenAI refuses it for gpt-4o.
    reasoning: bool = True
    # True (--stop-reason): a chat choice says which stop sequence ended it in ``stop_reason``
    # (null otherwise), as vLLM's OpenAI-compatible server does (vllm-project/vllm#2976); OpenAI
    # itself sends no such field.
    stop_reason: bool = False
    # Prompt tokens each answer reports as read from the provider's prompt cache, written to it,
    # and of those written, written to a 1-hour cache, in each flavor's own fields (cut to the
    # prompt; OpenAI's flavor reports only reads, as OpenAI does).
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    # Prompt tokens each answer reports whatever its prompt (0: the prompt's own count), cache
    # counts included: a 250,000-token prompt's usage without sending one (price tiers).
    reported_prompt_tokens: int = 0
    # Streamed images (``stream: true``): each picture padded to this many bytes (0: a tiny PNG),
    # so a partial image event is as large as a real one (megabytes of base64).
    image_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("reset_rate", "hang_rate", "malformed_rate", "error_rate", "disconnect_rate"):
            _check_number(name, getattr(self, name), 0.0, 1.0)
        for name in ("latency_ms", "latency_jitter_ms", "ttft_ms", "tokens_per_s"):
            _check_number(name, getattr(self, name), 0.0, math.inf)
        if self.retry_after is not None:
            _check_number("retry_after", self.retry_after, 0.0, math.inf)
        _check_number("error_status", self.error_status, 400, 599, integer=True)
        _check_number("embedding_dim", self.embedding_dim, 1, 65536, integer=True)
        _check_number("port", self.port, 0, 65535, integer=True)
        _check_number("image_bytes", self.image_bytes, 0, 64 * 2**20, integer=True)
        for name in (
            "cache_read_tokens",
            "cache_write_tokens",
            "cache_write_1h_tokens",
            "reported_prompt_tokens",
        ):
            _check_number(name, getattr(self, name), 0, 2**31 - 1, integer=True)
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor: must be one of {', '.join(FLAVORS)}")
        if self.embedding_kind not in fake_wire.EMBEDDING_KINDS:
            raise ValueError(f"embedding_kind: must be one of {', '.join(fake_wire.EMBEDDING_KINDS)}")
        if self.latency_dist not in LATENCY_DISTRIBUTIONS:
            raise ValueError(
                f"latency_dist: must be one of {', '.join(LATENCY_DISTRIBUTIONS)}, not {self.latency_dist!r}"
            )
        if self.reply is not None and not isinstance(self.reply, str):
            raise ValueError(f"reply: must be a string or null, not {self.reply!r}")
        if self.models is not None and (
            not self.models or not all(isinstance(m, str) and m for m in self.models)
        ):
            raise ValueError("models: must name at least one model, or be null to answer any")

    def usage(self, prompt_tokens: int, completion_tokens: int) -> Usage:
        """An answer's counts, with the cache counts this provider is told to report."""
        usage = Usage(self.reported_prompt_tokens or prompt_tokens, completion_tokens)
        if self.cache_read_tokens or self.cache_write_tokens:
            return usage.cached(self.cache_read_tokens, self.cache_write_tokens, self.cache_write_1h_tokens)
        return usage

    @property
    def listed_models(self) -> tuple[str, ...]:
        """What ``/v1/models`` lists: the models named, else ``DEFAULT_MODELS``."""
        return self.models if self.models is not None else DEFAULT_MODELS

    def serves(self, model: str) -> bool:
        """Whether a request for ``model`` is answered: any, unless the models were named."""
        return self.models is None or model in self.models

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FakeConfig:
        """The configuration parsed by a parser set up with :func:`add_arguments`."""
        # Flags and fields share names; a field the namespace lacks keeps its default.
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in vars(args).items() if key in names})


# What POST /_fake/faults may change at run time.
FAULT_FIELDS = frozenset(
    {
        "latency_ms", "latency_jitter_ms", "latency_dist", "ttft_ms", "tokens_per_s", "error_rate",
        "error_status", "retry_after", "hang_rate", "reset_rate", "malformed_rate", "disconnect_rate", "reply",
        "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reported_prompt_tokens",
        "image_bytes",
    }
)  # fmt: skip


def draw_fault(config: FakeConfig, rng: random.Random) -> Fault | None:
    """The fault for one request: one uniform draw, ranges allotted in :class:`Fault` order."""
    c = config
    rates = (c.reset_rate, c.hang_rate, c.malformed_rate, c.error_rate, c.disconnect_rate)
    if not any(rates):
        return None  # the common case draws nothing
    x = rng.random()
    for fault, rate in zip(Fault, rates, strict=True):
        if x < rate:
            return fault
        x -= rate
    return None


def draw_latency_ms(config: FakeConfig, rng: random.Random) -> float:
    """The latency of one answer in milliseconds, from ``config.latency_dist``."""
    return LATENCY_DISTRIBUTIONS[config.latency_dist](rng, config.latency_ms, config.latency_jitter_ms)


@dataclass(frozen=True, slots=True)
class SeenRequest:
    path: str
    headers: Mapping[str, str]
    body: object  # the parsed JSON, or None if there was none or it did not parse


@dataclass(slots=True)
class FakeState:
    """The one mutable object of a fake provider: current faults, the random generator, stats."""

    config: FakeConfig
    rng: random.Random
    serials: Iterator[int] = field(default_factory=itertools.count)  # ids, unique per process
    requests: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    last_request: SeenRequest | None = None
    in_flight: int = 0  # API requests being answered now
    max_in_flight: int = 0  # the most at once since the last reset
    # The SHA-256 of each event of the last streamed images answer, as written (tests compare
    # what the gateway relayed, byte for byte).
    streamed: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, config: FakeConfig) -> FakeState:
        return cls(config, random.Random(config.seed))

    def record(self, seen: SeenRequest) -> None:
        self.requests += 1
        self.by_path[seen.path] = self.by_path.get(seen.path, 0) + 1
        self.last_request = seen

    def reset(self) -> None:
        """Zero the stats and re-seed the generator, so a seeded fault sequence replays."""
        self.requests = 0
        self.by_path.clear()
        self.last_request = None
        self.streamed = []
        self.max_in_flight = self.in_flight
        self.rng.seed(self.config.seed)

    def stats(self) -> dict[str, object]:
        last = self.last_request
        seen = None
        if last is not None:
            seen = {
                "path": last.path,
                "headers": {str(k): v for k, v in last.headers.items()},
                "body": last.body,
            }
        return {
            "requests": self.requests,
            "by_path": self.by_path,
            "last_request": seen,
            "max_in_flight": self.max_in_flight,
            "streamed": list(self.streamed),
        }


# Kept here rather than in gateway/keys.py: the fake provider must start without importing the gateway.
FAKE_STATE = web.AppKey("fake_state", FakeState)


def build_app(config: FakeConfig) -> web.Application:
    """The fake provider's application; its state is ``app[FAKE_STATE]``."""
    app = web.Application(client_max_size=_MAX_BODY_BYTES, middlewares=[_in_flight])
    app[FAKE_STATE] = FakeState.start(config)
    if config.flavor == "openai":
        app.router.add_post("/v1/chat/completions", _chat_completions)
        app.router.add_post("/v1/completions", _completions)
        app.router.add_post("/v1/embeddings", _embeddings)
        app.router.add_post("/v1/moderations", _moderations)
        app.router.add_post("/v1/images/generations", _images)
        app.router.add_post("/v1/audio/speech", _speech)
        app.router.add_post("/v1/audio/transcriptions", _transcriptions)
        app.router.add_post("/v1/audio/translations", _translations)
        app.router.add_post("/v1/images/edits", _image_edits)
        app.router.add_post("/v1/images/variations", _image_variations)
        app.router.add_get("/v1/models", _models)
        app.router.add_get("/v1/models/{name:.+}", _model)
        # Azure OpenAI's paths (the ``azure`` provider kind): the deployment stands for the model.
        for path, handler in (("chat/completions", _chat_completions), ("completions", _completions)):
            app.router.add_post(f"/openai/deployments/{{deployment}}/{path}", handler)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", _embeddings)
        app.router.add_post("/openai/deployments/{deployment}/images/generations", _images)
        app.router.add_post("/openai/deployments/{deployment}/audio/speech", _speech)
        app.router.add_post("/openai/deployments/{deployment}/audio/transcriptions", _transcriptions)
        app.router.add_post("/openai/deployments/{deployment}/audio/translations", _translations)
        app.router.add_post("/openai/deployments/{deployment}/images/edits", _image_edits)
        app.router.add_post("/openai/deployments/{deployment}/images/variations", _image_variations)
    else:
        add_flavor_routes(app, config.flavor)
    app.router.add_get("/_fake/stats", _stats)
    app.router.add_get("/_fake/faults", _faults)
    app.router.add_post("/_fake/faults", _faults)
    app.router.add_post("/_fake/reset", _reset)
    return app


@web.middleware
async def _in_flight(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Counts the API requests being answered at once (``max_in_flight`` in the stats)."""
    if request.path.startswith("/_fake/"):
        return await handler(request)
    state = request.app[FAKE_STATE]
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        return await handler(request)
    finally:
        state.in_flight -= 1


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    reasons = request.app[FAKE_STATE].config.reasoning
    parse = fake_wire.parse_chat if reasons else fake_wire.parse_chat_without_reasoning
    return await _generate(request, parse, fake_wire.ChatFormat.of)


async def _completions(request: web.Request) -> web.StreamResponse:
    """The legacy completions API: one reply per prompt and ``n`` (the reply echoes its prompt,
    or ``--reply``), cut at ``stop`` and ``max_tokens``; ``echo`` puts the prompt first."""
    state = request.app[FAKE_STATE]
    config = state.config
    ask = _parsed(fake_wire.parse_completion, await _admit(request, state))
    fault = draw_fault(config, state.rng)
    early = await _inject(request, config, state.rng, fault, stream=ask.stream)
    if early is not None:
        return early
    choices = []
    for prompt in ask.prompts:
        text = fake_wire.cut_at_stop(config.reply if config.reply is not None else _echo(prompt), ask.stop)
        tokens, finish_reason = fake_wire.reply_tokens(text, ask.max_tokens)
        echoed = fake_wire.reply_tokens(prompt, None)[0] if ask.echo else []
        choice = fake_wire.CompletionChoice((*echoed, *tokens), finish_reason, len(echoed))
        choices += [choice] * ask.choices
    fmt = fake_wire.CompletionFormat(next(state.serials), ask.model, choices, ask.logprobs)
    usage = config.usage(ask.prompt_tokens, sum(len(c.tokens) - c.echoed for c in choices))
    if not ask.stream:
        return _json(fmt.whole((), "", usage))
    cut = fault is Fault.DISCONNECT
    return await _stream(request, config, fmt, fmt.tokens(), "", usage if ask.include_usage else None, cut)


async def _generate(
    request: web.Request,
    parse: Callable[[dict[str, object]], fake_wire.Generation],
    reply_format: Callable[[int, fake_wire.Generation], ReplyFormat],
) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    config = state.config  # one snapshot per request, whatever /_fake/faults does meanwhile
    generation = _parsed(parse, await _admit(request, state))
    fault = draw_fault(config, state.rng)
    early = await _inject(request, config, state.rng, fault, stream=generation.stream)
    if early is not None:
        return early
    fmt: ReplyFormat
    if generation.tool is not None:  # a function call, its arguments built from its schema
        arguments = fake_wire.tool_input({"input_schema": generation.tool.get("parameters")})
        tokens, _ = fake_wire.reply_tokens(orjson.dumps(arguments).decode(), None)
        finish_reason = "tool_calls"
        fmt = fake_wire.ToolCallFormat(
            next(state.serials), generation.model, str(generation.tool["name"]), generation.choices
        )
    else:
        text = config.reply if config.reply is not None else _echo(generation.prompt)
        if generation.json_reply is not None and config.reply is None:  # a fixed reply stands
            text = generation.json_reply
        whole = text
        text = fake_wire.cut_at_stop(text, generation.stop)
        tokens, finish_reason = fake_wire.reply_tokens(text, generation.max_tokens)
        fmt = reply_format(next(state.serials), generation)
        if config.stop_reason and isinstance(fmt, fake_wire.ChatFormat):
            matched = fake_wire.matched_stop(whole, generation.stop) if finish_reason == "stop" else None
            fmt.stop_reason = matched
    usage = config.usage(generation.prompt_tokens, len(tokens) * generation.choices)
    if not generation.stream:
        return _json(fmt.whole(tokens, finish_reason, usage))
    cut = fault is Fault.DISCONNECT
    return await _stream(
        request, config, fmt, tokens, finish_reason, usage if generation.include_usage else None, cut
    )


async def _embeddings(request: web.Request) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    config = state.config
    embedding = _parsed(fake_wire.parse_embeddings, await _admit(request, state))
    early = await _inject(request, config, state.rng, draw_fault(config, state.rng), stream=False)
    # Not ``early or ...``: a response is a mapping, and empty ones are falsy.
    return (
        early
        if early is not None
        else _json(fake_wire.embeddings_body(embedding, config.embedding_dim, config.embedding_kind))
    )


async def _moderations(request: web.Request) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    config = state.config
    body = await _admit(request, state)
    answer = _parsed(lambda b: fake_media.moderation_body(b, next(state.serials)), body)
    early = await _inject(request, config, state.rng, draw_fault(config, state.rng), stream=False)
    return early if early is not None else _json(orjson.dumps(answer))


async def _images(request: web.Request) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    config = state.config
    answer = _parsed(lambda b: fake_media.images_body(b, config.image_bytes), await _admit(request, state))
    return await _images_answer(request, state, config, answer)


async def _images_answer(
    request: web.Request,
    state: FakeState,
    config: FakeConfig,
    answer: dict[str, object] | fake_media.ImageEvents,
) -> web.StreamResponse:
    """An images answer: JSON, or a stream's events one write each (a ``disconnect`` fault drops
    the connection after half of them)."""
    fault = draw_fault(config, state.rng)
    streamed = isinstance(answer, fake_media.ImageEvents)
    early = await _inject(request, config, state.rng, fault, stream=streamed)
    if early is not None:
        return early
    if not isinstance(answer, fake_media.ImageEvents):
        return _json(orjson.dumps(answer))
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    events = answer.events
    sent = events[: len(events) // 2] if fault is Fault.DISCONNECT else events
    state.streamed = [hashlib.sha256(event).hexdigest() for event in sent]
    for event in sent:
        await response.write(event)
    if fault is Fault.DISCONNECT:
        return _drop_connection(request, abort=False)
    await response.write_eof()
    return response


async def _speech(request: web.Request) -> web.StreamResponse:
    """Audio bytes of the asked format, in writes of ``SPEECH_CHUNK_BYTES``; a ``disconnect``
    fault drops the connection after half of them."""
    state = request.app[FAKE_STATE]
    config = state.config
    audio = _parsed(fake_media.speech, await _admit(request, state))
    fault = draw_fault(config, state.rng)
    early = await _inject(request, config, state.rng, fault, stream=True)
    if early is not None:
        return early
    response = web.StreamResponse(headers={"Content-Type": audio.content_type})
    await response.prepare(request)
    size = fake_media.SPEECH_CHUNK_BYTES
    pieces = [audio.audio[at : at + size] for at in range(0, len(audio.audio), size)]
    for piece in pieces[: len(pieces) // 2] if fault is Fault.DISCONNECT else pieces:
        await response.write(piece)
    if fault is Fault.DISCONNECT:
        return _drop_connection(request, abort=False)
    await response.write_eof()
    return response


async def _transcriptions(request: web.Request) -> web.StreamResponse:
    return await _transcribed(request, translate=False)


async def _translations(request: web.Request) -> web.StreamResponse:
    return await _transcribed(request, translate=True)


async def _transcribed(request: web.Request, *, translate: bool) -> web.StreamResponse:
    """A transcription or translation form (``fake_media.transcription``): the answer whole, or
    its events when ``stream`` is true. Over 25 MB: OpenAI's 413."""
    state = request.app[FAKE_STATE]
    config = state.config
    upload = await _admit_form(request, state, fake_media.AUDIO_MAX_BYTES)
    transcript = _parsed(lambda _: fake_media.transcription(upload, translate=translate), {})
    fault = draw_fault(config, state.rng)
    early = await _inject(request, config, state.rng, fault, stream=bool(transcript.events))
    if early is not None:
        return early
    if not transcript.events:
        return web.Response(body=transcript.body, headers={"Content-Type": transcript.content_type})
    response = web.StreamResponse(headers={"Content-Type": transcript.content_type})
    await response.prepare(request)
    events = transcript.events
    for event in events[: len(events) // 2] if fault is Fault.DISCONNECT else events:
        await response.write(event)
    if fault is Fault.DISCONNECT:
        return _drop_connection(request, abort=False)
    await response.write_eof()
    return response


async def _image_edits(request: web.Request) -> web.StreamResponse:
    return await _image_form(request, fake_media.image_edit)


async def _image_variations(request: web.Request) -> web.StreamResponse:
    return await _image_form(request, fake_media.image_variation)


async def _image_form(
    request: web.Request,
    answer_of: Callable[[fake_media.AudioUpload, int], dict[str, object] | fake_media.ImageEvents],
) -> web.StreamResponse:
    """An image edit or variation form (``fake_media.image_edit`` / ``image_variation``), its
    answer as generations' (JSON, or a stream's events)."""
    state = request.app[FAKE_STATE]
    config = state.config
    upload = await _admit_form(request, state, _MAX_BODY_BYTES)
    answer = _parsed(lambda _: answer_of(upload, config.image_bytes), {})
    return await _images_answer(request, state, config, answer)


async def _admit_form(request: web.Request, state: FakeState, limit_bytes: int) -> fake_media.AudioUpload:
    """``_admit`` for a multipart form: recorded (its fields, the file's name and size as the
    body), authorised, within ``limit_bytes`` (OpenAI's 25 MB for audio; an image's own bound is
    checked per file), its model served."""
    if (size := request.content_length or 0) > limit_bytes:
        message = f"Maximum content size limit ({limit_bytes}) exceeded ({size} bytes read)"
        # (aiohttp's HTTPRequestEntityTooLarge wants the sizes: as a kind for _refusal, a TypeError)
        raise web.HTTPRequestEntityTooLarge(
            limit_bytes,
            size,
            text=fake_wire.error_body(message, "invalid_request_error", None).decode(),
            content_type="application/json",
        )
    if request.content_type != "multipart/form-data":
        raise _bad_request("Invalid Content-Type header: expected multipart/form-data.", None)
    fields: dict[str, list[str]] = {}
    filename: str | None = None
    data = b""
    files: list[fake_media.UploadedFile] = []
    form = await request.post()
    for name, value in form.items():
        if isinstance(value, web.FileField):
            filename, data = value.filename, value.file.read()
            files.append(fake_media.UploadedFile(name, filename, value.content_type, data))
        else:
            fields.setdefault(name, []).append(str(value))
    deployment = request.match_info.get("deployment")
    if deployment is not None:
        fields.setdefault("model", [deployment])
    seen = {
        "fields": fields,
        "filename": filename,
        "bytes": len(data),
        "files": [
            {
                "name": f.name,
                "filename": f.filename,
                "content_type": f.content_type,
                "bytes": len(f.data),
                "sha256": hashlib.sha256(f.data).hexdigest(),
            }
            for f in files
        ],
    }
    state.record(SeenRequest(request.path, request.headers, seen))
    key = state.config.require_key
    authorised = request.headers.get("api-key" if deployment else "Authorization")
    if key is not None and authorised != (key if deployment else f"Bearer {key}"):
        envelope = fake_wire.error_body(
            "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )
        raise _refusal(web.HTTPUnauthorized, envelope)
    model = fields.get("model", [""])[0]
    if model and not state.config.serves(model):
        raise _unknown_model(model, azure=deployment is not None)
    return fake_media.AudioUpload(fields, filename, data, tuple(files))


async def _models(request: web.Request) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    config = state.config
    await _admit(request, state, needs_body=False)
    early = await _inject(request, config, state.rng, draw_fault(config, state.rng), stream=False)
    return early if early is not None else _json(fake_wire.models_body(config.listed_models))


async def _model(request: web.Request) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    config = state.config
    await _admit(request, state, needs_body=False)
    name = request.match_info["name"]
    if name not in config.listed_models:
        message = f"The model '{name}' does not exist"
        raise _refusal(
            web.HTTPNotFound,
            fake_wire.error_body(message, "invalid_request_error", "model_not_found", "model"),
        )
    early = await _inject(request, config, state.rng, draw_fault(config, state.rng), stream=False)
    return early if early is not None else _json(orjson.dumps(fake_wire.model_object(name)))


async def _stats(request: web.Request) -> web.Response:
    return _json(orjson.dumps(request.app[FAKE_STATE].stats()))


async def _faults(request: web.Request) -> web.Response:
    state = request.app[FAKE_STATE]
    if request.method == "POST":
        state.config = _changed(state.config, await _json_object(request))
    return _json(orjson.dumps(state.config))


async def _reset(request: web.Request) -> web.Response:
    state = request.app[FAKE_STATE]
    state.reset()
    return _json(orjson.dumps(state.stats()))


async def _admit(request: web.Request, state: FakeState, *, needs_body: bool = True) -> dict[str, object]:
    """Record a ``/v1`` request, then refuse it unless authorised (401) and a JSON object (400)."""
    raw = await request.read() if needs_body else b""
    try:
        body: object = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    state.record(SeenRequest(request.path, request.headers, body))
    key = state.config.require_key
    deployment = request.match_info.get("deployment")  # Azure: key in api-key, model in the path
    authorised = request.headers.get("api-key" if deployment else "Authorization")
    if key is not None and authorised != (key if deployment else f"Bearer {key}"):
        envelope = fake_wire.error_body(
            "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )
        raise _refusal(web.HTTPUnauthorized, envelope)
    if not needs_body:
        return {}
    if not isinstance(body, dict):
        raise _bad_request("We could not parse the JSON body of your request: expected a JSON object.")
    if deployment is not None:
        if "api-version" not in request.query:
            raise _bad_request("Missing required query parameter: api-version", "api-version")
        refused = fake_wire.azure_refusal(request.query["api-version"], body)
        if refused is not None:
            raise _bad_request(*refused)
        body = {"model": deployment, **body}  # a copy: the stats show the body as it came
    model = body.get("model")
    if isinstance(model, str) and not state.config.serves(model):
        raise _unknown_model(model, azure=deployment is not None)
    return body


# Azure's answer for a deployment the resource lacks (its REST reference's DeploymentNotFound).
AZURE_NO_DEPLOYMENT = (
    "The API deployment for this resource does not exist. If you created the deployment within the "
    "last 5 minutes, please wait a moment and try again."
)


def _unknown_model(model: str, *, azure: bool) -> web.HTTPException:
    """The 404 for a model the fake does not serve, in OpenAI's words or, at a deployment's
    path, Azure's (a ``code`` and a message, no ``type`` or ``param``)."""
    if azure:
        envelope = orjson.dumps({"error": {"code": "DeploymentNotFound", "message": AZURE_NO_DEPLOYMENT}})
    else:
        message = f"The model `{model}` does not exist or you do not have access to it."
        envelope = fake_wire.error_body(message, "invalid_request_error", "model_not_found")
    return _refusal(web.HTTPNotFound, envelope)


async def _inject(
    request: web.Request,
    config: FakeConfig,
    rng: random.Random,
    fault: Fault | None,
    *,
    stream: bool,
    error_response: Callable[[FakeConfig], web.Response] | None = None,
) -> web.StreamResponse | None:
    """Apply latency and the request's fault; a response is the answer to give instead of the real one.

    ``error_response`` renders an injected error in another flavor's wire format (default: OpenAI's).
    """
    if fault is Fault.RESET or (fault is Fault.DISCONNECT and not stream):
        return _drop_connection(request, abort=True)
    if fault is Fault.HANG:
        return await _hang(request)
    if config.latency_ms or config.latency_jitter_ms:  # no sleep(0) on the zero-latency path
        await asyncio.sleep(draw_latency_ms(config, rng) / 1000)
    if fault is Fault.MALFORMED:
        return web.Response(body=fake_wire.MALFORMED, content_type="application/json")
    if fault is Fault.ERROR:
        return (error_response or _injected_error)(config)
    return None


async def _stream(
    request: web.Request,
    config: FakeConfig,
    fmt: ReplyFormat,
    tokens: list[str],
    finish_reason: str,
    usage: Usage | None,
    cut: bool,
    done: bytes = DONE,
) -> web.StreamResponse:
    """Send the reply as server-sent events, one write per event, paced by ttft and tokens/s.

    ``done`` ends a whole stream (b"" for flavors whose streams have no end marker of that kind).
    """
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    if config.ttft_ms:
        await asyncio.sleep(config.ttft_ms / 1000)
    opening = fmt.opening()
    if opening is not None:
        await response.write(opening)
    loop = asyncio.get_running_loop()
    started = loop.time()
    interval_s = 1 / config.tokens_per_s if config.tokens_per_s else 0.0
    # A cut stream still delivers its first half (at least one token), then the connection drops.
    for index, text in enumerate(tokens[: (len(tokens) + 1) // 2] if cut else tokens):
        # Token i is due at started + i * interval: a slow write does not push every later token back.
        delay_s = started + index * interval_s - loop.time() if interval_s else 0.0
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        await response.write(fmt.token(text))
    if cut:
        return _drop_connection(request, abort=False)
    await response.write(fmt.closing(finish_reason))
    if usage is not None:
        await response.write(fmt.usage(usage))
    if done:
        await response.write(done)
    return response


def _drop_connection(request: web.Request, *, abort: bool) -> web.Response:
    """Close the connection under the handler; ``abort`` discards unsent bytes, else they go first."""
    transport = request.transport
    if transport is not None:
        transport.abort() if abort else transport.close()
    # aiohttp's attempt to finish this response meets a closed transport and gives up quietly.
    return web.Response()


async def _hang(request: web.Request) -> web.Response:
    # Our process and aiohttp's test server cancel handlers whose client left, but web.run_app
    # does not by default: look, rather than leave a task asleep forever per hung request.
    while (transport := request.transport) is not None and not transport.is_closing():
        await asyncio.sleep(_HANG_POLL_S)
    return web.Response()


def _injected_error(config: FakeConfig) -> web.Response:
    status = config.error_status
    if status == 429:
        error_type, code = "rate_limit_error", "rate_limit_exceeded"
    else:
        error_type, code = ("server_error" if status >= 500 else "invalid_request_error"), None
    retry_after = config.retry_after if config.retry_after is not None else (1.0 if status == 429 else None)
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    body = fake_wire.error_body(f"fake-provider: injected {status} error", error_type, code)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _echo(prompt: str) -> str:
    return f"Echo: {prompt}" if prompt else "Echo:"


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def _bad_request(message: str, param: str | None = None, code: str | None = None) -> web.HTTPException:
    return _refusal(web.HTTPBadRequest, fake_wire.error_body(message, "invalid_request_error", code, param))


def _refusal(kind: type[web.HTTPException], envelope: bytes) -> web.HTTPException:
    # ``text``, as aiohttp deprecates ``body`` on its HTTP exceptions.
    return kind(text=envelope.decode(), content_type="application/json")


def _parsed(parse: Callable[[dict[str, object]], _T], body: dict[str, object]) -> _T:
    try:
        return parse(body)
    except fake_wire.WireError as exc:
        raise _bad_request(str(exc), exc.param, exc.code) from None


async def _json_object(request: web.Request) -> dict[str, object]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise _bad_request("expected a JSON object of fault fields")
    return body


def _changed(config: FakeConfig, changes: dict[str, object]) -> FakeConfig:
    unknown = sorted(set(changes) - FAULT_FIELDS)
    if unknown:
        raise _bad_request(
            f"unknown fault field(s) {', '.join(unknown)}; known: {', '.join(sorted(FAULT_FIELDS))}"
        )
    try:
        # Values are checked by FakeConfig itself; JSON numbers need no conversion.
        return replace(config, **cast(dict[str, Any], changes))
    except ValueError as exc:
        raise _bad_request(str(exc)) from None


def _check_number(name: str, value: object, low: float, high: float, *, integer: bool = False) -> None:
    wrong_kind = isinstance(value, bool) or (integer and not isinstance(value, int))
    if (
        wrong_kind
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and low <= value <= high)
    ):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}: must be {kind} from {low:g} to {high:g}, not {value!r}")


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fake provider's flags to ``parser``; :meth:`FakeConfig.from_args` reads them back."""
    ms, rate = _number(0, math.inf, float), _number(0, 1, float)
    port, dim, status = _number(0, 65535, int), _number(1, 65536, int), _number(400, 599, int)
    count = _number(0, 2**31 - 1, int)
    flags: list[tuple[str, Callable[[str], Any], str, str]] = [
        ("--host", str, "HOST", "address to bind (default: %(default)s)"),
        ("--port", port, "PORT", "port (default: %(default)s; 0 = any free port, named when listening)"),
        ("--require-key", str, "KEY", "answer 401 unless the Authorization header is 'Bearer KEY'"),
        ("--seed", int, "N", "seed for the fault and latency draws (default: unseeded)"),
        ("--reply", str, "TEXT", "reply with TEXT (default: 'Echo: <last user message>')"),
        (
            "--models",
            _model_names,
            "NAME[,NAME...]",
            "the models served: others are refused with a 404 as by the real API (default: any model "
            "is answered, and /v1/models lists fake-model)",
        ),
        ("--embedding-dim", dim, "N", "embedding length (default: %(default)s)"),
        ("--latency-ms", ms, "MS", "latency before answering (streams: before the headers)"),
        ("--latency-jitter-ms", ms, "MS", "spread of the latency, see --latency-dist"),
        ("--ttft-ms", ms, "MS", "streams: delay from the headers to the first token"),
        ("--tokens-per-s", ms, "N", "streams: token pace (default: 0 = all at once)"),
        ("--error-rate", rate, "P", "answer with an OpenAI error envelope"),
        ("--error-status", status, "S", "status of injected errors (default: %(default)s)"),
        ("--retry-after", ms, "SECONDS", "Retry-After of injected errors (default: 1 for 429, else none)"),
        ("--hang-rate", rate, "P", "never answer, until the client disconnects"),
        ("--reset-rate", rate, "P", "close the connection without answering"),
        ("--malformed-rate", rate, "P", "answer 200 with a JSON content type and a body that is not JSON"),
        ("--disconnect-rate", rate, "P", "streams: drop the connection after half the tokens; others: reset"),
        ("--cache-read-tokens", count, "N", "prompt tokens each answer reports read from the prompt cache"),
        ("--cache-write-tokens", count, "N", "prompt tokens each answer reports written to the prompt cache"),
        ("--cache-write-1h-tokens", count, "N", "of those written, to a 1-hour cache (anthropic flavor)"),
        (
            "--reported-prompt-tokens",
            count,
            "N",
            "prompt tokens each answer reports, cache counts included (default: 0 = the prompt's own)",
        ),
    ]
    # Each flag sets the field of its name, and starts at that field's default (every fault off).
    defaults = FakeConfig()
    for flag, kind, metavar, text in flags:
        default = getattr(defaults, flag.removeprefix("--").replace("-", "_"))
        parser.add_argument(flag, type=kind, metavar=metavar, default=default, help=text)
    parser.add_argument(
        "--no-reasoning",
        dest="reasoning",
        action="store_false",
        help="the models served do not reason: chat's reasoning_effort is refused with OpenAI's 400 "
        "for gpt-4o (default: taken)",
    )
    parser.add_argument(
        "--stop-reason",
        dest="stop_reason",
        action="store_true",
        help="play vLLM: a chat choice names the stop sequence that ended it in 'stop_reason' "
        "(default: no such field, as OpenAI)",
    )
    parser.add_argument(
        "--flavor",
        choices=FLAVORS,
        default=defaults.flavor,
        help="wire format to speak: openai (default), anthropic (Messages API), gemini "
        "(generateContent); faults work the same in each",
    )
    parser.add_argument(
        "--embedding-kind",
        choices=fake_wire.EMBEDDING_KINDS,
        default=defaults.embedding_kind,
        help="hash (default): a hash of the text, so different texts are unrelated; words: a bag of "
        "words, so texts sharing words are similar (for semantic-cache tests)",
    )
    parser.add_argument(
        "--latency-dist",
        choices=tuple(LATENCY_DISTRIBUTIONS),
        default=defaults.latency_dist,
        help="fixed (default); uniform: ms ± jitter; normal: sd = jitter; lognormal: median = ms, sd = jitter",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; the exit code is 0, 1 if the address cannot be bound, 2 on bad flags."""
    try:
        config = FakeConfig.from_args(args)
    except ValueError as exc:
        print(f"fake-provider: {exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(config))


async def _serve(config: FakeConfig) -> int:
    runner = web.AppRunner(
        build_app(config), access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_GRACE_S
    )
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, config.host, config.port, backlog=1024).start()
        except OSError as exc:
            print(f"fake-provider: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
            return 1
        # Printed once the socket is bound: process.start() waits for this line.
        print(f"fake-provider listening on {', '.join(_urls(runner))}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def _urls(runner: web.AppRunner) -> list[str]:
    urls = []
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            host = str(address[0])
            urls.append(f"http://[{host}]:{address[1]}" if ":" in host else f"http://{host}:{address[1]}")
    return urls


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    # The same choice as gateway.server, repeated so the fake does not import the gateway.
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _number(low: float, high: float, kind: Callable[[str], float]) -> Callable[[str], Any]:
    """An argparse ``type`` accepting a finite ``kind`` (int or float) from ``low`` to ``high``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value: {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is not from {low:g} to {high:g}")
        return value

    return parse


def _model_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("name at least one model")
    return names
