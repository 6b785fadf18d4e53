"""The routing policy file, as pydantic models.

These models are the single source of the policy format: ``policy.schema.json`` is generated from
them (``sophia-gateway policy schema``), and ``loader.py`` validates YAML against them. Every model
rejects unknown keys so a typo is an error, not a silently ignored setting. Variants are tagged
unions (providers by ``kind``, strategies by ``type``), each class with only its own keys.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import re
import urllib.parse
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from gateway.policy.durations import BudgetPeriodS, DurationS
from gateway.quoting import listed, quoted

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def _parse_size(value: object) -> object:
    """``100MB`` / ``64 MiB`` / ``1048576`` -> bytes; anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError("must be a size such as 50MB, 64MiB or a number of bytes")
        return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").lower()])
    return value


# A control character (C0 but tab, or DEL: what aiohttp refuses in a header value) in a name the
# gateway sends back in its response headers (``x-gateway-provider``, ``-model``, ``-group``,
# ``-cache-category``): aiohttp refuses to write such a header, so every answer naming it lost
# its connection, with an ERROR traceback in the log (h-probe8). Refused where the name is written.
# (Also what a configured header's value may not hold: ``_no_auth_header`` below.)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _no_control(value: str) -> str:
    found = _CONTROL.search(value)
    if found is not None:
        raise ValueError(
            f"contains the control character U+{ord(found.group()):04X}: names are sent in response "
            "headers (x-gateway-provider, x-gateway-model, ...), which cannot carry one"
        )
    return value


HeaderName = Annotated[str, AfterValidator(_no_control)]

ByteSize = Annotated[int, BeforeValidator(_parse_size), Field(gt=0)]
ByteCount = Annotated[int, BeforeValidator(_parse_size), Field(ge=0)]  # a size that may be 0


# Headers and URL query parameters that carry credentials: refused in a policy (api_key_env instead)
_SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "cookie",
        "x-auth-token",
    }
)
# A header's name is an RFC 9110 token; its value may not hold control characters (but tab: ``_CONTROL``).
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
_SECRET_QUERY = frozenset(
    {"key", "api_key", "apikey", "access_token", "token", "password", "secret", "sig", "signature", "code"}
)


# The plain number fields' annotations.
_NUMBER_TYPES: tuple[object, ...] = (int, float, int | None, float | None)


class _Strict(BaseModel):
    # No .inf / .nan anywhere: a weight of .inf gave every share NaN ("nan%" in policy explain)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, data: object) -> object:
        """A number field does not take a boolean. pydantic's lax mode reads ``true`` as 1, and
        YAML reads ``yes`` / ``on`` as true: ``connect_s: yes`` was a one-second timeout. Strings
        stay accepted where pydantic reads a number in them: PyYAML (YAML 1.1) reads ``1e-5``
        as a string, not a float, and an editor who wrote it meant the number."""
        if not isinstance(data, dict) or not any(isinstance(v, bool) for v in data.values()):
            return data
        # Not ``model_fields``: that class property cost 18 us a call (2 s of checking a
        # policy of 20,000 groups, which runs this 100,000 times).
        fields = cls.__pydantic_fields__
        for name, value in data.items():
            field = fields.get(name) if isinstance(name, str) else None
            if field is not None and isinstance(value, bool) and field.annotation in _NUMBER_TYPES:
                raise ValueError(f"{name}: must be a number, not the boolean {value!r}")
        return data


_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _check_host(url: str, host: str, port: int | None) -> None:
    """A host a connection can be made to: a DNS name (labels of letters, digits, '-' and '_',
    which container runtimes' service names use), an IPv4 or an IPv6 address; and no port 0.
    ``http://${HOST}:8000/v1`` (a variable nobody substituted), ``999.999.999.999`` or ``[::1]:0``
    loaded and then failed every request with a 502 (an outside probe)."""
    if "$" in url:
        raise ValueError(
            "holds an unsubstituted variable ($...): the policy file is read as written; substitute "
            "it before the gateway reads it (serve --policy <(envsubst < policy.yaml))"
        )
    if port == 0:
        raise ValueError("names port 0, which no connection can be made to")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"names {quoted(host)}, which is not an IPv6 address") from None
        return
    labels = host.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"names {quoted(host)}, which is not an IPv4 address") from None
        return
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"names {quoted(host)}, which is not a host name (letters, digits, '-', '_', dots)")


class Weights(_Strict):
    """Relative weight of each score term; they need not sum to 1 (they are normalised)."""

    # At most 1,000 each: they are relative, and weights near the float's limit summed to
    # infinity, every score NaN and routing blind (an outside probe).
    latency: float = Field(
        0.35, ge=0, le=1000, description="Weight of the latency term (lower latency scores higher)."
    )
    quality: float = Field(0.40, ge=0, le=1000, description="Weight of the quality term.")
    reliability: float = Field(0.15, ge=0, le=1000, description="Weight of the success-rate term.")
    cost: float = Field(0.10, ge=0, le=1000, description="Weight of the cost term (cheaper scores higher).")

    @model_validator(mode="after")
    def _not_all_zero(self) -> Weights:
        if self.latency + self.quality + self.reliability + self.cost <= 0:
            raise ValueError("at least one weight must be above 0")
        return self


class Timeouts(_Strict):
    """Upstream timeouts, in seconds."""

    connect_s: float = Field(5.0, gt=0, description="Time to open a TCP/TLS connection.")
    first_byte_s: float = Field(
        60.0,
        gt=0,
        description="Time to wait for the response to start, and the longest gap between two "
        "reads of a streamed body.",
    )
    total_s: float = Field(600.0, gt=0, description="Time for the whole request, streams included.")


