"""A front door: a client API other than OpenAI's served through the same request service.

The service runs such a call as a chat call (validation, limits, admission, routing rules and
token estimates read the door's chat translation), with three differences the door decides:
the cache key is taken over the client's own body under the door's endpoint (so an answer is
only ever served to a request of the same shape), and each attempt asks the door for the
provider request and for the answer in the door's shape, whole or streamed. Per attempt, so a
model group may mix deployments the door passes its request to natively (Anthropic for
``/v1/messages``) with ones it translates for (every other kind), and fail over between them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from gateway.providers.base import StreamTranslator, UpstreamRequest
from gateway.routing.target import Target
from gateway.wire.requests import Endpoint, JSONObject


class FrontDoor(Protocol):
    """One request through a front door (built per request by its handler)."""

    @property
    def endpoint(self) -> Endpoint:
        """The operation the client called: the cache key's scope."""
        ...

    @property
    def body(self) -> JSONObject:
        """The client's own request body (hashed for the cache key)."""
        ...

    @property
    def cache_variant(self) -> str:
        """What besides the body changes the answer and so the cache key (the request headers a
        door passes to its provider, normalised), "" when nothing does."""
        ...

    def build(self, target: Target) -> UpstreamRequest:
        """The provider request for one attempt (``UnsupportedByProvider`` if ``target``'s kind
        cannot serve it: retryable, so a capable deployment of the group is tried next)."""
        ...

    def withheld(self, target: Target) -> bool:
        """Whether the client's reasoning effort was not sent to ``target``, a deployment the
        policy says does not reason (``effort.py``): the response's header says so. Asked once
        per request, of the deployment that served it."""
        ...

    def mode(self, target: Target) -> str:
        """``native`` when ``target`` gets the client's own format, else ``translated`` (a label)."""
        ...

    def answer(self, target: Target, raw: bytes, parsed: JSONObject) -> tuple[bytes, object]:
        """(the answer in the door's shape, the OpenAI usage for accounting) for a provider's
        whole answer to ``build(target)``."""
        ...

    def stream_translator(self, target: Target) -> StreamTranslator:
        """A translator from ``target``'s stream to the door's SSE events."""
        ...

    @property
    def chat(self) -> JSONObject:
        """The chat translation the request service validates, routes and limits by."""
        ...

    def provider_file(self) -> str | None:
        """The key path, as the client sent it, of the first object stored with a provider its
        request names (``wire/provider_files.py``), None when it names none. Asked only of
        callers whose key may not name one."""
        ...

    def remembered(self, trusted: str, reference: str) -> FrontDoor:
        """This request with recalled memories (``memory/augment.recall``) placed in the door's
        own format where chat places them: ``trusted`` text after the client's system prompt,
        the ``reference`` block as a user turn just before the last one with text."""
        ...


def has_choice(completion: Mapping[str, Any]) -> bool:
    """Whether a whole chat completion has a first choice a door can translate (an object):
    a provider's completion without one is its error, not an empty answer."""
    choices = completion.get("choices")
    return isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict)
