"""The commands' side of the admin API: one call to a running gateway's ``/admin/*`` endpoints.

``sophia-gateway keys --url``, ``rollout``, ``policy explain --url`` and ``policy diff --url``
talk to a gateway the same way: JSON in and out, ``Authorization: Bearer $SOPHIA_ADMIN_TOKEN``
when that variable is set, the gateway's own error message when it refuses.

The token goes to ``--url`` and nowhere else: a redirect (3xx) is not followed but reported as an
error naming where it pointed (urllib's default opener would have sent the token on to any host
a redirect names), and a token no header can carry is refused before any call, in a message
that never repeats it.

Every call is bounded as a whole (``exchange``): its timeout is a deadline for the answer's last
byte, not urllib's per-read one (a server sending a byte a second held a command forever), its
body is at most ``MAX_ANSWER_BYTES``, and whatever answers, HTTP or not, ends as an answer or an
``AdminCallError``, never a traceback.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import IO, Any

import orjson

from gateway.settings import TOKEN_DEPRECATED_HEADER, admin_token_problem

Json = dict[str, Any]
_LOCATION_CHARS = 300  # of a redirect's Location shown in the error
_MESSAGE_CHARS = 300  # of an error message the other end wrote, shown in ours
# The largest answer a command reads: a /metrics of many workers is a few MiB; a URL that streams
# without end (not a gateway) filled the command's memory until MemoryError.
MAX_ANSWER_BYTES = 64 * 2**20


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


@dataclass(frozen=True)
class Answer:
    """An HTTP answer read whole: its status (a 3xx, 4xx or 5xx too), headers and body."""

    status: int
    headers: Message
    body: bytes


def exchange(request: urllib.request.Request, timeout_s: float, max_bytes: int = MAX_ANSWER_BYTES) -> Answer:
    """``request``'s answer, read whole within ``timeout_s`` seconds from now (connecting, headers
    and body together), following no redirect. Raises ``AdminCallError`` (``reached=False``) when
    there is none in time, the other end does not speak HTTP, or the body is over ``max_bytes``.

    The call runs on a daemon thread the caller waits for: urllib's timeout bounds each read
    only, so a server that sends a byte a second never times out there (a left thread ends with
    the process)."""
    outcome: list[Answer | AdminCallError] = []
    done = threading.Event()

    def call() -> None:
        try:
            outcome.append(_exchange_now(request, timeout_s, max_bytes))
        except AdminCallError as exc:
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=call, name="admin-call", daemon=True).start()
    if not done.wait(timeout_s):
        raise AdminCallError(
            f"cannot reach {_origin(request)}: no answer within {timeout_s:g} s", reached=False
        )
    result = outcome[0]
    if isinstance(result, AdminCallError):
        raise result
    return result


def _exchange_now(request: urllib.request.Request, timeout_s: float, max_bytes: int) -> Answer:
    where = _origin(request)
    try:
        try:
            resp = open_admin(request, timeout_s)
        except urllib.error.HTTPError as exc:
            resp = exc  # a 3xx, 4xx or 5xx is an answer too
        with resp:
            body = resp.read(max_bytes + 1)
            status, headers = resp.status, resp.headers
    except urllib.error.URLError as exc:
        raise AdminCallError(f"cannot reach {where}: {printable(str(exc.reason))}", reached=False) from None
    except OSError as exc:
        raise AdminCallError(f"cannot reach {where}: {printable(str(exc))}", reached=False) from None
    except http.client.HTTPException as exc:
        # BadStatusLine, IncompleteRead, LineTooLong: something answered, but not in HTTP.
        name = type(exc).__name__
        raise AdminCallError(
            f"{where} did not answer HTTP ({name}): is it the gateway?", reached=False
        ) from None
    if len(body) > max_bytes:
        raise AdminCallError(
            f"{where} answered more than {max_bytes // 2**20} MiB: is it the gateway?", reached=True
        )
    return Answer(status or 0, headers, body)


def _origin(request: urllib.request.Request) -> str:
    return f"{request.type}://{request.host}"


def quoted(message: object) -> str:
    """An error message the other end wrote, for one line of ours: control characters escaped
    (``printable``) and cut to ``_MESSAGE_CHARS``."""
    text = str(message)
    if len(text) > _MESSAGE_CHARS:
        text = text[:_MESSAGE_CHARS] + "…"
    return printable(text)


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
    answered = exchange(request, timeout_s)
    note_deprecated(url, answered)
    if 300 <= answered.status < 400:
        raise AdminCallError(_redirected(url, answered), reached=True)
    if answered.status >= 400:
        raise AdminCallError(f"{url}: {error_message(answered)}", reached=True)
    try:
        answer = orjson.loads(answered.body)
    except orjson.JSONDecodeError:
        raise AdminCallError(f"{url}{path} did not answer JSON", reached=True) from None
    if not isinstance(answer, dict):
        raise AdminCallError(f"{url}{path} did not answer a JSON object", reached=True)
    return answer


def note_deprecated(url: str, answer: Answer) -> None:
    """One line on stderr when the gateway at ``url`` let ``SOPHIA_ADMIN_TOKEN`` in as its
    previous admin token (``x-gateway-token-deprecated: true``): it is being rotated out, and the
    command stops working once the operator removes it."""
    if answer.headers.get(TOKEN_DEPRECATED_HEADER) == "true":
        print(
            f"note: {url} accepted SOPHIA_ADMIN_TOKEN as its previous admin token, which is being "
            "rotated out: set SOPHIA_ADMIN_TOKEN to the gateway's new one",
            file=sys.stderr,
        )


def error_message(answer: Answer) -> str:
    """The gateway's own message in an error answer (``{"error": {"message": ...}}``), shown
    safely (``quoted``), else ``HTTP <status>``."""
    try:
        message = orjson.loads(answer.body)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"HTTP {answer.status}"
    return quoted(message)


def _redirected(url: str, answer: Answer) -> str:
    location = answer.headers.get("Location") or "nowhere"
    if len(location) > _LOCATION_CHARS:
        location = location[:_LOCATION_CHARS] + "…"
    shown = printable(location)
    return (
        f"{url} answered HTTP {answer.status}, a redirect to {shown}: not followed (the admin token is "
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
    if "@" in parts.netloc:
        # urllib would not send these as credentials (it read "user:pass@host" as the host and
        # failed with a traceback quoting them), and every error line would print them: refused
        # without repeating them.
        raise argparse.ArgumentTypeError(
            "holds credentials (user:password@): give it as http://HOST:PORT and the admin token "
            "in SOPHIA_ADMIN_TOKEN"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL: give it as http://HOST:PORT")
    if "?" in text or "#" in text:
        # The commands append their paths (/admin/keys) to --url: after a query or fragment they
        # became part of it, and the gateway's 404 for the path that was left was the answer.
        raise argparse.ArgumentTypeError(
            f"{text!r} has a query or fragment ('?' or '#'): give the gateway's address as http://HOST:PORT"
        )
    return text
