"""The commands' side of the admin API: one call to a running gateway's ``/admin/*`` endpoints.

``sophia-gateway keys --url``, ``rollout``, ``policy explain --url`` and ``policy diff --url``
talk to a gateway the same way: JSON in and out, ``Authorization: Bearer $SOPHIA_ADMIN_TOKEN``
when that variable is set, the gateway's own error message when it refuses.
"""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

Json = dict[str, Any]


class AdminCallError(Exception):
    """The call did not give an answer: ``reached`` is False when the gateway could not be
    reached at all, True when it answered with an error (``str()`` is its message)."""

    def __init__(self, message: str, *, reached: bool) -> None:
        super().__init__(message)
        self.reached = reached


def call_admin(url: str, method: str, path: str, body: Json | None = None, timeout_s: float = 30.0) -> Json:
    """The JSON object the gateway at ``url`` answers to ``method path`` (with ``body`` as JSON)."""
    request = urllib.request.Request(
        url.rstrip("/") + path,
        method=method,
        data=None if body is None else orjson.dumps(body),
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    token = os.environ.get("SOPHIA_ADMIN_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            answer = orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read())["error"]["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise AdminCallError(f"{url}: {message}", reached=True) from None
    except OSError as exc:
        raise AdminCallError(f"cannot reach {url}: {exc}", reached=False) from None
    except orjson.JSONDecodeError:
        raise AdminCallError(f"{url}{path} did not answer JSON", reached=True) from None
    if not isinstance(answer, dict):
        raise AdminCallError(f"{url}{path} did not answer a JSON object", reached=True)
    return answer


def gateway_url(text: str) -> str:
    """``--url``'s type: an http(s) URL with a host, else argparse's one-line error and exit 2
    (``notaurl`` or ``http://[::1`` made urllib raise a traceback)."""
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a URL ({exc}): give it as http://HOST:PORT") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL: give it as http://HOST:PORT")
    return text
