"""The audit line of each state-changing admin endpoint (``observability/audit.py``).

``audited(action)`` wraps a handler: it gives the request an empty ``keys.AUDIT_FIELDS`` dict,
which the handler fills with what it learns of its target (``target``), and writes one line when
the handler returns or raises: the outcome (from the answer's status, or the error's status and
code), the credential that let it in (``keys.ADMIN_ACTOR``, set by ``require_admin``), the client
address as the access log computes it, and the request id.

Not audited: a request a peer worker passes on over its Unix socket (``serve --workers N``: the
worker the client reached writes the action's line), and a 429 ``auth_throttled`` (refused before
its credential was read; counted in ``gateway_auth_throttled_total`` and marked in the access log,
and the failure that throttled the address was logged).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway import keys
from gateway.api import peers
from gateway.errors import AuthThrottled, GatewayError
from gateway.http.auth import client_address
from gateway.observability import audit

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def audited(action: str | Callable[[web.Request], str]) -> Callable[[Handler], Handler]:
    """``handler`` writing one audit line per request (``action``: its name, or a function of
    the request that names it)."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            if peers.from_peer(request):
                return await handler(request)
            fields: dict[str, Any] = {}
            request[keys.AUDIT_FIELDS] = fields
            try:
                response = await handler(request)
            except AuthThrottled:
                raise
            except GatewayError as error:
                _write(request, action, fields, error.http_status, error.code or error.error_type)
                raise
            except Exception:
                _write(request, action, fields, 500, "internal_error")
                raise
            _write(request, action, fields, response.status, None)
            return response

        run.__doc__ = handler.__doc__
        run.__name__ = handler.__name__
        return run

    return wrap


def target(request: web.Request, **fields: Any) -> None:
    """Add ``fields`` (the action's target: a key id, a team, a policy version) to the request's
    audit line; nothing for a request not audited."""
    audit_fields = request.get(keys.AUDIT_FIELDS)
    if audit_fields is not None:
        audit_fields.update(fields)


def _write(
    request: web.Request,
    action: str | Callable[[web.Request], str],
    fields: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    outcome = audit.outcome_of(status)
    line: dict[str, Any] = {}
    if outcome != audit.OK:
        line["status"] = status
        line["code"] = fields.pop("code", None) or code
    line["client"] = client_address(request)
    line["request_id"] = request.get(keys.REQUEST_ID)
    line.update(fields)
    name = action if isinstance(action, str) else action(request)
    audit.record(name, outcome, request.get(keys.ADMIN_ACTOR, "unauthenticated"), line)