class ProviderBase(_Strict):
    """What every provider kind has: where the API is, how to authenticate, how to connect."""

    kind: str  # each kind narrows it to its own tag
    base_url: str = Field(description="API root, e.g. https://api.openai.com/v1")
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable holding the API key. The key itself never "
        "goes in the policy file. Omit for providers without auth (a local vLLM or Ollama).",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra static headers sent on every upstream request."
    )
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(
        256, ge=1, description="Most connections kept open to this provider at once."
    )
    max_response_bytes: ByteSize = Field(
        128 * 2**20,
        description="Most bytes of one answer the gateway reads from this provider (e.g. 128MiB, "
        "the default): a whole body, or one event of a stream. A provider sending more is cut off "
        "with a 502 (and failed over) instead of filling the gateway's memory. The default holds "
        "2,048 embeddings of 3,072 floats as JSON.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        # A secret in the URL would be printed by policy diff, kept in the version's JSON and
        # logged with the address: keys go in api_key_env, sent in a header (the value is never
        # echoed in these messages).
        try:
            parts = urllib.parse.urlsplit(value)
            parts.port  # noqa: B018  (raises ValueError for a port that is not a number in range)
        except ValueError:
            raise ValueError("is not a URL") from None
        if "@" in parts.netloc:
            raise ValueError("must not carry a user name or password (user:pass@): use api_key_env")
        for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if name.lower().replace("-", "_") in _SECRET_QUERY:
                raise ValueError(f"its query parameter {quoted(name)} carries a secret: use api_key_env")
        # Each request's path is appended to the URL as written, so what follows was accepted here
        # and then failed every request to the provider (a 502 or the provider's 404).
        if not parts.hostname:
            raise ValueError("must name a host (http://HOST[:PORT]/PATH)")
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("must not contain spaces, line breaks or control characters")
        _check_host(value, parts.hostname, parts.port)
        if parts.query or parts.fragment or value.endswith(("?", "#")):
            raise ValueError(
                "must not have a query (?...) or fragment (#...): each endpoint's path is appended to it"
            )
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(
                "must be the NAME of an environment variable (letters, digits, _), not the key itself"
            )
        return value

    @field_validator("headers")
    @classmethod
    def _no_auth_header(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if name.lower() in _SECRET_HEADERS:
                raise ValueError(f"{quoted(name)} carries a secret: use api_key_env instead")
            # What no request can carry was accepted here and failed every request to the
            # provider: a 500 (a line break or NUL in a value), or an upstream 400 (a name with a
            # space or colon, a Content-Length that is not the body's). The value is never
            # echoed: it may be a key.
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
            if name.lower() in _FRAMING_HEADERS:
                raise ValueError(f"{quoted(name)} is set by the gateway for each request's body: drop it")
            if _CONTROL.search(text):
                raise ValueError(f"the value of {quoted(name)} holds a line break or control character")
        return value


def _version_text(value: object) -> object:
    # YAML reads an unquoted 2024-10-21 as a date; the API wants it as written.
    return value.isoformat() if isinstance(value, datetime.date) else value


ApiVersion = Annotated[str | None, BeforeValidator(_version_text)]


class OpenAIProvider(ProviderBase):
    """OpenAI, and every API speaking its wire format (vLLM, Ollama, Groq, Together, ...)."""

    kind: Literal["openai"]
    responses: bool = Field(
        False,
        description="The provider serves OpenAI's Responses API (POST /responses), as OpenAI's own "
        "API does: /v1/responses requests are passed through to it (model rewritten) instead of "
        "being translated to chat completions.",
    )


class AzureProvider(ProviderBase):
    """Azure OpenAI: deployment paths, the api-key header, the api-version query."""

    kind: Literal["azure"]
    api_version: ApiVersion = Field(
        None,
        description="The api-version query parameter (default 2024-10-21); v1 selects Azure's "
        "/openai/v1 API, which takes none.",
    )


class AnthropicProvider(ProviderBase):
    """Anthropic's Messages API."""

    kind: Literal["anthropic"]
    api_version: ApiVersion = Field(None, description="The anthropic-version header (default 2023-06-01).")
    default_max_tokens: int = Field(
        4096,
        ge=1,
        description="max_tokens sent when the client gives none (the Messages API requires it).",
    )


class GeminiProvider(ProviderBase):
    """Google's Generative Language API (Gemini)."""

    kind: Literal["gemini"]


Provider = Annotated[
    OpenAIProvider | AzureProvider | AnthropicProvider | GeminiProvider, Field(discriminator="kind")
]
"""An upstream API endpoint and how to authenticate to it, by wire format (``kind``)."""


# What ``per_image`` may be keyed by: the sizes and qualities OpenAI's image API takes (DALL-E 2
# and 3, the GPT image models), a size alone or size/quality.
IMAGE_SIZES = ("256x256", "512x512", "1024x1024", "1792x1024", "1024x1792", "1536x1024", "1024x1536", "auto")
IMAGE_QUALITIES = ("standard", "hd", "low", "medium", "high", "auto")


def image_key_problem(key: object) -> str | None:
    """What is wrong with ``key`` as a ``per_image`` mapping's key, or None."""
    size, _, quality = key.partition("/") if isinstance(key, str) else ("", "", "")
    if size not in IMAGE_SIZES:
        return (
            f"unknown image size {quoted(key)} (keys are a size, or size/quality; sizes: "
            f"{', '.join(IMAGE_SIZES)})"
        )
    if isinstance(key, str) and "/" in key and quality not in IMAGE_QUALITIES:
        return f"unknown image quality in {quoted(key)} (qualities: {', '.join(IMAGE_QUALITIES)})"
    return None


# The highest price any price field takes, US dollars (per million tokens or characters, per image,
# per minute): far above any real one, and low enough that a call's cost and the spend summed over
# years stay finite (a price of 1e308 made gateway_cost_usd_total +Inf after one call of 2 images,
# and the key's spend in /admin/usage null; a typo of the exponent is the likely cause).
MAX_PRICE_USD = 1_000_000_000


def _price_problem(value: object, wanted: str) -> object:
    """``value`` if it is a finite number from 0 to ``MAX_PRICE_USD`` (or text pydantic reads as
    one), else raise naming what is ``wanted``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{wanted}, not {quoted(value)}")
    if isinstance(value, (int, float)) and not (0 <= value < math.inf):
        raise ValueError(f"{wanted}: a finite number of 0 or more, not {value!r}")
    if isinstance(value, (int, float)) and value > MAX_PRICE_USD:
        raise ValueError(f"{wanted}: at most {MAX_PRICE_USD}, not {value!r}")
    return value


# A prompt's token count a tier may name: what a provider may report (``wire.usage.MOST_TOKENS``)
_MOST_PROMPT_TOKENS = 2**31 - 1
_CACHE_PRICES = ("cached_input_per_mtok", "cache_write_per_mtok", "cache_write_1h_per_mtok")
_UNIT_PRICES = ("per_image", "per_mchar_input", "per_minute_audio")


class PriceTier(_Strict):
    """The prices of a request whose prompt is longer than ``above_input_tokens`` tokens (Gemini
    2.5 Pro's and Claude's 1M-context prompts above 200k): the whole request, input and output,
    is priced at them. The prompt counted is every prompt token the provider reported, those
    read from or written to its prompt cache included, as Google and Anthropic count it."""

    above_input_tokens: int = Field(
        gt=0,
        le=_MOST_PROMPT_TOKENS,
        description="The tier's prices apply to a request whose prompt (cached tokens included) "
        "has more tokens than this: 200000 for Gemini 2.5 Pro and Claude's 1M context.",
    )
    input_per_mtok: float = Field(
        ge=0, le=MAX_PRICE_USD, description="Price of a prompt token in this tier (input_per_mtok's)."
    )
    output_per_mtok: float = Field(
        ge=0, le=MAX_PRICE_USD, description="Price of a completion token in this tier (output_per_mtok's)."
    )
    cached_input_per_mtok: float | None = Field(
        None,
        ge=0,
        le=MAX_PRICE_USD,
        description="This tier's cached_input_per_mtok: set exactly when the base price sets it.",
    )
    cache_write_per_mtok: float | None = Field(
        None,
        ge=0,
        le=MAX_PRICE_USD,
        description="This tier's cache_write_per_mtok: set exactly when the base price sets it.",
    )
    cache_write_1h_per_mtok: float | None = Field(
        None,
        ge=0,
        le=MAX_PRICE_USD,
        description="This tier's cache_write_1h_per_mtok: set exactly when the base price sets it.",
    )


class Price(_Strict):
    """Provider price in US dollars per million tokens. The cache prices are optional: a prompt
    token read from or written to the provider's prompt cache costs ``input_per_mtok`` unless
    they are set (what every token of the prompt cost before they existed). The per-unit prices
    (``per_image``, ``per_mchar_input``, ``per_minute_audio``) are optional too: set, they price
    a media call by what OpenAI bills it by, instead of its tokens (``service/media.py``)."""

    input_per_mtok: float = Field(
        0.0,
        ge=0,
        le=MAX_PRICE_USD,
        description="Price of a prompt token (one not read from or written to the provider's "
        "prompt cache, or any prompt token when the cache prices are not set).",
    )
    output_per_mtok: float = Field(
        0.0,
        ge=0,
        le=MAX_PRICE_USD,
        description="Price of a completion token (reasoning and thinking tokens included).",
    )
    cached_input_per_mtok: float | None = Field(
        None,
        ge=0,
        le=MAX_PRICE_USD,
        description="Price of a prompt token read from the provider's prompt cache: OpenAI's and "
        "Azure's cached_tokens, Anthropic's cache_read_input_tokens (about 0.1 x input), Gemini's "
        "cachedContentTokenCount. Unset: input_per_mtok.",
    )
    cache_write_per_mtok: float | None = Field(
        None,
        ge=0,
        le=MAX_PRICE_USD,
        description="Price of a prompt token written to the provider's prompt cache: Anthropic's "
        "cache_creation_input_tokens (1.25 x input for its 5-minute cache). Unset: input_per_mtok.",
    )
    cache_write_1h_per_mtok: float | None = Field(
        None,
        ge=0,
        le=MAX_PRICE_USD,
        description="Price of a prompt token written to Anthropic's 1-hour cache "
        "(cache_creation.ephemeral_1h_input_tokens; 2 x input). Unset: cache_write_per_mtok.",
    )

    per_image: float | dict[str, float] | None = Field(
        None,
        description="Images (DALL-E): US dollars per image returned, priced instead of tokens. A "
        "number for every image, or a mapping by the request's size, or size/quality: "
        '{"1024x1024": 0.04, "1024x1792/hd": 0.12}. A request\'s size/quality entry, else its '
        "size's, else the mapping's highest price; a request without size is 1024x1024.",
    )
    per_mchar_input: float | None = Field(
        None,
        ge=0,
        le=MAX_PRICE_USD,
        description="Speech (tts-1, tts-1-hd): US dollars per million characters of input, "
        "priced instead of tokens ($15 for tts-1, $30 for tts-1-hd).",
    )
    per_minute_audio: float | None = Field(
        None,
        ge=0,
        le=MAX_PRICE_USD,
        description="Transcriptions and translations (whisper-1): US dollars per minute of audio, "
        "as the answer's usage reports its seconds (json, verbose_json), priced instead of tokens "
        "($0.006 for whisper-1). Answers without it (text, srt, vtt) are charged their estimate.",
    )

    # A tuple: a deployment (and its price) is hashed, as a Target's key (embedding slices)
    tiers: tuple[PriceTier, ...] = Field(
        (),
        description="Higher prices for long prompts, in increasing order of above_input_tokens: a "
        "request whose prompt (cached tokens included) has more tokens than a tier's "
        "above_input_tokens is priced, input and output, at the last such tier; shorter ones at "
        "the prices above. A tier sets the cache prices the base price sets. Gemini 2.5 Pro: "
        "[{above_input_tokens: 200000, input_per_mtok: 2.5, output_per_mtok: 15}].",
    )

    # (above_input_tokens, the tier's whole price), highest first: built once, read per answer
    _tiered: tuple[tuple[int, Price], ...] = PrivateAttr(default=())

    @field_validator("tiers")
    @classmethod
    def _tiers_increase(cls, tiers: tuple[PriceTier, ...]) -> tuple[PriceTier, ...]:
        for i in range(1, len(tiers)):
            before, after = tiers[i - 1].above_input_tokens, tiers[i].above_input_tokens
            if after <= before:
                raise ValueError(
                    f"tiers[{i}].above_input_tokens ({after}) must be above tiers[{i - 1}]'s "
                    f"({before}): list the tiers in increasing order"
                )
        return tiers

    @model_validator(mode="after")
    def _tiers_priced_alike(self) -> Price:
        """A tier sets exactly the cache prices the base sets: one unset would fall back to its own
        input price (a cache read at 2.5 instead of 0.625), one set alone would never be read."""
        if not self.tiers:
            return self
        units = [name for name in _UNIT_PRICES if getattr(self, name) is not None]
        if units:
            raise ValueError(
                f"tiers price tokens, and this price is per unit ({', '.join(units)}): drop the tiers"
            )
        for i, tier in enumerate(self.tiers):
            for name in _CACHE_PRICES:
                if getattr(self, name) is not None and getattr(tier, name) is None:
                    raise ValueError(
                        f"tiers[{i}].{name} is not set, and the base price sets {name}: "
                        "set the tier's too (a tier's cache prices do not come from the base's)"
                    )
                if getattr(self, name) is None and getattr(tier, name) is not None:
                    raise ValueError(
                        f"tiers[{i}].{name} is set, and the base price does not set {name}: "
                        "set it there too, or drop it from the tier"
                    )
        self._tiered = tuple(
            (tier.above_input_tokens, Price(**tier.model_dump(exclude={"above_input_tokens"})))
            for tier in reversed(self.tiers)
        )
        return self

    def at(self, prompt: int) -> Price:
        """The prices of a request of ``prompt`` tokens in (all of them, cached ones included):
        its tier's (the last whose ``above_input_tokens`` it exceeds), else these."""
        for above, price in self._tiered:
            if prompt > above:
                return price
        return self

    @field_validator("per_image", mode="before")
    @classmethod
    def _per_image_known(cls, value: object) -> object:
        """A price per image is a finite non-negative number, or a mapping to them from the sizes
        (and size/quality) OpenAI's image API takes: a typo would never match a request, so it is
        refused here. (Checked before pydantic's union, whose two failures would read poorly.)"""
        if value is None:
            return value
        if not isinstance(value, dict):
            return _price_problem(value, "a price in US dollars per image, or a mapping by size")
        if not value:
            raise ValueError("an empty mapping: give a price per size, or one number for every image")
        for key, price in value.items():
            problem = image_key_problem(key)
            if problem is not None:
                raise ValueError(problem)
            _price_problem(price, f"{quoted(key)}: a price in US dollars per image")
        return value

    @field_validator("per_image", mode="after")
    @classmethod
    def _per_image_not_negative(cls, value: float | dict[str, float] | None) -> object:
        """(A price written as text, which the check above leaves to pydantic to read.)"""
        prices = value.values() if isinstance(value, dict) else () if value is None else (value,)
        if any(price < 0 for price in prices):
            raise ValueError("a price per image may not be negative")
        if any(price > MAX_PRICE_USD for price in prices):
            raise ValueError(f"a price per image is at most {MAX_PRICE_USD} US dollars")
        return value

    def image_usd(self, size: str, quality: str) -> float:
        """The price in US dollars of one image of ``size`` and ``quality`` (as the request asked;
        ``per_image`` set): its size/quality entry, else its size's, else the highest price."""
        prices = self.per_image
        if prices is None:
            return 0.0
        if not isinstance(prices, dict):
            return prices
        found = prices.get(f"{size}/{quality}")
        if found is None:
            found = prices.get(size)
        return max(prices.values()) if found is None else found

    @property
    def request_usd(self) -> float | None:
        """What routing's cost term compares for a deployment priced per unit (h-unitroute): the
        list price of one typical request, or None without a per-unit price. One image at
        1024x1024/standard (the requests' defaults, ``service/media.py``; else the mapping's
        highest price), 1,000 characters of speech, one minute of audio; the first set of the
        three, in that order, as one deployment serves one endpoint."""
        if self.per_image is not None:
            return self.image_usd("1024x1024", "standard")
        if self.per_mchar_input is not None:
            return self.per_mchar_input * 1_000 / 1_000_000
        return self.per_minute_audio

    @property
    def prices_cache(self) -> bool:
        """Whether a cache price is set (else the cache counts need not be read: every prompt
        token costs ``input_per_mtok``)."""
        return (
            self.cached_input_per_mtok is not None
            or self.cache_write_per_mtok is not None
            or self.cache_write_1h_per_mtok is not None
        )

    def cost_usd(
        self,
        prompt: int,
        completion: int,
        read: int = 0,
        written: int = 0,
        written_1h: int = 0,
        *,
        tier_prompt: int | None = None,
    ) -> float:
        """The cost in US dollars of ``prompt`` tokens in (all of them: those ``read`` from the
        prompt cache and ``written`` to it, of which ``written_1h`` to a 1-hour cache, included)
        and ``completion`` tokens out, at the prices of the tier ``tier_prompt`` prompt tokens
        fall in (``at``; by default ``prompt``). Cache counts beyond the prompt are cut to it."""
        p = self.at(prompt if tier_prompt is None else tier_prompt) if self._tiered else self
        if not (read or written):
            return (prompt * p.input_per_mtok + completion * p.output_per_mtok) / 1_000_000
        read = min(read, prompt)
        written = min(written, prompt - read)
        written_1h = min(written_1h, written)
        cached = p.input_per_mtok if p.cached_input_per_mtok is None else p.cached_input_per_mtok
        write = p.input_per_mtok if p.cache_write_per_mtok is None else p.cache_write_per_mtok
        write_1h = write if p.cache_write_1h_per_mtok is None else p.cache_write_1h_per_mtok
        fresh = prompt - read - written
        return (
            fresh * p.input_per_mtok
            + read * cached
            + (written - written_1h) * write
            + written_1h * write_1h
            + completion * p.output_per_mtok
        ) / 1_000_000

    def input_per_mtok_at(self, read_share: float, written_share: float, written_1h_share: float) -> float:
        """The average price in US dollars per million prompt tokens when ``read_share`` of them
        are read from the prompt cache and ``written_share`` written to it (of which
        ``written_1h_share`` to a 1-hour cache), the rest at ``input_per_mtok``: what routing's
        cost term compares (``cost_usd``'s arithmetic per prompt token)."""
        read = min(max(read_share, 0.0), 1.0)
        written = min(max(written_share, 0.0), 1.0 - read)
        written_1h = min(max(written_1h_share, 0.0), written)
        cached = self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok
        write = self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        write_1h = write if self.cache_write_1h_per_mtok is None else self.cache_write_1h_per_mtok
        return (
            (1.0 - read - written) * self.input_per_mtok
            + read * cached
            + (written - written_1h) * write
            + written_1h * write_1h
        )


class RolloutGates(_Strict):
    """What a rollout's candidate must show at each step (over the step's window, on each replica)."""

    max_error_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Highest share of the candidate's attempts that may fail in a way that counts "
        "against the provider (5xx, timeouts, resets; not 4xx or 429) before it is rolled back.",
    )
    max_latency_ratio: float = Field(
        1.5,
        gt=0,
        description="Highest ratio of the candidate's p95 latency to the p95 of the group's other "
        "deployments over the same window (skipped while those have no traffic).",
    )
    min_requests: int = Field(
        50,
        ge=1,
        description="Attempts the candidate needs in a step before any gate is judged; a step "
        "whose hold ends with fewer keeps holding.",
    )


class SmokeMessage(_Strict):
    """One chat message of a smoke prompt (text content only)."""

    role: Literal["system", "developer", "user", "assistant"] = Field(description="Who speaks.")
    content: str = Field(description="The message text.")


class SmokePrompt(_Strict):
    """A prompt sent to the candidate before it serves anyone, and what its answer must contain."""

    messages: list[SmokeMessage] = Field(
        min_length=1, description="OpenAI chat messages, e.g. [{role: user, content: 'Say OK'}]."
    )
    expect: str = Field(
        min_length=1,
        description="A substring the answer's text must contain (case-insensitive).",
    )


def _default_steps() -> list[float]:
    return [10.0, 25.0, 50.0, 100.0]


class Rollout(_Strict):
    """Progressive rollout of a deployment: smoke prompts, then growing shares of the group's
    first choices, each held while the gates hold; rolled back the moment one fails."""

    steps: list[float] = Field(
        default_factory=_default_steps,
        min_length=1,
        description="Percent of the group's first choices at each step, strictly increasing, "
        "each in (0, 100], the last 100 (then the deployment is promoted).",
    )
    hold_s: DurationS = Field(
        300.0, description="How long each step is held before advancing (5m, 300, 1s ...)."
    )
    gates: RolloutGates = RolloutGates()
    smoke: list[SmokePrompt] = Field(
        default_factory=list, description="Sent before the first step; any failure rolls back."
    )

    @field_validator("steps")
    @classmethod
    def _steps_grow_to_100(cls, value: list[float]) -> list[float]:
        for i, step in enumerate(value):
            if not 0 < step <= 100:
                raise ValueError(f"step {i} ({step:.15g}) must be above 0 and at most 100")
            if i and step <= value[i - 1]:
                raise ValueError(f"steps must be strictly increasing ({value[i - 1]:.15g} then {step:.15g})")
        if value[-1] != 100:
            raise ValueError(f"the last step must be 100, not {value[-1]:.15g}")
        return value


class Deployment(_Strict):
    """One way to serve a model: a provider and the model name it knows."""

    provider: str = Field(description="A key of `providers`.")
    model: HeaderName = Field(min_length=1, description="The model name sent to the provider.")
    price: Price = Price()
    quality: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Prior quality score, 0..1; live feedback (POST /v1/feedback) moves it.",
    )
    context_window: int | None = Field(
        None,
        gt=0,
        description="Max tokens of context, if known. Requests whose estimated prompt is longer "
        "skip this deployment, and a context-length error falls back to a bigger one.",
    )
    reasoning: bool | None = Field(
        None,
        description="Whether the model reasons (thinks). false: it is sent no effort nor thinking "
        "budget on any door (the client's `reasoning_effort` and `thinking_budget` on chat and "
        "completions, the Responses door's `reasoning` and `include`'s encrypted reasoning, the "
        "Messages door's translated effort and thinking), which a model without reasoning would "
        "refuse; the response says `x-gateway-reasoning-effort: dropped`, and is not cached. true: the Messages door sends it the effort or "
        "thinking budget translated from Anthropic's `output_config.effort` and `thinking`. "
        "Unset: the other doors pass the client's effort through; the Messages door sends its "
        "translation only to a model named as a reasoning family's (o1..o9, gpt-5 but not "
        "-chat, codex, gemini-2.5 and later).",
    )
    weight: float = Field(
        1.0,
        ge=0,
        le=1_000_000,  # relative: two weights near the float maximum summed to inf, every share 0
        description="Fixed traffic share under `strategy: weighted` (relative, 0..1000000; 0: "
        "fallback only).",
    )
    rollout: Rollout | None = Field(
        None,
        description="Roll this deployment out progressively (smoke prompts, then growing shares "
        "of the group's first choices, gated by its live figures). At most one per group, and "
        "never the group's only deployment.",
    )


