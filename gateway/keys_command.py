"""``sophia-gateway keys create | list | update | revoke | rotate | end-grace``: virtual keys from the command line.

Works on the key store the policy names (``auth.store``, or ``KEYS_URL`` when set), or with
``--url`` on a running gateway through ``/admin/keys`` (``SOPHIA_ADMIN_TOKEN`` from the
environment). A new key's secret is printed once; ``--json`` prints what the API answers.

Each change made on the key store (create, update, revoke, rotate, end-grace; not ``list``) writes its
audit line on stderr, in the gateway's log format (``SOPHIA_LOG_FORMAT``), actor ``cli`` with the
operating-system user and host (``observability/audit.py``); with ``--url`` the gateway writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.admin_client import AdminCallError, call_admin, gateway_url
from gateway.auth.backends import key_store
from gateway.auth.keyring import JOINERS, MAX_GRACE_S, KeyRing, KeySettings
from gateway.auth.records import key_json, without_secrets
from gateway.errors import GatewayError, StartupError
from gateway.observability import audit
from gateway.policy.durations import (
    format_duration,
    parse_budget_period_s,
    parse_duration_s,
    parse_expiry_s,
)
from gateway.policy.loader import PolicyError, load_policy
from gateway.policy.model import MAX_RATE
from gateway.quoting import bounded
from gateway.settings import Settings, SettingsError

Json = dict[str, Any]

# The flags whose value may be written with a minus sign: argparse reads a word starting with
# "-" (other than a plain negative number) as a flag, so ``--expires -5d`` was "expected one
# argument" instead of the flag's own refusal.
_SIGNED_VALUE_FLAGS = frozenset({"--expires", "--budget-period", "--rpm", "--tpm", "--budget-usd", "--grace"})
_SIGNED_VALUE = re.compile(r"-[\d.]")


def signed_values(words: list[str]) -> list[str]:
    """``words`` with each ``--expires -5d`` (and the other number and duration flags) joined as
    ``--expires=-5d``, which argparse hands to the flag's type to refuse in its own words."""
    joined: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":  # what follows is positional
            return joined + words[i:]
        if word in _SIGNED_VALUE_FLAGS and i + 1 < len(words) and _SIGNED_VALUE.match(words[i + 1]):
            joined.append(f"{word}={words[i + 1]}")
            i += 2
            continue
        joined.append(word)
        i += 1
    return joined


