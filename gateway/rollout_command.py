"""``sophia-gateway rollout status | pause | resume | promote | abort``: progressive rollouts by hand.

Talks to a running gateway's ``/admin/rollouts`` API (``--url``, default http://127.0.0.1:8080;
``SOPHIA_ADMIN_TOKEN`` from the environment). A group has at most one rollout, so the model
group names it: ``sophia-gateway rollout pause chat``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from gateway.admin_client import AdminCallError, call_admin, gateway_url

Json = dict[str, Any]
_ACTIONS = {
    "pause": "hold the current step's share; stop advancing",
    "resume": "resume a paused rollout (a fresh hold), or start a rolled back or aborted one over",
    "promote": "promote now: the deployment routes by the group's strategy like any other",
    "abort": "stop the rollout: share 0",
}


def add_arguments(rollout: argparse.ArgumentParser) -> None:
    """The ``rollout`` sub-commands, on the ``rollout`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", type=gateway_url, default="http://127.0.0.1:8080", help="the gateway (default: %(default)s)"
    )
    common.add_argument("--json", action="store_true", help="print JSON (as /admin/rollouts answers)")
    sub = rollout.add_subparsers(dest="rollout_command")
    status = sub.add_parser("status", parents=[common], help="every rollout and its state")
    status.set_defaults(func=_status)
    for action, text in _ACTIONS.items():
        parser = sub.add_parser(action, parents=[common], help=text)
        parser.add_argument("model", help="the model group whose rollout to drive")
        parser.set_defaults(func=_act, action=action)


def _status(args: argparse.Namespace) -> int:
    answer = _call(args, "GET", "/admin/rollouts")
    if answer is None:
        return 1
    if args.json:
        print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    elif not answer["data"]:
        print("no rollouts in the policy")
    else:
        for rollout in answer["data"]:
            print(line(rollout))
    return 0


def _act(args: argparse.Namespace) -> int:
    answer = _call(args, "POST", f"/admin/rollouts/{args.action}", {"model": args.model})
    if answer is None:
        return 1
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() if args.json else line(answer))
    return 0


def line(rollout: Json) -> str:
    """One rollout as one line: ``chat  openai/gpt-5  rolling 25% (step 2/4)  reason``."""
    steps = rollout.get("steps") or []
    where = f"{rollout['model']}  {rollout['provider']}/{rollout['upstream_model']}"
    text = f"{where}  {rollout['status']} {rollout['step_percent']:g}%"
    if rollout["status"] in ("rolling", "paused"):
        text += f" (step {rollout['step_index'] + 1}/{len(steps)})"
    return f"{text}  {rollout['reason']}" if rollout.get("reason") else text


def _call(args: argparse.Namespace, method: str, path: str, body: Json | None = None) -> Json | None:
    """The gateway's answer, or None after printing why there is none."""
    try:
        return call_admin(args.url, method, path, body)
    except AdminCallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
