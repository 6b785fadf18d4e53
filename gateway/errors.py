"""The gateway's one error tree.

Every error a client can see is a ``GatewayError``; each class declares the HTTP status
(``status``, or an ``http_status`` property when the instance decides), the OpenAI error
``type`` and whether the failover loop may retry it on another deployment (``retryable``).
Three more properties answer the router's questions: ``counts_against_provider`` (the provider
looks unhealthy: breakers and reliability count it), ``is_context_length`` (the prompt was
too long for the deployment; only a larger context can help) and ``shows_overload`` (the
provider said it is too busy: a retry after it spends the group's retry budget).

``*`` in a column: decided per instance. A unit test checks this tree against the classes.

    class                          status  type                    retry  notes
    GatewayError                   500     server_error            no     base of them all
    ├── InvalidRequest             400     invalid_request_error   no     bad JSON, missing/invalid field
    │   ├── ContextTooLong         400     invalid_request_error   no     code=context_length_exceeded; is_context_length
    │   ├── MessageThreadsUnsupported 400  invalid_request_error   no     code=thread_unsupported_request; Anthropic's details
    │   ├── ProviderFileNotAllowed 400     invalid_request_error   no     code=provider_file_not_allowed; a provider-side object
    │   └── UnsupportedByProvider  400     invalid_request_error   yes    code=unsupported_endpoint
    ├── AuthenticationFailed       401     authentication_error    no
    ├── PermissionDenied           403     permission_error        no     a granted key that may not do this
    ├── NotFound                   404     invalid_request_error   no     unknown route
    │   ├── ModelNotFound          404     invalid_request_error   no     code=model_not_found
    │   └── DeploymentNotFound     404     invalid_request_error   no     code=DeploymentNotFound; Azure's deployment paths
    ├── MethodNotAllowed           405     invalid_request_error   no
    ├── RequestTimeout             408     invalid_request_error   no     code=request_timeout; body sent too slowly
    ├── Conflict                   409     invalid_request_error   no     code=row_version_conflict; changed since read
    ├── PayloadTooLarge            413     invalid_request_error   no     code=request_too_large
    ├── UnsupportedMediaType       415     invalid_request_error   no     code=unsupported_media_type; not JSON
    │   └── UnsupportedContentEncoding 415 invalid_request_error no   code=unsupported_content_encoding; a compressed body
    ├── RateLimited                429     *                       no     code=rate_limit_exceeded; type requests or tokens
    │   └── RequestTooLarge        429     *                       no     more tokens than the key's whole TPM; no retry
    ├── QuotaExceeded              429     insufficient_quota      no     code=insufficient_quota; the key's budget is spent
    ├── AuthThrottled              429     rate_limit_error        no     code=auth_throttled; the address failed auth too often
    ├── UploadShareFull            429     rate_limit_error        no     code=uploads_busy; one caller's share of the audio room
    ├── UnsupportedTransferCoding  501     invalid_request_error   no     code=unsupported_transfer_coding; a coded body (note 2)
    ├── InsufficientStorage        507     server_error            no     code=spool_full; no room to keep an upload (note 2)
    ├── ServiceUnavailable         503     service_unavailable     no     draining, not ready
    │   ├── ProviderNotConfigured  503     service_unavailable     no     code=provider_not_configured
    │   ├── NoHealthyDeployment    503     service_unavailable     no     code=no_healthy_deployment
    │   ├── LimitsUnavailable      503     service_unavailable     no     code=limits_unavailable; auth.limits_fail: closed
    │   ├── UsageUnavailable       503     service_unavailable     no     code=usage_unavailable; /admin/usage, Redis failed
    │   ├── UploadsBusy            503     service_unavailable     no     code=uploads_busy; server.max_audio_in_flight_bytes
    │   └── KeyStoreUnavailable    503     service_unavailable     no     code=key_store_unavailable; never an open door
    ├── UpstreamError              502     upstream_error          no     what a provider did; counts against it
    │   ├── UpstreamConnectError   502     upstream_error          yes    refused, reset, closed, DNS, TLS (note 5)
    │   ├── UpstreamTimeout        504     timeout                 yes    connect / first byte / read gap / total (note 5);
    │   │                                                                 code=deadline_exceeded: a retry cut at retry.deadline_s
    │   ├── UpstreamBadResponse    502     upstream_error          yes    malformed body (note 5)
    │   │   └── UpstreamBadEvent   502     upstream_error          yes    a stream event that cannot be read
    │   ├── UpstreamCredentialsRefused 502 upstream_error        yes    code=provider_auth_failed; the provider refused the gateway's key (note 3)
    │   ├── UpstreamAccountRefused 502     upstream_error          yes    code=provider_account_refused; 402 / billing, the gateway's account
    │   ├── UpstreamModelMissing   502     upstream_error          yes    code=provider_model_not_found; a 404 for the policy's model/deployment
    │   ├── UpstreamStatusError    *       *                       *      the provider's status (note 1)
    │   └── StreamInterrupted      *       *                       no     a started stream failed; fixed text (note 4)
    ├── AllDeploymentsFailed       *       *                       no     the last attempt's status and type
    ├── HTTPStatusError            *       invalid_request_error   no     other HTTP refusals (411, ...)
    └── InternalError              500     server_error            no     a bug; message never has details

Note 1: a 4xx keeps its status and the provider's ``type``; 503 and Anthropic's 529 become 503,
other 5xx 502. Retryable for 408, 429 and 5xx; counts against the provider for 408 and 5xx (a
429 sets the deployment aside instead); ``is_context_length`` for a 400/413 saying so.

Note 2: ``x-should-retry: false`` (honoured by the openai and anthropic SDKs) goes with
``ProviderNotConfigured``, ``NoHealthyDeployment``, ``Conflict``, ``RequestTooLarge``,
``QuotaExceeded``, ``InsufficientStorage`` (a re-upload after 1.5 s finds no more room), the
refusals of the gateway's key or account, a provider's 404 for the policy's model, and an ``AllDeploymentsFailed`` of more than one
attempt: the gateway has retried already, or a retry cannot help, so a client should not
stack its own retries (and their ``Retry-After`` waits) on top. So does any ``Retry-After`` over
``CLIENT_RETRY_AFTER_MAX_S`` (60 s; a provider's 429 relayed, or its deployment cooling): the
anthropic SDK would sleep it whole, twice, before the application saw the error.

Note 3: a provider's 401 or 403 (or Gemini's 400 ``API_KEY_INVALID``) refuses the gateway's own
key for it, not the client's: relayed, it would tell a client with a valid key to
re-authenticate (the SDKs raise ``AuthenticationError``) and carry the provider's message, which
may quote part of the key. It is a 502 in the gateway's words instead, fails over to another
deployment and counts against the provider (every request would fail the same way), with
``x-should-retry: false`` (a client retry cannot mend a key).

Note 4: once a stream's first byte has gone out, a provider's failure reaches the client as its
door's error event, never a status. That event says one fixed text per reason (``upstream_closed``,
``timeout``, ``bad_event``, ``provider_error``), with the policy's provider name; what the
library or the provider said (an aiohttp message can carry the provider's URL, host or address)
is ``detail``, for the gateway's log only. Its status and type are those of the error behind it
(an Anthropic client still reads an overload as ``overloaded_error``). After ``provider_error``
only, the provider's own message (``UpstreamStatusError.said``) follows on one line, cut at
``StreamInterrupted.SAID_MAX_CHARS``: a provider's words, never a library's.

Note 5: a transport failure (``providers/transport.py``) says the gateway's words, naming the
policy's provider and the kind of failure, which ``code`` carries: ``connection_refused``,
``connection_reset``, ``connection_closed``, ``host_unreachable``, ``dns_failure``,
``tls_failure``, ``connect_failed``, ``malformed_response``, ``response_too_large``;
``connect_timeout``, ``first_byte_timeout``, ``read_timeout``, ``total_timeout``. What the library
said (its text names hosts, ports, URLs) is ``detail``, logged by the HTTP layer, never sent.

Library exceptions (aiohttp, asyncio) are translated into this tree at the boundary that
calls the library (``providers/transport.py``); nothing else raises them further.

``StartupError`` stands outside the tree: no client ever sees it. The process cannot start as
configured (port in use, a bad ``MEMORY_URL``, a missing extra...); its message is one line
saying what to do, which the CLI prints before exiting 2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from gateway import jsonsafe
from gateway.quoting import QUOTE_MAX_CHARS, bounded, capped, listed, quoted

__all__ = ["quoted"]  # re-exported: names echoed in messages are bounded (``quoting.py``)


class GatewayError(Exception):
    """Base of every error the gateway renders to a client."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    # Set by the router on the error that ends a routed call: the attempts it made (``Tried``;
    # the access log and headers say so).
    tried: Tried | None = None
    # What a library or a provider said behind this error, for the server's log only (it may name
    # hosts, addresses or URLs); the client sees ``message``, in the gateway's words.
    detail: str | None = None
    # Anthropic's ``error.details`` (machine-readable, read by its SDKs), on the Messages door.
    details: ClassVar[dict[str, object] | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    # What a client is shown is bounded however the error was built or renamed later (a door
    # renames params and messages): a message at ``MESSAGE_MAX_CHARS``, a param (a key path the
    # client wrote) at twice what ``quoted`` keeps of a name. Unbounded, a 100,000-character key came back
    # whole in the message and again in ``param``: 200 KB for one unknown field.
    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        self._message = capped(value)

    @property
    def param(self) -> str | None:
        return self._param

    @param.setter
    def param(self, value: str | None) -> None:
        # (twice ``quoted``'s bound: a param already bounded by its builder stays as it was built)
        self._param = None if value is None else bounded(value, 2 * QUOTE_MAX_CHARS)

    @property
    def http_status(self) -> int:
        """The HTTP status sent to the client (instances may override the class default)."""
        return self.status

    @property
    def retryable(self) -> bool:
        """Whether the failover loop may try another deployment after this error."""
        return False

    @property
    def counts_against_provider(self) -> bool:
        """Whether this error shows the provider unhealthy (for breakers and reliability);
        the client's own mistakes and rate limits do not."""
        return False

    @property
    def is_context_length(self) -> bool:
        """Whether a provider refused the request for being longer than the model's context."""
        return False

    @property
    def shows_overload(self) -> bool:
        """Whether the provider said it is overloaded (429, 503, 529) or was too slow (408, a
        timeout): retrying then adds load where there is too much already."""
        return False

    def envelope(self) -> dict[str, Any]:
        """OpenAI's error envelope for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        """The envelope serialised as JSON bytes."""
        return jsonsafe.dumps(self.envelope())  # a message may name a client's non-UTF-8 header


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class MessageThreadsUnsupported(InvalidRequest):
    """A Messages request with ``thread`` (Anthropic's message threads beta: the server holds a
    conversation between turns, each turn sending only its new messages). The gateway holds no
    such state, and a thread held by one Anthropic deployment would not survive a failover to
    another deployment or kind. Anthropic's own refusal of a request it cannot thread carries
    ``details.error_code`` ``thread_unsupported_request``; the anthropic SDK reads it (its thread
    state's ``recovers_from``) and, where told to continue unthreaded (its tool runner, by
    default), sends the turn again with the whole history and no ``thread``."""

    details: ClassVar[dict[str, object]] = {
        "error_code": "thread_unsupported_request",
        "unsupported": ["thread"],
    }

    def __init__(self) -> None:
        super().__init__(
            "Message threads (`thread`) are not supported by this gateway: it holds no conversation "
            "between requests. Send the whole conversation in `messages` on every turn, without "
            "`thread` (the anthropic SDK's tool runner does so by itself).",
            param="thread",
            code="thread_unsupported_request",
        )


class ProviderFileNotAllowed(InvalidRequest):
    """A request naming an object stored with a provider (a file id, a Gemini Files API or
    ``gs://`` URI: ``wire/provider_files.py``) from a key whose team (or itself) is not allowed
    to: the provider would read it with the organisation's key, whoever uploaded it."""

    def __init__(self, param: str, team: str) -> None:
        super().__init__(
            f"'{param}' names an object stored with the provider (a file id or a provider file "
            "URI), which this gateway reads with the organisation's provider key whoever uploaded "
            "it, so keys may not name one unless allowed: set provider_files: true on the team "
            f"(auth.teams.{team}.provider_files in the policy) or on the key (sophia-gateway keys "
            'create --provider-files, or "provider_files": true to POST /admin/keys). Or send '
            "the file's content inline (a data: URL or base64).",
            param=param,
            code="provider_file_not_allowed",
        )


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "authentication_error"


class PermissionDenied(GatewayError):
    """A known caller asked for something its key is not granted (OpenAI's 403 shape)."""

    status = 403
    error_type = "permission_error"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"


class ModelNotFound(NotFound):
    def __init__(self, model: str, available: Sequence[str]) -> None:
        names = listed(sorted(available)) or "none"
        super().__init__(
            f"The model {quoted(model)} does not exist on this gateway. Available models: {names}.",
            param="model",
            code="model_not_found",
        )
        self.model = model
        self.available = tuple(available)


class DeploymentNotFound(NotFound):
    """A model group named as Azure OpenAI's deployment path names a deployment, that does not
    exist or that the key may not use: Azure's 404, whose ``code`` and opening words apps written
    for Azure test for (``DeploymentNotFound``, "The API deployment for this resource does not
    exist"), then the gateway's groups the caller may call."""

    def __init__(self, deployment: str, available: Sequence[str]) -> None:
        names = listed(sorted(available)) or "none"
        super().__init__(
            f"The API deployment for this resource does not exist: {quoted(deployment)} is not a "
            f"model of this gateway. Available models: {names}.",
            code="DeploymentNotFound",
        )


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"


class Conflict(GatewayError):
    """The request's precondition no longer holds: a memory ``PATCH`` naming the ``row_version``
    it read, when the memory has changed since (another writer won), or an ingest job's resume
    that cannot be. ``x-should-retry: false``: the openai and anthropic SDKs retry a 409 twice
    by default (OpenAI's 409 is a lock timeout), and the same request fails the same way; the
    client has to read again first."""

    status = 409
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code, headers=_NO_CLIENT_RETRY)


class RequestTimeout(GatewayError):
    """The client sent its request body more slowly than ``server.request_read_timeout_s`` (or
    an upload more slowly than the ingest's bounds: ``message`` says which)."""

    status = 408
    error_type = "invalid_request_error"

    def __init__(self, timeout_s: float, message: str | None = None) -> None:
        super().__init__(
            message
            or f"The request body did not arrive within the gateway's read timeout of {timeout_s:g} s.",
            code="request_timeout",
            headers={"connection": "close"},
        )


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"Request body is larger than the gateway's limit of {limit_bytes} bytes.",
            code="request_too_large",
        )