def add_arguments(keys: argparse.ArgumentParser) -> None:
    """The ``keys`` sub-commands, on the ``keys`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--policy", help="policy file (default: $SOPHIA_POLICY or routing_policies/default.yaml)"
    )
    common.add_argument(
        "--url",
        type=gateway_url,
        help="a running gateway (e.g. http://127.0.0.1:8080): use its /admin/keys API",
    )
    common.add_argument("--json", action="store_true", help="print JSON (as the /admin/keys API answers)")
    sub = keys.add_subparsers(dest="keys_command")

    create = sub.add_parser("create", parents=[common], help="issue a key (its secret is printed once)")
    create.add_argument("--team", required=True, help="a team of the policy's auth.teams")
    create.add_argument("--models", type=_names, help="model groups it may call, comma-separated")
    create.add_argument("--rpm", type=_positive_int, help="requests per minute")
    create.add_argument("--tpm", type=_positive_int, help="tokens per minute")
    create.add_argument("--budget-usd", type=_budget, help="spend allowed per budget period (USD)")
    create.add_argument(
        "--budget-period", type=_budget_period, help="the budget's period, e.g. 30d (at least 1s)"
    )
    create.add_argument(
        "--expires",
        type=_expiry,
        help="lifetime, e.g. 90d, or a time with its offset, e.g. 2030-01-31T00:00:00Z (default: never)",
    )
    create.add_argument(
        "--namespaces",
        nargs="+",
        metavar="read:a,b|write:a",
        help="memory namespace grants (read:, write:; an empty list grants none)",
    )
    create.add_argument("--name", help="a label shown in listings (printable characters, up to 200)")
    create.add_argument("--description")
    create.add_argument(
        "--provider-files",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="may (or, with --no-provider-files, may not) name files stored with the providers "
        "(file ids, Gemini Files API URIs); default: its team's provider_files",
    )
    create.set_defaults(func=_create)

    update = sub.add_parser(
        "update",
        parents=[common],
        help="change a key's settings in place (its secret, id and team stay)",
        description="Change the settings given; the others are kept. 'none' sets one back to its "
        "team's (the policy's auth.teams); '--expires never' makes the key never expire.",
    )
    update.add_argument("key_id")
    update.add_argument(
        "--models", type=_or_none(_names), help="model groups it may call, a,b (none: the team's)"
    )
    update.add_argument("--rpm", type=_or_none(_positive_int), help="requests per minute (none: the team's)")
    update.add_argument("--tpm", type=_or_none(_positive_int), help="tokens per minute (none: the team's)")
    update.add_argument(
        "--budget-usd", type=_or_none(_budget), help="spend allowed per budget period (none: the team's)"
    )
    update.add_argument(
        "--budget-period",
        type=_or_none(_budget_period),
        help="the budget's period, e.g. 30d (none: the team's)",
    )
    update.add_argument(
        "--expires",
        type=_expiry_or_never,
        help="a lifetime from now, e.g. 90d, a time with its offset, or never",
    )
    update.add_argument("--name", help="a label shown in listings ('' removes it)")
    update.add_argument("--description", help="('' removes it)")
    files = update.add_mutually_exclusive_group()
    files.add_argument(
        "--provider-files",
        action=argparse.BooleanOptionalAction,
        help="may (or may not) name files stored with the providers",
    )
    files.add_argument(
        "--provider-files-inherit",
        dest="provider_files",
        action="store_const",
        const=None,
        help="provider files as its team allows",
    )
    for kind in ("read", "write"):
        grant = update.add_mutually_exclusive_group()
        grant.add_argument(
            f"--{kind}",
            type=_namespaces,
            metavar="NS,..",
            help=f"the memory namespaces it may {kind} ('' grants none)",
        )
        grant.add_argument(
            f"--{kind}-inherit",
            dest=kind,
            action="store_const",
            const=None,
            help=f"{kind} the namespaces its team grants",
        )
    update.set_defaults(func=_update, updated=True)
    # A flag not given is not in the namespace at all (None is a value here: the team's).
    for action in update._actions:
        if action.dest not in ("key_id", "help", "policy", "url", "json"):
            action.default = argparse.SUPPRESS

    listing = sub.add_parser("list", parents=[common], help="list keys (never their secrets)")
    listing.add_argument("--team", help="only this team's keys")
    listing.set_defaults(func=_list)

    revoke = sub.add_parser("revoke", parents=[common], help="revoke a key now")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_revoke)

    rotate = sub.add_parser("rotate", parents=[common], help="replace a key's secret, keeping its settings")
    rotate.add_argument("key_id")
    rotate.add_argument(
        "--grace",
        type=_grace,
        default=0.0,
        help="keep the old secret working (as the new key, marked deprecated) for this long, "
        f"e.g. 1h, at most {format_duration(MAX_GRACE_S)} (default: retire it at once)",
    )
    rotate.set_defaults(func=_rotate)

    end_grace = sub.add_parser(
        "end-grace",
        parents=[common],
        help="end a rotation's grace now: refuse the secret it replaced, keep the new one",
    )
    end_grace.add_argument("key_id", help="the key made by the rotation (its new id)")
    end_grace.set_defaults(func=_end_grace, ended_grace=True)


def _create(args: argparse.Namespace) -> int:
    read, write = _grants(args.namespaces or [])
    settings = KeySettings(
        models=args.models,
        rpm=args.rpm,
        tpm=args.tpm,
        budget_usd=args.budget_usd,
        budget_period_s=args.budget_period,
        expires_in_s=args.expires,
        namespaces_read=read,
        namespaces_write=write,
        name=args.name,
        description=args.description,
        provider_files=args.provider_files,
    )
    if args.url:
        return _remote(args, "POST", "/admin/keys", _create_body(args.team, settings))

    async def op(ring: KeyRing) -> Json:
        secret, record = await ring.create(args.team, settings)
        return {**key_json(record, time.time()), "secret": secret}

    return _local(args, op, "key.create", {"team": args.team})


def _list(args: argparse.Namespace) -> int:
    if args.url:
        query = f"?{urllib.parse.urlencode({'team': args.team})}" if args.team else ""
        return _remote(args, "GET", f"/admin/keys{query}")

    async def op(ring: KeyRing) -> Json:
        now = time.time()
        return {"object": "list", "data": [key_json(r, now) for r in await ring.list(args.team)]}

    return _local(args, op)


# ``keys update``'s flags (their ``dest``) as ``KeySettings`` fields, and as the API's body fields.
_UPDATE_FLAGS = {
    "models": ("models", "models"),
    "rpm": ("rpm", "rpm"),
    "tpm": ("tpm", "tpm"),
    "budget_usd": ("budget_usd", "budget_usd"),
    "budget_period": ("budget_period_s", "budget_period"),
    "expires": ("expires_in_s", "expires"),
    "name": ("name", "name"),
    "description": ("description", "description"),
    "provider_files": ("provider_files", "provider_files"),
    "read": ("namespaces_read", "read"),
    "write": ("namespaces_write", "write"),
}


def _update(args: argparse.Namespace) -> int:
    values = {dest: getattr(args, dest) for dest in _UPDATE_FLAGS if hasattr(args, dest)}
    for dest in ("name", "description"):
        if values.get(dest) == "":
            values[dest] = None  # '' removes the label
    if args.url:
        body: Json = {}
        for dest, value in values.items():
            field = _UPDATE_FLAGS[dest][1]
            shown = list(value) if isinstance(value, tuple) else value
            if dest in ("read", "write"):
                body.setdefault("namespaces", {})[field] = shown
            else:
                body[field] = shown
        return _remote(args, "PATCH", f"/admin/keys/{urllib.parse.quote(args.key_id, safe='')}", body)
    settings = KeySettings(**{_UPDATE_FLAGS[dest][0]: value for dest, value in values.items()})
    given = [_UPDATE_FLAGS[dest][0] for dest in values]
    target: Json = {"key_id": _shown_id(args.key_id)}

    async def op(ring: KeyRing) -> Json:
        before, after = await ring.update(args.key_id, settings, given)
        now = time.time()
        answer = key_json(after, now)
        target["changes"] = audit.key_changes(key_json(before, now), answer)  # for its audit line
        return answer

    return _local(args, op, "key.update", target, announce="update")


def _revoke(args: argparse.Namespace) -> int:
    if args.url:
        return _remote(args, "DELETE", f"/admin/keys/{urllib.parse.quote(args.key_id, safe='')}")

    async def op(ring: KeyRing) -> Json:
        return key_json(await ring.revoke(args.key_id), time.time())

    return _local(args, op, "key.revoke", {"key_id": _shown_id(args.key_id)}, announce="revoke")


def _rotate(args: argparse.Namespace) -> int:
    if args.url:
        path = f"/admin/keys/{urllib.parse.quote(args.key_id, safe='')}/rotate"
        return _remote(args, "POST", path, {"grace_s": args.grace} if args.grace else {})

    async def op(ring: KeyRing) -> Json:
        secret, record = await ring.rotate(args.key_id, args.grace)
        return {**key_json(record, time.time()), "secret": secret, "replaces": args.key_id}

    return _local(
        args, op, "key.rotate", {"key_id": _shown_id(args.key_id), "grace_s": args.grace}, announce="rotate"
    )


def _end_grace(args: argparse.Namespace) -> int:
    if args.url:
        return _remote(args, "DELETE", f"/admin/keys/{urllib.parse.quote(args.key_id, safe='')}/grace")

    async def op(ring: KeyRing) -> Json:
        return key_json(await ring.end_grace(args.key_id), time.time())

    return _local(args, op, "key.end_grace", {"key_id": _shown_id(args.key_id)}, announce="end_grace")


def _local(
    args: argparse.Namespace,
    op: Callable[[KeyRing], Awaitable[Json]],
    action: str | None = None,
    given: Json | None = None,
    *,
    announce: str | None = None,
) -> int:
    """Run ``op`` on the key store the policy (or ``KEYS_URL``) names, then print its answer.
    ``action``: the change ``op`` makes, written as an audit line (``given``: its target as the
    command line named it), whether it was made or refused. ``announce``: the kind of change
    (``auth/key_bus.py``) published for the gateways when ``REDIS_URL`` is set, so every replica
    drops its cached lookup of the key at once (the key the answer ``replaces``, else its own)."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        if not args.policy:
            return _fail(str(exc), 2)
        settings = Settings()  # as before: --policy given, the environment's settings unread
    try:
        policy = load_policy(args.policy or settings.policy_path)
    except PolicyError as exc:
        return _fail(f"the policy is invalid:\n{exc}", 2)
    if action is not None:
        from gateway.observability.logging import configure_logging

        configure_logging(settings.log_level, settings.log_format)

    async def run() -> Json:
        store = key_store(policy.auth, os.environ.get("KEYS_URL"))
        ring = KeyRing(store, policy.auth.teams, model_groups=policy.models.keys())
        await store.start()
        try:
            answer = await op(ring)
        finally:
            await store.close()
        if announce is not None and settings.redis_url:
            from gateway.auth.key_bus import announce as publish  # redis-py: only with REDIS_URL

            await publish(
                settings.redis_url, settings.key_bus_prefix, answer.get("replaces") or answer["id"], announce
            )
        return answer

    try:
        answer = asyncio.run(run())
    except StartupError as exc:
        if action is not None:
            _audit(action, audit.FAILED, {"code": "key_store_unavailable", **(given or {})})
        return _fail(f"cannot open the key store: {exc}", 2)
    except GatewayError as exc:
        if action is not None:
            code = exc.code or exc.error_type
            _audit(action, audit.outcome_of(exc.http_status), {"code": code, **(given or {})})
        return _fail(exc.message, 1)
    if action is not None:
        _audit(action, audit.OK, {**(given or {}), **_audit_target(action, answer)})
    _print(args, answer)
    return 0


