"""Process settings from the environment, overridable by CLI flags.

Settings that describe the process (where to listen, which policy file, log format) live here;
settings that describe routing live in the policy file.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

N = TypeVar("N", int, float)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Loopback, RFC 1918 private, shared address space (RFC 6598, used by some clusters' pods),
# link-local, IPv6 unique-local and link-local: where a proxy in front of the gateway lives.
DEFAULT_EXEMPT = (
    "127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,169.254.0.0/16,"
    "::1/128,fc00::/7,fe80::/10"
)


_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_networks(text: str) -> tuple[Network, ...]:
    """``text``'s comma-separated networks (CIDR or single addresses; an IPv4-mapped IPv6 one as
    its IPv4 network); ``none`` or nothing: none. ValueError naming the one that is not a network."""
    if text.strip().lower() in ("", "none"):
        return ()
    networks = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            network = ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValueError(f"{part!r} is not an address or a network (CIDR)") from None
        if (
            isinstance(network, ipaddress.IPv6Network)
            and network.prefixlen >= 96
            and network.subnet_of(_V4_MAPPED)
        ):
            # Addresses are compared as IPv4 when IPv4-mapped, so such a network is its IPv4 one
            # (kept as written, it would hold no address ever compared: never matched).
            network = ipaddress.IPv4Network(
                (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
            )
        networks.append(network)
    return tuple(networks)


_HOST_NAME = re.compile(r"\.?[a-z0-9_-]+(?:\.[a-z0-9_-]+)*", re.ASCII)


def parse_host_patterns(text: str) -> tuple[str, ...]:
    """``text``'s comma-separated host names (``SOPHIA_ALLOWED_HOSTS``), in lower case without a
    trailing dot: ``gateway``, ``.example.com`` (that name and every name under it), ``*`` (any);
    nothing: none. ValueError naming an entry that is not a host name (a port, a scheme, a path,
    a wildcard other than ``*``)."""
    patterns = []
    for part in text.split(","):
        entry = part.strip().lower()
        if not entry:
            continue
        if entry == "*":
            patterns.append(entry)
            continue
        entry = entry.removesuffix(".")
        if is_ip_literal(entry.removeprefix("[").removesuffix("]")):
            # Every IP literal is admitted already (nothing to re-point); an operator listing the
            # address clients use ([::1], 10.0.0.5) meant no harm, so it starts rather than stops.
            continue
        if _HOST_NAME.fullmatch(entry) is None:
            raise ValueError(
                f"{part.strip()!r} is not a host name (list names without scheme or port: gateway, "
                ".example.com for a domain and the names under it, * for any)"
            )
        patterns.append(entry)
    return tuple(patterns)


def is_ip_literal(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (no brackets, no port)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class SettingsError(ValueError):
    """An environment variable holds a value the gateway cannot use; the message names it and
    says what it should be."""


def provider_key(env: Mapping[str, str], variable: str) -> tuple[str | None, str]:
    """The provider key in ``variable`` without surrounding whitespace (a Kubernetes Secret made
    from a file, or ``$(cat key.txt)`` in an env file, ends in a line break), and what is wrong
    when there is none (``policy check`` and the gateway read it alike). A key still holding a space or control character cannot be sent in a header:
    every request to the provider was a 500 internal error. The value is never logged."""
    value = env.get(variable)
    if value is None:
        return None, "is not set"
    key = value.strip()
    if not key:
        return None, "is empty"
    if any(c.isspace() or not c.isprintable() for c in key):
        return None, "holds a space, line break or control character inside the key"
    return key, ""


# The longest SOPHIA_ADMIN_TOKEN: far beyond any generated secret (a 256-bit one is 43-64
# characters), well within the 16 KiB a header may be (server.MAX_HEADER_FIELD_BYTES).
MAX_ADMIN_TOKEN_CHARS = 4096


# On an answer to a call let in with a previous operator token (SOPHIA_ADMIN_TOKEN_PREVIOUS,
# SOPHIA_METRICS_TOKEN_PREVIOUS): the client should move to the current one. Here, beside the
# tokens' rules, so the gateway's edge and the commands that call it name it alike.
TOKEN_DEPRECATED_HEADER = "x-gateway-token-deprecated"


def admin_token_problem(token: str) -> str | None:
    """What makes ``token`` unusable as ``SOPHIA_ADMIN_TOKEN`` (or ``SOPHIA_METRICS_TOKEN``: the same
    rules), or None when it is fine.

    The token travels as ``Authorization: Bearer <token>``, and the gateway compares only printable
    ASCII there (``!`` to ``~``: RFC 9110 header text without spaces): a token with a space, a line
    break (a secret file's trailing newline), a tab or a non-ASCII letter could never be sent
    right, so every admin call would be refused. The answer names the first such character by
    kind and position, never the token itself."""
    if len(token) > MAX_ADMIN_TOKEN_CHARS:
        return f"is {len(token)} characters long: at most {MAX_ADMIN_TOKEN_CHARS}"
    for position, char in enumerate(token, 1):
        if "\x21" <= char <= "\x7e":
            continue
        hint = ""
        if char in "\r\n":
            kind = "a line break"
            hint = " (a secret file's trailing newline?)" if position == len(token) else ""
        elif char == " ":
            kind = "a space"
        elif char == "\t":
            kind = "a tab"
        elif char < " " or char == "\x7f":
            kind = "a control character"
        else:
            kind = "a non-ASCII character"
        return (
            f"has {kind} at character {position} of {len(token)}{hint}: it may hold only printable ASCII "
            "(! to ~, no spaces), as an HTTP header carries it"
        )
    return None


def port_number(text: str) -> int:
    """``text`` as a TCP port (0 to 65535; 0 = any free port); ValueError otherwise."""
    return _in_range(text, int, 0, 65535, "a port number")


def _in_range(text: str, kind: type[N], low: N, high: N | None, what: str) -> N:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
        raise ValueError(f"must be {what} {bounds}, not {text!r}") from None
    return value


def _env_number(
    e: Mapping[str, str], name: str, kind: type[N], low: N, high: N | None, what: str
) -> N | None:
    """The number in variable ``name``, None when unset or empty; SettingsError naming it otherwise."""
    text = e.get(name)
    if not text:
        return None
    try:
        return _in_range(text.strip(), kind, low, high, what)
    except ValueError as exc:
        raise SettingsError(f"{name} {exc}") from None


def _env_choice(
    e: Mapping[str, str], name: str, default: str, choices: tuple[str, ...], *, upper: bool = False
) -> str:
    value = e.get(name) or default
    value = value.upper() if upper else value
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _env_token(e: Mapping[str, str], name: str, *, refuse_empty: bool = False) -> str | None:
    """The token in variable ``name`` (``SOPHIA_ADMIN_TOKEN``, ``SOPHIA_METRICS_TOKEN``), None when
    unset or empty; SettingsError naming the variable (never the token) when no header can carry it."""
    token = e.get(name) or None
    if refuse_empty and token is None and name in e:
        # An empty Secret, or a template's variable left blank, where unset means open (the
        # metrics token): taken as unset, it served the metrics to anyone where the operator had
        # meant them closed. (An empty admin token stays unset: the admin API is then closed
        # beyond loopback, the safe side.)
        raise SettingsError(
            f"{name} is set but empty: /metrics would be open to anyone; give it the token "
            f"(at least 16 characters), or unset it to serve /metrics without one"
        )
    problem = None if token is None else admin_token_problem(token)
    if problem is not None:
        raise SettingsError(f"{name} {problem}")
    return token


def _env_token_pair(
    e: Mapping[str, str], name: str, *, refuse_empty: bool = False
) -> tuple[str | None, str | None]:
    """The token in ``name`` and the one it replaced in ``name``_PREVIOUS (same rules), each None
    when unset or empty. A previous token without a current one is a SettingsError: it would open
    nothing (``SOPHIA_ADMIN_TOKEN`` unset on loopback means no token at all) or be taken for the
    current one, and either way the rotation was half done."""
    token = _env_token(e, name, refuse_empty=refuse_empty)
    previous = _env_token(e, f"{name}_PREVIOUS")
    if previous is not None and token is None:
        raise SettingsError(
            f"{name}_PREVIOUS is set but {name} is not: the previous token is accepted only beside "
            f"the current one (set {name} to the new token, or unset {name}_PREVIOUS)"
        )
    return token, previous


def _refuse_shared_token(metrics: Mapping[str, str | None], admin: Mapping[str, str | None]) -> None:
    """SettingsError when a metrics token (current or previous) is an admin token: whatever scrapes
    ``/metrics`` keeps its token in its configuration (a Prometheus file, a ServiceMonitor's
    Secret), so it would hold the admin API's token too. Compared whole; the line names the
    variables, never the token."""
    for metrics_name, metrics_token in metrics.items():
        for admin_name, admin_token in admin.items():
            if metrics_token is not None and metrics_token == admin_token:
                raise SettingsError(
                    f"{metrics_name} is {admin_name}: whatever scrapes /metrics would hold the admin "
                    "API's token; give /metrics a token of its own"
                )


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """This process's place in a ``serve --workers N`` set (absent when it serves alone).

    ``run_dir`` is the set's private directory (mode 0700): worker ``i`` serves the app on the Unix
    socket ``run_dir/worker-i.sock`` too, where the others reach it (one ``/metrics`` for the set)."""

    index: int
    count: int
    run_dir: str

    def socket_path(self, index: int) -> str:
        return os.path.join(self.run_dir, f"worker-{index}.sock")

    @property
    def owns_files(self) -> bool:
        """Worker 0 alone writes the files the set shares (the memory index) and runs the
        memory lifecycle, so several processes never write them at once."""
        return self.index == 0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the process needs before it reads the policy."""

    policy_path: str = "routing_policies/default.yaml"
    host: str = "127.0.0.1"
    port: int = 8080
    # None: use the policy's server.max_body_bytes / server.drain_grace_s.
    max_body_bytes: int | None = None
    drain_grace_s: float | None = None
    log_level: str = "INFO"
    log_format: str = "json"  # json | text
    access_log: bool = True
    # Reload the policy file when it changes (SIGHUP and POST /admin/policy/reload work either way).
    policy_watch: bool = True
    # Redis for the response cache; None keeps it in this process.
    redis_url: str | None = field(default=None, repr=False)
    cache_prefix: str = "sophia:cache:"
    # Memory backend override: sqlite:///path/file.db or snowflake:// (credentials from SNOWFLAKE_*).
    memory_url: str | None = field(default=None, repr=False)
    # When set, /admin/* needs "Authorization: Bearer <token>".
    admin_token: str | None = field(default=None, repr=False)
    # When set, GET /metrics needs "Authorization: Bearer <token>" (SOPHIA_METRICS_TOKEN); unset,
    # /metrics is open as every Prometheus exporter's is (README "Metrics": why, and when to set it).
    metrics_token: str | None = field(default=None, repr=False)
    # The token each replaced, still accepted while clients move to the new one
    # (SOPHIA_ADMIN_TOKEN_PREVIOUS, SOPHIA_METRICS_TOKEN_PREVIOUS; README "Rotating the admin and
    # metrics tokens"). Unset (the default): only the current token is accepted. A call that used
    # one is served, counted (gateway_previous_token_used_total{token}) and marked with
    # x-gateway-token-deprecated: true. Only with the current token set (else SettingsError).
    admin_token_previous: str | None = field(default=None, repr=False)
    metrics_token_previous: str | None = field(default=None, repr=False)
    # Where the gateway keeps small state files of its own (rollouts.json without REDIS_URL).
    state_dir: str = "data"
    rollout_prefix: str = "sophia:rollout:"
    # Shared routing state (figures, breakers, cool-downs, votes) through REDIS_URL: on unless
    # SOPHIA_SHARED_ROUTING=0; its keys start with routing_prefix.
    shared_routing: bool = True
    routing_prefix: str = "sophia:routing:"
    # Failed authentication throttle (``auth/throttle.py``): a client address with this many
    # failed credentials (virtual keys, the admin token) within ``auth_throttle_window_s`` of its
    # first is refused (429) for the rest of that window; 0 turns it off. Clients in
    # ``auth_throttle_exempt`` (comma-separated networks; default loopback and the private ranges,
    # where a proxy in front of the gateway is every client) are never counted.
    auth_throttle_failures: int = 20
    auth_throttle_window_s: float = 60.0
    auth_throttle_exempt: str = DEFAULT_EXEMPT
    # With REDIS_URL, the throttle's failures are counted in Redis for every worker and replica
    # (``auth/redis_throttle.py``), under keys starting with this.
    throttle_prefix: str = "sophia:throttle:"
    # With REDIS_URL, key changes (revoke, rotate, end-grace, update) are announced to every
    # process of every replica on the pub/sub channel ``<key_bus_prefix>changes``
    # (``auth/key_bus.py``), so each drops its cached lookup of the key at once.
    key_bus_prefix: str = "sophia:keys:"
    # The proxies in front of the gateway (comma-separated networks; ``auth/client_address.py``):
    # from a peer in them, the client address is read from ``X-Forwarded-For`` (the rightmost
    # untrusted entry). Empty (the default): the header is never read, since any client can write it.
    trusted_proxies: str = ""
    # Host names an open gateway (and the admin API without a token) answers besides IP literals,
    # localhost and the name it is bound to (comma-separated; ``.example.com``: that domain and
    # the names under it; ``*``: any). A request naming another host is refused as DNS rebinding
    # (``auth/allowed_hosts.py``).
    allowed_hosts: str = ""
    # Set by ``serve --workers N`` (N > 1) in each worker; None for a process serving alone.
    worker: WorkerSlot | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``SOPHIA_*`` variables (see the README's configuration table); a value that is
        not a number where one is needed, or an admin token no header can carry, raises
        ``SettingsError`` naming the variable (never repeating a token)."""
        e = os.environ if env is None else env
        base = cls()
        port = _env_number(e, "SOPHIA_PORT", int, 0, 65535, "a port number")
        failures = _env_number(e, "SOPHIA_AUTH_THROTTLE_FAILURES", int, 0, None, "a number of failures")
        window_s = _env_number(
            e, "SOPHIA_AUTH_THROTTLE_WINDOW_S", float, 1.0, 86_400.0, "a number of seconds"
        )
        exempt = e.get("SOPHIA_AUTH_THROTTLE_EXEMPT") or base.auth_throttle_exempt
        try:
            parse_networks(exempt)
        except ValueError as exc:
            raise SettingsError(f"SOPHIA_AUTH_THROTTLE_EXEMPT: {exc}") from None
        trusted_proxies = e.get("SOPHIA_TRUSTED_PROXIES", base.trusted_proxies)
        try:
            parse_networks(trusted_proxies)
        except ValueError as exc:
            raise SettingsError(f"SOPHIA_TRUSTED_PROXIES: {exc}") from None
        allowed_hosts = e.get("SOPHIA_ALLOWED_HOSTS", base.allowed_hosts)
        try:
            parse_host_patterns(allowed_hosts)
        except ValueError as exc:
            raise SettingsError(f"SOPHIA_ALLOWED_HOSTS: {exc}") from None
        admin_token, admin_previous = _env_token_pair(e, "SOPHIA_ADMIN_TOKEN")
        metrics_token, metrics_previous = _env_token_pair(e, "SOPHIA_METRICS_TOKEN", refuse_empty=True)
        _refuse_shared_token(
            {"SOPHIA_METRICS_TOKEN": metrics_token, "SOPHIA_METRICS_TOKEN_PREVIOUS": metrics_previous},
            {"SOPHIA_ADMIN_TOKEN": admin_token, "SOPHIA_ADMIN_TOKEN_PREVIOUS": admin_previous},
        )
        return replace(
            base,
            policy_path=e.get("SOPHIA_POLICY", base.policy_path),
            host=e.get("SOPHIA_HOST", base.host),
            port=base.port if port is None else port,
            max_body_bytes=_env_number(e, "SOPHIA_MAX_BODY_BYTES", int, 1024, None, "a number of bytes"),
            drain_grace_s=_env_number(e, "SOPHIA_DRAIN_GRACE_S", float, 0.0, None, "a number of seconds"),
            log_level=_env_choice(e, "SOPHIA_LOG_LEVEL", base.log_level, _LOG_LEVELS, upper=True),
            log_format=_env_choice(e, "SOPHIA_LOG_FORMAT", base.log_format, ("json", "text")),
            access_log=e.get("SOPHIA_ACCESS_LOG", "1") not in ("0", "false", "no"),
            policy_watch=e.get("SOPHIA_POLICY_WATCH", "1") not in ("0", "false", "no"),
            admin_token=admin_token,
            admin_token_previous=admin_previous,
            metrics_token=metrics_token,
            metrics_token_previous=metrics_previous,
            redis_url=e.get("REDIS_URL") or None,
            cache_prefix=e.get("SOPHIA_CACHE_PREFIX", base.cache_prefix),
            memory_url=e.get("MEMORY_URL") or None,
            state_dir=e.get("SOPHIA_STATE_DIR") or base.state_dir,
            rollout_prefix=e.get("SOPHIA_ROLLOUT_PREFIX", base.rollout_prefix),
            shared_routing=e.get("SOPHIA_SHARED_ROUTING", "1") not in ("0", "false", "no"),
            routing_prefix=e.get("SOPHIA_ROUTING_PREFIX", base.routing_prefix),
            auth_throttle_failures=base.auth_throttle_failures if failures is None else failures,
            auth_throttle_window_s=base.auth_throttle_window_s if window_s is None else window_s,
            auth_throttle_exempt=exempt,
            throttle_prefix=e.get("SOPHIA_THROTTLE_PREFIX", base.throttle_prefix),
            key_bus_prefix=e.get("SOPHIA_KEY_BUS_PREFIX", base.key_bus_prefix),
            trusted_proxies=trusted_proxies,
            allowed_hosts=allowed_hosts,
        )
