"""``/admin/keys``: issue, list, update, revoke and rotate virtual keys (behind the admin token).

``POST /admin/keys`` answers 201 with the key's ``secret``, the only time it is ever shown;
listings and every other answer carry the record without secret or hash. The body is checked
strictly: a number sent as a string, a whole number as ``5.0`` or ``true`` is a 400 naming the
field, never read as something else.

Under ``serve --workers N`` each worker caches key lookups for ``auth.key_cache_s``. A revoke,
rotate or update is written once (by the worker that takes the request), then every other worker is asked
over its Unix socket to revoke the key too (``DELETE /admin/keys/{id}``: revoking twice keeps the
first time), which drops its cached lookup, so no worker accepts the key after the answer; the
answer lists each worker's outcome under ``workers``. An update asks the same way with ``PATCH
/admin/keys/{id}`` and no body: from a peer that only drops the cached lookup (the change is
made), so every worker applies the new settings from the next request.

With ``REDIS_URL``, the worker that made the change also announces it on the key bus
(``auth/key_bus.py``: the key's id and the kind of change), so every process of every other
replica drops its cached lookup when the message arrives, well within ``auth.key_cache_s``. The
announcement is bounded (0.5 s) and never fails the call: Redis down, the change is logged as not
announced and other replicas see it when their cached lookup expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from gateway import keys
from gateway.api import peers
from gateway.api.admin_audit import audited, target
from gateway.auth.keyring import MAX_GRACE_S, KeyRing, KeySettings
from gateway.auth.records import key_json, without_secrets
from gateway.errors import InvalidRequest, quoted
from gateway.http.auth import require_admin
from gateway.http.body import read_json
from gateway.http.responses import json_response
from gateway.observability.audit import key_changes, key_fields
from gateway.policy.durations import BudgetPeriodS, ExpiresS
from gateway.policy.model import MAX_RATE
from gateway.quoting import bounded

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    # strict: JSON types as sent ("5" is not 5, 5.0 and true are not 1); a duration may still be
    # "30d" or a number of seconds (its own parser), a float field takes a whole number.
    model_config = ConfigDict(extra="forbid", strict=True)


_Body = TypeVar("_Body", bound=_Strict)


class NamespacesIn(_Strict):
    read: list[str] | None = None
    write: list[str] | None = None


class KeyCreateIn(_Strict):
    """The body of ``POST /admin/keys``: the ``keys create`` flags as JSON (durations as ``30d``
    or seconds)."""

    team: str = Field(min_length=1, max_length=64)
    models: list[str] | None = Field(None, max_length=1000)
    rpm: int | None = Field(None, ge=1, le=MAX_RATE)
    tpm: int | None = Field(None, ge=1, le=MAX_RATE)
    budget_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    budget_period: BudgetPeriodS | None = None
    expires: ExpiresS | None = None  # a lifetime (90d, seconds) or an RFC 3339 time
    namespaces: NamespacesIn | None = None
    name: str | None = None  # its bounds are KeyRing.create's (the CLI's too)
    description: str | None = None
    provider_files: bool | None = None  # may name provider-side objects (null: the team's)

    def settings(self) -> KeySettings:
        ns = self.namespaces or NamespacesIn()
        return KeySettings(
            models=_names(self.models),
            rpm=self.rpm,
            tpm=self.tpm,
            budget_usd=self.budget_usd,
            budget_period_s=self.budget_period,
            expires_in_s=self.expires,
            namespaces_read=_names(ns.read),
            namespaces_write=_names(ns.write),
            name=self.name,
            description=self.description,
            provider_files=self.provider_files,
        )


class KeyUpdateIn(_Strict):
    """The body of ``PATCH /admin/keys/{id}``: ``POST /admin/keys``' fields but ``team``, each
    optional; one sent changes the key (``null``: back to its team's; ``expires`` null: never),
    one left out keeps its value."""

    models: list[str] | None = Field(None, max_length=1000)
    rpm: int | None = Field(None, ge=1, le=MAX_RATE)
    tpm: int | None = Field(None, ge=1, le=MAX_RATE)
    budget_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    budget_period: BudgetPeriodS | None = None
    expires: ExpiresS | None = None
    namespaces: NamespacesIn | None = None
    name: str | None = None
    description: str | None = None
    provider_files: bool | None = None

    def changes(self) -> tuple[KeySettings, list[str]]:
        """The settings sent (``KeySettings``) and which of its fields they are."""
        sent = self.model_fields_set
        ns = self.namespaces or NamespacesIn()
        given = [_SETTING.get(field, field) for field in sent if field != "namespaces"]
        if "namespaces" in sent:
            # {"namespaces": null} clears both grants; {"namespaces": {"read": [...]}} only read.
            kinds = ns.model_fields_set if self.namespaces is not None else {"read", "write"}
            given += [f"namespaces_{kind}" for kind in sorted(kinds)]
        settings = KeySettings(
            models=_names(self.models),
            rpm=self.rpm,
            tpm=self.tpm,
            budget_usd=self.budget_usd,
            budget_period_s=self.budget_period,
            expires_in_s=self.expires,
            namespaces_read=_names(ns.read),
            namespaces_write=_names(ns.write),
            name=self.name,
            description=self.description,
            provider_files=self.provider_files,
        )
        return settings, sorted(given)


# A body field's ``KeySettings`` name where the two differ.
_SETTING = {"budget_period": "budget_period_s", "expires": "expires_in_s"}


class KeyRotateIn(_Strict):
    """The body of ``POST /admin/keys/{id}/rotate`` (optional): ``grace_s``, how long the old
    secret keeps working (seconds, 0 to 7 days; 0, the default, retires it at once)."""

    grace_s: float = Field(0.0, ge=0, le=MAX_GRACE_S, allow_inf_nan=False)


def _shown_id(request: web.Request) -> str:
    """The key id of the URL as the audit line names it: bounded, and never a secret (a revoke
    naming the key by its secret, by mistake, is a 404 whose line would have carried it)."""
    return bounded(without_secrets(request.match_info["id"]))


def _names(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(dict.fromkeys(values))


@audited("key.create")
async def create(request: web.Request) -> web.Response:
    """``POST /admin/keys``: 201 with the new key and its ``secret`` (shown once)."""
    ring = await _ring(request)
    given = _parse(await read_json(request), KeyCreateIn)
    target(request, team=given.team)
    secret, record = await ring.create(given.team, given.settings())
    body = key_json(record, time.time())
    target(request, **key_fields(body, limits=True))
    return _render({**body, "secret": secret}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    """``GET /admin/keys[?team=T]``: every key (of team T), oldest first, no secrets. ``team``
    given empty or twice, or another parameter (``tema``), is a 400 naming it, as on
    /admin/usage: each listed every team's keys, where the admin asked for one team's (an
    outside probe)."""
    ring = await _ring(request)
    now = time.time()
    team: str | None = None
    for name, value in request.query.items():
        if name != "team":
            raise InvalidRequest(
                f"Unknown parameter {quoted(name)}: /admin/keys takes team.", param=bounded(name)
            )
        if team is not None:
            raise InvalidRequest("'team' is given more than once; give it once.", param="team")
        team = value  # (an empty one is refused by the key ring as no team's name)
    records = await ring.list(team)
    return _render({"object": "list", "data": [key_json(r, now) for r in records]})


@audited("key.update")
async def update(request: web.Request) -> web.Response:
    """``PATCH /admin/keys/{id}``: change the key's settings in place (the fields sent; ``null``
    clears one back to its team's); 200 with the key, no secret. Every worker of the set drops
    its cached lookup before the answer, so the next request anywhere has the new settings."""
    ring = await _ring(request)
    key_id = request.match_info["id"]
    target(request, key_id=_shown_id(request))
    if peers.from_peer(request):  # another worker made the change: only forget the key here
        return _render(key_json(await ring.drop_cached(key_id), time.time()))
    raw = await read_json(request)
    if "team" in raw:
        raise InvalidRequest(
            "A key's team cannot be changed: its limits, spend and usage are the team's. Issue a new "
            "key for the other team (POST /admin/keys, sophia-gateway keys create --team) and "
            "revoke this one.",
            param="team",
            code="team_not_changeable",
        )
    unknown = [name for name in raw if name not in KeyUpdateIn.model_fields]
    if unknown:
        shown = ", ".join(quoted(bounded(name)) for name in unknown[:10])
        raise InvalidRequest(
            f"Unknown field(s) {shown}{f' and {len(unknown) - 10} more' if len(unknown) > 10 else ''}; "
            f"a key's settings are {', '.join(KeyUpdateIn.model_fields)}.",
            param=bounded(unknown[0]) or None,
            code="unknown_field",
        )
    changes, given = _parse(raw, KeyUpdateIn).changes()
    before, after = await ring.update(key_id, changes, given)
    now = time.time()
    body = key_json(after, now)
    target(request, **key_fields(body), changes=key_changes(key_json(before, now), body))
    await _every_process_drops(request, after.key_id, body, "update")
    return _render(body)


@audited("key.revoke")
async def revoke(request: web.Request) -> web.Response:
    """``DELETE /admin/keys/{id}``: the key, revoked (revoking twice keeps the first time), and
    no longer accepted by any worker of the set."""
    ring = await _ring(request)
    target(request, key_id=_shown_id(request))
    # (a peer worker's ask, a revocation or rotation made already: only its caches; the grace
    # the old secret has on a key that replaced it is the originating worker's to end)
    record = await ring.revoke(request.match_info["id"], end_grace=not peers.from_peer(request))
    body = key_json(record, time.time())
    target(request, **key_fields(body), revoked_at=body["revoked_at"])
    await _every_process_drops(request, record.key_id, body, "revoke")
    return _render(body)


@audited("key.rotate")
async def rotate(request: web.Request) -> web.Response:
    """``POST /admin/keys/{id}/rotate``: a new key with the same settings (its ``secret`` shown
    once, ``replaces`` naming the old one, now revoked and no longer accepted by any worker).
    With ``{"grace_s": N}`` the old secret keeps working as the new key for N seconds
    (``grace_until``), its answers marked ``x-gateway-token-deprecated: true``."""
    ring = await _ring(request)
    old_id = request.match_info["id"]
    target(request, key_id=_shown_id(request))
    given = _parse(await read_json(request), KeyRotateIn) if request.body_exists else KeyRotateIn()
    target(request, grace_s=given.grace_s)
    secret, record = await ring.rotate(old_id, given.grace_s)
    shown = key_json(record, time.time())
    target(request, team=shown["team"], new_key_id=shown["id"], grace_until=shown["grace_until"])
    body = {**shown, "secret": secret, "replaces": old_id}
    await _every_process_drops(request, old_id, body, "rotate")
    return _render(body, status=201)


@audited("key.end_grace")
async def end_grace(request: web.Request) -> web.Response:
    """``DELETE /admin/keys/{id}/grace``: end the key's rotation grace now, keeping its new
    secret; the secret it replaced is no longer accepted by any worker of the set. Ending an
    ended grace keeps its end (200); 404 for a key never rotated with a grace."""
    ring = await _ring(request)
    target(request, key_id=_shown_id(request))
    record = await ring.end_grace(request.match_info["id"])
    body = key_json(record, time.time())
    target(request, **key_fields(body))
    await _every_process_drops(request, record.key_id, body, "end_grace")
    return _render(body)


# How a peer worker is asked to drop its cached lookup after each change (method, path tail).
_PEER_ASK = {
    "revoke": ("DELETE", ""),
    "rotate": ("DELETE", ""),  # the old key, revoked by the rotation
    "end_grace": ("DELETE", "/grace"),
    "update": ("PATCH", ""),
}


async def _every_process_drops(request: web.Request, key_id: str, body: dict[str, Any], change: str) -> None:
    """After ``change`` to ``key_id``: announce it on the key bus (``REDIS_URL``: every replica's
    processes) and ask this set's other workers at once (their outcomes in ``body``). Nothing
    when the request came from a peer (the worker that made the change does both)."""
    if peers.from_peer(request):
        return
    bus = request.app.get(keys.KEY_BUS)
    method, what = _PEER_ASK[change]
    workers = _every_worker_drops(request, key_id, body, what, method)
    if bus is None:
        await workers
    else:
        await asyncio.gather(bus.publish(key_id, change), workers)


async def _every_worker_drops(
    request: web.Request, key_id: str, body: dict[str, Any], what: str = "", method: str = "DELETE"
) -> None:
    """Under ``serve --workers N``: ask every other worker to revoke ``key_id`` (already revoked:
    it keeps its time), or with ``what`` ``/grace`` to end its grace (ended: it keeps its end), or
    with ``method`` ``PATCH`` to read it again (an update, made already), so each drops its cached
    lookup now, and list the outcomes in ``body``.
    Nothing when this process serves alone or the request came from a peer."""
    worker = request.app[keys.SETTINGS].worker
    if worker is None or peers.from_peer(request):
        return
    headers = (
        {"Authorization": request.headers["Authorization"]} if "Authorization" in request.headers else {}
    )
    done = "updated" if method == "PATCH" else "grace ended" if what else "revoked"
    path = f"/admin/keys/{key_id}{what}"  # a key id as the key ring checked it: nothing to quote

    async def ask(index: int) -> dict[str, Any]:
        answer = await peers.ask(worker, index, method, path, headers)
        if answer is None:
            result = "unreachable"  # restarting (its cache starts empty) or stuck
        else:
            result = done if answer.status == 200 else f"failed ({answer.status})"
        if result != done:
            log.warning(
                "a worker may accept a revoked key (or an ended grace's secret, or an updated key "
                "with its old settings) until its cached lookup expires",
                extra={"fields": {"worker": index, "key_id": key_id, "result": result}},
            )
        return {"worker": index, "result": result}

    others = await asyncio.gather(*(ask(index) for index in peers.peers(worker)))
    body["workers"] = sorted([{"worker": worker.index, "result": done}, *others], key=lambda w: w["worker"])


async def _ring(request: web.Request) -> KeyRing:
    await require_admin(request)
    return request.app[keys.KEY_ADMIN]


def _render(body: dict[str, Any], status: int = 200) -> web.Response:
    return json_response(orjson.dumps(body), status=status)


def _parse(body: dict[str, Any], model: type[_Body]) -> _Body:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = bounded(".".join(str(p) for p in err["loc"])) or None  # a client's field name
        message = err["msg"].removeprefix("Value error, ") + _sent_as(err)
        raise InvalidRequest(
            f"Invalid value for {quoted(param)}: {message}." if param else f"{message}.", param=param
        ) from None


# What a JSON value was, for a refusal of its type (bool before int: True is an int in Python).
_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "true/false"),
    (int, "a whole number"),
    (float, "a number with a decimal point"),
    (str, "a string"),
    (list, "an array"),
    (dict, "an object"),
    (type(None), "null"),
)


def _sent_as(err: ErrorDetails) -> str:
    """`` (sent: a string)`` after a refusal of a value's type: what the JSON held (never the
    value itself); nothing after other refusals."""
    if not err["type"].endswith("_type"):
        return ""
    value = err["input"]
    if isinstance(value, float) and abs(value) >= 2**63:
        # 10**30 written as a whole number arrives as a float: not "a decimal point" to its sender.
        return " (sent: a number beyond the largest integer JSON here carries)"
    sent = next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "another type")
    return f" (sent: {sent})"
