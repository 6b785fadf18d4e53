"""One provider as the gateway uses it: its policy entry, adapter, key and transport.

The key lives here and only here: it goes into the transport's default headers, and everything
a provider sends back that could echo it (an error body before it is translated, stream bytes,
library messages) is scrubbed first, so no error object, log line or client response can hold it.

A key shorter than ``MIN_SCRUBBED_KEY_CHARS`` is not scrubbed: local servers take placeholder
keys (Ollama's docs use ``ollama``, vLLM's ``EMPTY`` or ``token-abc123``), and replacing every
occurrence of such a string corrupts ordinary answers (a key ``x`` turned each ``"index"`` of an
embeddings body into ``"inde***"``; a key ``ollama``, every answer that names Ollama). Real
provider keys are far longer (OpenAI and Anthropic 50+, Gemini 39, Azure 32 characters). Such a
provider gets one warning at start-up.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Mapping
from typing import AnyStr

import orjson

from gateway.errors import (
    GatewayError,
    UpstreamAccountRefused,
    UpstreamBadResponse,
    UpstreamCredentialsRefused,
    UpstreamModelMissing,
    UpstreamStatusError,
)
from gateway.policy.model import Provider
from gateway.providers.base import ProviderAdapter, Transport, UpstreamRequest, UpstreamResponse
from gateway.providers.transport import AiohttpTransport
from gateway.wire.requests import JSONObject

_REDACTED = "***"
MIN_SCRUBBED_KEY_CHARS = 16
# An error's text holding this many consecutive characters of the key holds the key, as good as:
# a provider or a proxy in front of it that quotes the header it refused cut at a length limit
# (``Bearer sk-...`` less its last characters) or masked in its middle leaves the rest to guess.
# OpenAI's own refusal shows the key's first 8 and last 4 (``sk-proj-****...abcd``): shorter, so
# kept. Half of it (8) is the window searched for (``_without_runs``).
MIN_LEAKED_RUN = 16

log = logging.getLogger("gateway.providers")
# A provider answers these to the gateway's own key (or its lack of access), never to the client's.
_CREDENTIAL_STATUSES = frozenset({401, 403})


class ProviderClient:
    """A ``ProviderHandle``: adapter + key + transport for one provider of the policy."""

    def __init__(
        self,
        name: str,
        config: Provider,
        adapter: ProviderAdapter,
        api_key: str | None,
        transport: Transport | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.adapter = adapter
        self._api_key = api_key or None
        # False when the policy names a key variable that is not set (read by every plan).
        self.configured = config.api_key_env is None or self._api_key is not None
        # What is scrubbed: the key, unless it is too short to be told from ordinary text.
        secret = api_key if api_key and len(api_key) >= MIN_SCRUBBED_KEY_CHARS else None
        self._secret = secret
        self._key_bytes = secret.encode() if secret else b""
        # The key written with JSON escapes (``\u0073k-...``, ``\/``): a JSON parser, the
        # client's or a front door's, turns those back into the key, so they are scrubbed too.
        # Searched only in bodies that hold an escape at all.
        self._escaped_key = _escaped_pattern(secret) if secret else None
        if api_key and secret is None:
            log.warning(
                "provider key shorter than %d characters: not scrubbed from provider answers",
                MIN_SCRUBBED_KEY_CHARS,
                extra={"fields": {"provider": name, "key_env": config.api_key_env}},
            )
        headers = {**config.headers, **adapter.auth_headers(api_key)}
        self.transport: Transport = transport or AiohttpTransport(name, config, headers, self.scrub)

    async def start(self) -> None:
        await self.transport.start()

    async def close(self) -> None:
        await self.transport.close()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request``; the response once its headers arrive (2xx only, else raised)."""
        response = await self.transport.send(request)
        status = response.status
        if 200 <= status < 300:
            return response
        try:
            body = await response.read()
            retry_after = _retry_after(response.headers)
        finally:
            response.close()
        raise self._status_error(status, body, retry_after, request.renamed)

    async def fetch_json(self, request: UpstreamRequest) -> tuple[bytes, JSONObject]:
        """``send`` then ``read_json`` in one coroutine (a whole answer's common path): the body
        of a 2xx answer, raw and parsed; any other status is raised as ``send`` does."""
        response = await self.transport.send(request)
        status = response.status
        if not 200 <= status < 300:
            try:
                body = await response.read()
                retry_after = _retry_after(response.headers)
            finally:
                response.close()
            raise self._status_error(status, body, retry_after, request.renamed)
        try:
            data = await response.read()
        finally:
            response.close()
        key = self._key_bytes  # scrub_bytes and the common case of _parsed, inline
        if key:
            if data.find(key) >= 0:
                data = data.replace(key, b"***")
            if data.find(b"\\") >= 0:
                data = self._unescaped(data)
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._parsed(data)  # raises the same error as read_json
        if type(parsed) is dict:
            return data, parsed
        return self._parsed(data)

    async def read_json(self, response: UpstreamResponse) -> tuple[bytes, JSONObject]:
        """The whole body, raw and parsed; a non-object or malformed body is an upstream error."""
        try:
            data = self.scrub_bytes(await response.read())
        finally:
            response.close()
        return self._parsed(data)

    def _parsed(self, data: bytes) -> tuple[bytes, JSONObject]:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse(
                f"{self.name}: provider returned a body that is not valid JSON", provider=self.name
            ) from None
        if not isinstance(parsed, dict):
            raise UpstreamBadResponse(
                f"{self.name}: provider returned JSON that is not an object", provider=self.name
            )
        return data, parsed

    def chunks(self, response: UpstreamResponse) -> AsyncGenerator[bytes, None]:
        """The body as it arrives, key scrubbed. Without a key there is nothing to scrub, and the
        response's own iterator is handed out: no extra generator step per chunk."""
        if not self._key_bytes:
            return response.chunks()
        return self._scrubbed(response)

    async def _scrubbed(self, response: UpstreamResponse) -> AsyncGenerator[bytes, None]:
        """Each chunk scrubbed, a key cut between two chunks included: a chunk that ends with
        the start of the key keeps that end back until the next chunk shows whether the key
        follows (a chunk's end is almost never the start of a key, so nothing is held back in
        practice: an event's blank line is not). The key written with JSON escapes is held back
        likewise, looked for only in a chunk that holds a backslash."""
        key = self._key_bytes
        secret = self._secret or ""  # (set whenever there are key bytes)
        held = b""
        async for chunk in response.chunks():
            if held:
                chunk = held + chunk
            if chunk.find(key) >= 0:
                chunk = chunk.replace(key, b"***")
            if chunk.find(b"\\") >= 0:
                chunk = self._unescaped(chunk)
                cut = min(_key_start_at_end(chunk, key), _escaped_start_at_end(chunk, secret))
            else:
                cut = _key_start_at_end(chunk, key)
            held = chunk[cut:]
            if cut:
                yield chunk[:cut] if held else chunk
        if held:
            yield held  # the body ended there: it was not the key

    def scrub(self, text: str) -> str:
        """``text`` with the provider key replaced, in case a provider or library echoes it, and
        any run of ``MIN_LEAKED_RUN`` or more of its characters (a key quoted cut short or with
        its middle masked; ``_without_runs``). Only errors' texts come here (a library's message,
        a ``Retry-After``): not on a request's common path."""
        secret = self._secret
        if not secret:
            return text
        return _without_runs(text.replace(secret, _REDACTED), secret, "***")

    def scrub_error_bytes(self, data: bytes) -> bytes:
        """``scrub_bytes``, then any run of ``MIN_LEAKED_RUN`` or more bytes of the key taken out
        as well: for a provider's error body (a non-2xx answer), never a 2xx one, so the common
        path keeps its one ``find``."""
        data = self.scrub_bytes(data)
        key = self._key_bytes
        return _without_runs(data, key, b"***") if key else data

    def scrub_bytes(self, data: bytes) -> bytes:
        key = self._key_bytes
        if not key:
            return data
        if data.find(key) >= 0:
            data = data.replace(key, b"***")
        return self._unescaped(data) if data.find(b"\\") >= 0 else data

    def _unescaped(self, data: bytes) -> bytes:
        """``data`` with the key written with JSON escapes replaced."""
        pattern = self._escaped_key
        return pattern.sub(b"***", data) if pattern is not None else data

    def _status_error(
        self, status: int, body: bytes, retry_after: str | None, renamed: Mapping[str, str] | None = None
    ) -> GatewayError:
        """The error for a non-2xx answer; ``renamed``: ``UpstreamRequest.renamed``."""
        if status < 200 or 300 <= status < 400:
            # Redirects are never followed (the key would go to another host) and 1xx is not an
            # answer: either way the provider is misconfigured, so another deployment should serve.
            return UpstreamBadResponse(
                f"{self.name}: provider answered HTTP {status}, which the gateway does not follow",
                provider=self.name,
            )
        # Scrubbed before the adapter reads it: every relayed field (message, type, param,
        # code) and the error's own args are built from clean text.
        scrubbed_after = self.scrub(retry_after) if retry_after else None
        error = self.adapter.translate_error(
            status, self.scrub_error_bytes(body), _retry_after_s(scrubbed_after), self.name
        )
        names_request = isinstance(error, UpstreamStatusError) and error.param is not None
        if (status in _CREDENTIAL_STATUSES and not names_request) or (
            isinstance(error, UpstreamStatusError) and error.upstream_type == "authentication_error"
        ):
            # (A 401 or 403 naming a request parameter, a file the client sent that the
            # gateway's key may not read, is the client's: relayed, as a 404 naming one is.)
            # The gateway's key, not the client's (errors.py, note 3). The log names the
            # provider's type and code; its message, which may quote part of the key, goes nowhere.
            code = error.code if isinstance(error.code, str) else None
            upstream_type = error.upstream_type if isinstance(error, UpstreamStatusError) else None
            log.warning(
                "provider refused the gateway's credentials",
                extra={
                    "fields": {"provider": self.name, "status": status, "type": upstream_type, "code": code}
                },
            )
            return UpstreamCredentialsRefused(self.name, status, code)
        if status == 402 or (
            isinstance(error, UpstreamStatusError) and error.upstream_type == "account_error"
        ):
            code = error.code if isinstance(error.code, str) else None
            log.warning(
                "provider refused the gateway's account (credit, billing or plan)",
                extra={"fields": {"provider": self.name, "status": status, "code": code}},
            )
            return UpstreamAccountRefused(self.name, status, code)
        if status == 404 and error.param in (None, "model"):
            # The model or deployment the policy names, or the path the adapter built from the
            # policy's base_url: the gateway's configuration, not the client's (UpstreamModelMissing).
            # A 404 naming another parameter (a file or vector store id the client sent) is relayed.
            code = error.code if isinstance(error.code, str) else None
            log.warning(
                "provider does not know the configured model or deployment",
                extra={"fields": {"provider": self.name, "status": status, "code": code}},
            )
            return UpstreamModelMissing(self.name, status, code)
        param = error.param
        if renamed is not None and param is not None and param in renamed:
            error.param = renamed[param]  # the name the client sent it under
        return error


