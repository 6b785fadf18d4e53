"""The OpenAI-only endpoints (moderations, image generation, edits and variations, speech,
transcriptions and translations): which provider kinds serve
them, and the client's error for a model group none of whose deployments can.

These are OpenAI's own operations with no counterpart in Anthropic's or Gemini's APIs that the
gateway translates to, so they are passed through to OpenAI-compatible deployments only (and to
Azure OpenAI's, at its ``/openai/deployments/{d}/...`` paths, for images and speech: Azure has no
moderations endpoint). A group with a capable deployment among others is served by it (the
others' adapters refuse with the retryable ``UnsupportedByProvider``, so failover moves on);
a group with none is the client's 400 before anything is admitted or sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import InvalidRequest
from gateway.policy.model import Policy, Price
from gateway.wire.audio import AUDIO_SECONDS
from gateway.wire.images import IMAGES_RETURNED, images_usage
from gateway.wire.requests import IMAGE_ENDPOINTS, Endpoint, JSONObject
from gateway.wire.usage import token_count

DEFAULT_IMAGE_SIZE = "1024x1024"  # OpenAI's default for DALL-E 2 and 3 (the models priced per image)
DEFAULT_IMAGE_QUALITY = "standard"

# The provider kinds that serve each endpoint.
SERVING_KINDS: dict[Endpoint, frozenset[str]] = {
    Endpoint.MODERATIONS: frozenset(("openai",)),
    Endpoint.IMAGES: frozenset(("openai", "azure")),
    Endpoint.SPEECH: frozenset(("openai", "azure")),
    Endpoint.TRANSCRIPTIONS: frozenset(("openai", "azure")),
    Endpoint.TRANSLATIONS: frozenset(("openai", "azure")),
    Endpoint.IMAGE_EDITS: frozenset(("openai", "azure")),
    Endpoint.IMAGE_VARIATIONS: frozenset(("openai", "azure")),
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


def image_usage(answer: JSONObject) -> object:
    """A whole images ``answer``'s usage as the accounting reads it (``images_usage``), with the
    number of images in its ``data``."""
    data = answer.get("data")
    return images_usage(answer.get("usage"), len(data) if isinstance(data, list) else None)


@dataclass(frozen=True, slots=True)
class MediaUnits:
    """What a media call's per-unit prices count, read from its request (``media_units``): the
    images asked for (``count``, of ``size`` and ``quality``), or speech's input characters
    (``count``); a transcription's seconds come with its answer's usage."""

    endpoint: Endpoint
    count: int = 0
    size: str = DEFAULT_IMAGE_SIZE
    quality: str = DEFAULT_IMAGE_QUALITY


def media_units(endpoint: Endpoint, body: JSONObject) -> MediaUnits | None:
    """The units a call on ``endpoint`` may be priced by (None: none, as moderations)."""
    if endpoint in IMAGE_ENDPOINTS:  # (an edit's or variation's ``n`` read off its form)
        n, size, quality = body.get("n"), body.get("size"), body.get("quality")
        return MediaUnits(
            endpoint,
            n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1,  # (checked: 1-10)
            size if isinstance(size, str) else DEFAULT_IMAGE_SIZE,
            quality if isinstance(quality, str) else DEFAULT_IMAGE_QUALITY,
        )
    if endpoint is Endpoint.SPEECH:
        text = body.get("input")
        return MediaUnits(endpoint, len(text) if isinstance(text, str) else 0)
    if endpoint is Endpoint.TRANSCRIPTIONS or endpoint is Endpoint.TRANSLATIONS:
        return MediaUnits(endpoint)
    return None


def unit_cost_usd(units: MediaUnits, price: Price, usage: object) -> float | None:
    """The exact cost in US dollars of a media call by its deployment's per-unit ``price``, or
    None when none applies or the count is unknown (then its tokens are priced, or estimated).
    Images: those the answer returned (its ``usage``, from ``image_usage``) up to those asked
    for, else those asked for; speech: the input's characters; transcriptions and translations: the seconds of audio
    the answer's usage reports (whisper-1's json and verbose_json)."""
    endpoint = units.endpoint
    if endpoint in IMAGE_ENDPOINTS:
        if price.per_image is None:
            return None
        returned = usage.get(IMAGES_RETURNED) if isinstance(usage, dict) else None
        # (never more than asked: a provider answering 40 images to ``n: 1`` is not billed for
        # 40, and must not spend a key's budget at once)
        count = min(token_count(returned), units.count) if returned is not None else units.count
        return count * price.image_usd(units.size, units.quality)
    if endpoint is Endpoint.SPEECH:
        if price.per_mchar_input is None:
            return None
        return units.count * price.per_mchar_input / 1_000_000
    if price.per_minute_audio is None or not isinstance(usage, dict):
        return None
    seconds = usage.get(AUDIO_SECONDS)
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return None
    return seconds * price.per_minute_audio / 60
