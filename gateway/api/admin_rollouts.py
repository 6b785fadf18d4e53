"""``/admin/rollouts``: the progressive rollouts' states, and driving them by hand (admin token).

``GET /admin/rollouts`` lists every rollout of the policy. ``POST /admin/rollouts/{action}``
(pause, resume, promote, abort) takes ``{"model": "<group>"}`` in a JSON body: a group has at
most one rollout, and a body carries any model name (``/`` included) without URL escaping.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway import keys
from gateway.api.admin_audit import audited, target
from gateway.errors import InvalidRequest, NotFound, quoted
from gateway.http.auth import require_admin
from gateway.http.body import read_json
from gateway.http.responses import json_response
from gateway.quoting import bounded
from gateway.routing.rollout import ACTIONS, Action


async def list_rollouts(request: web.Request) -> web.Response:
    """``GET /admin/rollouts``: ``{"object": "list", "data": [rollout, ...]}``."""
    await require_admin(request)
    data = request.app[keys.ROLLOUTS].views()
    return json_response(orjson.dumps({"object": "list", "data": data}))


def _audited_action(request: web.Request) -> str:
    """The audit line's action: ``rollout.<action>``, ``rollout.unknown`` for an action not served."""
    text = request.match_info["action"]
    return f"rollout.{text}" if text in ACTIONS else "rollout.unknown"


@audited(_audited_action)
async def act(request: web.Request) -> web.Response:
    """``POST /admin/rollouts/{action}`` with ``{"model": "<group>"}``: the rollout afterwards."""
    await require_admin(request)
    action = _action(request.match_info["action"])
    body = await read_json(request)
    group = body.get("model")
    if group is None:
        raise InvalidRequest("'model' is required: the model group whose rollout to drive.", param="model")
    if not isinstance(group, str) or not group:
        raise InvalidRequest(
            "'model' must be a non-empty string: the model group whose rollout to drive.", param="model"
        )
    target(request, model=bounded(group))
    rollouts = request.app[keys.ROLLOUTS]
    await rollouts.act(group, action)
    view = rollouts.view(group)
    target(
        request,
        upstream_model=f"{view['provider']}/{view['upstream_model']}",
        rollout_status=view["status"],
        step_index=view["step_index"],
    )
    return json_response(orjson.dumps(view))


def _action(text: str) -> Action:
    for action in ACTIONS:
        if text == action:
            return action
    raise NotFound(f"Unknown rollout action {quoted(text)}; one of: {', '.join(ACTIONS)}.", code="not_found")