class ScoreStrategyConfig(_Strict):
    """Best live score: softmax over scores, with an exploration floor (see `routing`)."""

    type: Literal["score"]
    exploration: float | None = Field(
        None, ge=0, le=1, description="Overrides `routing.exploration` for this group."
    )
    temperature: float | None = Field(
        None, gt=0, description="Overrides `routing.temperature` for this group."
    )


class WeightedStrategyConfig(_Strict):
    """Fixed traffic shares by each deployment's `weight` (canaries, A/B splits)."""

    type: Literal["weighted"]


class OrderedStrategyConfig(_Strict):
    """Policy order: the first eligible deployment, the rest as strict fallbacks."""

    type: Literal["ordered"]


class LeastBusyStrategyConfig(_Strict):
    """Fewest requests in flight on this replica; ties drawn at random."""

    type: Literal["least-busy"]


StrategyName = Literal["score", "weighted", "ordered", "least-busy"]
"""The ``type`` of each strategy; a bare name is short for ``{type: NAME}`` (parameters at defaults)."""


def _strategy_shorthand(value: object) -> object:
    """``strategy: ordered`` is short for ``strategy: {type: ordered}``."""
    return {"type": value} if isinstance(value, str) else value


StrategyConfig = Annotated[
    ScoreStrategyConfig | WeightedStrategyConfig | OrderedStrategyConfig | LeastBusyStrategyConfig,
    Field(discriminator="type"),
]
"""How a group makes its first choice, by ``type``; each type carries only its own parameters."""


