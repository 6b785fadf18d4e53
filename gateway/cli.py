"""The ``sophia-gateway`` command: serve, policy check/explain/diff/schema, keys, health, fake-provider."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.errors import StartupError, quoted
from gateway.observability.stderr import ensure_standard_streams
from gateway.quoting import listed
from gateway.settings import Settings, SettingsError, WorkerSlot, port_number, provider_key

if TYPE_CHECKING:
    from gateway.policy.model import Policy

# A command imports what it runs, when it runs (the policy's models, aiohttp, the app, the
# key stores): ``fake-provider``, ``health``, ``rollout`` and ``top`` start in a fraction of
# the whole gateway's import time (an exec probe running ``health`` every few seconds, each
# test's fake provider). So the parser adds a command's own arguments only when that command
# is the one asked for; the others are listed, by name and help, for ``--help``.


def main(argv: Sequence[str] | None = None) -> int:
    ensure_standard_streams()
    words = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in words if not word.startswith("-")), None)
    parser = _parser(command)
    if command == "keys":
        from gateway import keys_command

        words = keys_command.signed_values(words)
    args = parser.parse_args(words)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    code: int = args.func(args)
    return code


def _gateway_url(text: str) -> str:
    from gateway.admin_client import gateway_url

    return gateway_url(text)


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; ``command`` (the first word that is not an option) is the
    command whose own arguments are added (each command module is imported only for its own)."""
    parser = argparse.ArgumentParser(prog="sophia-gateway", description="OpenAI-compatible LLM gateway.")
    parser.add_argument("--version", action="version", version=f"sophia-gateway {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--policy", help="policy file (default: $SOPHIA_POLICY or routing_policies/default.yaml)"
    )
    serve.add_argument("--host", help="address to bind (default: $SOPHIA_HOST or 127.0.0.1)")
    serve.add_argument(
        "--port", type=_port, help="port to bind (default: $SOPHIA_PORT or 8080; 0 = any free port)"
    )
    serve.add_argument("--log-format", choices=("json", "text"), help="log line format (default: json)")
    serve.add_argument(
        "--allow-open",
        action="store_true",
        help="let a policy with auth.mode: open listen beyond loopback (anyone reaching it may call)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="processes serving the port (SO_REUSEPORT, Linux), supervised by a parent; "
        "'auto' = the cores this process may use, within its cgroup CPU limit (default: 1, no parent)",
    )
    serve.set_defaults(func=_serve)

    policy = sub.add_parser("policy", help="work with policy files")
    policy_sub = policy.add_subparsers(dest="policy_command")
    check = policy_sub.add_parser("check", help="validate a policy file")
    check.add_argument("path")
    check.set_defaults(func=_policy_check)
    explain = policy_sub.add_parser("explain", help="show the ranking a policy produces for a model, and why")
    explain.add_argument("path")
    explain.add_argument("--model", required=True, help="the model group to explain")
    explain.add_argument(
        "--url",
        type=_gateway_url,
        help="a running gateway (e.g. http://127.0.0.1:8080): explain its live figures "
        "instead of the file's priors",
    )
    explain.set_defaults(func=_policy_explain)
    diff = policy_sub.add_parser(
        "diff",
        help="show what changes from one policy file to another, group by group, and how each "
        "deployment's share of first choices moves; exit 0: no changes, 1: changes, 2: trouble",
    )
    diff.add_argument("old", help="the policy now (e.g. the one a gateway serves)")
    diff.add_argument("new", help="the policy after the edit")
    diff.add_argument(
        "--url",
        type=_gateway_url,
        help="a running gateway (e.g. http://127.0.0.1:8080): shares before are its live ones, "
        "shares after use its live figures for the deployments that stay",
    )
    diff.add_argument("--json", action="store_true", help="print the diff as JSON (sorted keys)")
    diff.set_defaults(func=_policy_diff)
    schema = policy_sub.add_parser("schema", help="print the policy JSON Schema")
    schema.add_argument("--output", "-o", help="write to this file instead of stdout")
    schema.set_defaults(func=_policy_schema)

    memory = sub.add_parser("memory", help="work with the memory service's store")
    memory_sub = memory.add_subparsers(dest="memory_command")
    prune = memory_sub.add_parser(
        "prune", help="apply the policy's retention and pruning rules to the memory store now"
    )
    prune.add_argument(
        "--policy", help="policy file (default: $SOPHIA_POLICY or routing_policies/default.yaml)"
    )
    prune.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    prune.set_defaults(func=_memory_prune)
    if command == "memory":
        from gateway import ingest_command

        ingest_command.add_arguments(memory_sub)

    top = sub.add_parser(
        "top",
        help="a live view of a running gateway: requests/s, p50/p99, error, fallback and cache hit "
        "rates, and each deployment's traffic, share, score, latency and breaker (from /metrics and "
        "/admin/models; sends SOPHIA_ADMIN_TOKEN and SOPHIA_METRICS_TOKEN when set)",
    )
    top.add_argument(
        "--url",
        type=_gateway_url,
        default=None,
        help="the gateway (default: http://127.0.0.1:$SOPHIA_PORT, or port 8080)",
    )
    top.add_argument(
        "--interval", type=_interval, default=1.0, help="seconds between two refreshes (default 1)"
    )
    top.set_defaults(func=_top)

    health = sub.add_parser(
        "health",
        help="a running gateway's dependencies (GET /health) as a table; exit 1 when one is down",
    )
    if command == "health":
        from gateway import health_command

        health_command.add_arguments(health)

    keys = sub.add_parser("keys", help="issue, list, revoke and rotate virtual keys")
    if command == "keys":
        from gateway import keys_command

        keys_command.add_arguments(keys)

    rollout = sub.add_parser("rollout", help="progressive rollouts: status, pause, resume, promote, abort")
    if command == "rollout":
        from gateway import rollout_command

        rollout_command.add_arguments(rollout)

    fake = sub.add_parser(
        "fake-provider", help="run a fake OpenAI-compatible provider with injectable faults"
    )
    if command == "fake-provider":
        from gateway.testing import fake_provider

        fake_provider.add_arguments(fake)
        fake.set_defaults(func=fake_provider.run)
    return parser