def _shown_id(key_id: str) -> str:
    """A key id from the command line as its audit line names it: bounded, and never a secret
    (a secret pasted where the id goes is refused as unknown, and its line would have carried it:
    ``api/admin_keys._shown_id`` for the API)."""
    return bounded(without_secrets(key_id))


def _audit(action: str, outcome: str, fields: Json) -> None:
    """The audit line of a change made (or refused) on the key store from this command line."""
    who = {"os_user": audit.os_user(), "hostname": audit.hostname()}
    audit.record(action, outcome, "cli", {**who, **fields})
    # The log's handler writes from a thread of its own: closed here (it waits for the line), so
    # the line is on stderr before the command's own message, never in the middle of it.
    for handler in logging.getLogger().handlers:
        handler.close()


def _audit_target(action: str, answer: Json) -> Json:
    """What the audit line says of the key ``answer`` shows (never its secret)."""
    if action == "key.create":
        return audit.key_fields(answer, limits=True)
    if action == "key.rotate":  # the old key's id is the target, the new key comes with it
        return {"team": answer["team"], "new_key_id": answer["id"], "grace_until": answer["grace_until"]}
    fields = audit.key_fields(answer)
    if action == "key.update":  # ``changes`` came with the target, from the records before and after
        fields.pop("grace_until", None)
    if action == "key.revoke":
        fields["revoked_at"] = answer["revoked_at"]
    return fields


