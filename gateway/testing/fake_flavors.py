"""Wire formats the fake provider can speak besides OpenAI's.

Each flavor is a module with ``add_routes(app)`` registering its endpoints on the fake
provider's app (state at ``fake_provider.FAKE_STATE``, faults drawn and injected the same way).
Imported lazily, so the OpenAI fake never loads them.
"""

from __future__ import annotations

import importlib

from aiohttp import web

FLAVORS = ("openai", "anthropic", "gemini")
_MODULES = {
    "anthropic": "gateway.testing.fake_anthropic",
    "gemini": "gateway.testing.fake_gemini",
}


def add_flavor_routes(app: web.Application, flavor: str) -> None:
    """Register ``flavor``'s endpoints on ``app``."""
    module = importlib.import_module(_MODULES[flavor])
    module.add_routes(app)
