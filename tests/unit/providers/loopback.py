"""The real transport against a provider on loopback (an aiohttp app from the ``aiohttp_server``
fixture): shared by the transport's timeout and limit tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.providers.transport import AiohttpTransport

Server = Callable[[web.Application], Awaitable[TestServer]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST = UpstreamRequest("/chat/completions", b"{}", False)


def transport(base_url: str, provider_fields: str = "") -> AiohttpTransport:
    """An ``AiohttpTransport`` for provider ``p`` at ``base_url``; ``provider_fields``: more of
    its policy keys, as YAML flow-mapping text (``timeouts: {...}, max_response_bytes: 1KiB``)."""
    extra = f", {provider_fields}" if provider_fields else ""
    text = (
        f"version: 1\nproviders:\n  p: {{kind: openai, base_url: '{base_url}'{extra}}}\n"
        "models:\n  m: {deployments: [{provider: p, model: x}]}\nmemory: {enabled: false}\n"
    )
    return AiohttpTransport("p", parse_policy(text).providers["p"], {}, lambda s: s)


async def upstream(aiohttp_server: Server, handler: Handler) -> str:
    """The base URL of a provider on loopback whose every POST is ``handler``'s."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("/v1"))