class RuleMatch(_Strict):
    """Request properties a rule tests; every condition given must hold."""

    tags: list[str] | None = Field(
        None,
        min_length=1,
        description="Matches when the request's `x-gateway-tags` header (comma-separated) "
        "holds any of these tags.",
    )
    has_tools: bool | None = Field(
        None, description="Matches on whether the request carries `tools` (or `functions`)."
    )
    min_prompt_tokens: int | None = Field(
        None,
        ge=0,
        description="Matches when the estimated prompt length (characters / 4) is at least this.",
    )
    max_prompt_tokens: int | None = Field(
        None, ge=0, description="Matches when the estimated prompt length is at most this."
    )

    @model_validator(mode="after")
    def _some_condition(self) -> RuleMatch:
        if all(
            v is None for v in (self.tags, self.has_tools, self.min_prompt_tokens, self.max_prompt_tokens)
        ):
            raise ValueError(
                "a rule needs at least one condition (tags, has_tools, min_prompt_tokens, max_prompt_tokens)"
            )
        low, high = self.min_prompt_tokens, self.max_prompt_tokens
        if low is not None and high is not None and low > high:
            # No prompt is both: the rule was accepted and silently never matched (two bounds
            # swapped, or a digit too many in one).
            raise ValueError(
                f"min_prompt_tokens ({low}) is above max_prompt_tokens ({high}): the rule could never match"
            )
        return self


class Rule(_Strict):
    """Send matching requests to another model group."""

    when: RuleMatch
    use: str = Field(description="The model group (a key of `models`) that serves a match.")


