"""``/admin/keys``: issue, list, revoke and rotate virtual keys (behind the admin token).

``POST /admin/keys`` answers 201 with the key's ``secret``, the only time it is ever shown;
listings and every other answer carry the record without secret or hash.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import keys
from gateway.auth.keyring import KeyRing, KeySettings
from gateway.auth.records import KeyRecord
from gateway.errors import InvalidRequest
from gateway.http.auth import require_admin
from gateway.http.body import read_json
from gateway.http.responses import json_response
from gateway.policy.durations import DurationS
from gateway.policy.model import MAX_RATE

# A label for listings: no control characters (a terminal would run an escape sequence in it).
_NAME = Field(None, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    budget_period: DurationS | None = None
    expires: DurationS | None = None
    namespaces: NamespacesIn | None = None
    name: str | None = _NAME
    description: str | None = Field(None, max_length=2000)

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
        )


def _names(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(dict.fromkeys(values))


async def create(request: web.Request) -> web.Response:
    """``POST /admin/keys``: 201 with the new key and its ``secret`` (shown once)."""
    ring = _ring(request)
    given = _parse(await read_json(request))
    secret, record = await ring.create(given.team, given.settings())
    return _render({**key_json(record, time.time()), "secret": secret}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    """``GET /admin/keys[?team=T]``: every key (of team T), oldest first, no secrets."""
    ring = _ring(request)
    now = time.time()
    records = await ring.list(request.query.get("team") or None)
    return _render({"object": "list", "data": [key_json(r, now) for r in records]})


async def revoke(request: web.Request) -> web.Response:
    """``DELETE /admin/keys/{id}``: the key, revoked (revoking twice keeps the first time)."""
    ring = _ring(request)
    record = await ring.revoke(request.match_info["id"])
    return _render(key_json(record, time.time()))


async def rotate(request: web.Request) -> web.Response:
    """``POST /admin/keys/{id}/rotate``: a new key with the same settings (its ``secret`` shown
    once, ``replaces`` naming the old one, now revoked)."""
    ring = _ring(request)
    old_id = request.match_info["id"]
    secret, record = await ring.rotate(old_id)
    return _render({**key_json(record, time.time()), "secret": secret, "replaces": old_id}, status=201)


def key_json(record: KeyRecord, now_s: float) -> dict[str, Any]:
    """A key as the API and ``keys list --json`` show it: never the secret or its hash."""
    if record.revoked_at is not None:
        status = "revoked"
    elif record.expires_at is not None and now_s >= record.expires_at:
        status = "expired"
    else:
        status = "active"
    return {
        "object": "key",
        "id": record.key_id,
        "prefix": record.prefix,
        "team": record.team,
        "status": status,
        "name": record.name,
        "description": record.description,
        "models": None if record.models is None else list(record.models),
        "rpm": record.rpm,
        "tpm": record.tpm,
        "budget_usd": record.budget_usd,
        "budget_period_s": record.budget_period_s,
        "namespaces": {
            "read": None if record.read_namespaces is None else list(record.read_namespaces),
            "write": None if record.write_namespaces is None else list(record.write_namespaces),
        },
        "created_at": int(record.created_at),
        "expires_at": None if record.expires_at is None else int(record.expires_at),
        "revoked_at": None if record.revoked_at is None else int(record.revoked_at),
    }


def _ring(request: web.Request) -> KeyRing:
    require_admin(request)
    return request.app[keys.KEY_ADMIN]


def _render(body: dict[str, Any], status: int = 200) -> web.Response:
    return json_response(orjson.dumps(body), status=status)


def _parse(body: dict[str, Any]) -> KeyCreateIn:
    try:
        return KeyCreateIn.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        message = err["msg"].removeprefix("Value error, ")
        raise InvalidRequest(
            f"Invalid value for '{param}': {message}." if param else f"{message}.", param=param
        ) from None