class UnsupportedMediaType(GatewayError):
    """A JSON endpoint got a body that does not say ``Content-Type: application/json`` (or an
    upload is of a type the gateway cannot read: ``message`` says which are supported)."""

    status = 415
    error_type = "invalid_request_error"

    def __init__(self, given: str, message: str | None = None, param: str | None = None) -> None:
        super().__init__(
            message or f"Content-Type must be application/json (got '{given or 'none'}').",
            param=param,
            code="unsupported_media_type",
        )


class UnsupportedContentEncoding(UnsupportedMediaType):
    """A request body sent compressed (``Content-Encoding`` other than ``identity``): the
    gateway reads bodies as sent. (A decompressing server turns a 1 MB request into a gigabyte
    of work: the body must be inflated before its size can be refused.)"""

    def __init__(self, given: str) -> None:
        GatewayError.__init__(
            self,
            f"Content-Encoding '{given}' is not supported for request bodies: send the body uncompressed.",
            code="unsupported_content_encoding",
        )


class UnsupportedTransferCoding(GatewayError):
    """A request body sent with a transfer coding other than ``chunked`` (``Transfer-Encoding:
    gzip, chunked``): RFC 9112 6.1, "A server that receives a request message with a transfer
    coding it does not understand SHOULD respond with 501 (Not Implemented)". Read as plain
    chunked, the coded bytes were taken for the body. ``x-should-retry: false`` (the SDKs retry a
    5xx; no SDK sends one) and ``Connection: close`` (the body is not read)."""

    status = 501
    error_type = "invalid_request_error"

    def __init__(self, given: str) -> None:
        super().__init__(
            f"Transfer-Encoding '{given}' is not supported for request bodies: send the body with "
            "Content-Length or plain chunked.",
            code="unsupported_transfer_coding",
            headers={"connection": "close", **_NO_CLIENT_RETRY},
        )


