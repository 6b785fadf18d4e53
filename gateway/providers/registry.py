"""Provider kinds by the name the policy uses for them.

Each kind pairs the policy class of its entries (``OpenAIProvider``, ...) with the adapter built
from one; ``adapter_for`` picks by the entry's ``kind``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.policy.model import (
    AnthropicProvider,
    AzureProvider,
    GeminiProvider,
    OpenAIProvider,
    Provider,
    ProviderBase,
)
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.azure import AzureOpenAIAdapter
from gateway.providers.base import ProviderAdapter
from gateway.providers.gemini import GeminiAdapter
from gateway.providers.openai import OpenAIAdapter

P = TypeVar("P", bound=ProviderBase)


@dataclass(frozen=True, slots=True)
class AdapterKind(Generic[P]):
    """A provider ``kind``: the policy class of its entries and the adapter built from one."""

    config: type[P]
    build: Callable[[P], ProviderAdapter]

    def __call__(self, config: Provider) -> ProviderAdapter:
        if not isinstance(config, self.config):
            raise TypeError(f"expected {self.config.__name__}, got {type(config).__name__}")
        return self.build(config)


ADAPTERS: dict[str, Callable[[Provider], ProviderAdapter]] = {
    "openai": AdapterKind(OpenAIProvider, OpenAIAdapter),
    "anthropic": AdapterKind(AnthropicProvider, AnthropicAdapter),
    "gemini": AdapterKind(GeminiProvider, GeminiAdapter),
    "azure": AdapterKind(AzureProvider, AzureOpenAIAdapter),
}


def adapter_for(config: Provider) -> ProviderAdapter:
    """The adapter for a provider's policy entry (a validated policy only names known kinds)."""
    return ADAPTERS[config.kind](config)