class Retry(_Strict):
    """How one client request is retried across deployments."""

    max_attempts: int = Field(
        3, ge=1, le=20, description="Most upstream attempts per client request, the first included."
    )
    deadline_s: float = Field(
        60.0, gt=0, description="No new attempt starts after this long since the request arrived."
    )
    backoff_initial_s: float = Field(
        0.05,
        ge=0,
        description="Backoff before re-trying a deployment already tried for this request "
        "(exponential, with jitter). Moving to a different deployment does not wait.",
    )
    backoff_max_s: float = Field(2.0, ge=0, description="Cap on one backoff wait.")
    budget_percent: float = Field(
        20.0,
        ge=0,
        le=100,
        description="Retry budget (as Envoy's): at most this percent of the group's active requests "
        "may be retrying after an overload (429, 503, 529, 408, a timeout) at once; a request over "
        "budget ends with that error. Failing over from a broken deployment is not budgeted.",
    )
    min_retry_concurrency: int = Field(
        3,
        ge=0,
        description="Requests of the group that may always be retrying at once, whatever "
        "`budget_percent` allows (so a quiet group still fails over).",
    )
    max_retry_after_s: float | None = Field(
        None,
        ge=0,
        description="Deprecated and ignored: the gateway no longer waits out a provider's Retry-After "
        "(a rate-limited deployment is skipped, and a group whose deployments all are answers 429 at "
        "once). Accepted so that policies written before still load.",
    )


class Breaker(_Strict):
    """Per-deployment circuit breaker."""

    consecutive_failures: int = Field(5, ge=1, description="Open after this many failures in a row.")
    failure_rate: float = Field(
        0.5, gt=0, le=1, description="Open when the failure share over `window_s` reaches this..."
    )
    min_requests: int = Field(20, ge=1, description="...once the window holds at least this many requests.")
    # At most a day: a breaker open for longer is a deployment to remove from the policy, and
    # 1e300 answered a 301-digit Retry-After (an outside probe).
    window_s: float = Field(30.0, gt=0, le=86400, description="Window for the failure rate (at most a day).")
    cooldown_s: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="How long an open breaker stays open before one probe is let through (at most a day).",
    )


class Routing(_Strict):
    """How live figures become a choice (used by `strategy: score`)."""

    exploration: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Share of traffic spread evenly over every eligible deployment, so one that "
        "was slow or failing is measured again and gets traffic back once it recovers. A group's "
        "`strategy: {type: score, exploration: ...}` overrides it.",
    )
    temperature: float = Field(
        0.05,
        gt=0,
        description="Softmax temperature over scores for the rest of the traffic: small values "
        "send nearly everything to the best score, large values spread it. A group's "
        "`strategy: {type: score, temperature: ...}` overrides it.",
    )
    latency_floor_ms: float = Field(
        20.0,
        ge=0,
        description="Added to every latency before comparing (best+floor)/(own+floor), so "
        "differences far below it (jitter between equally fast deployments) barely count.",
    )
    latency_alpha: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Weight of each new latency sample in the moving average (and of each "
        "answer's prompt-cache counts in the deployment's cache shares).",
    )
    stale_after_s: float = Field(
        120.0,
        gt=0,
        description="Latency figures older than this are forgotten: the deployment is treated "
        "as unmeasured (optimistically) until new traffic measures it. Its prompt-cache shares "
        "likewise: its cost is then scored at the list input price again.",
    )
    window_s: float = Field(
        300.0, gt=0, description="Sliding window for success rate, uptime and error classes."
    )
    quality_prior_votes: float = Field(
        20.0,
        gt=0,
        description="How many feedback votes weigh as much as the policy's quality prior.",
    )
    reliability_prior_requests: float = Field(
        10.0,
        gt=0,
        description="How many requests' worth of assumed success a new deployment starts with.",
    )


class ShadowDeployment(_Strict):
    """The candidate a shadow mirrors requests to: a provider and the model name it knows
    (usually not one of the group's deployments)."""

    provider: str = Field(description="A key of `providers`.")
    model: str = Field(min_length=1, description="The model name sent to the provider.")
    price: Price = Field(Price(), description="The candidate's price, for the shadow's own cost figures.")
    reasoning: bool | None = Field(
        None,
        description="false: the candidate does not reason, and a mirrored request's "
        "`reasoning_effort` is not sent to it (as `deployments[].reasoning`).",
    )


class Shadow(_Strict):
    """Mirror a share of the group's requests to a candidate, off the client's path: its answers
    are never sent to the client, cached or counted in routing; its latency, errors, cost and
    agreement with the served answer show at GET /admin/shadow and in metrics."""

    deployment: ShadowDeployment = Field(description="The candidate to mirror to.")
    share: float = Field(
        gt=0, le=1, description="Share of the group's served requests (0..1] also sent to the candidate."
    )
    max_in_flight: int = Field(
        20,
        ge=1,
        description="Most mirrored requests outstanding at once; a mirror beyond it is dropped "
        "(and counted), never queued.",
    )
    embedding_model: str | None = Field(
        None,
        description="A model group of this policy serving /v1/embeddings: agreement is then the "
        "cosine similarity of the two answers' embeddings (else exact match and length ratio).",
    )


class ModelGroup(_Strict):
    """A model name clients send, and the deployments that can serve it."""

    deployments: list[Deployment] = Field(min_length=1)
    description: str | None = None
    strategy: Annotated[
        StrategyConfig,
        BeforeValidator(_strategy_shorthand, json_schema_input_type=StrategyName | StrategyConfig),
    ] = Field(
        "score",
        validate_default=True,
        description="How the first choice is made: score (best live score, with exploration), "
        "weighted (fixed shares by `weight`), ordered (policy order, the rest are fallbacks), "
        "least-busy (fewest requests in flight). A bare name is short for {type: NAME}.",
    )
    rules: list[Rule] = Field(
        default_factory=list,
        description="Checked in order; the first that matches sends the request to its group.",
    )
    retry: Retry | None = Field(None, description="Overrides the top-level `retry` for this group.")
    shadow: Shadow | None = Field(
        None, description="Mirror a share of this group's requests to a candidate (shadow traffic)."
    )

    @model_validator(mode="after")
    def _each_deployment_once(self) -> ModelGroup:
        # One provider and model twice shared one set of live statistics, one breaker and one
        # metrics series (/metrics then held two samples with the same labels, and Prometheus
        # kept one; an outside probe); a rollout's candidate is refused the same way.
        seen: dict[tuple[str, str], int] = {}
        for i, dep in enumerate(self.deployments):
            if dep.rollout is not None:
                continue  # a rollout's candidate: refused with its own words (``Policy``'s check)
            first = seen.setdefault((dep.provider, dep.model), i)
            if first != i:
                raise ValueError(
                    f"deployments[{i}] repeats deployments[{first}] ({dep.provider}/{dep.model}): a "
                    "group has each provider and model once (drop one, or name another model)"
                )
        return self

    @model_validator(mode="after")
    def _some_weight(self) -> ModelGroup:
        if self.strategy.type == "weighted" and all(d.weight == 0 for d in self.deployments):
            # Every one a fallback: the first took every request while every view said 1/n each.
            raise ValueError(
                "strategy weighted: at least one deployment needs a weight above 0 (0 means fallback only)"
            )
        return self


class SemanticCache(_Strict):
    """Serve a cached answer to a prompt that means the same as a cached one."""

    embedding_model: str = Field(
        description="A model group of this policy that serves /v1/embeddings; prompts are "
        "embedded through the gateway's own routing."
    )
    threshold: float = Field(
        0.95, gt=0, le=1, description="Least cosine similarity that counts as the same prompt."
    )
    max_entries: int = Field(
        10_000, ge=1, description="Prompts kept in each replica's in-memory index for the category."
    )


class CacheCategory(_Strict):
    """A class of cached answers with its own lifetime and space."""

    ttl_s: float = Field(gt=0, description="How long an answer stays (x-gateway-cache-ttl may shorten it).")
    max_bytes: ByteSize = Field(
        description="Space for this category (e.g. 50MB); when full, its least recently used "
        "entries are evicted, never another category's."
    )
    shared: bool = Field(
        False,
        description="Share answers across tenants (callers' API keys). Only for answers that are "
        "the same for everyone; by default each tenant has its own entries.",
    )
    client_selectable: bool | None = Field(
        None,
        description="May a client name this category with x-gateway-cache-category? Default: yes, "
        "unless shared: a client naming a shared category would put its own answers in every "
        "tenant's reach, and could learn whether another tenant made an exact request (a hit), "
        "so a shared category is reached through cache.rules (or as the default category) "
        "unless this is true.",
    )
    semantic: SemanticCache | None = Field(None, description="Opt in to semantic matching.")

    @property
    def selectable(self) -> bool:
        """Whether the ``x-gateway-cache-category`` header may name this category."""
        return not self.shared if self.client_selectable is None else self.client_selectable


