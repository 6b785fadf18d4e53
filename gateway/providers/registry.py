"""Provider kinds by the name the policy uses for them."""

from __future__ import annotations

from collections.abc import Callable

from gateway.policy.model import Provider
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.azure import AzureOpenAIAdapter
from gateway.providers.base import ProviderAdapter
from gateway.providers.gemini import GeminiAdapter
from gateway.providers.openai import OpenAIAdapter

ADAPTERS: dict[str, Callable[[Provider], ProviderAdapter]] = {
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "gemini": GeminiAdapter,
    "azure": AzureOpenAIAdapter,
}


def adapter_for(config: Provider) -> ProviderAdapter:
    """The adapter for a provider's policy entry (a validated policy only names known kinds)."""
    return ADAPTERS[config.kind](config)