def _key_start_at_end(data: bytes, key: bytes) -> int:
    """Where the longest end of ``data`` that is a start of ``key`` (and not all of it) begins;
    ``len(data)`` when no end of ``data`` could be the key's start."""
    size = len(data)
    if not size or data[-1] not in key:  # an event's end (a line feed) is in no key: at once
        return size
    first = key[:1]
    i = data.rfind(first, max(0, size - len(key) + 1))
    while i >= 0:
        if key.startswith(data[i:]):
            return i
        i = data.rfind(first, max(0, size - len(key) + 1), i)
    return size


def _escaped_start_at_end(data: bytes, secret: str) -> int:
    """Where the earliest end of ``data`` that may begin the key written with JSON escapes
    (``_escaped_pattern``: ``sk-\\u0061...`` cut inside an escape or between two) starts;
    ``len(data)`` when none may. Run only on a chunk that holds a backslash; an end past the
    last line feed (an event's end, never inside a JSON string) is the only one looked at."""
    size = len(data)
    start = max(data.rfind(b"\n") + 1, size - 6 * len(secret))
    if data.find(b"\\", start) < 0:
        return size
    first = secret[0].encode()[:1]
    for at in range(start, size):
        byte = data[at : at + 1]
        if (byte == b"\\" or byte == first) and _begins_escaped(data, at, secret):
            return at
    return size


