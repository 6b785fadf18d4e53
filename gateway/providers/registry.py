"""Provider kinds by the name the policy uses for them."""

from __future__ import annotations

from collections.abc import Callable

from gateway.policy.model import Provider
from gateway.providers.base import ProviderAdapter
from gateway.providers.openai import OpenAIAdapter

ADAPTERS: dict[str, Callable[[Provider], ProviderAdapter]] = {
    "openai": OpenAIAdapter,
}


def adapter_for(config: Provider) -> ProviderAdapter:
    """The adapter for a provider's policy entry (a validated policy only names known kinds)."""
    return ADAPTERS[config.kind](config)
