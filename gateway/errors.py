"""The gateway's one error tree.

Every error a client can see is a ``GatewayError``; each class declares the HTTP status,
the OpenAI error ``type`` and whether the failover loop may retry it on another deployment.

    GatewayError
    ├── InvalidRequest             400 invalid_request_error   (bad JSON, missing/invalid field)
    ├── AuthenticationFailed       401 authentication_error
    ├── NotFound                   404 invalid_request_error   (unknown route)
    │   └── ModelNotFound          404 invalid_request_error   code=model_not_found
    ├── MethodNotAllowed           405 invalid_request_error
    ├── PayloadTooLarge            413 invalid_request_error   code=request_too_large
    ├── ContextTooLong             400 invalid_request_error   code=context_length_exceeded
    ├── UnsupportedByProvider      400 invalid_request_error   code=unsupported_endpoint, retryable
    ├── ServiceUnavailable         503 service_unavailable     (draining, not ready)
    │   ├── ProviderNotConfigured  503 service_unavailable     code=provider_not_configured
    │   └── NoHealthyDeployment    503 service_unavailable     code=no_healthy_deployment
    ├── UpstreamError              502 upstream_error          (base of everything a provider did)
    │   ├── UpstreamConnectError   502 retryable               (refused, reset, DNS)
    │   ├── UpstreamTimeout        504 retryable               (connect / first byte / total)
    │   ├── UpstreamBadResponse    502 retryable               (malformed body)
    │   └── UpstreamStatusError    the provider's status; retryable for 408, 429 and 5xx
    ├── AllDeploymentsFailed       status of the last attempt; carries every attempt's error
    └── HTTPStatusError            any other HTTP refusal aiohttp makes (411, 415, ...)
    InternalError                  500 server_error            (a bug; message never has details)

Library exceptions (aiohttp, asyncio) are translated into this tree at the boundary that
calls the library (``providers/transport.py``); nothing else raises them further.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson


class GatewayError(Exception):
    """Base of every error the gateway renders to a client."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    retryable: ClassVar[bool] = False

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

    @property
    def http_status(self) -> int:
        """The HTTP status sent to the client (instances may override the class default)."""
        return self.status

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
        return orjson.dumps(self.envelope())


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "authentication_error"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"


class ModelNotFound(NotFound):
    def __init__(self, model: str, available: Sequence[str]) -> None:
        names = ", ".join(sorted(available)) or "none"
        super().__init__(
            f"The model '{model}' does not exist on this gateway. Available models: {names}.",
            param="model",
            code="model_not_found",
        )


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"Request body is larger than the gateway's limit of {limit_bytes} bytes.",
            code="request_too_large",
        )


class ServiceUnavailable(GatewayError):
    status = 503
    error_type = "service_unavailable"


class ProviderNotConfigured(ServiceUnavailable):
    def __init__(self, model: str, env_vars: Sequence[str]) -> None:
        wanted = " or ".join(sorted(set(env_vars)))
        super().__init__(
            f"No provider is configured for model '{model}': set {wanted} in the gateway's "
            "environment and restart it.",
            code="provider_not_configured",
        )


class NoHealthyDeployment(ServiceUnavailable):
    """Every deployment of the group is behind an open circuit breaker."""

    def __init__(self, model: str, retry_after_s: float) -> None:
        super().__init__(
            f"No healthy deployment for model '{model}': every one failed recently and is "
            f"cooling down. Retry in {_format_retry_after(retry_after_s)} s.",
            code="no_healthy_deployment",
            headers={"retry-after": _format_retry_after(retry_after_s)},
        )


class ContextTooLong(InvalidRequest):
    """The prompt is longer than the context window of every deployment of the group."""

    def __init__(self, model: str, estimated_tokens: int, largest: int) -> None:
        super().__init__(
            f"The prompt (about {estimated_tokens} tokens) is longer than the context window of "
            f"every deployment of model '{model}' (largest: {largest} tokens).",
            param="messages",
            code="context_length_exceeded",
        )


