"""The OpenAI-only endpoints (moderations, image generation, speech): which provider kinds serve
them, and the client's error for a model group none of whose deployments can.

These are OpenAI's own operations with no counterpart in Anthropic's or Gemini's APIs that the
gateway translates to, so they are passed through to OpenAI-compatible deployments only (and to
Azure OpenAI's, at its ``/openai/deployments/{d}/...`` paths, for images and speech: Azure has no
moderations endpoint). A group with a capable deployment among others is served by it (the
others' adapters refuse with the retryable ``UnsupportedByProvider``, so failover moves on);
a group with none is the client's 400 before anything is admitted or sent.
"""

from __future__ import annotations

from gateway.errors import InvalidRequest
from gateway.policy.model import Policy
from gateway.wire.requests import Endpoint

# The provider kinds that serve each endpoint.
SERVING_KINDS: dict[Endpoint, frozenset[str]] = {
    Endpoint.MODERATIONS: frozenset(("openai",)),
    Endpoint.IMAGES: frozenset(("openai", "azure")),
    Endpoint.SPEECH: frozenset(("openai", "azure")),
    Endpoint.TRANSCRIPTIONS: frozenset(("openai", "azure")),
    Endpoint.TRANSLATIONS: frozenset(("openai", "azure")),
}


def check_served(endpoint: Endpoint, group: str, policy: Policy) -> None:
    """Raise the client's 400 when no deployment of model group ``group`` is of a kind that
    serves ``endpoint``."""
    kinds = SERVING_KINDS[endpoint]
    config = policy.models.get(group)
    if config is None:
        return  # (resolved a moment ago: a reload in between; routing says what it finds)
    for deployment in config.deployments:
        provider = policy.providers.get(deployment.provider)
        if provider is not None and provider.kind in kinds:
            return
    raise InvalidRequest(
        f"Model group '{group}' cannot serve /v1/{endpoint.value}: none of its deployments is of a "
        f"provider kind that does ({', '.join(sorted(kinds))}).",
        param="model",
        code="unsupported_endpoint",
    )


def image_usage(usage: object) -> object:
    """An images answer's usage as the accounting reads it: the GPT image models report
    ``input_tokens`` / ``output_tokens`` (priced per token, as chat's), the DALL·E models none."""
    if not isinstance(usage, dict) or "prompt_tokens" in usage:
        return usage
    return {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")}