class CacheRuleMatch(_Strict):
    """Request properties a cache rule tests; every condition given must hold."""

    models: list[str] | None = Field(None, min_length=1, description="Model names the client sent.")
    tags: list[str] | None = Field(
        None, min_length=1, description="Any of these in the `x-gateway-tags` header."
    )

    @model_validator(mode="after")
    def _some_condition(self) -> CacheRuleMatch:
        if self.models is None and self.tags is None:
            raise ValueError("a cache rule needs at least one condition (models, tags)")
        return self


class CacheRule(_Strict):
    """Put matching requests in a category (the `x-gateway-cache-category` header wins)."""

    when: CacheRuleMatch
    category: str = Field(description="A key of `cache.categories`.")


def _seed_categories() -> dict[str, CacheCategory]:
    return {
        "executive_insights": CacheCategory(ttl_s=3600, max_bytes=100 * 10**6),
        "common_queries": CacheCategory(ttl_s=1800, max_bytes=50 * 10**6),
        "user_preferences": CacheCategory(ttl_s=86400, max_bytes=10 * 10**6),
    }


class Cache(_Strict):
    """The response cache (Redis when REDIS_URL is set, else in this process)."""

    enabled: bool = Field(True, description="Turn the response cache on or off.")
    cacheable: Literal["deterministic", "always", "opt-in"] = Field(
        "deterministic",
        description="deterministic: requests with temperature 0 (embeddings always), or that "
        "name a category; always: every request; opt-in: only requests that name a category "
        "(header or rule).",
    )
    default_category: str = Field("common_queries", description="Category when nothing picks one.")
    categories: dict[HeaderName, CacheCategory] = Field(default_factory=_seed_categories, min_length=1)
    rules: list[CacheRule] = Field(default_factory=list, description="First match picks the category.")
    lookup_timeout_ms: float = Field(
        50,
        gt=0,
        description="A cache operation slower than this is abandoned and the request goes upstream "
        "(fail-open).",
    )

    @model_validator(mode="after")
    def _categories_exist(self) -> Cache:
        known = listed(sorted(self.categories))
        if self.default_category not in self.categories:
            raise PolicyReferenceError(
                ("cache", "default_category"),
                f"unknown cache category {quoted(self.default_category)}",
                f"known categories: {known}",
            )
        for i, rule in enumerate(self.rules):
            if rule.category not in self.categories:
                raise PolicyReferenceError(
                    ("cache", "rules", i, "category"),
                    f"unknown cache category {quoted(rule.category)}",
                    f"known categories: {known}",
                )
        return self


class MemoryPool(_Strict):
    """Connection pool of the Snowflake memory backend (the seed plan's knobs)."""

    min_size: int = Field(5, ge=0, description="Connections kept open.")
    max_size: int = Field(20, ge=1, description="Most connections at once.")
    connect_timeout_s: float = Field(30.0, gt=0, description="Time to open one connection.")
    idle_timeout_s: float = Field(300.0, gt=0, description="An idle connection older than this is closed.")
    health_check_interval_s: float = Field(
        60.0, gt=0, description="Idle connections are checked with SELECT 1 this often."
    )
    statement_timeout_s: float = Field(
        60.0,
        gt=0,
        # Snowflake refuses a STATEMENT_TIMEOUT_IN_SECONDS above 7 days (604,800 s) at login.
        le=604800,
        description="Longest wait for one store operation (a 503 after it); also Snowflake's "
        "STATEMENT_TIMEOUT_IN_SECONDS for the pool's sessions, so the account cancels it too. "
        "The table's preparation at start is bounded by it per statement.",
    )


class Ingest(_Strict):
    """File ingestion (POST /v1/memory/files): limits, chunking defaults and the pipeline's sizes."""

    max_file_bytes: int = Field(
        1 << 30,
        ge=1,
        description="Largest file accepted; a larger upload is refused with 413 while it streams.",
    )
    chunk_chars: int = Field(
        2000, ge=50, description="Default chunk size in characters (an upload may set its own)."
    )
    overlap_chars: int = Field(
        200,
        ge=0,
        description="Default overlap between consecutive chunks, in characters (below half the size).",
    )
    embed_batch: int = Field(256, ge=1, le=2048, description="Texts per embeddings call.")
    embed_concurrency: int = Field(2, ge=1, le=32, description="Embeddings calls one job keeps in flight.")
    store_batch: int = Field(1000, ge=1, le=1000, description="Most memories written to the store at once.")
    queue_batches: int = Field(
        4, ge=1, le=64, description="Batches each queue between the pipeline's stages holds (back-pressure)."
    )
    spool_dir: str = Field(
        "data/ingest-spool",
        description="Where uploads are spooled while their job runs (kept while it is paused, to resume).",
    )
    progress_interval_s: float = Field(
        0.5,
        gt=0,
        le=1,
        description="How often the events stream (GET /v1/memory/jobs/{id}/events) reports progress.",
    )
    max_concurrent_jobs: int = Field(
        4, ge=1, description="Jobs running at once in a process; more wait, queued."
    )
    max_spool_bytes: ByteSize = Field(
        8 << 30,
        description="Most bytes spool_dir may hold in all (uploads being received, and the files "
        "of jobs not finished: queued, running, paused, interrupted): an upload that would pass it "
        "is refused with 507 (spool_full) and nothing of it is kept. A size such as 8GiB.",
    )
    min_free_disk_bytes: ByteCount = Field(
        1 << 30,
        description="Free space spool_dir's disk keeps: an upload that would leave less is refused "
        "with 507 (spool_full) and nothing of it is kept. A size such as 1GiB; 0: no floor.",
    )
    upload_timeout_s: DurationS = Field(
        3600,
        description="Longest an upload may take from its first byte to its last (then 408, the "
        "partial file deleted), however steadily it comes. A duration such as 1h.",
    )
    upload_min_bytes_per_s: float = Field(
        8192,
        ge=0,
        description="Slowest an upload may arrive, in bytes a second, measured over any "
        "upload_rate_window_s once upload_rate_grace_s have passed: a client trickling bytes "
        "(slowloris) gets 408 and its partial file is deleted. 0: no minimum.",
    )
    upload_rate_window_s: DurationS = Field(
        10, description="The window the minimum rate is measured over (bytes in the last window)."
    )
    upload_rate_grace_s: DurationS = Field(
        10, description="How long an upload may come slower than the minimum at its start."
    )

    @model_validator(mode="after")
    def _overlap_below_half(self) -> Ingest:
        if self.overlap_chars * 2 >= self.chunk_chars:
            raise ValueError("overlap_chars must be below half of chunk_chars")
        return self


class Retention(_Strict):
    """One namespace's settings: the lifecycle of its memories, and whether they are trusted."""

    retention_days: float | None = Field(
        None, gt=0, description="Delete memories last updated longer ago than this."
    )
    archive_after_days: float | None = Field(
        None, gt=0, description="Mark memories last updated longer ago than this as archived (not searched)."
    )
    confidence_threshold: float | None = Field(
        None, ge=0, le=1, description="Delete memories whose confidence_score is below this."
    )
    trusted: bool = Field(
        False,
        description="true: this namespace's memories join a chat as a system message. false: they go "
        "in a delimited reference block, in a user message before the last user turn, so a planted "
        "memory cannot speak with system authority.",
    )


class Pruning(_Strict):
    """The seed plan's pruning rule, applied to every namespace."""

    enabled: bool = True
    idle_days: float = Field(90, gt=0, description="Not accessed for this long...")
    min_importance: float = Field(0.7, ge=0, le=1, description="...and importance_score below this...")
    min_access_count: int = Field(5, ge=0, description="...and access_count below this: deleted.")
    interval_s: float = Field(
        3600, gt=0, description="How often the background task applies retention and pruning."
    )


