"""Who is calling: the ``Authorization`` header checked at the edge, before anything costs.

``auth.mode: keys`` (the default): every ``/v1/*`` call needs ``Authorization: Bearer <virtual key>``.
What is accepted is RFC 6750 section 2.1: the scheme ``Bearer`` in any case (RFC 9110 section 11.1:
auth schemes are case-insensitive), one or more spaces, then a ``b64token``
(``A-Z a-z 0-9 - . _ ~ + /``, then ``=`` padding). Every other shape (no header, two headers, another
scheme, a tab, control characters, quotes or spaces inside, SQL-looking text, more than
``MAX_AUTHORIZATION_CHARS``) is refused by these cheap checks before any hashing or store access.
A refused, unknown, revoked or expired key all get the same 401 ``invalid_api_key`` with the same
message (no hint which, never echoing the header); a key store that cannot answer is the key ring's
503, never an open door.

``auth.mode: open``: no key needed; the caller is ``None`` and the request context keeps today's
tenant (a hash of the Authorization header). Every route then refuses a ``Host`` that is not the
gateway's (``refuse_rebound_host``: DNS rebinding), before its handler.

Admin endpoints (``/admin/*``) need ``Authorization: Bearer $SOPHIA_ADMIN_TOKEN`` (compared in
constant time) whenever the token is set; without it they answer only on a gateway bound to
loopback (and there only to a ``Host`` that is the gateway's, with no other site's ``Origin``), and
403 when it listens beyond.

``GET /metrics`` needs ``Authorization: Bearer $SOPHIA_METRICS_TOKEN`` (constant time) when that
token is set (``metrics_refusal``: plain-text 401 and 429, door ``metrics``), and is open without it.

Either token's ``..._PREVIOUS`` (the one it replaced) is accepted beside it while clients rotate:
the call is served, counted in ``gateway_previous_token_used_total{token}``, answered with
``x-gateway-token-deprecated: true`` and marked in the access log (``matched_token``,
``used_previous``). So is a virtual key's secret rotated out with a grace (``KeyRing.rotate``),
as token ``key``, while its grace lasts.

Each 401 of any kind is counted against the client's address (``auth/throttle.py``; behind
``SOPHIA_TRUSTED_PROXIES``, the one their ``X-Forwarded-For`` names: ``client_address``); an
address that failed too often is refused with 429 ``auth_throttled`` before its credential is
read, a correct one included, until its window ends. While no address has failed lately, a
request pays one look at the empty table for it. With ``REDIS_URL`` the failures are counted in
Redis for every worker and replica; only a failure, or a request from an address that failed in
this process lately, waits for it (``auth/throttle.py``).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket

from aiohttp import hdrs, web

from gateway import keys
from gateway.auth.allowed_hosts import AllowedHosts
from gateway.auth.client_address import ClientAddresses
from gateway.auth.identity import Caller
from gateway.auth.throttle import FailedAuthThrottle
from gateway.errors import AuthenticationFailed, AuthThrottled, KeyStoreUnavailable, PermissionDenied
from gateway.quoting import quoted
from gateway.settings import MAX_ADMIN_TOKEN_CHARS

log = logging.getLogger("gateway.http")

# A virtual key is ~50 characters; a credential this long is not one (and is refused before the
# regular expression or any hash sees it).
MAX_AUTHORIZATION_CHARS = 256
KEY_PREFIX = "sk-sg-"  # every virtual key starts so; anything else cannot be one

_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9._~+/-]+=*)", re.ASCII)
_API_KEY = re.compile(r"[A-Za-z0-9._~+/-]+=*", re.ASCII)
# Bearer plus any printable ASCII token: the admin token is the operator's own string.
_ADMIN_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([\x21-\x7e]+)", re.ASCII)
_INVALID_KEY_MESSAGE = (
    "Invalid API key. Send 'Authorization: Bearer <key>' with a virtual key issued by this gateway "
    "(sophia-gateway keys create)."
)
# Where a door's SDK sends the key in a header of its own (Anthropic's ``x-api-key``, Azure
# OpenAI's ``api-key``), the message names that header.
_INVALID_KEY_HEADER_MESSAGE = (
    "Invalid API key. Send '{header}: <key>' (or 'Authorization: Bearer <key>') with a virtual key "
    "issued by this gateway (sophia-gateway keys create)."
)
# The header each door's SDK sends its key in, besides ``Authorization: Bearer``.
X_API_KEY = "x-api-key"  # Anthropic's SDKs (the Messages door)
AZURE_API_KEY = "api-key"  # the openai SDK's AzureOpenAI client (the Azure door)
_MAX_ADMIN_HEADER_CHARS = MAX_ADMIN_TOKEN_CHARS + 64
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="sophia-gateway"'}


def invalid_api_key(key_header: str = "") -> AuthenticationFailed:
    """The one 401 for every credential that is not a valid key, whatever was wrong with it
    (``key_header``: the door's own key header, named in the message)."""
    message = _INVALID_KEY_HEADER_MESSAGE.format(header=key_header) if key_header else _INVALID_KEY_MESSAGE
    return AuthenticationFailed(message, code="invalid_api_key", headers=_CHALLENGE)


def bearer_token(
    values: list[str], pattern: re.Pattern[str] = _BEARER, max_chars: int = MAX_AUTHORIZATION_CHARS
) -> str | None:
    """The token of the one ``Authorization`` header in ``values`` (at most ``max_chars``), or
    None for any other shape."""
    if len(values) != 1:
        return None
    value = values[0]
    if len(value) > max_chars:
        return None
    match = pattern.fullmatch(value)
    return match.group(1) if match is not None else None


def api_key_header(values: list[str]) -> str | None:
    """The key of the one ``x-api-key`` (or ``api-key``) header in ``values`` (a ``b64token``, as after Bearer),
    or None for any other shape."""
    if len(values) != 1 or len(values[0]) > MAX_AUTHORIZATION_CHARS:
        return None
    return values[0] if _API_KEY.fullmatch(values[0]) else None


async def authenticate(request: web.Request, *, key_header: str = "") -> Caller | None:
    """The caller of a ``/v1/*`` request: None in ``auth.mode: open``, else its key's ``Caller``.

    ``key_header``: the key may come in this header instead, as ``x-api-key: <key>``
    (``X_API_KEY``: Anthropic's SDK sends it so; the Messages front door, issue 17) or
    ``api-key: <key>`` (``AZURE_API_KEY``: the AzureOpenAI client; the Azure door);
    ``Authorization`` wins when both are sent, unless it is empty (or only spaces).
    Raises 401 ``invalid_api_key`` for a missing, malformed, unknown, revoked or expired key (and
    counts it against the client's address), 429 ``auth_throttled`` before anything else for an
    address that failed too often lately, and the key ring's 503 when the key store cannot answer."""
    app = request.app
    if app[keys.POLICY].auth.mode == "open":
        return None
    throttle = app[keys.AUTH_THROTTLE]
    if throttle.failures:  # some address failed lately: is it this one?
        await refuse_if_throttled(request, throttle, "api")
    authorization = request.headers.getall("Authorization", [])
    # An empty ``Authorization`` carries no credential (as for the open-mode tenant): the door's
    # key header is read, not refused for a blank line a proxy or an HTTP library added.
    if key_header and not any(value.strip() for value in authorization):
        secret = api_key_header(request.headers.getall(key_header, []))
    else:
        secret = bearer_token(authorization)
    if secret is None or not secret.startswith(KEY_PREFIX):
        raise await failed(request, throttle, "api", invalid_api_key(key_header))
    keyring = app.get(keys.KEYRING)
    if keyring is None:  # no key store wired in: nobody can be checked, so nobody gets in
        raise KeyStoreUnavailable()
    caller = await keyring.authenticate(secret)
    if caller is None:
        raise await failed(request, throttle, "api", invalid_api_key(key_header))
    if caller.previous_secret:  # a rotated-out secret within its grace: say it is on its way out
        used_previous(request, "key")
    return caller


def client_address(request: web.Request, clients: ClientAddresses | None = None) -> str | None:
    """``request``'s client address: its TCP peer, or, when that is one of ``SOPHIA_TRUSTED_PROXIES``
    (``clients``, the app's when not given), the rightmost untrusted ``X-Forwarded-For`` entry
    (``auth/client_address.py``). Without trusted proxies it costs the peer's lookup only."""
    if clients is None:
        clients = request.app[keys.CLIENT_ADDRESSES]
    if not clients.trusted:
        return request.remote
    return clients.of(request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, ()))


