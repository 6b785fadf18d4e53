"""The commands' side of the admin API: one call to a running gateway's ``/admin/*`` endpoints.

``sophia-gateway keys --url``, ``rollout``, ``policy explain --url`` and ``policy diff --url``
talk to a gateway the same way: JSON in and out, ``Authorization: Bearer $SOPHIA_ADMIN_TOKEN``
when that variable is set, the gateway's own error message when it refuses.

The token goes to ``--url`` and nowhere else: a redirect (3xx) is not followed but reported as an
error naming where it pointed (urllib's default opener would have sent the token on to any host
a redirect names), and a token no header can carry is refused before any call, in a message
that never repeats it.
"""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from typing import IO, Any

import orjson

from gateway.settings import admin_token_problem

Json = dict[str, Any]
_LOCATION_CHARS = 300  # of a redirect's Location shown in the error


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: urllib then raises the 3xx as an ``HTTPError`` (``call_admin`` says
    where it pointed), and nothing is sent to the redirect's target."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def authorized_request(url: str, **kwargs: Any) -> urllib.request.Request:
    """A request to ``url`` carrying ``SOPHIA_ADMIN_TOKEN`` (if set) as an unredirected header:
    to be opened with ``open_admin`` only. Raises ``AdminCallError`` for a token no header can
    carry (http.client's own refusal would quote it whole)."""
    request = urllib.request.Request(url, **kwargs)
    token = os.environ.get("SOPHIA_ADMIN_TOKEN")
    if token:
        problem = admin_token_problem(token)
        if problem is not None:
            raise AdminCallError(f"SOPHIA_ADMIN_TOKEN {problem}", reached=False)
        # Unredirected as well: never carried to another request, whatever opener runs it.
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    return request


def open_admin(request: urllib.request.Request, timeout_s: float) -> Any:
    """``urlopen`` that follows no redirect (a 3xx is raised as ``HTTPError``): the admin token
    goes to the URL the operator gave, nowhere else."""
    return _OPENER.open(request, timeout=timeout_s)


class AdminCallError(Exception):
    """The call did not give an answer: ``reached`` is False when the gateway could not be
    reached at all, True when it answered with an error (``str()`` is its message)."""

    def __init__(self, message: str, *, reached: bool) -> None:
        super().__init__(message)
        self.reached = reached


def call_admin(url: str, method: str, path: str, body: Json | None = None, timeout_s: float = 30.0) -> Json:
    """The JSON object the gateway at ``url`` answers to ``method path`` (with ``body`` as JSON)."""
    request = authorized_request(
        url.rstrip("/") + path,
        method=method,
        data=None if body is None else orjson.dumps(body),
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    try:
        with open_admin(request, timeout_s) as resp:
            answer = orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise AdminCallError(_redirected(url, exc), reached=True) from None
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


def _redirected(url: str, exc: urllib.error.HTTPError) -> str:
    location = (exc.headers.get("Location") if exc.headers is not None else None) or "nowhere"
    if len(location) > _LOCATION_CHARS:
        location = location[:_LOCATION_CHARS] + "…"
    shown = printable(location)
    return (
        f"{url} answered HTTP {exc.code}, a redirect to {shown}: not followed (the admin token is "
        "sent to --url only); give the gateway's own address as --url"
    )


def printable(text: str) -> str:
    """``text`` for a terminal: control characters (an escape sequence that clears the screen or
    retitles the window) shown as ``\\xNN`` instead of acted on."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


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