class InsufficientStorage(GatewayError):
    """The gateway has no room to keep what the client sends: an upload would pass the ingest
    spool's size (``memory.ingest.max_spool_bytes``) or leave its disk with less free space than
    ``memory.ingest.min_free_disk_bytes``. 507 is WebDAV's status for it (RFC 4918, 11.5); the
    rest of the body is not wanted on this connection. ``x-should-retry: false``: the SDKs retry a
    5xx after 0.5 s and 1 s, sending the whole upload again each time, when room comes back only
    as jobs finish or are cancelled."""

    status = 507
    error_type = "server_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="spool_full", headers={"connection": "close", **_NO_CLIENT_RETRY})


# Tells SDKs not to retry: openai-python's ``_should_retry`` (and the anthropic SDK's, the same
# generated code) obeys ``x-should-retry`` before looking at the status.
_NO_CLIENT_RETRY: Mapping[str, str] = MappingProxyType({"x-should-retry": "false"})

# The longest ``Retry-After`` an SDK is left to act on alone. Above it the SDKs disagree: the
# openai SDK long ignored one over 60 s and retried after its own 0.5 s / 1 s backoff (answered
# the same 429 at once), its newer versions do not retry over 120 s, and the anthropic SDK sleeps
# whatever it says (a provider's hour-long quota wait: two hours before the application saw
# the error). Past this, ``x-should-retry: false`` too: the application decides.
CLIENT_RETRY_AFTER_MAX_S = 60.0