class MemoryConfig(_Strict):
    """The memory service: where memories live and how they age."""

    enabled: bool = True
    backend: Literal["embedded", "snowflake"] = Field(
        "embedded",
        description="embedded: a SQLite file (nothing to install); snowflake: credentials from "
        "SNOWFLAKE_* variables. MEMORY_URL overrides.",
    )
    path: str = Field("data/memory.sqlite3", description="embedded: the database file.")
    index_dir: str = Field("data/memory-index", description="Where the HNSW index is persisted.")
    index_segment_vectors: int = Field(
        131_072,
        ge=1_024,
        le=1 << 24,
        description="How many vectors a namespace's growing HNSW segment holds in RAM before it is "
        "sealed to a file under index_dir and memory-mapped (the namespace's first segment; later "
        "ones are sealed at half of it): the index's private memory per namespace (~60 MB at 64 "
        "dimensions, f32; ~230 MB at 384; ~830 MB at 1,536: lower it for large embeddings), "
        "whatever the namespace's size. Fewer, larger segments search faster (a search walks each "
        "one: two segments cost ~2.5x one). A power of two wastes nothing (usearch grows its "
        "capacity by doubling). Applies at start.",
    )
    embedding_model: str | None = Field(
        None,
        description="A model group of this policy serving /v1/embeddings, used to embed memories "
        "and queries through the gateway's own routing. Without it, callers must send vectors.",
    )
    namespaces: dict[str, Retention] = Field(
        default_factory=dict,
        description="Settings per namespace (retention, trust); others keep memories until pruned "
        "and are untrusted.",
    )
    pruning: Pruning = Pruning()
    pool: MemoryPool = MemoryPool()
    search_cache_ttl_s: float = Field(
        300,
        ge=0,
        description="Search results are cached this long (0: off) and dropped on writes to their namespaces.",
    )
    augment_max_chars: int = Field(
        32_000,
        ge=1,
        le=1_000_000,
        description="Most characters of memory text a memory-augmented chat gets in all (ids and "
        "framing aside; 32,000 is ~8,000 tokens): best memories first, the one that crosses it cut, "
        "those after it left out. Only the memories sent count as accessed.",
    )
    ingest: Ingest = Ingest()


class Server(_Strict):
    """HTTP server settings that belong with the policy rather than the environment."""

    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest accepted request body.")
    max_audio_bytes: ByteSize = Field(
        25 * 1024 * 1024,
        description="Largest form a transcription or translation upload may be (file and fields; "
        "413 beyond, before the rest is read). Each form is held whole in memory while it is "
        "served (failover sends it again), so this bounds memory per upload in flight. The "
        "default is OpenAI's own limit of 25 MiB. A size such as 10MiB.",
    )
    max_image_bytes: ByteSize = Field(
        64 * 1024 * 1024,
        description="Largest form an image edit or variation upload may be (images, mask and "
        "fields; 413 beyond, before the rest is read). Held whole in memory while served, as "
        "transcriptions are, and counted in max_audio_in_flight_bytes. The default holds one "
        "image at OpenAI's largest (50 MB, GPT image models) with its mask; OpenAI takes up to "
        "16 such images, so raise it for many large images. A size such as 100MiB.",
    )
    max_audio_in_flight_bytes: ByteSize = Field(
        256 * 1024 * 1024,
        description="Most bytes of upload forms (transcriptions, translations, image edits and "
        "variations) one process holds at once: "
        "each upload reserves its declared length (max_audio_bytes or max_image_bytes without one) "
        "until it is "
        "answered; past this, an upload is refused before it is read, 503 uploads_busy with "
        "Retry-After: 1 (the SDKs retry). One upload is always let in. One caller (its key's team, "
        "else its key, else its open-mode credential, else its address) may hold a quarter of "
        "this, at least one largest form of its endpoint: past it, 429 uploads_busy. Resident "
        "memory runs to about 1.3 x this under a burst of full-size uploads (each attempt sends "
        "the held form's own bytes). A size such as 1GiB.",
    )
    drain_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    keepalive_timeout_s: float = Field(
        75.0, gt=0, description="How long an idle keep-alive connection is kept open between requests."
    )
    request_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description=(
            "How long a client may take to send a request's headers (from connecting, or from the "
            "first byte of a later request on the connection; then the connection is closed) and, "
            "again, its body (then 408 and the connection is closed)."
        ),
    )
    response_write_timeout_s: float = Field(
        30.0,
        gt=0,
        description=(
            "How long an answer may wait on a client that reads none of it (its TCP window full) "
            "before the connection is closed (a stream's provider request with it)."
        ),
    )
    health_interval_s: DurationS = Field(
        5.0,
        description=(
            "How often the health monitor checks every dependency (GET /health, "
            "gateway_dependency_up; its Redis PING is also the reconnect probe after a backoff) "
            "and resident memory against max_rss_bytes."
        ),
    )
    max_rss_bytes: ByteSize | None = Field(
        None,
        description=(
            "Resident memory above which the gateway frees memory by itself, in order until it is "
            "back under: the memory search cache, the semantic cache index, then the in-process "
            "response cache's oldest entries (each step counted in gateway_recovery_actions_total). "
            "A size such as 2GiB; null: never."
        ),
    )


class Limits(_Strict):
    """Bounds on what one chat or completions request may ask of a provider (checked before any
    call; a request beyond them is a 400 naming the field). ``n`` is always at least 1 and
    ``max_tokens`` / ``max_completion_tokens`` at least 1."""

    max_n: int = Field(128, ge=1, description="Most choices one request may ask for (`n`).")
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Largest `max_tokens` / `max_completion_tokens` a request may ask for (null: no bound).",
    )


TEAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# A memory namespace's name, as the memory API takes it (gateway.wire.memory.NAMESPACE_PATTERN, a
# sibling layer this one may not import): a grant of any other text grants nothing.
_GRANTED_NAMESPACE = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class TeamNamespaces(_Strict):
    """A team's memory namespace grants (null: every namespace)."""

    read: list[_GRANTED_NAMESPACE] | None = Field(
        None, max_length=1000, description="Namespaces its keys may read and search."
    )
    write: list[_GRANTED_NAMESPACE] | None = Field(
        None, max_length=1000, description="Namespaces its keys may write and delete."
    )


# The most a per-minute limit may be (a trillion): far beyond any real key, within what the key
# stores' 64-bit integers and the limiter's Lua numbers (doubles, exact to 2**53) hold exactly.
MAX_RATE = 10**12


class Team(_Strict):
    """A team: the defaults its virtual keys inherit (a key's own setting overrides each, except
    ``models``, a ceiling a key's own list may only narrow)."""

    description: str | None = None
    models: list[str] | None = Field(
        None,
        description="Model groups its keys may call (null: every group of the policy); a key's own "
        "`models` may narrow this list, never widen it.",
    )
    rpm: int | None = Field(
        None,
        ge=1,
        le=MAX_RATE,
        description="Requests per minute per key (null: unlimited); `shared_rpm` bounds the team.",
    )
    tpm: int | None = Field(
        None,
        ge=1,
        le=MAX_RATE,
        description="Tokens (prompt + completion) per minute per key (null: unlimited); "
        "`shared_tpm` bounds the team.",
    )
    budget_usd: float | None = Field(
        None, ge=0, description="Spend allowed per key per `budget_period`, in US dollars (null: unlimited)."
    )
    budget_period: BudgetPeriodS = Field(
        30 * 86400.0,
        description="The budget's period, e.g. 30d, 7d, 12h (seconds when a number); also the "
        "period of `shared_budget_usd`.",
    )
    shared_budget_usd: float | None = Field(
        None,
        ge=0,
        le=MAX_PRICE_USD,
        description="Spend allowed per `budget_period` to all the team's keys together, in US "
        "dollars (null: none). Checked alongside each key's own budget: a call is admitted only "
        "while both have room.",
    )
    shared_rpm: int | None = Field(
        None,
        ge=1,
        le=MAX_RATE,
        description="Requests per minute to all the team's keys together (null: none). Checked "
        "alongside each key's own `rpm`: a call is admitted only while both have room.",
    )
    shared_tpm: int | None = Field(
        None,
        ge=1,
        le=MAX_RATE,
        description="Tokens (prompt + completion) per minute to all the team's keys together "
        "(null: none). Checked alongside each key's own `tpm`: a call is admitted only while both "
        "have room.",
    )
    namespaces: TeamNamespaces = TeamNamespaces()
    provider_files: bool = Field(
        False,
        description="Whether its keys may name objects stored with the providers under the "
        "gateway's keys (an OpenAI or Anthropic file_id, a Gemini Files API URI or gs:// URI), "
        "which any key could otherwise read by id; a key's own setting overrides it.",
    )


