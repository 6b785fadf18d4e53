"""Bounds on what one request may ask of a provider (``limits:`` in the policy).

The body is forwarded as the client sent it, so a field the gateway does not bound reaches the
provider as is: a self-hosted backend asked for ``n: 1000000`` choices may well try. Only the
fields that multiply a provider's work are checked here; the rest is the provider's to judge.
"""

from __future__ import annotations

from gateway.errors import InvalidRequest
from gateway.policy.model import Limits
from gateway.wire.requests import ENDPOINT_COMPLETIONS, Endpoint, JSONObject

# The token fields of each endpoint (OpenAI's chat API renamed max_tokens to max_completion_tokens).
_TOKEN_FIELDS: dict[Endpoint, tuple[str, ...]] = {
    Endpoint.CHAT: ("max_tokens", "max_completion_tokens"),
    Endpoint.COMPLETIONS: ("max_tokens",),
    # A front door's own names, checked by its service before translation (issue 17).
    Endpoint.RESPONSES: ("max_output_tokens",),
    Endpoint.IMAGES: (),  # only ``n``: images per request
    Endpoint.IMAGE_EDITS: (),
    Endpoint.IMAGE_VARIATIONS: (),
}


# Every field ``check_limits`` looks at, on any endpoint.
_BOUNDED = frozenset(("n", *(name for names in _TOKEN_FIELDS.values() for name in names)))


def check_limits(endpoint: Endpoint, body: JSONObject, limits: Limits) -> None:
    """Raise ``InvalidRequest`` naming the first of ``n`` / ``max_tokens`` /
    ``max_completion_tokens`` outside ``limits`` (absent or null fields are left to the provider)."""
    fields = _TOKEN_FIELDS.get(endpoint)
    if fields is None or _BOUNDED.isdisjoint(body):  # (most bodies: one set operation)
        return
    if body.get("n") is not None:  # most bodies set none of these: no call for them
        _check_int(body, "n", limits.max_n, "limits.max_n")
    # OpenAI's legacy completions take ``max_tokens: 0`` (its reference: minimum 0), with
    # ``echo`` to score a prompt's log probabilities without generating; chat's minimum is 1.
    least = 0 if endpoint is ENDPOINT_COMPLETIONS else 1
    for name in fields:
        if body.get(name) is not None:
            _check_int(body, name, limits.max_tokens, "limits.max_tokens", least)


def _check_int(body: JSONObject, name: str, most: int | None, setting: str, least: int = 1) -> None:
    value = body.get(name)
    if value is None:
        return
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= least
        and (most is None or value <= most)
    ):
        return
    bound = (
        f"an integer from {least} to {most} (this gateway's {setting})"
        if most
        else f"an integer of at least {least}"
    )
    raise InvalidRequest(
        f"Invalid value for '{name}': it must be {bound}, not {_shown(value)}.",
        param=name,
        code="invalid_value",
    )


def _shown(value: object) -> str:
    """The value a client sent, as the error repeats it: a number as JSON reads it (an integer
    beyond 64 bits arrives as a float: 1e+30), anything else by its JSON type."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**18 else f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:g}" + (
            " (beyond the largest integer JSON here carries)" if abs(value) >= 2**63 else ""
        )
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else "null"