def retry_after_headers(seconds: float) -> dict[str, str]:
    """``Retry-After`` for a wait of ``seconds``, and ``x-should-retry: false`` when it is longer
    than an SDK's retry should wait (``CLIENT_RETRY_AFTER_MAX_S``)."""
    headers = {"retry-after": _format_retry_after(seconds)}
    if seconds > CLIENT_RETRY_AFTER_MAX_S:
        headers.update(_NO_CLIENT_RETRY)
    return headers


class ServiceUnavailable(GatewayError):
    status = 503
    error_type = "service_unavailable"


class ProviderNotConfigured(ServiceUnavailable):
    def __init__(self, model: str, env_vars: Sequence[str]) -> None:
        wanted = " or ".join(sorted(set(env_vars)))
        super().__init__(
            f"No provider is configured for model {quoted(model)}: set {wanted} in the gateway's "
            "environment and restart it.",
            code="provider_not_configured",
            headers=_NO_CLIENT_RETRY,
        )


class NoHealthyDeployment(ServiceUnavailable):
    """Every deployment of the group is behind an open circuit breaker."""

    def __init__(self, model: str, retry_after_s: float) -> None:
        super().__init__(
            f"No healthy deployment for model {quoted(model)}: every one failed recently and is "
            f"cooling down. Retry in {_format_retry_after(retry_after_s)} s.",
            code="no_healthy_deployment",
            headers={"retry-after": _format_retry_after(retry_after_s), **_NO_CLIENT_RETRY},
        )
        # 1 s: a breaker is half-open and another call holds its one probe (or is about to).
        self.retry_after_s = retry_after_s