def _remote(args: argparse.Namespace, method: str, path: str, body: Json | None = None) -> int:
    """Call the gateway's ``/admin/keys`` API and print its answer."""
    try:
        answer = call_admin(args.url, method, path, body)
    except AdminCallError as exc:
        return _fail(str(exc), 1)
    if not _keys_view(answer):
        # JSON, but not the gateway's (another service on the port, a proxy's page): one line,
        # as README promises for every --url command; it was a KeyError traceback (or, with
        # --json, printed with exit 0: an outside probe).
        return _fail(f"{args.url} did not answer a gateway's keys view", 1)
    _print(args, answer)
    return 0


# The fields a key of the keys API has and their JSON types (``records.key_json``) that printing
# reads; each may be null where the key has none.
_KEY_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "prefix": (str,),
    "team": (str,),
    "status": (str,),
    "name": (str, type(None)),
    "models": (list, type(None)),
    "rpm": (int, type(None)),
    "tpm": (int, type(None)),
    "budget_usd": (int, float, type(None)),
    "budget_period_s": (int, float, type(None)),
    "created_at": (int, float),
    "expires_at": (int, float, type(None)),
}


def _keys_view(answer: object) -> bool:
    """Whether ``answer`` is a key, a list of keys, or a key with its secret, as the gateway's
    ``/admin/keys`` answers them."""
    if not isinstance(answer, dict):
        return False
    keys = answer.get("data") if answer.get("object") == "list" else [answer]
    if not isinstance(keys, list):
        return False
    for key in keys:
        if not isinstance(key, dict):
            return False
        for name, types in _KEY_FIELDS.items():
            if name not in key or not isinstance(key[name], types) or isinstance(key[name], bool):
                return False
    return "secret" not in answer or isinstance(answer["secret"], str)