async def refuse_if_throttled(request: web.Request, throttle: FailedAuthThrottle, door: str) -> None:
    """Raise 429 ``auth_throttled`` (counted in ``gateway_auth_throttled_total{door}``, marked in
    the access log) when ``request``'s client address is refused for its failures."""
    retry_after_s = await throttled(request, throttle, door)
    if retry_after_s > 0:
        raise AuthThrottled(retry_after_s)


async def throttled(request: web.Request, throttle: FailedAuthThrottle, door: str) -> float:
    """How long ``request``'s client address stays refused for its failures (0: not refused); a
    refusal is counted in ``gateway_auth_throttled_total{door}`` and marked in the access log."""
    return _refused(request, door, await throttle.refusal_s(client_address(request)))


def _refused(request: web.Request, door: str, retry_after_s: float) -> float:
    """``retry_after_s``; when above 0 (a refusal), counted and marked in the access log."""
    if retry_after_s <= 0:
        return 0.0
    app = request.app
    metrics = app[keys.METRICS]
    metrics.child(metrics.auth_throttled, door).inc()
    call = request.get(keys.REQUEST_CALL)
    if call is not None:
        call.auth_throttled = True
    return retry_after_s


async def failed(
    request: web.Request, throttle: FailedAuthThrottle, door: str, error: AuthenticationFailed
) -> AuthenticationFailed | AuthThrottled:
    """``error`` (to raise), with the failure counted against ``request``'s client address; the
    failure that makes the address refused is logged (its address and door, never a credential;
    the proxy it came through as ``peer`` when the address is one ``X-Forwarded-For`` named).
    429 ``auth_throttled`` instead (counted and marked as a refusal) when the address was refused
    already: another worker or replica refused it (the shared count was past the limit), or
    a failure that ended while this one was counted."""
    if throttle.limit <= 0:  # off: nothing to count
        return error
    client = client_address(request)
    count = await throttle.fail(client)
    if count > throttle.limit:
        retry_after_s = _refused(request, door, throttle.retry_after_s(client))
        if retry_after_s > 0:
            return AuthThrottled(retry_after_s)
    if count == throttle.limit:
        fields: dict[str, object] = {
            "client": client,
            "door": door,
            "failures": throttle.limit,
            "window_s": throttle.window_s,
        }
        if client != request.remote:
            fields["peer"] = request.remote
        log.warning("client address throttled after failed authentication", extra={"fields": fields})
    return error