class UploadsBusy(ServiceUnavailable):
    """The upload forms (audio, images) held in memory at once would pass
    ``server.max_audio_in_flight_bytes`` (``service/audio_room.py``): refused before the form is read, so the connection is closed
    rather than its body drained."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            "The gateway is holding as many uploads (audio, images) as it may at once "
            f"({limit} bytes, server.max_audio_in_flight_bytes). Retry shortly.",
            code="uploads_busy",
            headers={"retry-after": "1", "connection": "close"},
        )


class UploadShareFull(GatewayError):
    """One caller's upload forms held at once would pass its share of
    ``server.max_audio_in_flight_bytes`` (``service/audio_room.share_of``): refused before the
    form is read, as ``UploadsBusy`` is, but a 429, since it is the caller's own uploads that fill
    it while others may still get in. Retry-After: 1 (the SDKs retry)."""

    status = 429
    error_type = "rate_limit_error"

    def __init__(self, share: int) -> None:
        super().__init__(
            "This caller is holding as many uploads (audio, images) as one caller may at once "
            f"({share} bytes, its share of server.max_audio_in_flight_bytes). Retry when one has "
            "been answered.",
            code="uploads_busy",
            headers={"retry-after": "1", "connection": "close"},
        )


class LimitsUnavailable(ServiceUnavailable):
    """The limits' Redis cannot be reached and the policy says ``auth.limits_fail: closed``."""

    def __init__(self) -> None:
        super().__init__(
            "The gateway cannot check rate limits right now (its limits store is unavailable). "
            "Retry shortly.",
            code="limits_unavailable",
            headers={"retry-after": "1"},
        )


class UsageUnavailable(ServiceUnavailable):
    """``GET /admin/usage``: the limits' Redis, which holds every replica's usage, failed."""

    def __init__(self) -> None:
        super().__init__(
            "The gateway cannot read usage right now (its limits store is unavailable). Retry shortly.",
            code="usage_unavailable",
            headers={"retry-after": "1"},
        )


class RateLimited(GatewayError):
    """A key's requests (RPM) or tokens (TPM) per minute are used up, or (``team``) its team's
    shared ones. OpenAI's shape: type ``requests`` or ``tokens``, code ``rate_limit_exceeded``,
    with ``Retry-After``."""

    status = 429
    error_type = "requests"

    def __init__(
        self,
        kind: str,
        limit: int,
        retry_after_s: float,
        headers: Mapping[str, str],
        *,
        team: str | None = None,
    ) -> None:
        unit = "requests" if kind in ("requests", "team_requests") else "tokens"
        whose = "this key" if team is None else f"team {team!r} (its keys' shared limit)"
        super().__init__(
            f"Rate limit reached for {whose} on {unit} per min: limit {limit}. "
            f"Please try again in {_format_retry_after(retry_after_s)}s.",
            code="rate_limit_exceeded",
            headers={**headers, **retry_after_headers(retry_after_s)},
        )
        self.kind = unit

    def envelope(self) -> dict[str, Any]:
        env = super().envelope()
        env["error"]["type"] = self.kind
        return env


class RequestTooLarge(RateLimited):
    """A request that reserves more tokens than its key's whole per-minute limit: no wait makes it
    fit (OpenAI: "Request too large ... on tokens per min"), so SDKs are told not to retry."""

    def __init__(
        self,
        limit: int,
        requested: int,
        lower: str = "Lower max_tokens (or the prompt)",
        *,
        team: str | None = None,
    ) -> None:
        whose = "this key" if team is None else f"team {team!r} (its keys' shared limit)"
        GatewayError.__init__(
            self,
            f"Request too large for {whose} on tokens per min: limit {limit}, requested {requested}. "
            f"{lower} to run it.",
            code="rate_limit_exceeded",
            headers=dict(_NO_CLIENT_RETRY),
        )
        self.kind = "tokens"


class AuthThrottled(GatewayError):
    """A client address failed authentication too often within the window
    (``auth/throttle.py``): refused before its credential is read, a correct one included, for
    the rest of the window (``Retry-After``). SDKs are told not to retry: their silent wait would
    hide the refusal, and a retry with the same credential cannot fare better."""

    status = 429
    error_type = "rate_limit_error"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(
            "Too many failed authentication attempts from this address. "
            f"Try again in {_format_retry_after(retry_after_s)} s.",
            code="auth_throttled",
            headers={"retry-after": _format_retry_after(retry_after_s), **_NO_CLIENT_RETRY},
        )
        self.retry_after_s = retry_after_s