class UnsupportedByProvider(InvalidRequest):
    """A deployment's provider kind cannot serve the operation (e.g. embeddings on Anthropic).

    Raised by an adapter before any I/O. Retryable, so a group that mixes provider kinds is
    served by a deployment that can; it is not an upstream error, so it never counts against
    the provider's health. A group with no capable deployment ends with this 400.
    """

    retryable = True

    def __init__(self, kind: str, operation: str) -> None:
        super().__init__(
            f"Provider kind '{kind}' does not support {operation}; route this model to a "
            "deployment whose provider does.",
            code="unsupported_endpoint",
        )


class UpstreamError(GatewayError):
    """Something went wrong talking to a provider."""

    status = 502
    error_type = "upstream_error"

    def __init__(self, message: str, *, provider: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.provider = provider


class UpstreamConnectError(UpstreamError):
    retryable = True


class UpstreamTimeout(UpstreamError):
    status = 504
    error_type = "timeout"
    retryable = True


class UpstreamBadResponse(UpstreamError):
    retryable = True


class UpstreamStatusError(UpstreamError):
    """The provider answered with an error status; its own error envelope is kept."""

    RETRYABLE_STATUSES: ClassVar[frozenset[int]] = frozenset({408, 429})

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
    ) -> None:
        headers = {"retry-after": _format_retry_after(retry_after_s)} if retry_after_s else None
        super().__init__(message, provider=provider, param=param, code=code, headers=headers)
        self.upstream_status = upstream_status
        self.upstream_type = upstream_type
        self.retry_after_s = retry_after_s

    @property
    def http_status(self) -> int:
        # Client errors (400 bad parameter, 413 context too long, 429) are the client's to see
        # as the provider said them; provider-side failures become a gateway 502/503
        # (Anthropic's 529 "overloaded" is a 503: the same condition under another number).
        if self.upstream_status < 500:
            return self.upstream_status
        return 503 if self.upstream_status in (503, 529) else 502

    @property
    def is_retryable(self) -> bool:
        return self.upstream_status >= 500 or self.upstream_status in self.RETRYABLE_STATUSES

    def envelope(self) -> dict[str, Any]:
        env = super().envelope()
        if self.upstream_type and self.upstream_status < 500:
            env["error"]["type"] = self.upstream_type
        return env


class AllDeploymentsFailed(GatewayError):
    """Every deployment tried for a request failed; the last error decides the status."""

    error_type = "upstream_error"

    def __init__(self, model: str, attempts: Sequence[Attempt]) -> None:
        last = attempts[-1].error
        detail = "; ".join(f"{a.provider}/{a.model}: {a.error.message}" for a in attempts)
        super().__init__(
            f"All {len(attempts)} attempt(s) for model '{model}' failed. {detail}",
            param=last.param,
            code=last.code,
            headers=last.headers,
        )
        self.attempts = list(attempts)
        self.last = last

    @property
    def http_status(self) -> int:
        return self.last.http_status

    def envelope(self) -> dict[str, Any]:
        env = super().envelope()
        env["error"]["type"] = self.last.envelope()["error"]["type"]
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


def is_retryable(error: GatewayError) -> bool:
    """Whether the failover loop may try another deployment after ``error``."""
    if isinstance(error, UpstreamStatusError):
        return error.is_retryable
    return error.retryable


def is_context_length_error(error: GatewayError) -> bool:
    """Whether a provider refused the request for being longer than the model's context."""
    if not isinstance(error, UpstreamStatusError) or error.upstream_status not in (400, 413):
        return False
    text = error.message.lower()
    return error.code == "context_length_exceeded" or "context length" in text or "context window" in text


def counts_against_provider(error: GatewayError) -> bool:
    """Whether ``error`` shows the provider unhealthy (for breakers and reliability); the
    client's own mistakes and rate limits do not."""
    if isinstance(error, UpstreamStatusError):
        return error.upstream_status >= 500 or error.upstream_status == 408
    return isinstance(error, UpstreamError)


def _format_retry_after(seconds: float) -> str:
    return str(max(0, int(seconds + 0.999)))
