"""The adapter registry knows exactly the provider kinds the policy does."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from gateway.policy.model import AnthropicProvider, OpenAIProvider, Provider
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.azure import AzureOpenAIAdapter
from gateway.providers.gemini import GeminiAdapter
from gateway.providers.openai import OpenAIAdapter
from gateway.providers.registry import ADAPTERS, adapter_for

CONFIG: TypeAdapter[Provider] = TypeAdapter(Provider)


def test_the_registry_kinds_are_the_policy_kinds() -> None:
    assert set(ADAPTERS) == set(CONFIG.json_schema()["discriminator"]["mapping"])


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("openai", OpenAIAdapter),
        ("azure", AzureOpenAIAdapter),
        ("anthropic", AnthropicAdapter),
        ("gemini", GeminiAdapter),
    ],
)
def test_each_kind_builds_its_adapter(kind: str, cls: type) -> None:
    config = CONFIG.validate_python({"kind": kind, "base_url": "https://example.test/v1"})
    assert type(adapter_for(config)) is cls


def test_anthropic_settings_reach_the_adapter() -> None:
    config = AnthropicProvider(kind="anthropic", base_url="https://x/v1", api_version="2024-01-01")
    assert adapter_for(config).auth_headers(None) == {"anthropic-version": "2024-01-01"}


def test_an_entry_of_another_kind_is_refused() -> None:
    with pytest.raises(TypeError, match="expected AnthropicProvider, got OpenAIProvider"):
        ADAPTERS["anthropic"](OpenAIProvider(kind="openai", base_url="https://x/v1"))