class QuotaExceeded(GatewayError):
    """A key's spend budget for the current period is used up (OpenAI's ``insufficient_quota``);
    a retry cannot help before the period ends, so SDKs are told not to retry."""

    status = 429
    error_type = "insufficient_quota"

    def __init__(
        self, budget_usd: float, reset_s: float, headers: Mapping[str, str], *, team: str | None = None
    ) -> None:
        # ``team``: the team's shared budget is the one spent (its keys' own may have room).
        whose = "this key's budget" if team is None else f"the shared budget of team {team!r}"
        super().__init__(
            f"You exceeded {whose} of ${budget_usd:g} for the current period; it renews "
            f"in {_format_retry_after(reset_s)}s.",
            code="insufficient_quota",
            headers={**headers, **_NO_CLIENT_RETRY},
        )


class KeyStoreUnavailable(ServiceUnavailable):
    """The key store cannot answer, so the caller's key cannot be checked: refused, never let in."""

    def __init__(self) -> None:
        # No detail from the store: its errors may name hosts or users; the gateway logs them.
        super().__init__(
            "The gateway cannot check API keys right now (its key store is unavailable). Retry shortly.",
            code="key_store_unavailable",
            headers={"retry-after": "1"},
        )


class ContextTooLong(InvalidRequest):
    """The prompt is longer than the context window of every deployment of the group."""

    def __init__(self, model: str, estimated_tokens: int, largest: int) -> None:
        super().__init__(
            f"The prompt (about {estimated_tokens} tokens) is longer than the context window of "
            f"every deployment of model {quoted(model)} (largest: {largest} tokens).",
            param="messages",
            code="context_length_exceeded",
        )

    @property
    def is_context_length(self) -> bool:
        return True


class UnsupportedByProvider(InvalidRequest):
    """A deployment's provider kind cannot serve the operation (e.g. embeddings on Anthropic).

    Raised by an adapter before any I/O. Retryable, so a group that mixes provider kinds is
    served by a deployment that can; it is not an upstream error, so it never counts against
    the provider's health. A group with no capable deployment ends with this 400.
    """

    @property
    def retryable(self) -> bool:
        return True

    def __init__(self, kind: str, operation: str, param: str | None = None) -> None:
        super().__init__(
            f"Provider kind '{kind}' does not support {operation}; route this model to a "
            "deployment whose provider does.",
            param=param,
            code="unsupported_endpoint",
        )


class UpstreamError(GatewayError):
    """Something went wrong talking to a provider."""

    status = 502
    error_type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self.provider = provider
        if detail is not None:
            self.detail = detail

    @property
    def counts_against_provider(self) -> bool:
        return True


class UpstreamConnectError(UpstreamError):
    @property
    def retryable(self) -> bool:
        return True


class UpstreamTimeout(UpstreamError):
    status = 504
    error_type = "timeout"

    @property
    def retryable(self) -> bool:
        return True

    @property
    def shows_overload(self) -> bool:
        return True


class UpstreamBadResponse(UpstreamError):
    @property
    def retryable(self) -> bool:
        return True


class UpstreamBadEvent(UpstreamBadResponse):
    """A stream event the gateway cannot read (not JSON): a started stream's ``bad_event``, even
    when its translator raises it only once the provider's body has ended."""


class UpstreamCredentialsRefused(UpstreamError):
    """The provider refused the gateway's own credentials (see note 3)."""

    def __init__(self, provider: str, upstream_status: int, upstream_code: str | None = None) -> None:
        said = f", {upstream_code}" if upstream_code else ""
        super().__init__(
            f"{provider}: the provider refused the gateway's credentials (HTTP {upstream_status}{said}): "
            "the key the gateway is configured with for it is wrong, revoked or not allowed this "
            "request. This is the gateway's configuration, not your key.",
            provider=provider,
            code="provider_auth_failed",
            headers=_NO_CLIENT_RETRY,
        )
        self.upstream_status = upstream_status

    @property
    def retryable(self) -> bool:
        return True


