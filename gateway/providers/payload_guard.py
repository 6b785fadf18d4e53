"""A provider connection that never leaves a body's reader waiting after the connection closed.

When a provider's body breaks its own framing mid-way (a chunk size that is not hex, a chunk
longer than it said), aiohttp's ``ResponseHandler.data_received`` catches the parser's error,
closes the transport and puts the error on the queue of *responses*, not on the body being read;
``connection_lost`` then finds the parser satisfied and drops the body's reader without a word.
Whoever reads that body waits until a timeout of its own: the gateway's read-gap watchdog
(``timeouts.first_byte_s``, 60 s by default), so a provider's one malformed chunk held the client
a minute (aiohttp 3.14; curl gives up at once). ``GuardedResponseHandler`` ends such a body with
``ClientPayloadError`` when its connection is lost, which the transport makes an
``UpstreamBadResponse`` (a stream's ``bad_event``) at once.

It costs nothing per request: it acts only in ``connection_lost``, once per connection.
"""

from __future__ import annotations

import functools
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

# How the reader's error begins (``transport._ErrorTranslation`` tells it from a connection cut
# short, whose aiohttp message begins "Response payload is not completed").
MALFORMED = "Response payload is malformed"


class GuardedResponseHandler(ResponseHandler):
    """aiohttp's protocol for one connection, ending a body still being read when it is lost."""

    def connection_lost(self, exc: BaseException | None) -> None:
        payload = self._payload  # (aiohttp drops it below)
        super().connection_lost(exc)
        if payload is not None and not payload.is_eof() and payload.exception() is None:
            payload.set_exception(
                aiohttp.ClientPayloadError(
                    f"{MALFORMED}: the connection closed before the body ended "
                    "(a body that broke its own framing)"
                )
            )


def guard(connector: aiohttp.BaseConnector, loop: Any) -> bool:
    """Make ``connector`` open its connections with ``GuardedResponseHandler``; whether it could
    (aiohttp keeps the protocol factory in ``_factory``, as every 3.x release has)."""
    if not hasattr(connector, "_factory"):
        return False
    factory: Any = functools.partial(GuardedResponseHandler, loop=loop)
    connector._factory = factory
    return True
