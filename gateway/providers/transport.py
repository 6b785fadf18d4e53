"""The only module that does upstream HTTP.

One pooled keep-alive ``aiohttp.ClientSession`` per provider. aiohttp and asyncio exceptions are
translated here into the gateway's error tree, and the provider key is scrubbed from anything
the provider or the library says, so it cannot reach a log, an error body or a metric.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson

from gateway.errors import (
    GatewayError,
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamTimeout,
)
from gateway.policy.model import Provider
from gateway.providers.base import ProviderAdapter, UpstreamRequest
from gateway.wire.requests import JSONObject

_JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(slots=True)
class UpstreamResponse:
    """A successful (2xx) provider response whose body has not been read yet."""

    raw: aiohttp.ClientResponse
    client: ProviderClient

    async def json(self) -> tuple[bytes, JSONObject]:
        """The whole body, raw and parsed; a non-object or malformed body is an upstream error."""
        async with self.client.translated_errors():
            data = await self.raw.read()
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse(
                f"{self.client.name}: provider returned a body that is not valid JSON",
                provider=self.client.name,
            ) from None
        if not isinstance(parsed, dict):
            raise UpstreamBadResponse(
                f"{self.client.name}: provider returned JSON that is not an object",
                provider=self.client.name,
            )
        return data, parsed

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, without waiting for more than the socket has."""
        async with self.client.translated_errors():
            async for chunk in self.raw.content.iter_any():
                yield chunk
            if not self.raw.content.is_eof():
                raise UpstreamConnectError(
                    f"{self.client.name}: stream ended early", provider=self.client.name
                )

    def close(self) -> None:
        """Release the connection (closing it if the body was not fully read)."""
        self.raw.close()


class ProviderClient:
    """Everything needed to talk to one provider: config, adapter, pooled session."""

    def __init__(self, name: str, config: Provider, adapter: ProviderAdapter, api_key: str | None) -> None:
        self.name = name
        self.config = config
        self.adapter = adapter
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None
        t = config.timeouts
        self._timeout = aiohttp.ClientTimeout(
            total=t.total_s, sock_connect=t.connect_s, sock_read=t.first_byte_s
        )

    @property
    def configured(self) -> bool:
        """False when the policy names a key variable that is not set."""
        return self.config.api_key_env is None or bool(self._api_key)

    async def start(self) -> None:
        """Open the pooled session (call once, from the app's cleanup context)."""
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections,
            limit_per_host=self.config.max_connections,
            ttl_dns_cache=300,
            keepalive_timeout=30,
            enable_cleanup_closed=True,
        )
        headers = {**self.config.headers, **self.adapter.auth_headers(self._api_key)}
        self._session = aiohttp.ClientSession(
            base_url=None,
            connector=connector,
            headers=headers,
            timeout=self._timeout,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request``; return the response once its headers arrive (2xx only)."""
        if self._session is None:
            raise UpstreamConnectError(f"{self.name}: client not started", provider=self.name)
        headers = _JSON_HEADERS if request.headers is None else {**_JSON_HEADERS, **request.headers}
        async with self.translated_errors():
            raw = await self._session.post(
                self.config.base_url + request.path, data=request.body, headers=headers
            )
            if raw.status < 300:
                return UpstreamResponse(raw, self)
            try:
                body = await raw.read()
            finally:
                raw.release()
        raise self._status_error(raw.status, body, raw.headers.get("Retry-After"))

    def _status_error(self, status: int, body: bytes, retry_after: str | None) -> GatewayError:
        error = self.adapter.translate_error(status, body, _retry_after_s(retry_after), self.name)
        error.message = self.scrub(error.message)
        return error

    def scrub(self, text: str) -> str:
        """``text`` with the provider key replaced, in case a provider or library echoes it."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def translated_errors(self) -> _ErrorTranslation:
        """Context manager mapping aiohttp/asyncio exceptions to the gateway's upstream errors."""
        return _ErrorTranslation(self)


class _ErrorTranslation:
    __slots__ = ("_client",)

    def __init__(self, client: ProviderClient) -> None:
        self._client = client

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        if exc is None or isinstance(exc, (GatewayError, asyncio.CancelledError)):
            return False
        name = self._client.name
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            raise UpstreamTimeout(f"{name}: provider timed out ({_describe(exc)})", provider=name) from None
        if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ContentTypeError)):
            raise UpstreamBadResponse(
                f"{name}: provider sent a broken response ({self._client.scrub(_describe(exc))})",
                provider=name,
            ) from None
        if isinstance(exc, (aiohttp.ClientError, OSError)):
            raise UpstreamConnectError(
                f"{name}: cannot reach provider ({self._client.scrub(_describe(exc))})", provider=name
            ) from None
        return False


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; rare from LLM providers, and then a plain backoff is right