class UpstreamModelMissing(UpstreamError):
    """The provider does not know the model or deployment the gateway's policy names for it:
    its 404 naming no request parameter but the model (OpenAI's ``model_not_found``, Azure's
    ``DeploymentNotFound``, Anthropic's ``not_found_error`` "model: ...", Gemini's ``NOT_FOUND``
    "models/... is not found", a 404 page from a wrong ``base_url``). The client asked for a
    model group the gateway serves: relayed, the 404 told it that its own model does not exist
    (the SDKs raise ``NotFoundError``) and no other deployment was tried. As with the
    credentials (note 3): a 502 in the gateway's words, failed over, counted against the
    deployment, ``x-should-retry: false``."""

    def __init__(self, provider: str, upstream_status: int, upstream_code: str | None = None) -> None:
        said = f", {upstream_code}" if upstream_code else ""
        super().__init__(
            f"{provider}: the provider does not know the model or deployment the gateway is "
            f"configured to call (HTTP {upstream_status}{said}). This is the gateway's "
            "configuration, not your request.",
            provider=provider,
            code="provider_model_not_found",
            headers=_NO_CLIENT_RETRY,
        )
        self.upstream_status = upstream_status

    @property
    def retryable(self) -> bool:
        return True


class UpstreamAccountRefused(UpstreamError):
    """The provider refused the gateway's account, not the request: HTTP 402 (credit used up:
    OpenRouter, Gemini's prepaid billing) or what an adapter names ``account_error`` (Gemini's
    ``FAILED_PRECONDITION``, "enable billing"). As with the credentials (note 3), another
    deployment should serve, the deployment's health pays, and the client is told it is the
    gateway's configuration."""

    def __init__(self, provider: str, upstream_status: int, upstream_code: str | None = None) -> None:
        said = f", {upstream_code}" if upstream_code else ""
        super().__init__(
            f"{provider}: the provider refused the gateway's account (HTTP {upstream_status}{said}): "
            "its credit, billing or plan does not allow this request. This is the gateway's "
            "configuration, not your request.",
            provider=provider,
            code="provider_account_refused",
            headers=_NO_CLIENT_RETRY,
        )
        self.upstream_status = upstream_status

    @property
    def retryable(self) -> bool:
        return True


class UpstreamStatusError(UpstreamError):
    """The provider answered with an error status; its own error envelope is kept."""

    RETRYABLE_STATUSES: ClassVar[frozenset[int]] = frozenset({408, 429})
    OVERLOAD_STATUSES: ClassVar[frozenset[int]] = frozenset({408, 429, 503, 529})

    def __init__(
        self,
        upstream_status: int,
        message: str,
        *,
        provider: str = "",
        upstream_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
        said: str | None = None,
    ) -> None:
        headers = retry_after_headers(retry_after_s) if retry_after_s else None
        super().__init__(message, provider=provider, param=param, code=code, headers=headers)
        self.upstream_status = upstream_status
        self.upstream_type = upstream_type
        self.retry_after_s = retry_after_s
        # The provider's own message, as it said it (``message`` adds the gateway's prefix): what
        # a started stream's error event may quote of it, bounded (``StreamInterrupted``).
        self.said = said
        # Azure's ``innererror`` of a content filter refusal (its ``code`` and
        # ``content_filter_result``, which Azure's clients read), kept by its adapter, bounded.
        self.innererror: dict[str, Any] | None = None

    def scrub_words(self, scrub: Callable[[str], str]) -> None:
        """``said`` and ``message`` passed through ``scrub`` (a provider's ``scrub``: its key and
        any long run of it out), for an error made from an event inside a 2xx answer, which
        only the whole-key scrub of answers saw. Failures only."""
        if self.said:
            self.said = scrub(self.said)
            self.message = scrub(self.message)
            self.args = (self.message,)  # str() and a traceback read the args

    @property
    def http_status(self) -> int:
        # Client errors (400 bad parameter, 413 context too long, 429) are the client's to see
        # as the provider said them; provider-side failures become a gateway 502/503
        # (Anthropic's 529 "overloaded" is a 503: the same condition under another number).
        if self.upstream_status < 500:
            return self.upstream_status
        return 503 if self.upstream_status in (503, 529) else 502

    @property
    def retryable(self) -> bool:
        return self.upstream_status >= 500 or self.upstream_status in self.RETRYABLE_STATUSES

    @property
    def counts_against_provider(self) -> bool:
        # A 429 is the provider protecting itself (the router sets the deployment aside
        # instead); other 4xx are the client's mistakes.
        return self.upstream_status >= 500 or self.upstream_status == 408

    @property
    def shows_overload(self) -> bool:
        return self.upstream_status in self.OVERLOAD_STATUSES

    @property
    def is_context_length(self) -> bool:
        if self.upstream_status not in (400, 413):
            return False
        text = self.message.lower()
        return self.code == "context_length_exceeded" or "context length" in text or "context window" in text

    def envelope(self) -> dict[str, Any]:
        env = super().envelope()
        if self.upstream_type and self.upstream_status < 500:
            env["error"]["type"] = self.upstream_type
        if self.innererror is not None:
            env["error"]["innererror"] = self.innererror
        return env


