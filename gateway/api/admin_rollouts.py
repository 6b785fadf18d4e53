"""``/admin/rollouts``: the progressive rollouts' states, and driving them by hand (admin token).

``GET /admin/rollouts`` lists every rollout of the policy. ``POST /admin/rollouts/{action}``
(pause, resume, promote, abort) takes ``{"model": "<group>"}`` in a JSON body: a group has at
most one rollout, and a body carries any model name (``/`` included) without URL escaping.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway import keys
from gateway.errors import InvalidRequest, NotFound, quoted
from gateway.http.auth import require_admin
from gateway.http.body import read_json
from gateway.http.responses import json_response
from gateway.routing.rollout import ACTIONS, Action


async def list_rollouts(request: web.Request) -> web.Response:
    """``GET /admin/rollouts``: ``{"object": "list", "data": [rollout, ...]}``."""
    require_admin(request)
    data = request.app[keys.ROLLOUTS].views()
    return json_response(orjson.dumps({"object": "list", "data": data}))


async def act(request: web.Request) -> web.Response:
    """``POST /admin/rollouts/{action}`` with ``{"model": "<group>"}``: the rollout afterwards."""
    require_admin(request)
    action = _action(request.match_info["action"])
    body = await read_json(request)
    group = body.get("model")
    if not isinstance(group, str) or not group:
        raise InvalidRequest("'model' is required: the model group whose rollout to drive.", param="model")
    rollouts = request.app[keys.ROLLOUTS]
    await rollouts.act(group, action)
    return json_response(orjson.dumps(rollouts.view(group)))


def _action(text: str) -> Action:
    for action in ACTIONS:
        if text == action:
            return action
    raise NotFound(f"Unknown rollout action {quoted(text)}; one of: {', '.join(ACTIONS)}.", code="not_found")
