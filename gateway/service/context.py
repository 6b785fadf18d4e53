"""What the request service knows of a call besides its body: who asks, with which tags and
headers, and (filled in as the call goes) what happened to it."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.auth.gate import LimitTicket
from gateway.auth.identity import Caller
from gateway.cache.fingerprint import ANONYMOUS_TENANT, tenant_of
from gateway.cache.service import CacheOutcome
from gateway.errors import Tried
from gateway.routing.target import Route, Target
from gateway.service.media import MediaUnits

__all__ = ["CallContext", "CallRecord", "OnBehalf", "RequestIds", "Route", "on_behalf_of"]

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
TAGS_HEADER = "x-gateway-tags"
_NO_TAGS: frozenset[str] = frozenset()


@dataclass(slots=True)
class CallRecord:
    """What happened to a call, filled in stage by stage; response headers, metrics and the
    access log read it, for errors too (a call that failed upstream still says its cache miss)."""

    model: str = ""  # the model group the client named, once known to exist (a bounded label)
    cache: CacheOutcome | None = None
    route: Route | None = None
    # A routed call that failed: its attempts (``GatewayError.tried``, set by the middleware from
    # the error it renders); None when it was served or reached no provider.
    tried: Tried | None = None
    memory_ids: list[str] | None = None
    # OpenAI's x-ratelimit-* headers for a key with limits (set at admission, refusals included)
    rate_limits: Mapping[str, str] | None = None
    # Anthropic's door (/v1/messages): the request id also as ``request-id``, the header its SDK reads
    anthropic: bool = False
    # Its answer is a stream whose response has started (``http/sse.py``): nothing else can be sent
    streaming: bool = False
    # Why its stream failed after the first byte (``streams.STREAM_ERROR_REASONS``), or "" if it did not
    stream_error: str = ""
    # The client's reasoning effort was withheld from the deployment that served it, declared
    # ``reasoning: false`` (``effort.py``): the response's header and the access log say so
    effort_dropped: bool = False
    # Refused (429 ``auth_throttled``) for its client address's failed credentials
    # (``http/auth.py``): the access log's line says so
    auth_throttled: bool = False
    # Let in with a previous operator token (``admin`` or ``metrics``: ``http/auth.used_previous``)
    # or a virtual key's rotated-out secret within its grace (``key``), "" otherwise: its response's ``x-gateway-token-deprecated`` and its access-log line say so
    previous_token: str = ""


@dataclass(slots=True)
class CallContext:
    """One call's context: identity, tags and the headers that steer the gateway.

    ``headers`` are the client's request headers (read: ``cache-control`` and ``x-gateway-cache-*``, ``x-gateway-memory*``); internal calls
    have none. ``started_s`` is ``time.perf_counter()`` when the request arrived.
    """

    request_id: str
    started_s: float
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)
    tags: frozenset[str] = frozenset()
    record: CallRecord = field(default_factory=CallRecord)
    # Whose call it is: cache entries, feedback (and, with keys, memory and spend) are the tenant's.
    # Open mode: a hash of the Authorization header sent; with virtual keys: the key's team.
    tenant: str = ANONYMOUS_TENANT
    identity: Caller | None = None  # the authenticated caller, once the edge has resolved it
    limit_ticket: LimitTicket | None = None  # an admitted keyed call's reservation, settled at its end
    # An internal call made for a caller's background work (``OnBehalf.admit`` false): its usage
    # and cost are charged to ``identity``'s limits, but it is never refused by them.
    charge_only: bool = False
    # The deployment a keyed call (one with a ``limit_ticket``) is being answered by, once a try
    # is under way: a call cancelled then (its client left) is charged its reservation, since the
    # provider spent tokens
    sent_to: Target | None = None
    # A media call's units (images asked for, speech's characters...): what a deployment's
    # per-unit price counts (``media.unit_cost_usd``); None for the other endpoints.
    units: MediaUnits | None = None

    @property
    def internal(self) -> bool:
        """A call the gateway makes to itself (embeddings for the semantic cache and memory)."""
        return not self.request_id

    @classmethod
    def for_client(
        cls,
        request_id: str,
        started_s: float,
        headers: Mapping[str, str],
        identity: Caller | None = None,
        record: CallRecord | None = None,
        key_header: str = "",
    ) -> CallContext:
        """``key_header``: the header the door's SDK may send its key in instead of
        ``Authorization`` (``x-api-key``, ``api-key``): in open mode the same credential is the
        same tenant whichever header carries it."""
        tags = headers.get(TAGS_HEADER)
        if identity is not None:
            tenant = identity.tenant
        else:
            credential = headers.get("authorization")
            # An empty ``Authorization`` carries no credential: the door's key header is the
            # caller's (it made every caller sending one, whatever its key, the anonymous tenant)
            blank = not (credential and credential.strip())
            if blank and key_header and (key := headers.get(key_header)) is not None:
                credential = "Bearer " + key
            tenant = tenant_of(credential)
        return cls(
            request_id,
            started_s,
            headers,
            frozenset(t.strip() for t in tags.split(",") if t.strip()) if tags else _NO_TAGS,
            record if record is not None else CallRecord(),
            tenant,
            identity,
        )


class RequestIds:
    """Fresh request ids (32 hex digits) from the operating system's CSPRNG, as random as
    ``os.urandom(16).hex()`` but read 4 KiB at a time: one ``getrandom`` call per 128 ids
    instead of one per request. One per app (each worker builds its own after the fork, so no
    two processes share a buffer)."""

    __slots__ = ("_at", "_hex")

    _BATCH_BYTES = 4096

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0

    def new(self) -> str:
        at = self._at
        if at >= len(self._hex):
            self._hex = os.urandom(self._BATCH_BYTES).hex()
            at = 0
        self._at = at + 32
        return self._hex[at : at + 32]


@dataclass(frozen=True, slots=True)
class OnBehalf:
    """Whose work the gateway's internal calls (the memory service's embeddings) are done for.

    ``admit``: each call passes ``caller``'s limits (RPM, TPM, budget) as a client call would,
    and a refusal is the caller's 429; false (an ingest job running after its upload was
    answered): each call is charged to the limits (its tokens and cost count) but never refused,
    so a job is not cut midway by a window that fills."""

    caller: Caller
    admit: bool
    # The client request's record: its answer carries the x-ratelimit-* headers the calls saw.
    record: CallRecord | None = None


# Set by the memory API's handlers around the service call; read by ``RequestService.embed``.
# A task created inside (an ingest job) inherits it, as asyncio copies the context.
ON_BEHALF_OF: ContextVar[OnBehalf | None] = ContextVar("on_behalf_of", default=None)


@contextmanager
def on_behalf_of(caller: Caller | None, *, admit: bool, record: CallRecord | None = None) -> Iterator[None]:
    """Internal calls made inside the block are ``caller``'s (see ``OnBehalf``); open mode (no
    caller) sets nothing: its internal calls stay the gateway's. A key without limits is set too
    (h-usage2): never refused, its calls are counted in its usage row and its team's spend, as
    its own calls are (h-keyspend); before, they were the gateway's and its row had none."""
    if caller is None:
        yield
        return
    token = ON_BEHALF_OF.set(OnBehalf(caller, admit, record))
    try:
        yield
    finally:
        ON_BEHALF_OF.reset(token)