class StreamInterrupted(UpstreamError):
    """A stream its provider failed after the first byte went to the client (note 4): ``reason``
    (``service.streams.STREAM_ERROR_REASONS``) decides the message; ``detail`` is what the
    error behind it (``cause``) said, for the log only."""

    TEXTS: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            "upstream_closed": "the provider closed the stream before the answer was complete.",
            "timeout": "the provider stopped sending the answer (timed out) before it was complete.",
            "bad_event": "the provider sent a stream event the gateway could not read; the answer is incomplete.",
            "provider_error": "the provider reported an error in the middle of the answer; the answer is incomplete.",
        }
    )

    # The most of a provider's own words a client is shown after a ``provider_error``.
    SAID_MAX_CHARS: ClassVar[int] = 200

    def __init__(self, reason: str, provider: str, cause: GatewayError) -> None:
        text = self.TEXTS.get(reason, self.TEXTS["bad_event"])
        said = None
        if reason == "provider_error" and isinstance(cause, UpstreamStatusError):
            # (not a refusal of the gateway's key: its message may quote part of it, note 3)
            said = cause.said if cause.upstream_type != "authentication_error" else None
        if said:
            # What the provider said of its own failure, one line of printable text, bounded: it
            # tells the client why (a content filter, a crash, an overload) where the fixed text
            # cannot; a library's words (hosts, URLs) are never here.
            words = "".join(c if c.isprintable() else " " for c in " ".join(said.split()))
            text += f" The provider said: {quoted(words, self.SAID_MAX_CHARS)}"
        super().__init__(f"{provider}: {text}" if provider else text, provider=provider, code=reason)
        self.reason = reason
        self.cause = cause
        self.detail = f"{cause.message} ({cause.detail})" if cause.detail else cause.message

    @property
    def http_status(self) -> int:
        return self.cause.http_status

    @property
    def retryable(self) -> bool:
        return False  # the client has part of the answer: nothing can be tried again for it

    @property
    def shows_overload(self) -> bool:
        return self.cause.shows_overload

    def envelope(self) -> dict[str, Any]:
        env = super().envelope()
        env["error"]["type"] = type(self.cause).error_type  # the gateway's word, never the provider's
        return env


class AllDeploymentsFailed(GatewayError):
    """Every deployment tried for a request failed; the last error decides the status."""

    error_type = "upstream_error"

    def __init__(self, model: str, attempts: Sequence[Attempt]) -> None:
        last = attempts[-1].error
        detail = "; ".join(f"{a.provider}/{a.model}: {a.error.message}" for a in attempts)
        super().__init__(
            f"All {len(attempts)} attempt(s) for model {quoted(model)} failed. {detail}",
            param=last.param,
            code=last.code,
            headers={**last.headers, **_NO_CLIENT_RETRY} if len(attempts) > 1 else last.headers,
        )
        self.attempts = list(attempts)
        self.last = last

    @property
    def http_status(self) -> int:
        return self.last.http_status

    def envelope(self) -> dict[str, Any]:
        env = super().envelope()
        last = self.last.envelope()["error"]
        env["error"]["type"] = last["type"]
        if "innererror" in last:
            env["error"]["innererror"] = last["innererror"]
        return env


class HTTPStatusError(GatewayError):
    """Any other HTTP-level refusal (e.g. 411, 415), with the status aiohttp chose."""

    error_type = "invalid_request_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self._status = status

    @property
    def http_status(self) -> int:
        return self._status


class InternalError(GatewayError):
    status = 500
    error_type = "server_error"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one deployment, kept for the failover report."""

    provider: str
    model: str
    error: GatewayError


# The most attempts a ``Tried`` names one by one (``retry.max_attempts`` is at most 20).
MOST_TRIED_NAMED = 20


@dataclass(frozen=True, slots=True)
class Tried:
    """The attempts of a routed call that none served, for the access log and headers:
    ``attempts`` how many were made; ``each`` (provider, upstream model, status, code) of each,
    in order (past ``MOST_TRIED_NAMED``, the first ones and the last); ``fallback`` whether any went to a deployment
    other than the policy's first choice with every deployment healthy."""

    attempts: int
    fallback: bool
    each: tuple[tuple[str, str, int, str], ...]

    @property
    def provider(self) -> str:
        return self.each[-1][0] if self.each else ""

    @property
    def model(self) -> str:
        return self.each[-1][1] if self.each else ""

    @classmethod
    def of(cls, attempts: Sequence[Attempt], fallback: bool) -> Tried:
        named = (
            attempts
            if len(attempts) <= MOST_TRIED_NAMED
            else [*attempts[: MOST_TRIED_NAMED - 1], attempts[-1]]
        )
        each = tuple(
            (a.provider, a.model, a.error.http_status, a.error.code or a.error.error_type) for a in named
        )
        return cls(len(attempts), fallback, each)


def _format_retry_after(seconds: float) -> str:
    return str(max(0, int(seconds + 0.999)))


class StartupError(Exception):
    """The gateway cannot start as configured; the message is one line saying what to do."""
