"""Every typed key for state kept on the app or on a request, in one place.

Nothing a request needs lives in a module global: it is built once at start-up, stored on the
``web.Application`` under one of these keys, and torn down by the app's cleanup contexts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from gateway.auth.allowed_hosts import AllowedHosts
from gateway.auth.client_address import ClientAddresses
from gateway.auth.gate import LimitGate
from gateway.auth.identity import Caller
from gateway.auth.keyring import KeyRing
from gateway.auth.throttle import FailedAuthThrottle
from gateway.cache.service import ResponseCache
from gateway.memory.service import MemoryService
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import Tracer
from gateway.policy.model import Policy
from gateway.policy.versions import PolicyStatus, ReloadOutcome
from gateway.routing.rollout import RolloutController
from gateway.routing.router import Router
from gateway.service.audio_room import AudioRoom
from gateway.service.calls import RequestService
from gateway.service.context import CallRecord, RequestIds
from gateway.service.health import HealthMonitor
from gateway.service.recovery import MemoryGuard
from gateway.service.responses import ResponsesService
from gateway.service.shadow import ShadowTraffic
from gateway.settings import Settings

if TYPE_CHECKING:  # imported by build_app when it builds them: memory on; REDIS_URL set
    from gateway.auth.key_bus import KeyBus
    from gateway.memory.ingest import IngestService
    from gateway.routing.shared import SharedRouting


@dataclass(slots=True)
class Lifecycle:
    """Mutable process state that health checks read."""

    ready: bool = False
    draining: bool = False


class KeyLookup(Protocol):
    """What the edge (``http/auth.py``) asks of the key ring: the caller a secret belongs to, None
    when unknown, revoked or expired; raises ``KeyStoreUnavailable`` when the store cannot answer."""

    async def authenticate(self, secret: str) -> Caller | None: ...


class PolicyControl(Protocol):
    """The live policy as handlers and the server see it (``gateway/live_policy.py``)."""

    async def reload(self, source: str) -> ReloadOutcome:
        """Read, validate and apply the policy file (source: file, signal or admin)."""
        ...

    def reload_soon(self, source: str) -> None: ...

    def status(self) -> PolicyStatus: ...


SETTINGS = web.AppKey("settings", Settings)
# The policy the process started with. Only its restart-only sections (policy/versions.py:
# server, memory, auth mode, store and limits_fail) are read from it; everything a reload changes
# is read through the router, cache, service and key ring, which follow reloads (POLICY_CONTROL).
POLICY = web.AppKey("policy", Policy)
POLICY_CONTROL: web.AppKey[PolicyControl] = web.AppKey("policy_control")
METRICS = web.AppKey("metrics", GatewayMetrics)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
ROUTER = web.AppKey("router", Router)
SERVICE = web.AppKey("service", RequestService)
RESPONSES = web.AppKey("responses", ResponsesService)  # the Responses API front door (issue 17)
# Progressive rollouts (``routing/rollout.py``); call its ``reconfigure(policy)`` after the router's.
ROLLOUTS = web.AppKey("rollouts", RolloutController)
# Shared routing state between replicas (``routing/shared.py``); absent without REDIS_URL or with
# SOPHIA_SHARED_ROUTING=0. It reads the router's live states at each sync: nothing to call on reload.
SHARED_ROUTING: web.AppKey[SharedRouting] = web.AppKey("shared_routing")
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
# Shadow traffic's mirrors and figures (/admin/shadow); the request service's own
SHADOW = web.AppKey("shadow", ShadowTraffic)
CACHE = web.AppKey("cache", ResponseCache)
MEMORY = web.AppKey("memory", MemoryService)
# File ingestion into memory (POST /v1/memory/files, /v1/memory/jobs): present with MEMORY
INGEST: web.AppKey[IngestService] = web.AppKey("ingest")
# The bytes of transcription forms held at once (server.max_audio_in_flight_bytes)
AUDIO_ROOM = web.AppKey("audio_room", AudioRoom)
# The limits' gate and its limiter (RPM, TPM, budgets, usage rows: /admin/usage)
LIMITS = web.AppKey("limits", LimitGate)
# The virtual keys (auth.mode: keys); absent, every key is refused with 503, never let in.
KEYRING: web.AppKey[KeyLookup] = web.AppKey("keyring")
# The key ring itself, with its admin operations (/admin/keys, created by build_app); the edge
# reads KEYRING, which is this same object unless a test plugged in a lookup of its own.
KEY_ADMIN = web.AppKey("key_admin", KeyRing)
# Failed credentials counted per client address, and the addresses refused for them (``http/auth.py``)
AUTH_THROTTLE = web.AppKey("auth_throttle", FailedAuthThrottle)
# Key changes announced to every process of every replica (``auth/key_bus.py``); absent without
# REDIS_URL. ``/admin/keys`` publishes on it; its subscriber drops the key ring's cached lookups.
KEY_BUS: web.AppKey[KeyBus] = web.AppKey("key_bus")
# The client address behind SOPHIA_TRUSTED_PROXIES (X-Forwarded-For), for the throttle and the access log
CLIENT_ADDRESSES = web.AppKey("client_addresses", ClientAddresses)
# The Host names that are not a DNS-rebinding page's (auth.mode: open, the admin API without a
# token): IP literals, localhost, the bound name, SOPHIA_ALLOWED_HOSTS (``auth/allowed_hosts.py``)
ALLOWED_HOSTS = web.AppKey("allowed_hosts", AllowedHosts)
# Every dependency's health (GET /health, readiness, gateway_dependency_up)
HEALTH = web.AppKey("health", HealthMonitor)
# Frees caches when resident memory passes server.max_rss_bytes (absent when that is null)
MEMORY_GUARD = web.AppKey("memory_guard", MemoryGuard)
# Where the middleware draws fresh request ids (one buffer of random bytes per worker)
REQUEST_IDS = web.AppKey("request_ids", RequestIds)
# Tracing (observability/tracing.py): tracing.OFF unless an OTLP endpoint is configured
TRACER: web.AppKey[Tracer] = web.AppKey("tracer")

REQUEST_ID = web.RequestKey("request_id", str)
# What the request service did for a proxied call (model group, cache, route, memories), filled
# in as it goes; response headers, metrics and the access log read it.
REQUEST_CALL = web.RequestKey("request_call", CallRecord)
# Which credential let an admin request in (``require_admin``): admin, admin_previous or loopback;
# the audit line's ``actor`` (observability/audit.py).
ADMIN_ACTOR = web.RequestKey("admin_actor", str)
# What an audited admin action's handler learnt of its target (a key's id and team, a policy's
# versions), written on its audit line (api/admin_audit.py).
AUDIT_FIELDS: web.RequestKey[dict[str, object]] = web.RequestKey("audit_fields")
# A request's ``Expect: 100-continue``, not answered yet: its ``100 Continue`` is sent when its
# body is about to be read (``http/body.send_continue``), after the checks that refuse it unread.
CONTINUE_DEFERRED = web.RequestKey("continue_deferred", bool)
