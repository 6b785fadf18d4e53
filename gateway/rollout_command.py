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

from gateway.admin_client import AdminCallError, call_admin, gateway_url, printable

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
    data = answer.get("data")
    if not isinstance(data, list) or not all(_is_rollout(r) for r in data):
        return _not_rollouts(args.url, "/admin/rollouts")
    if args.json:
        print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    elif not data:
        print("no rollouts in the policy")
    else:
        for rollout in data:
            print(line(rollout))
    return 0


def _act(args: argparse.Namespace) -> int:
    path = f"/admin/rollouts/{args.action}"
    answer = _call(args, "POST", path, {"model": args.model})
    if answer is None:
        return 1
    if not _is_rollout(answer):
        return _not_rollouts(args.url, path)
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() if args.json else line(answer))
    return 0


def line(rollout: Json) -> str:
    """One rollout as one line: ``chat  openai/gpt-5  rolling 25% (step 2/4)  reason``."""
    steps = rollout.get("steps") or []
    where = f"{rollout['model']}  {rollout['provider']}/{rollout['upstream_model']}"
    text = f"{where}  {rollout['status']} {rollout['step_percent']:g}%"
    if rollout["status"] in ("rolling", "paused"):
        text += f" (step {rollout['step_index'] + 1}/{len(steps)})"
    # A rollback's reason quotes the candidate's error, whose text the provider wrote: its
    # escape sequences must not reach the operator's terminal.
    return printable(f"{text}  {rollout['reason']}" if rollout.get("reason") else text)


def _is_rollout(value: object) -> bool:
    """Whether ``value`` has what ``line`` prints, as a gateway's rollout view does. ``--url``
    may name something else (another service, a proxy's page, another version): its answer was
    a traceback (KeyError, TypeError) instead of an error saying so."""
    if not isinstance(value, dict):
        return False
    number = value.get("step_percent")
    return (
        all(isinstance(value.get(k), str) for k in ("model", "provider", "upstream_model", "status"))
        and isinstance(number, int | float)
        and not isinstance(number, bool)
        and isinstance(value.get("step_index"), int)
        and isinstance(value.get("steps"), list)
        and isinstance(value.get("reason", ""), str)
    )


def _not_rollouts(url: str, path: str) -> int:
    print(f"error: {url}{path} did not answer a gateway's rollout view", file=sys.stderr)
    return 1


def _call(args: argparse.Namespace, method: str, path: str, body: Json | None = None) -> Json | None:
    """The gateway's answer, or None after printing why there is none."""
    try:
        return call_admin(args.url, method, path, body)
    except AdminCallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
