"""``GET /admin/policy`` (the version in force, when and how it was loaded, the last reload that
failed) and ``POST /admin/policy/reload`` (read the file again now), behind the admin token.

A reload that applied or found nothing new is a 200; a file that does not validate is a 422
whose error message lists its problems (``file:line: key.path: message``), the policy in force
serving on. Under ``serve --workers N`` the worker that takes the request reloads and asks the
others to do the same; the answer lists each worker's outcome.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from aiohttp import web

from gateway import keys
from gateway.api import peers
from gateway.api.admin_audit import audited, target
from gateway.http.auth import require_admin
from gateway.http.responses import json_response
from gateway.policy.versions import PolicyStatus, ReloadOutcome


async def status(request: web.Request) -> web.Response:
    await require_admin(request)
    return json_response(orjson.dumps(_status(request.app[keys.POLICY_CONTROL].status())))


@audited("policy.reload")
async def reload(request: web.Request) -> web.Response:
    await require_admin(request)
    control = request.app[keys.POLICY_CONTROL]
    before = control.status()
    target(request, path=before.path, version_before=before.version)
    outcome = await control.reload("admin")
    target(request, version_after=outcome.version, result=outcome.result)
    if outcome.problems:
        target(request, problems=len(outcome.problems))
    body: dict[str, Any] = _outcome(outcome)
    worker = request.app[keys.SETTINGS].worker
    if worker is not None and not peers.from_peer(request):
        headers = (
            {"Authorization": request.headers["Authorization"]} if "Authorization" in request.headers else {}
        )
        others: list[dict[str, Any]] = [
            {"worker": worker.index, "result": outcome.result, "version": outcome.version}
        ]
        for index in peers.peers(worker):
            answer = await peers.ask(worker, index, "POST", request.path, headers)
            if answer is None:
                others.append({"worker": index, "result": "unreachable", "version": None})
                continue
            theirs = orjson.loads(answer.body).get("policy", {})
            others.append({"worker": index, "result": theirs.get("result"), "version": theirs.get("version")})
        body["workers"] = others
    if outcome.result in ("applied", "unchanged"):
        return json_response(orjson.dumps({"object": "policy.reload", "policy": body}))
    problems = "; ".join(outcome.problems) or "unknown"
    code = "policy_invalid" if outcome.result == "invalid" else "policy_reload_failed"
    target(request, code=code)
    envelope = {
        "error": {
            "message": f"The policy file was not applied ({outcome.result}); version "
            f"{outcome.version} keeps serving. Problems: {problems}",
            "type": "invalid_request_error",
            "param": None,
            "code": code,
        },
        "policy": body,
    }
    return json_response(orjson.dumps(envelope), status=422 if outcome.result == "invalid" else 503)


def _outcome(outcome: ReloadOutcome) -> dict[str, Any]:
    return {
        "result": outcome.result,
        "version": outcome.version,
        "problems": list(outcome.problems),
        "pending_restart": list(outcome.pending_restart),
    }


def _status(s: PolicyStatus) -> dict[str, Any]:
    error = s.last_error
    return {
        "object": "policy",
        "version": s.version,
        "loaded_at": _iso(s.loaded_at),
        "source": s.source,
        "path": s.path,
        "watching": s.watching,
        "pending_restart": list(s.pending_restart),
        "last_error": None
        if error is None
        else {"at": _iso(error.at), "source": error.source, "problems": list(error.problems)},
    }


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