def _create_body(team: str, s: KeySettings) -> Json:
    body: Json = {"team": team}
    for name, value in (
        ("models", s.models),
        ("rpm", s.rpm),
        ("tpm", s.tpm),
        ("budget_usd", s.budget_usd),
        ("budget_period", s.budget_period_s),
        ("expires", s.expires_in_s),
        ("name", s.name),
        ("description", s.description),
        ("provider_files", s.provider_files),
    ):
        if value is not None:
            body[name] = list(value) if isinstance(value, tuple) else value
    if s.namespaces_read is not None or s.namespaces_write is not None:
        body["namespaces"] = {
            "read": None if s.namespaces_read is None else list(s.namespaces_read),
            "write": None if s.namespaces_write is None else list(s.namespaces_write),
        }
    return body


def _print(args: argparse.Namespace, answer: Json) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif answer.get("object") == "list":
        _print_table(answer["data"])
    elif "secret" in answer:
        verb = f"Rotated {answer['replaces']} (now revoked) into" if "replaces" in answer else "Created"
        print(f"{verb} key {answer['id']} for team {answer['team']}.")
        if answer.get("grace_until") is not None:
            print(
                f"The old secret keeps working as {answer['id']} until "
                f"{_date(answer['grace_until'])} UTC (marked x-gateway-token-deprecated: true)."
            )
        print("Its secret, shown this once (only its hash is stored):")
        print(answer["secret"])
    elif getattr(args, "updated", False):
        print(
            f"Updated key {answer['id']} ({answer['prefix']}, team {answer['team']}): it is {answer['status']}."
        )
    elif getattr(args, "ended_grace", False):
        print(
            f"The grace of key {answer['id']} ({answer['prefix']}, team {answer['team']}) ended "
            f"{_date(answer['grace_until'])} UTC: the secret it replaced is refused."
        )
    else:
        print(f"Key {answer['id']} ({answer['prefix']}, team {answer['team']}) is {answer['status']}.")


