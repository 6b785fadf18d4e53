"""Read a JSON request body: the one way every JSON endpoint gets its body.

In order: the ``Content-Type`` must be ``application/json`` (415 otherwise: a web page can send
``text/plain`` cross-site without a CORS preflight, ``application/json`` it cannot), the body
must not be compressed (415: ``refuse_compressed``), the declared
length must be within ``server.max_body_bytes`` (413 before reading a byte), the body must arrive
within ``server.request_read_timeout_s`` (408, and the connection is closed), and it must parse
as a JSON object the gateway can serialise again (400, ``service/validation.parse_body``).

``Expect: 100-continue`` (h-expect): every route withholds its ``100 Continue``
(``middleware.expect_handler``) until its body is about to be read (``send_continue``, called by
``read_json`` and the upload readers), so whatever its handler refuses first (the key, the
declared length, the content type, a door's limits: ``read_json``'s ``ctx``) is the only answer,
and the client never sends the body.
"""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web

from gateway import keys
from gateway.auth.gate import LimitedCall
from gateway.errors import (
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedContentEncoding,
    UnsupportedMediaType,
    UnsupportedTransferCoding,
)
from gateway.service.validation import parse_body
from gateway.wire.requests import JSONObject

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class WithholdsContinue:
    """A connection handler told when a request's ``100 Continue`` is withheld
    (``connection.GatewayRequestHandler``): an answer sent while it still is, with the body not
    all in, ends the connection at once (its ``finish_response``), rather than after aiohttp's
    lingering wait for a body the client was never asked for. A flag on the connection, so an
    ordinary answer pays one attribute read for it."""

    __slots__ = ()
    continue_withheld: bool


def withhold_continue(request: web.Request) -> None:
    """Note that ``request`` asked for ``100 Continue`` and has not had it
    (``middleware.expect_handler``)."""
    request[keys.CONTINUE_DEFERRED] = True
    protocol = request.protocol
    if isinstance(protocol, WithholdsContinue):
        protocol.continue_withheld = True


async def send_continue(request: web.Request) -> None:
    """Send a request's withheld ``100 Continue`` (``middleware.expect_handler``), if it asked for
    one: called when its body is about to be read, after every check that refuses it unread."""
    if request.get(keys.CONTINUE_DEFERRED):
        request[keys.CONTINUE_DEFERRED] = False
        protocol = request.protocol
        if isinstance(protocol, WithholdsContinue):
            protocol.continue_withheld = False
        await request.writer.write(_CONTINUE)
        request.writer.output_size = 0  # the response proper has not started


JSON_CONTENT_TYPE = "application/json"


async def read_json(
    request: web.Request, max_body_bytes: int | None = None, ctx: LimitedCall | None = None
) -> JSONObject:
    """The request's body as a JSON object, or the client's error (415, 413, 408, 400).
    ``max_body_bytes``: the app's ``server.max_body_bytes`` when the caller has it at hand (0:
    no limit); otherwise read from the app. ``ctx``: a call its key's limits admit once the
    body is read (the front doors'): when its ``100 Continue`` is withheld, a key its limits
    already refuse gets that 429 before it is told to send (``LimitGate.check_unread``)."""
    body = json_now(request, max_body_bytes)
    if body is not None:
        return body
    if request.get(keys.CONTINUE_DEFERRED):  # (only a body not yet in gets here: no cost otherwise)
        if ctx is not None:
            await request.app[keys.LIMITS].check_unread(ctx)
        await send_continue(request)
    timeout_s = request.app[keys.POLICY].server.request_read_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(timeout_s) from None
    return parse_body(raw)


def json_now(request: web.Request, max_body_bytes: int | None = None) -> JSONObject | None:
    """``read_json`` without a coroutine when the whole body came with the headers (most
    requests): the body, or the client's error; None when the body is still to come (then await
    ``read_json``, whose checks, the same again, pass again). A hot handler calls it first: one
    coroutine fewer per request."""
    # The exact header most clients send needs no parsing (aiohttp's ``content_type`` copies
    # the parsed parameters into a new dict on each request).
    # (``headers`` and ``content`` read once: each read of an aiohttp ``reify`` is a lookup in
    # the request's cache, ~0.3k instructions)
    headers = request.headers
    if headers.get("Content-Type") != JSON_CONTENT_TYPE and request.content_type != JSON_CONTENT_TYPE:
        # aiohttp reports a missing header as application/octet-stream; show what was sent.
        raise UnsupportedMediaType(headers.get("Content-Type", ""))
    if (
        headers.get(hdrs.CONTENT_ENCODING) is not None  # (aiohttp's ``istr`` names: no case folding)
        or headers.get(hdrs.TRANSFER_ENCODING, "chunked") != "chunked"
    ):
        refuse_compressed(request)
    limit = (request.app[keys.SETTINGS].max_body_bytes or 0) if max_body_bytes is None else max_body_bytes
    if limit:  # (``request.content_length``'s parse, without its call)
        declared = headers.get("Content-Length")
        if declared is not None and int(declared) > limit:
            raise PayloadTooLarge(limit)  # refuse before reading a byte of it
    content = request.content
    if content.is_eof():
        # The whole body came with the headers (most requests): no timer needed, and the bytes
        # are taken from the reader at once rather than through ``request.read()``'s two
        # ``readany`` coroutines, a bytearray and a copy (12.6k instructions of a cache hit's
        # 381k). ``read`` held a body with no declared length (chunked) to the limit: so does this.
        raw = content.read_nowait()
        if limit and len(raw) > limit:
            raise PayloadTooLarge(limit)
        return parse_body(raw)
    return None


def refuse_compressed(request: web.Request) -> None:
    """415 for a compressed body (``Content-Encoding`` gzip, deflate, br...): the server does not
    inflate request bodies (``auto_decompress=False``, ``server.py``), so a compressed one is
    refused by name rather than misread as bad JSON. A transfer coding other than ``chunked``
    (``gzip, chunked``), which aiohttp's parser reads as plain chunked: 501 (RFC 9112 6.1)."""
    for given in request.headers.getall("Transfer-Encoding", ()):
        for coding in given.split(","):
            if coding.strip().lower() != "chunked":
                raise UnsupportedTransferCoding(given)
    # Every header and every coding in each (``identity, gzip`` is gzip, as is a second header):
    # one that is not identity means bytes this gateway would misread.
    for encoding in request.headers.getall("Content-Encoding", ()):
        for coding in encoding.split(","):
            if coding.strip().lower() not in _IDENTITY:
                raise UnsupportedContentEncoding(encoding)


_IDENTITY = ("", "identity")
