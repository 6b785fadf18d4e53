"""Provider kinds by the name the policy uses for them."""

from __future__ import annotations

from gateway.providers.base import ProviderAdapter
from gateway.providers.openai import OpenAIAdapter

ADAPTERS: dict[str, type[ProviderAdapter]] = {
    "openai": OpenAIAdapter,
}


def adapter_for(kind: str) -> ProviderAdapter:
    """A new adapter for provider ``kind`` (a validated policy only names known kinds)."""
    return ADAPTERS[kind]()