def _print_table(rows: list[Json]) -> None:
    if not rows:
        print("no keys")
        return
    table = [("ID", "PREFIX", "TEAM", "STATUS", "NAME", "CREATED", "EXPIRES", "LIMITS")]
    for k in rows:
        limits = [f"{n}={k[n]}" for n in ("rpm", "tpm", "budget_usd") if k[n] is not None]
        if k["budget_period_s"] is not None:
            limits.append(f"period={format_duration(k['budget_period_s'])}")
        if k["models"] is not None:
            limits.append("models=" + ",".join(k["models"]))
        if k.get("provider_files") is not None:
            limits.append(f"provider_files={str(k['provider_files']).lower()}")
        table.append(
            (
                k["id"],
                k["prefix"],
                k["team"],
                _status(k),
                k["name"] or "",
                _date(k["created_at"]),
                _date(k["expires_at"]) if k["expires_at"] is not None else "never",
                " ".join(limits) or "team defaults",
            )
        )
    shown = [[_printable(cell) for cell in row] for row in table]
    widths = [max(len(row[i]) for row in shown) for i in range(len(shown[0]))]
    for row in shown:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _status(key: Json) -> str:
    """A key's status, and until when the secret it replaced still works (a rotation's grace)."""
    until = key.get("grace_until")
    if until is None or key["status"] != "active" or until <= time.time():
        return str(key["status"])
    return f"active (old secret until {_date(until)})"


def _date(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(epoch_s))


def _fail(message: str, code: int) -> int:
    print(f"sophia-gateway keys: {message}", file=sys.stderr)
    return code


def _grants(items: list[str]) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    grants: dict[str, tuple[str, ...]] = {}
    for item in items:
        kind, sep, names = item.partition(":")
        if not sep or kind not in ("read", "write"):
            # a bad flag: exit 2 with one line, as argparse's own refusals
            print(
                f"sophia-gateway keys: --namespaces takes read:a,b and write:a, not {item!r}", file=sys.stderr
            )
            raise SystemExit(2)
        grants[kind] = tuple(n for n in names.split(",") if n)
    return grants.get("read"), grants.get("write")


def _names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError("give at least one name, e.g. gpt-4o,claude-sonnet")
    return names


def _or_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, with ``none`` read as None: the setting back to its team's."""

    def read(text: str) -> Any:
        return None if text.strip().lower() == "none" else parse(text)

    read.__name__ = parse.__name__  # what argparse names in an "invalid value" message
    return read


def _expiry_or_never(text: str) -> float | None:
    return None if text.strip().lower() == "never" else _expiry(text)


def _namespaces(text: str) -> tuple[str, ...]:
    """``a,b`` as namespace names (checked by the key ring); '' for none."""
    return tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))


_DOLLARS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _positive_int(text: str) -> int:
    # ASCII digits only, as ``--workers``: int() also took "1_0", " 5" and other scripts' digits
    # ("٣" was 3), which the JSON API cannot express (an outside probe).
    value = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= value <= MAX_RATE:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_RATE:,}, not {text!r}")
    return value


def _budget(text: str) -> float:
    # ASCII only (``_positive_int``): float() took "1_0", "٣" and "infinity" spelt many ways.
    value = float(text) if _DOLLARS.fullmatch(text) else -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of US dollars, not {text!r}")
    return value


def _expiry(text: str) -> float:
    try:
        return parse_expiry_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _grace(text: str) -> float:
    """A rotation's grace: 0 (none) or a duration (``1h``, seconds) of at most MAX_GRACE_S."""
    try:  # any spelling of zero (0, 0s, -0, 0.0, 0h) is "no grace", as grace_s 0 is on the API
        number = text.strip().rstrip("smhd")
        zero = number.isascii() and float(number) == 0
    except ValueError:
        zero = False
    try:
        seconds = 0.0 if zero else parse_duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds > MAX_GRACE_S:
        raise argparse.ArgumentTypeError(f"must be at most {format_duration(MAX_GRACE_S)}, not {text!r}")
    return seconds


def _budget_period(text: str) -> float:
    try:
        return parse_budget_period_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _printable(text: str) -> str:
    """``text`` with characters a terminal would act on (escape sequences, carriage returns)
    shown as ``\\xNN`` (a name stored before ``KeyRing.create`` refused them)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in JOINERS else f"\\x{ord(c):02x}" for c in text)