CURRENT = "current"
PREVIOUS = "previous"


def matched_token(given: str, current: str, previous: str | None) -> str | None:
    """Which token ``given`` is: ``CURRENT``, ``PREVIOUS`` (``previous``, the one the current
    replaced, still accepted while clients rotate) or None. Each is compared in constant time, and
    both always (the previous too when the current matched), so the time taken says neither which
    one matched nor how much of either. Compared as the bytes that arrived (a header's bytes that
    are not UTF-8 are surrogates here)."""
    sent = given.encode("utf-8", "surrogateescape")
    is_current = hmac.compare_digest(sent, current.encode("utf-8", "surrogateescape"))
    is_previous = previous is not None and hmac.compare_digest(
        sent, previous.encode("utf-8", "surrogateescape")
    )
    if is_current:
        return CURRENT
    return PREVIOUS if is_previous else None


def used_previous(request: web.Request, token: str) -> None:
    """Note that ``request`` was let in with ``token``'s (``admin``, ``metrics``) previous token
    (``key``: a virtual key's secret rotated out, within its grace):
    counted in ``gateway_previous_token_used_total{token}``, its response marked
    (``TOKEN_DEPRECATED_HEADER``) and its access-log line too (``previous_token``), so the operator
    sees who still sends it. Not for a peer worker passing a call on over its Unix socket (the
    worker the client reached counted it, and the set's ``/metrics`` sums both)."""
    if _from_peer_worker(request):
        return
    metrics = request.app[keys.METRICS]
    metrics.child(metrics.previous_token_used, token).inc()
    call = request.get(keys.REQUEST_CALL)
    if call is not None:
        call.previous_token = token


