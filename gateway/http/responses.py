"""Response builders shared by handlers and the middleware."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.web_response import REASON_PHRASES
from multidict import CIMultiDict

from gateway import jsonsafe
from gateway.errors import AllDeploymentsFailed, GatewayError, NoHealthyDeployment

JSON = "application/json"


def error_response(error: GatewayError, request_id: str = "") -> web.Response:
    """The OpenAI error envelope for ``error`` with its status and headers (e.g. Retry-After);
    ``request_id`` is in the headers only (OpenAI's envelope has no field for it)."""
    response = WholeJSON(error.body(), error.http_status, error.headers or None)
    if error.headers.get("connection") == "close":
        response.force_close()  # aiohttp would otherwise keep the connection for the next request
    return response


def json_response(body: bytes, status: int = 200) -> web.Response:
    """A JSON response from bytes already serialised (with orjson, or a provider's own)."""
    return WholeJSON(body, status)


_JSON_TYPE = ((hdrs.CONTENT_TYPE, JSON),)
_EMPTY_STATUSES = frozenset((204, 304))  # (aiohttp's ``must_be_empty_body``, with 1xx)
# The characters aiohttp's serialiser refuses in a header (``http_writer._safe_header``'s).
_CONTROLS = bytes(c for c in range(0x20) if c != 0x09) + b"\x7f"
_ZLIB_SIZE = web.Response(body=b"")._zlib_executor_size  # (aiohttp's default, however it names it)


class OnePassHead(web.StreamResponse):
    """A response whose status line and headers are serialised here in one pass, with the
    gateway's own header lines already serialised (``head``), instead of aiohttp's chain of
    coroutines and frames (``prepare``, ``_start``, ``_prepare_headers``, the prepare hook,
    ``_write_headers``, the writer's ``write_headers``) and its set-one-then-serialise-again of
    every header. ``WholeJSON`` (a whole answer, written with its body by the connection handler)
    and ``sse.StreamAnswer`` (a stream, its head going out with its first chunk) are the two.

    Whatever the one pass does not cover (HTTP/1.0, HEAD, compression, cookies, an
    ``on_response_prepare`` hook, a status without a body, a framing header already set) goes
    through aiohttp's own ``prepare``, unchanged but for ``head``'s lines, added to the headers
    first. The bytes on the wire are what aiohttp writes, but for the order of the headers: the
    response's own, ``head``'s lines, then the framing line (``Content-Length`` or
    ``Transfer-Encoding``), ``Date``, ``Server`` (when neither sets it), ``Connection: close``
    (when the connection ends)."""

    # Header lines already serialised (``middleware.gateway_head``: the gateway's own, ``Server``
    # among them), written after ``headers``, and how many lines they are by construction (a CR
    # or LF inside a value makes the count written fall short of the text's: refused); "": none.
    head = ""
    head_lines = 0

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """aiohttp's, for what the one pass leaves to it: ``head``'s lines go into the headers
        first (a line with a CR or LF of its own is refused there by aiohttp's serialiser)."""
        head = self.head
        if head and self._payload_writer is None and not self._eof_sent:
            self.head = ""
            lines = head.split("\r\n")[:-1]
            if len(lines) != self.head_lines:  # a value with a CR LF of its own: an injection
                raise ValueError(
                    "Newline or carriage return character detected in HTTP status message or header."
                )
            for line in lines:
                name, _, value = line.partition(": ")
                self._headers.add(name, value)
        return await super().prepare(request)

    def one_pass_head(self, request: web.BaseRequest, framing: str) -> bytes | None:
        """The status line and headers, ``framing`` (a header line) among them, as aiohttp's
        ``prepare`` would write them; None when this answer or request needs aiohttp's path, a
        header aiohttp's serialiser would refuse or alter among them (a control character other
        than tab, CR LF included: aiohttp's path then raises its ``ValueError``; a lone
        surrogate, which it drops). Sets the keep-alive decision, as ``prepare`` does."""
        if (
            self._payload_writer is not None
            or self._eof_sent
            or self._compression
            or self._cookies
            or self._chunked
            or request.version != HttpVersion11
            or request.method == hdrs.METH_HEAD
            or self._status < 200
            or self._status in _EMPTY_STATUSES
        ):
            return None
        match_info = request._match_info  # type: ignore[attr-defined]  # (a web.Request: routed)
        if match_info is not None:
            for app in match_info._apps:
                if app.on_response_prepare:
                    return None
        headers = self._headers
        if hdrs.CONTENT_LENGTH in headers or hdrs.TRANSFER_ENCODING in headers:
            return None
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
        head = self.head
        ends = len(lines) + 3  # (the status line's, the framing line's and the blank line's)
        if head:
            lines.append(head)
            ends += self.head_lines
        elif hdrs.SERVER not in headers:
            lines.append(f"Server: {SERVER_SOFTWARE}\r\n")
            ends += 1
        lines.append(framing)
        if hdrs.DATE not in headers:
            lines.append(f"Date: {rfc822_formatted_time()}\r\n")
            ends += 1
        if not keep_alive and hdrs.CONNECTION not in headers:
            lines.append("Connection: close\r\n")
            ends += 1
        text = f"HTTP/1.1 {self._status} {self._reason}\r\n{''.join(lines)}\r\n"
        try:
            encoded = text.encode()
        except UnicodeEncodeError:  # a lone surrogate, which aiohttp's serialiser drops
            return None
        # Every control character aiohttp's serialiser refuses (all but tab: CR and LF, NUL,
        # DEL...) must be one of the line ends written above, a CR LF per header line (``head``'s
        # counted as they were made), the status line's, the framing line's and the blank line's;
        # any other is aiohttp's path's to refuse (ValueError, nothing written: a header
        # injection never reaches the wire; ``prepare`` refuses ``head``'s lines if a value
        # split one).
        if len(encoded.translate(None, _CONTROLS)) != len(encoded) - 2 * ends:
            return None
        return encoded


class WholeJSON(OnePassHead, web.Response):
    """A whole JSON answer (every proxied call's, a cache hit's, an admin answer) that the
    connection handler writes as one buffer: status line, headers and body, serialised in one
    pass (``write_now``, ``OnePassHead``), instead of aiohttp's chain of a dozen coroutines and
    frames (``prepare``'s, then ``write_eof`` three times, ``_send_headers_with_payload``) and a
    ``Response.__init__`` that sorts out text, charset and payload arguments a JSON body never
    has (issue 12: a cache hit's largest piece of the gateway's own cost).

    It is a complete ``web.Response`` (``__init__`` sets what aiohttp's would: a test compares
    the attributes with the installed aiohttp's): whatever the one-pass write does not cover
    (``OnePassHead``'s cases, a large body or a connection with unsent bytes:
    ``connection.GatewayRequestHandler.finish_response``) goes through aiohttp's own path."""

    def __init__(self, body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        # ``Response.__init__`` with ``body`` bytes and ``content_type``: what it sets, directly.
        self._state = {}
        self._headers = CIMultiDict(_JSON_TYPE)
        if headers:
            self._headers.extend(headers)
        self._status = status
        self._reason = REASON_PHRASES.get(status, "")
        self._body = body
        self._compressed_body = None
        self._zlib_executor_size = _ZLIB_SIZE
        self._zlib_executor = None

    def write_now(self, request: web.BaseRequest, transport: asyncio.Transport) -> bool:
        """Write the whole answer to ``transport`` at once, as ``prepare`` and ``write_eof``
        would; False, having written nothing, when this answer or request needs aiohttp's path
        (``one_pass_head``)."""
        body = self._body
        assert isinstance(body, bytes | bytearray)
        encoded = self.one_pass_head(request, f"Content-Length: {len(body)}\r\n")
        if encoded is None:
            return False
        if transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")  # (as aiohttp's writer)
        writer = request._payload_writer
        size = len(encoded) + len(body)
        writer.buffer_size += size
        writer.output_size += size
        transport.write(encoded + body)  # (aiohttp joins them too, below 2 KiB and on Python < 3.12.9)
        writer._eof = True  # type: ignore[attr-defined]  # (aiohttp's StreamWriter, as write_eof leaves it)
        self._eof_sent = True
        self._body_length = writer.output_size
        return True


# ----- Anthropic's error envelope, for the Messages front door (/v1/messages*)

MESSAGES_PATH = "/v1/messages"
# Anthropic's error type for each status (its "Errors" reference); any other 4xx is an
# invalid request, any other 5xx an api_error.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
OVERLOADED = 529


def anthropic_status(error: GatewayError) -> int:
    """The status a Messages client gets: the gateway's, except that a 503 the providers'
    overload caused (no healthy deployment, a provider's 503/529, the last of a failover of
    those) is Anthropic's 529 ``overloaded_error`` (the SDK's ``OverloadedError``)."""
    status = error.http_status
    return OVERLOADED if status == 503 and _overloaded(error) else status


def _overloaded(error: GatewayError) -> bool:
    if isinstance(error, AllDeploymentsFailed):
        return _overloaded(error.last)
    return isinstance(error, NoHealthyDeployment) or error.shows_overload


def anthropic_envelope(error: GatewayError, request_id: str = "") -> bytes:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}`` for ``error`` (and
    ``details`` when the error has Anthropic's machine-readable ones): Anthropic's "Error shapes",
    whose answers "also include a ``request_id`` field" (the ``request-id`` header's value), left
    out where there is none to give (a stream's error event, which Anthropic's have without it)."""
    status = anthropic_status(error)
    kind = _ANTHROPIC_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    inner: dict[str, object] = {"type": kind, "message": error.message}
    if error.details is not None:
        inner["details"] = error.details
    if request_id:
        return jsonsafe.dumps({"type": "error", "error": inner, "request_id": request_id})
    return jsonsafe.dumps({"type": "error", "error": inner})


def anthropic_error_response(error: GatewayError, request_id: str = "") -> web.Response:
    """``error`` in Anthropic's envelope and status, with its headers (e.g. Retry-After), and
    ``request_id`` in its body."""
    response = WholeJSON(
        anthropic_envelope(error, request_id), anthropic_status(error), error.headers or None
    )
    if error.headers.get("connection") == "close":
        response.force_close()
    return response


def anthropic_error_event(error: GatewayError) -> bytes:
    """The ``error`` event that ends a Messages stream a provider failed after its first byte."""
    return b"event: error\ndata: " + anthropic_envelope(error) + b"\n\n"


ErrorRenderer = Callable[[GatewayError, str], web.Response]  # (the error, its request id)


def error_renderer(path: str) -> ErrorRenderer:
    """How errors on ``path`` are rendered: Anthropic's envelope under /v1/messages, OpenAI's
    everywhere else."""
    if path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/"):
        return anthropic_error_response
    return error_response