def _begins_escaped(data: bytes, at: int, secret: str) -> bool:
    """Whether ``data[at:]`` is a proper start of ``secret`` written as ``_escaped_pattern``
    matches it (each character as itself, as ``\\uXXXX`` in either case, ``/`` also as ``\\/``)."""
    size = len(data)
    for char in secret:
        if at >= size:
            return True
        if data[at] == 0x5C:  # a backslash: \uXXXX or \/
            options = [b"\\u%04x" % ord(char)] if ord(char) <= 0xFFFF else []
            if char == "/":
                options.append(b"\\/")
            piece = data[at : at + 6].lower()
            for option in options:
                if piece.startswith(option):
                    at += len(option)
                    break
                if option.startswith(piece) and at + len(piece) == size:
                    return True
            else:
                return False
        else:
            literal = char.encode("utf-8", "surrogatepass")
            piece = data[at : at + len(literal)]
            if piece != literal:
                return literal.startswith(piece) and at + len(piece) == size
            at += len(literal)
    return False  # the whole key: already replaced, so not a start


def _retry_after(headers: Mapping[str, str]) -> str | None:
    """The wait a provider asked for, in seconds as text: ``retry-after-ms`` (Azure OpenAI and
    OpenAI send it, and the official SDKs read it first, being the finer) else ``Retry-After``."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return repr(float(ms) / 1000)
        except ValueError:
            pass
    return headers.get("Retry-After")


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date; rare from LLM providers, and then a plain backoff is right
    return seconds if seconds >= 0 and seconds == seconds and seconds != float("inf") else None


def _escaped_pattern(secret: str) -> re.Pattern[bytes]:
    r"""Bytes of ``secret`` as JSON may write it: any character as itself or as ``\uXXXX`` (hex
    in either case), ``/`` also as ``\/``."""
    parts = []
    for char in secret:
        code = ord(char)
        options = [re.escape(char.encode("utf-8", "surrogatepass"))]
        if code <= 0xFFFF:  # (past it JSON writes a surrogate pair: such a key is matched as itself)
            options.append(
                rb"\\u" + "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{code:04x}").encode()
            )
        if char == "/":
            options.append(rb"\\/")
        parts.append(b"(?:" + b"|".join(options) + b")")
    return re.compile(b"".join(parts))


def _without_runs(data: AnyStr, key: AnyStr, redacted: AnyStr) -> AnyStr:
    """``data`` with every run of ``MIN_LEAKED_RUN`` or more consecutive characters of ``key``
    (found anywhere in it, not only its start) replaced by ``redacted``.

    Each run that long holds one of the key's windows of ``MIN_LEAKED_RUN // 2`` characters that
    start at a multiple of that width, so those few windows are searched for and each hit grown
    both ways while it still follows the key: a handful of ``find`` calls on an error body."""
    width = MIN_LEAKED_RUN // 2
    size, key_size = len(data), len(key)
    spans: list[tuple[int, int]] = []
    for start in range(0, key_size - width + 1, width):
        window = key[start : start + width]
        at = data.find(window)
        while at >= 0:
            low, k = at, start
            while low > 0 and k > 0 and data[low - 1] == key[k - 1]:
                low -= 1
                k -= 1
            high, k = at + width, start + width
            while high < size and k < key_size and data[high] == key[k]:
                high += 1
                k += 1
            if high - low >= MIN_LEAKED_RUN:
                spans.append((low, high))
            at = data.find(window, at + 1)
    if not spans:
        return data
    spans.sort()
    pieces: list[AnyStr] = []
    done = 0
    for low, high in spans:
        if pieces and low <= done:  # overlaps or touches the run before: one replacement
            done = max(done, high)
            continue
        pieces.append(data[done:low])
        pieces.append(redacted)
        done = high
    pieces.append(data[done:])
    return data[:0].join(pieces)
