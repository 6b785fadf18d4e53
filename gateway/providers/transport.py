"""The only module that does upstream HTTP: ``AiohttpTransport``, the default ``Transport``.

One pooled keep-alive ``aiohttp.ClientSession`` per provider, never one per request. aiohttp and
asyncio exceptions are translated here into the gateway's error tree, with the provider key
scrubbed from whatever the library says, so it cannot reach a log, an error body or a metric.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping

import aiohttp

from gateway.errors import GatewayError, UpstreamBadResponse, UpstreamConnectError, UpstreamTimeout
from gateway.policy.model import Provider
from gateway.providers.base import UpstreamRequest

_JSON_HEADERS = {"Content-Type": "application/json"}

Scrub = Callable[[str], str]


class AiohttpResponse:
    """An aiohttp response seen as an ``UpstreamResponse``."""

    __slots__ = ("_errors", "_raw")

    def __init__(self, raw: aiohttp.ClientResponse, errors: _ErrorTranslation) -> None:
        self._raw = raw
        self._errors = errors

    @property
    def status(self) -> int:
        return self._raw.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._raw.headers

    async def read(self) -> bytes:
        try:
            return await self._raw.read()
        except _LIBRARY_ERRORS as exc:
            raise self._errors.translate(exc) from None

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives, without waiting for more than the socket has."""
        content = self._raw.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                yield chunk
        except _LIBRARY_ERRORS as exc:
            raise self._errors.translate(exc) from None
        if not content.is_eof():
            name = self._errors.name
            raise UpstreamConnectError(f"{name}: stream ended early", provider=name)

    def close(self) -> None:
        self._raw.close()


class AiohttpTransport:
    """Sends one provider's requests on its own pooled session (see the module docstring)."""

    def __init__(self, name: str, config: Provider, headers: Mapping[str, str], scrub: Scrub) -> None:
        self._name = name
        self._config = config
        # Content-Type goes with the session's default headers: a request without headers of
        # its own then passes none, and aiohttp merges nothing per request.
        self._headers = {**_JSON_HEADERS, **headers}
        self._errors = _ErrorTranslation(name, scrub)
        self._session: aiohttp.ClientSession | None = None
        self._base_url = config.base_url
        t = config.timeouts
        self._timeout = aiohttp.ClientTimeout(
            total=t.total_s, sock_connect=t.connect_s, sock_read=t.first_byte_s
        )

    async def start(self) -> None:
        """Open the pooled session (once, from the app's start-up)."""
        connector = aiohttp.TCPConnector(
            limit=self._config.max_connections,
            limit_per_host=self._config.max_connections,
            ttl_dns_cache=300,
            keepalive_timeout=30,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self._timeout,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: UpstreamRequest) -> AiohttpResponse:
        if self._session is None:
            raise UpstreamConnectError(f"{self._name}: client not started", provider=self._name)
        try:
            # Redirects are not followed: a provider's key must never be sent to another host.
            raw = await self._session.post(
                self._base_url + request.path,
                data=request.body,
                headers=request.headers,
                allow_redirects=False,
            )
        except _LIBRARY_ERRORS as exc:
            raise self._errors.translate(exc) from None
        return AiohttpResponse(raw, self._errors)


# What the library raises that ``_ErrorTranslation`` turns into upstream errors. A plain
# ``try``/``except`` of these replaces an async context manager per send and per read (two
# coroutines each, even when nothing goes wrong).
_LIBRARY_ERRORS = (asyncio.TimeoutError, aiohttp.ClientError, OSError)


class _ErrorTranslation:
    """Maps aiohttp/asyncio exceptions to the gateway's upstream errors, provider key scrubbed."""

    __slots__ = ("_scrub", "name")

    def __init__(self, name: str, scrub: Scrub) -> None:
        self.name = name
        self._scrub = scrub

    def translate(self, exc: BaseException) -> GatewayError:
        name = self.name
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return UpstreamTimeout(f"{name}: provider timed out ({_describe(exc)})", provider=name)
        if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ContentTypeError)):
            return UpstreamBadResponse(
                f"{name}: provider sent a broken response ({self._scrub(_describe(exc))})", provider=name
            )
        return UpstreamConnectError(
            f"{name}: cannot reach provider ({self._scrub(_describe(exc))})", provider=name
        )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
