"""Which ``Host`` header values name this gateway: the DNS-rebinding check (``AllowedHosts``).

A web page the user opens can re-point its own name at the gateway's address (DNS rebinding:
``attacker.example`` resolving to 127.0.0.1, or to a LAN address): its browser then sends it
same-origin requests, JSON bodies and all, and reads the answers. Nothing but the ``Host`` header
betrays them: it carries the page's name. So a gateway that lets anyone in (``auth.mode: open``,
the admin API without a token) answers only requests whose ``Host`` is one of (as Ollama,
Jupyter and Vite check):

- an IP literal, v4 or v6 in brackets (no DNS name, so nothing to re-point);
- ``localhost`` or a name under it (``app.localhost``: browsers resolve those to loopback
  themselves, RFC 6761);
- the name the gateway is bound to (``--host gateway.lan``);
- a name listed in ``SOPHIA_ALLOWED_HOSTS`` (comma-separated; ``.example.com`` admits
  ``example.com`` and every name under it; ``*`` admits any ``Host``, which turns the check off);

with any port or none, in any case, with or without a trailing dot. A request with no ``Host``
(HTTP/1.0) or an empty one passes: every browser sends the name it reached, so such a request
comes from no web page, and an old health checker (HAProxy's ``httpchk``) sends none.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.settings import is_ip_literal as _is_ip_literal

ANY = "*"
_MAX_REMEMBERED = 64  # Host values accepted, remembered as they were sent (a handful in practice)


class AllowedHosts:
    """``allows(host)``: whether a ``Host`` header value names this gateway (the module's rules).

    ``listed``: the operator's entries (``parse_host_patterns``: lower case, no trailing dot; a
    leading dot for a suffix; ``ANY``); ``bound``: the address the gateway listens on (a name
    among them is admitted). Accepted values are remembered as sent (at most 64), so the usual
    request costs one set lookup; a refused one is parsed again each time (only a page's)."""

    __slots__ = ("_names", "_seen", "_suffixes", "any")

    def __init__(self, listed: Iterable[str] = (), bound: str = "") -> None:
        entries = tuple(listed)
        self.any = ANY in entries
        # ``.example.com`` admits ``example.com`` itself too (as Django's and Vite's lists do).
        names = {entry.removeprefix(".") for entry in entries if entry != ANY}
        name = _name(bound.lower())
        if name and not _is_ip_literal(name):
            names.add(name)
        self._names = frozenset(names)
        self._suffixes = tuple(entry for entry in entries if entry.startswith("."))
        self._seen: set[str] = set()

    def allows(self, host: str) -> bool:
        """Whether ``host`` (a ``Host`` header's value, as sent) names this gateway."""
        if host in self._seen or not host or self.any:
            return True
        if not self._admits(host.lower()):
            return False
        if len(self._seen) < _MAX_REMEMBERED:
            self._seen.add(host)
        return True

    def _admits(self, host: str) -> bool:
        if host.startswith("["):  # an IPv6 literal, with or without a port
            end = host.find("]")
            return end > 0 and _is_port(host[end + 1 :], colon=True) and _is_ip_literal(host[1:end])
        name, colon, port = host.rpartition(":")
        if not colon:
            name = host
        elif not _is_port(port, colon=False):
            return False
        name = _name(name)
        if name in self._names or name == "localhost" or name.endswith(".localhost"):
            return True
        if self._suffixes and name.endswith(self._suffixes):
            return True
        # An IPv4 literal (IPv6 only in brackets); a name ends in a letter (ipaddress raising
        # for one costs ~20 us: a rebound page's requests are refused without it).
        return name[-1:].isdigit() and ":" not in name and _is_ip_literal(name)

    def __repr__(self) -> str:
        listed = [ANY] if self.any else sorted(self._names) + list(self._suffixes)
        return f"AllowedHosts({listed!r})"


def _name(host: str) -> str:
    return host[:-1] if host.endswith(".") else host


def _is_port(text: str, *, colon: bool) -> bool:
    """``text`` is a port (digits, or empty as RFC 3986 allows), after a ``:`` when ``colon``."""
    if colon:
        if not text:
            return True
        if text[0] != ":":
            return False
        text = text[1:]
    return not text or (len(text) <= 5 and text.isascii() and text.isdigit())