class Auth(_Strict):
    """Who may call: virtual keys (the records live in the key store) and their teams."""

    mode: Literal["keys", "open"] = Field(
        "keys",
        description="keys: every /v1/* call needs 'Authorization: Bearer <virtual key>'; open: "
        "anyone (demos, tests; loopback only unless --allow-open).",
    )
    teams: dict[str, Team] = Field(
        default_factory=dict, description="Teams by name; `keys create --team NAME` needs one here."
    )
    key_cache_s: float = Field(
        5.0,
        ge=0,
        description="How long a key lookup (found or not) is cached in each gateway process; a "
        "revocation reaches other replicas within this time (with REDIS_URL at once, through the key "
        "bus; this stays the bound while Redis is down).",
    )
    limits_fail: Literal["open", "closed"] = Field(
        "open",
        description="When the limits' Redis cannot be reached: open (count RPM, TPM and spend in "
        "each process, logged and exported) or closed (refuse with 503).",
    )
    store: str = Field(
        "data/keys.sqlite3",
        min_length=1,
        description="The embedded key store's SQLite file; KEYS_URL=postgresql://... in the "
        "environment uses PostgreSQL instead (replicas sharing keys).",
    )

    @field_validator("teams")
    @classmethod
    def _team_names(cls, value: dict[str, Team]) -> dict[str, Team]:
        for name in value:
            if not TEAM_NAME.match(name):
                raise ValueError(
                    f"team name {quoted(name)} must be 1-64 letters, digits, '_', '.' or '-' "
                    "(starting with a letter or digit)"
                )
        return value


class ResponsesSettings(_Strict):
    """The Responses API front door (POST /v1/responses): what it keeps for previous_response_id."""

    store: bool = Field(
        True,
        description="Keep responses asked with store: true (the API's default) in the response "
        "cache's store, per tenant, so a later request can name one in previous_response_id. "
        "false: nothing is kept and previous_response_id is refused.",
    )
    store_ttl_s: DurationS = Field(
        3600.0, gt=0, description="How long a kept response can be named in previous_response_id."
    )
    store_max_bytes: ByteSize = Field(
        20 * 10**6,
        description="Space for kept responses; when full, the least recently used are dropped.",
    )


class Policy(_Strict):
    """The whole policy file."""

    version: Literal[1] = Field(description="Policy format version; only 1 exists.")
    weights: Weights = Weights()
    routing: Routing = Routing()
    retry: Retry = Retry()
    breaker: Breaker = Breaker()
    cache: Cache = Cache()
    memory: MemoryConfig = MemoryConfig()
    server: Server = Server()
    limits: Limits = Limits()
    auth: Auth = Auth()
    responses: ResponsesSettings = ResponsesSettings()
    providers: dict[HeaderName, Provider] = Field(min_length=1)
    models: dict[HeaderName, ModelGroup] = Field(min_length=1)

    @model_validator(mode="after")
    def _providers_exist(self) -> Policy:
        known = sorted(self.providers)
        for name, group in self.models.items():
            for i, dep in enumerate(group.deployments):
                if dep.provider not in self.providers:
                    raise PolicyReferenceError(
                        ("models", name, "deployments", i, "provider"),
                        f"unknown provider {quoted(dep.provider)}",
                        f"known providers: {listed(known)}",
                    )
            shadow = group.shadow
            if shadow is not None and shadow.deployment.provider not in self.providers:
                raise PolicyReferenceError(
                    ("models", name, "shadow", "deployment", "provider"),
                    f"unknown provider {quoted(shadow.deployment.provider)}",
                    f"known providers: {listed(known)}",
                )
            if shadow is not None and shadow.embedding_model not in (None, *self.models):
                raise PolicyReferenceError(
                    ("models", name, "shadow", "embedding_model"),
                    f"unknown model group {quoted(shadow.embedding_model)}",
                    f"known model groups: {listed(sorted(self.models))}",
                )
            for i, rule in enumerate(group.rules):
                if rule.use not in self.models:
                    raise PolicyReferenceError(
                        ("models", name, "rules", i, "use"),
                        f"unknown model group {quoted(rule.use)}",
                        f"known model groups: {listed(sorted(self.models))}",
                    )
                if rule.use == name:
                    raise PolicyReferenceError(
                        ("models", name, "rules", i, "use"),
                        "a rule may not point at its own group",
                        "name another group, or drop the rule",
                    )
                if self.models[rule.use].rules:
                    raise PolicyReferenceError(
                        ("models", name, "rules", i, "use"),
                        f"group {quoted(rule.use)} has rules of its own",
                        "rules are applied once; point at a group without rules",
                    )
        if self.memory.embedding_model is not None and self.memory.embedding_model not in self.models:
            raise PolicyReferenceError(
                ("memory", "embedding_model"),
                f"unknown model group {quoted(self.memory.embedding_model)}",
                f"known model groups: {listed(sorted(self.models))}",
            )
        for cname, category in self.cache.categories.items():
            semantic = category.semantic
            if semantic is not None and semantic.embedding_model not in self.models:
                raise PolicyReferenceError(
                    ("cache", "categories", cname, "semantic", "embedding_model"),
                    f"unknown model group {quoted(semantic.embedding_model)}",
                    f"known model groups: {listed(sorted(self.models))}",
                )
        return self

    @model_validator(mode="after")
    def _one_rollout_per_group(self) -> Policy:
        used: dict[tuple[str, str], list[str]] = {}
        for name, group in self.models.items():
            for dep in group.deployments:
                used.setdefault((dep.provider, dep.model), []).append(name)
        for name, group in self.models.items():
            rolling = [i for i, dep in enumerate(group.deployments) if dep.rollout is not None]
            if len(rolling) > 1:
                raise PolicyReferenceError(
                    ("models", name, "deployments", rolling[1], "rollout"),
                    "a group may roll out one deployment at a time",
                    f"deployment {rolling[0]} is in rollout already; drop one of the rollouts",
                )
            if rolling and len(group.deployments) == 1:
                raise PolicyReferenceError(
                    ("models", name, "deployments", 0, "rollout"),
                    "the group's only deployment cannot be rolled out",
                    "a rollout shifts traffic from the group's other deployments; add the one it replaces",
                )
            if rolling:
                # A rollout is known by (group, provider, model): a second entry of the same pair
                # was taken for the candidate (the router picks the first match), so the share
                # split traffic between two identical entries and the gates judged the wrong one.
                cand = group.deployments[rolling[0]]
                same = [
                    i
                    for i, dep in enumerate(group.deployments)
                    if i != rolling[0] and (dep.provider, dep.model) == (cand.provider, cand.model)
                ]
                if same:
                    raise PolicyReferenceError(
                        ("models", name, "deployments", rolling[0], "rollout"),
                        f"the rollout's candidate {quoted(f'{cand.provider}/{cand.model}')} is deployment "
                        f"{same[0]} of the group already",
                        "a rollout brings in a deployment the group does not have: change the "
                        "candidate's provider or model, or drop the duplicate entry",
                    )
                others = sorted({g for g in used[(cand.provider, cand.model)] if g != name})
                if others:  # (``references._rollouts`` says why)
                    raise PolicyReferenceError(
                        ("models", name, "deployments", rolling[0], "rollout"),
                        f"the rollout's candidate {quoted(f'{cand.provider}/{cand.model}')} is deployed in "
                        f"group {quoted(others[0])} too",
                        "a deployment's live figures are shared by every group using it, so the "
                        "rollout's gates would count the other group's traffic: roll it out where it "
                        "is not deployed yet, or drop it from the other group (a rule can send that "
                        "group's requests here)",
                    )
        return self

    @model_validator(mode="after")
    def _team_models_exist(self) -> Policy:
        for team_name, team in self.auth.teams.items():
            for i, model in enumerate(team.models or ()):
                if model not in self.models:
                    raise PolicyReferenceError(
                        ("auth", "teams", team_name, "models", i),
                        f"unknown model group {quoted(model)}",
                        f"known model groups: {listed(sorted(self.models))}",
                    )
        return self


class PolicyReferenceError(ValueError):
    """A cross-reference inside the policy is broken; carries the key path it is at."""

    def __init__(self, loc: tuple[str | int, ...], message: str, hint: str) -> None:
        super().__init__(f"{message} ({hint})")
        self.loc = loc
        self.message = message
        self.hint = hint