def _port(text: str) -> int:
    try:
        return port_number(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0.1 to 3600, not {text!r}")
    return value


def _top(args: argparse.Namespace) -> int:
    from gateway import top
    from gateway.settings import admin_token_problem

    url = args.url or f"http://127.0.0.1:{os.environ.get('SOPHIA_PORT') or 8080}"
    tokens = {}
    for name in ("SOPHIA_ADMIN_TOKEN", "SOPHIA_METRICS_TOKEN"):
        token = tokens[name] = os.environ.get(name) or None
        problem = None if token is None else admin_token_problem(token)
        if problem is not None:  # http.client's own refusal would quote the token
            print(f"error: {name} {problem}", file=sys.stderr)
            return 2
    return top.run(
        url, args.interval, tokens["SOPHIA_ADMIN_TOKEN"], metrics_token=tokens["SOPHIA_METRICS_TOKEN"]
    )


def _workers(text: str) -> int:
    if text == "auto":
        from gateway.workers import available_cores

        return available_cores()
    # ASCII digits only: int() also took " 2", "+2", "1_0" and other scripts' digits ("٣" is 3),
    # so a typo or a pasted value started a number of processes nobody wrote.
    count = int(text) if text.isascii() and text.isdigit() else 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a number of processes from 1 up, or auto, not {text!r}")
    return count


def _cannot_start(exc: Exception) -> int:
    """A start-up failure as one line on stderr (what to do), exit code 2."""
    print(f"sophia-gateway: cannot start: {exc}", file=sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    try:
        return _run_server(args)
    except (SettingsError, StartupError) as exc:
        return _cannot_start(exc)


def _run_server(args: argparse.Namespace) -> int:
    from gateway.observability.logging import configure_logging
    from gateway.policy.loader import PolicyError, load_policy_with_digest

    # The app (aiohttp, the stores, numpy: about 1 s of imports) only once the settings, the
    # policy and REDIS_URL are known good, so a mistyped setting is said at once.
    settings = Settings.from_env()
    settings = replace(
        settings,
        policy_path=args.policy or settings.policy_path,
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
        log_format=args.log_format or settings.log_format,
    )
    configure_logging(settings.log_level, settings.log_format)
    try:
        policy, digest = load_policy_with_digest(settings.policy_path)
    except PolicyError as exc:
        print(f"sophia-gateway: cannot start, the policy is invalid:\n{exc}", file=sys.stderr)
        return 2
    if settings.redis_url:
        from gateway.redis_link import url_problem  # redis-py: only for a gateway that uses Redis

        if (problem := url_problem(settings.redis_url)) is not None:
            raise StartupError(problem)
    if args.workers == 1:
        from gateway.app import build_app
        from gateway.server import run

        app = build_app(settings, policy, policy_path=settings.policy_path, policy_digest=digest)
        return run(app, settings.host, settings.port, allow_open=args.allow_open)
    return _run_workers(args.workers, settings, policy, digest, allow_open=args.allow_open)


def _run_workers(count: int, settings: Settings, policy: Policy, digest: str, *, allow_open: bool) -> int:
    """``serve --workers N``: checks once in the parent, then N forked workers under a supervisor."""
    from gateway.app import build_app
    from gateway.server import check_open, run
    from gateway.workers import MAX_WORKERS_A_CORE, Supervisor, available_cores, check_supported

    check_supported()
    check_open(
        policy,
        settings.host,
        allow_open,
        settings.admin_token,
        settings.metrics_token,
        admin_token_previous=settings.admin_token_previous,
        metrics_token_previous=settings.metrics_token_previous,
    )
    cores = available_cores()
    if count > MAX_WORKERS_A_CORE * cores:
        raise StartupError(
            f"--workers {count} is more than {MAX_WORKERS_A_CORE} processes for each of the {cores} "
            "cores this process may use: a worker is one event loop, and each holds its own caches "
            "and connections, so more than one a core only costs memory; use --workers auto"
        )
    if policy.auth.mode == "keys" and not settings.redis_url:
        raise StartupError(
            f"--workers {count} with auth.mode: keys needs REDIS_URL: without it each worker would "
            f"count every key's limits on its own (up to {count}x the limit); set REDIS_URL so the "
            "workers share them, or run one worker"
        )
    if policy.responses.store and not settings.redis_url:
        # Kept responses live in the response cache's store, each worker's own without Redis:
        # a previous_response_id (or item_reference, GET /v1/responses/{id}) that a new
        # connection takes to another worker is a 400 previous_response_not_found, now and then
        # and with nothing else to go on. Not refused (open-mode sets that never use the
        # Responses API start as they did); said once, at start.
        import logging

        logging.getLogger("gateway.workers").warning(
            "--workers %d without REDIS_URL: each worker keeps the responses it answered "
            "(responses.store) on its own, so a previous_response_id, item_reference or GET "
            "/v1/responses/{id} that reaches another worker is not found; set REDIS_URL so the "
            "workers share them, set responses.store: false, or run one worker",
            count,
        )

    if policy.memory.enabled:
        from gateway.memory.service import hold_index_dir

        # Held by the parent for the whole set: a restarting worker 0 leaves no gap in which
        # another gateway could take the directory (a second serve exits 2 at any time).
        hold_index_dir(policy.memory.index_dir)

    def worker_main(slot: WorkerSlot, port: int, ready: Callable[[str], None]) -> int:
        own = replace(settings, worker=slot, port=port)
        try:
            app = build_app(own, policy, policy_path=own.policy_path, policy_digest=digest)
            return run(app, own.host, port, allow_open=allow_open, on_ready=ready)
        except (SettingsError, StartupError) as exc:
            return _cannot_start(exc)

    grace_s = settings.drain_grace_s if settings.drain_grace_s is not None else policy.server.drain_grace_s
    return Supervisor(count, settings.host, settings.port, worker_main, grace_s).run()


def _policy_check(args: argparse.Namespace) -> int:
    from gateway.policy.loader import PolicyError, format_loc, load_policy

    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{args.path}: {len(exc.problems)} error(s)", file=sys.stderr)
        return 1
    for name, provider in policy.providers.items():
        env = provider.api_key_env
        # The gateway's own reading of the variable: a key it would not send is warned of too.
        unusable = provider_key(os.environ, env)[1] if env else ""
        if unusable:
            loc = format_loc(("providers", name, "api_key_env"))
            print(f"warning: {args.path}: {loc}: {env} {unusable} here; its deployments will be skipped")
    deployments = sum(len(g.deployments) for g in policy.models.values())
    print(
        f"{args.path}: ok ({len(policy.providers)} providers, {len(policy.models)} models, "
        f"{deployments} deployments)"
    )
    return 0


def _policy_explain(args: argparse.Namespace) -> int:
    from gateway.live_policy import provider_clients
    from gateway.policy.loader import PolicyError, load_policy
    from gateway.routing.explain import offline_view, render

    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.model not in policy.models:
        print(f"error: no model group {quoted(args.model)}; known: {listed(policy.models)}", file=sys.stderr)
        return 1
    if args.url:
        view = _admin_models(args.url)
        if view is None:
            return 1
        source = f"live figures from {args.url}"
    else:
        view = offline_view(policy, provider_clients(policy, os.environ))
        source = "priors from the file: no traffic yet"
    if args.model not in view["models"]:
        print(f"error: the gateway has no model group {quoted(args.model)}", file=sys.stderr)
        return 1
    try:
        text = render(view, args.model, policy, source)
    except (KeyError, TypeError, ValueError, AttributeError):
        # --url answered JSON with a "models" object that is not the view render reads
        # (another service, another version): one line, not a traceback.
        print(f"error: {args.url}/admin/models is not a gateway's model view", file=sys.stderr)
        return 1
    print(text)
    return 0


def _admin_models(url: str) -> dict[str, Any] | None:
    """A running gateway's ``/admin/models`` view (with ``$SOPHIA_ADMIN_TOKEN`` when set), or
    None after printing why it could not be read."""
    from gateway.admin_client import AdminCallError, call_admin

    try:
        view = call_admin(url, "GET", "/admin/models", timeout_s=10)
    except AdminCallError as exc:
        print(f"error: cannot read {url}/admin/models: {exc}", file=sys.stderr)
        return None
    if not isinstance(view.get("models"), dict):
        print(f"error: {url}/admin/models is not a gateway's model view", file=sys.stderr)
        return None
    return view


def _served_version(url: str) -> str | None:
    """The policy version a running gateway serves (``GET /admin/policy``), None if unread."""
    from gateway.admin_client import AdminCallError, call_admin

    try:
        version = call_admin(url, "GET", "/admin/policy", timeout_s=10).get("version")
    except AdminCallError:
        return None
    return version if isinstance(version, str) else None


def _policy_diff(args: argparse.Namespace) -> int:
    """Exit 0 when the policies are equivalent, 1 when they differ, 2 when a file is invalid or
    the gateway cannot be read (diff(1)'s convention)."""
    from gateway.policy.diff import diff_policies, render, report_json
    from gateway.policy.versions import policy_version
    from gateway.routing.forecast import live_shares, prior_shares, serves, view_shares

    loaded = [_load_or_report(path) for path in (args.old, args.new)]
    old, new = loaded
    if old is None or new is None:
        return 2
    header = [f"policy diff: {args.old} -> {args.new}"]
    if args.url:
        view = _admin_models(args.url)
        if view is None:
            return 2
        before, after = view_shares(view), live_shares(new, view)
        header.append(
            f"first-choice shares: before = live at {args.url}; after = {args.new} with those live "
            "figures for the deployments that stay, priors for new ones"
        )
        if not serves(view, old) or _served_version(args.url) not in (None, policy_version(old)):
            # (the version tells apart what the deployments alone do not: a quality, a weight...)
            header.append(f"note: the gateway does not serve {args.old} as it is: before = what it serves")
    else:
        before, after = prior_shares(old), prior_shares(new)
        header.append("first-choice shares: from each file's priors (no traffic yet, every key taken as set)")
    diff = diff_policies(old, new)
    if args.json:
        sources = {"old": args.old, "new": args.new, "url": args.url}
        sys.stdout.write(report_json(diff, before, after, sources).decode())
    else:
        print(render(diff, before, after, header))
    return 0 if diff.empty else 1


def _load_or_report(path: str) -> Policy | None:
    """The policy at ``path``, or None after printing its problems as ``policy check`` does."""
    from gateway.policy.loader import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{path}: {len(exc.problems)} error(s)", file=sys.stderr)
        return None


def _memory_prune(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.memory.backends import memory_store
    from gateway.memory.index import HnswIndex
    from gateway.memory.lifecycle import apply_lifecycle
    from gateway.memory.service import IndexDirectoryInUse, MemoryService
    from gateway.policy.loader import PolicyError, load_policy

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return _cannot_start(exc)
    path = args.policy or settings.policy_path
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        print(f"sophia-gateway: the policy is invalid:\n{exc}", file=sys.stderr)
        return 2
    config = policy.memory

    async def no_embeddings(model: str, texts: Sequence[str]) -> list[list[float]]:
        raise RuntimeError("memory prune never embeds")

    async def run() -> list[str]:
        store = memory_store(config, settings.memory_url, os.environ)
        service = MemoryService(config, store, HnswIndex(config.index_dir), no_embeddings)
        try:
            await service.start()  # owns the index files when no gateway does: saves them after
        except IndexDirectoryInUse:
            # A gateway serves from this index directory: prune the store beside it, leaving its
            # files to it (a search there drops vectors whose memories are gone and searches again).
            # (The store was not opened: the lock is taken first.)
            index = HnswIndex(config.index_dir)
            index.keep_segments_private()
            service = MemoryService(config, store, index, no_embeddings, owns_index_files=False)
            await service.start()
        try:
            report = await apply_lifecycle(service, dry_run=args.dry_run)
        finally:
            await service.close()
        return report.lines()

    try:
        lines = asyncio.run(run())
    except StartupError as exc:
        return _cannot_start(exc)
    for line in lines:
        print(line)
    return 0


def _policy_schema(args: argparse.Namespace) -> int:
    import orjson

    from gateway.policy.loader import policy_json_schema

    text = (
        orjson.dumps(policy_json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"
    )
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:  # a missing directory, a directory, a full disk: one line, not a traceback
            print(
                f"sophia-gateway policy schema: cannot write {args.output}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