async def require_admin(request: web.Request) -> None:
    """Let an admin request through, or raise: 401 without the right ``SOPHIA_ADMIN_TOKEN`` (or
    ``SOPHIA_ADMIN_TOKEN_PREVIOUS``, which is let in and noted: ``used_previous``); 403
    when no token is set and the gateway listens beyond loopback (the admin API is then closed);
    429 ``auth_throttled`` first for a client address that failed too often lately (a wrong token
    is counted against it, as a wrong key is). The credential that let it in is noted as
    ``keys.ADMIN_ACTOR`` (``admin``, ``admin_previous``, ``loopback``) for the audit trail."""
    app = request.app
    throttle = app[keys.AUTH_THROTTLE]
    if throttle.failures:
        await refuse_if_throttled(request, throttle, "admin")
    settings = app[keys.SETTINGS]
    token = settings.admin_token
    if token is None:
        if is_loopback(settings.host):
            _require_local_host(request)
            request[keys.ADMIN_ACTOR] = "loopback"
            return
        raise PermissionDenied(
            "The admin API is closed: this gateway listens beyond loopback and SOPHIA_ADMIN_TOKEN "
            "is not set. Set it and send 'Authorization: Bearer <SOPHIA_ADMIN_TOKEN>'.",
        )
    # The operator's token may be longer than a virtual key (the edge's cap of 256 refused every
    # token over 249 characters, which serve had accepted): room for it, the scheme and spaces.
    given = (
        bearer_token(request.headers.getall("Authorization", []), _ADMIN_BEARER, _MAX_ADMIN_HEADER_CHARS)
        or ""
    )
    matched = matched_token(given, token, settings.admin_token_previous)
    if matched is CURRENT:
        request[keys.ADMIN_ACTOR] = "admin"
    elif matched is PREVIOUS:
        used_previous(request, "admin")
        request[keys.ADMIN_ACTOR] = "admin_previous"
    else:
        sent = "Authorization" in request.headers  # the caller knows whether it sent one
        raise await failed(
            request,
            throttle,
            "admin",
            AuthenticationFailed(
                "The admin token sent is not this gateway's SOPHIA_ADMIN_TOKEN."
                if sent
                else "The admin API needs 'Authorization: Bearer <SOPHIA_ADMIN_TOKEN>'.",
                headers=_CHALLENGE,
            ),
        )


async def metrics_refusal(request: web.Request) -> web.Response | None:
    """None when ``request`` may read ``/metrics``, else the answer that refuses it, in plain text
    (a scraper shows the status; a person with curl reads the line): 401 with a Bearer challenge
    without the right ``SOPHIA_METRICS_TOKEN`` or ``SOPHIA_METRICS_TOKEN_PREVIOUS`` (compared in
    constant time, ``matched_token``; the previous one noted, ``used_previous``; a wrong one counted
    against the client address as a wrong admin token is, door ``metrics``), 429 with
    ``Retry-After`` for an address that failed too often lately. Without the token set, None:
    ``/metrics`` is open (README "Metrics")."""
    app = request.app
    token = app[keys.SETTINGS].metrics_token
    if token is None:
        return None
    throttle = app[keys.AUTH_THROTTLE]
    if throttle.failures and (retry_after_s := await throttled(request, throttle, "metrics")) > 0:
        return _plain_throttled(AuthThrottled(retry_after_s))
    given = (
        bearer_token(request.headers.getall("Authorization", []), _ADMIN_BEARER, _MAX_ADMIN_HEADER_CHARS)
        or ""
    )
    matched = matched_token(given, token, app[keys.SETTINGS].metrics_token_previous)
    if matched is not None:
        if matched is PREVIOUS:
            used_previous(request, "metrics")
        return None
    if isinstance(
        refusal := await failed(request, throttle, "metrics", AuthenticationFailed("")), AuthThrottled
    ):
        return _plain_throttled(refusal)
    text = (
        "401 Unauthorized: the token sent is not this gateway's SOPHIA_METRICS_TOKEN.\n"
        if "Authorization" in request.headers
        else "401 Unauthorized: /metrics needs 'Authorization: Bearer <SOPHIA_METRICS_TOKEN>'.\n"
    )
    return web.Response(status=401, text=text, headers=_CHALLENGE, content_type="text/plain")


