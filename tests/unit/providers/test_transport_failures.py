"""A transport failure is told in the gateway's words, naming the provider and the kind of failure
(``code``), never in the HTTP library's (``ClientOSError: [Errno 104] ...``, a host and port, a
URL): each kind produced by a real socket on loopback. What the library said is kept in
``detail``, for the server's log."""

from __future__ import annotations

import socket

import pytest

from gateway.errors import UpstreamBadResponse, UpstreamConnectError, UpstreamError
from tests.unit.providers.loopback import REQUEST, RawUpstream, transport

# behaviour -> (class, code, message, a piece of the library's text, which only detail keeps)
CASES = {
    "reset": (UpstreamConnectError, "connection_reset", "p: the provider reset the connection", "Errno 104"),
    "close": (
        UpstreamConnectError,
        "connection_closed",
        "p: the provider closed the connection before the answer was complete",
        "ServerDisconnectedError",
    ),
    "mid-body": (
        UpstreamConnectError,
        "connection_closed",
        "p: the provider closed the connection before the answer was complete",
        "Not enough data",
    ),
    "garbage": (
        UpstreamBadResponse,
        "malformed_response",
        "p: the provider sent a malformed HTTP response",
        "ClientResponseError",
    ),
    "plain": (
        UpstreamConnectError,
        "tls_failure",
        "p: the TLS handshake with the provider failed",
        "WRONG_VERSION_NUMBER",
    ),
}


async def failure_of(base_url: str) -> UpstreamError:
    """What the transport raises sending one request to ``base_url`` and reading the answer."""
    t = transport(base_url)
    await t.start()
    try:
        with pytest.raises(UpstreamError) as raised:
            response = await t.send(REQUEST)
            try:
                await response.read()
            finally:
                response.close()
    finally:
        await t.close()
    return raised.value


def assert_in_gateway_words(error: UpstreamError, base_url: str) -> None:
    port = base_url.rsplit(":", 1)[1].split("/")[0]
    for library_word in ("Errno", "Client", "Server", "127.0.0.1", port, "/v1", "aiohttp"):
        assert library_word not in error.message, error.message
    assert error.provider == "p"


@pytest.mark.parametrize("behaviour", list(CASES))
async def test_each_failure_of_a_real_socket_is_named_in_the_gateways_words(behaviour: str) -> None:
    upstream = RawUpstream(behaviour)
    base_url = await upstream.start()
    try:
        error = await failure_of(base_url)
    finally:
        await upstream.close()
    cls, code, message, library_text = CASES[behaviour]
    assert type(error) is cls, repr(error)
    assert (error.code, error.message) == (code, message)
    assert_in_gateway_words(error, base_url)
    assert error.detail is not None and library_text in error.detail, error.detail
    assert upstream.requests == 1


async def test_a_port_nobody_listens_on_is_a_refused_connection() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    error = await failure_of(base_url)
    assert (type(error), error.code) == (UpstreamConnectError, "connection_refused")
    assert error.message == "p: the provider refused the connection"
    assert_in_gateway_words(error, base_url)
    assert "Connect call failed" in (error.detail or "")


async def test_a_host_name_that_does_not_resolve_is_a_dns_failure() -> None:
    # .invalid never resolves (RFC 6761, 6.4): the resolver answers at once, without a network.
    base_url = "http://gateway-test.invalid:80/v1"
    error = await failure_of(base_url)
    assert (type(error), error.code) == (UpstreamConnectError, "dns_failure")
    assert error.message == "p: the provider's host name could not be resolved (DNS)"
    assert "gateway-test.invalid" not in error.message
    assert "gateway-test.invalid" in (error.detail or "")
