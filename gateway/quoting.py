"""Names repeated in error messages, bounded: ``quoted(name)``.

An error that names what it refuses (a model group, a deployment, a provider, a rollout action)
repeats text someone else wrote: a client's request body, an admin call, a policy file. Quoted
whole, a 100,000-character model name made a 100 KB error body (and log line, and terminal
line); ``quoted`` keeps the first ``QUOTE_MAX_CHARS`` characters and says how long it was, so
the message still says what is wrong. At the bottom layer (``errors`` re-exports it), so the
policy, which may not import ``errors``, uses it too.
"""

from __future__ import annotations

from collections.abc import Iterable

QUOTE_MAX_CHARS = 256
# The most of an error's whole message a client is shown (``capped``, applied by ``GatewayError``
# to every message and param it renders, whatever built them): a backstop for the places that
# repeat a client's text without ``quoted``. Long enough for a failover's list of attempts.
MESSAGE_MAX_CHARS = 8192


def quoted(value: object, max_chars: int = QUOTE_MAX_CHARS) -> str:
    """``value`` as text in single quotes: ``'chat'``; beyond ``max_chars`` characters, the first
    ``max_chars`` and the whole length: ``'aaaa…' (100000 chars)``."""
    text = str(value)
    if len(text) <= max_chars:
        return f"'{text}'"
    return f"'{text[:max_chars]}…' ({len(text)} chars)"


def bounded(value: object, max_chars: int = QUOTE_MAX_CHARS) -> str:
    """``value`` as text, cut as ``quoted`` cuts it but without quotes (a key in a key path)."""
    text = str(value)
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}…({len(text)} chars)"


def listed(values: Iterable[object], max_chars: int = QUOTE_MAX_CHARS, max_items: int = 50) -> str:
    """Names joined by ``, `` for a hint (``known providers: a, b``), each bounded, and at most
    ``max_items`` of them (``... and 19950 more``): a policy of 20,000 groups listed them all in
    every unknown-group message."""
    names = [bounded(v, max_chars) for v in values]
    if len(names) <= max_items:
        return ", ".join(names)
    return ", ".join(names[:max_items]) + f", ... and {len(names) - max_items} more"


def capped(text: str, max_chars: int = MESSAGE_MAX_CHARS) -> str:
    """``text`` whole, or its first ``max_chars`` characters and its length (an error message)."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}… ({len(text)} chars)"