def _plain_throttled(refusal: AuthThrottled) -> web.Response:
    """``/metrics``' 429 for a throttled address, in plain text."""
    return web.Response(
        status=429, text=refusal.message + "\n", headers={**refusal.headers}, content_type="text/plain"
    )


def _require_local_host(request: web.Request) -> None:
    """Refuse (403) a request trusted for arriving on loopback whose ``Host`` names another host.

    Without a token the admin API trusts whoever reaches a loopback address; a web page the
    operator opens can reach it too, through DNS rebinding (its own name re-pointed at 127.0.0.1:
    the browser then sends it same-origin requests, JSON bodies and all, and reads the answers),
    and mint keys. Such a request carries the page's name in ``Host``: the rule is an open
    gateway's (``refuse_rebound_host``: IP literals, ``localhost``, the bound name,
    ``SOPHIA_ALLOWED_HOSTS``; a peer worker of the set on its Unix socket)."""
    host = request.headers.get(hdrs.HOST, "")
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None and origin.partition("://")[2] != host:
        # Another site's page posting without a preflight (``POST /admin/policy/reload`` needs no
        # body): its browser names it in ``Origin``. No admin client sends one.
        raise PermissionDenied(
            "The admin API answers without a token only to programs on this machine, and this "
            "request comes from a web page of another site (its Origin header). Set SOPHIA_ADMIN_TOKEN "
            "to call it from elsewhere."
        )
    if request.app[keys.ALLOWED_HOSTS].allows(host) or _from_peer_worker(request):
        return
    raise PermissionDenied(
        f"The admin API answers without a token only to requests naming this machine, and this "
        f"request's Host header ({quoted(host)}) names another host (a web page reaching the gateway "
        "through DNS rebinding sends its own). Call it as localhost or 127.0.0.1, add the name to "
        "SOPHIA_ALLOWED_HOSTS, or set SOPHIA_ADMIN_TOKEN."
    )


def refuse_rebound_host(request: web.Request, hosts: AllowedHosts) -> None:
    """Raise ``PermissionDenied`` (403) for a request to an open gateway whose ``Host`` is not one
    of ``hosts`` (``auth/allowed_hosts.py``; a peer worker of the set on its Unix socket passes).

    ``auth.mode: open`` trusts whoever reaches the port, and that includes any web page its users
    open, through DNS rebinding: the page re-points its own name at the gateway's address, and its
    browser then sends same-origin requests (JSON bodies, reading the answers) that spend the
    provider keys and read the memories. Such a request carries the page's name in ``Host``.
    Called before the handler, on every route, in open mode only (unless ``SOPHIA_ALLOWED_HOSTS``
    is ``*``): an accepted ``Host`` costs one set lookup."""
    host = request.headers.get(hdrs.HOST, "")
    if hosts.allows(host) or _from_peer_worker(request):
        return
    raise PermissionDenied(
        f"This gateway runs with auth.mode: open and answers only requests naming it (an IP address, "
        f"localhost, or a name in SOPHIA_ALLOWED_HOSTS); this request's Host header ({quoted(host)}) "
        "names another host (a web page reaching the gateway through DNS rebinding sends its own). "
        "Call it by address or as localhost, add the name to SOPHIA_ALLOWED_HOSTS (comma-separated; "
        "* for any), or use auth.mode: keys."
    )


def _from_peer_worker(request: web.Request) -> bool:
    """Whether ``request`` came over the set's Unix socket: a peer worker of ``serve --workers``
    passing a call on (``Host: worker``), never a browser."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens on this machine only (127.0.0.0/8, ::1, localhost).
    Any other name, and the wildcards ``0.0.0.0``, ``::`` and ``""``, reach beyond."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
