"""Who the client is when the gateway sits behind proxies: ``X-Forwarded-For`` from trusted peers.

``SOPHIA_TRUSTED_PROXIES`` (comma-separated addresses or networks; empty by default) lists the
proxies in front of the gateway (an ingress controller, a load balancer, a same-host nginx). While
it is empty, the client is the TCP peer and ``X-Forwarded-For`` is never read: any client can
write that header. When the peer is in the list, the header is read as nginx's
``real_ip_recursive on`` and Envoy's trusted hops read it: each proxy appends the address it got
the request from, so the entries are walked from the right, each trusted one skipped, and the
first one that is not trusted is the client (the rightmost untrusted). Entries left of it were
written by the client itself and are never believed. Several ``X-Forwarded-For`` headers count as
one list, in order (RFC 9110 section 5.3).

- An entry that is not an address (garbage, ``unknown``, an obfuscated RFC 7239 identifier, more
  than ``MAX_ENTRY_CHARS``) stops the walk: the client is the last address reached, the peer
  when it is the rightmost entry (nginx does the same).
- Every entry trusted: the leftmost is the client (an internal client inside a trusted network).
- At most ``MAX_HOPS`` entries are looked at, from the right; a longer list stops there, at the
  last address reached. Only a client inside a trusted network can make one (a trusted proxy
  appends its peer's address at the right, so an outside client's own entries are never walked
  past), so the cap costs nothing a real chain needs, and a header of thousands of entries costs
  a look at its right end only.
- Entries may carry a port (``192.0.2.1:4711``, ``[2001:db8::1]:4711``, as Azure's Application
  Gateway writes them); it is dropped.

``Forwarded`` (RFC 7239) is not read, nor ``X-Real-IP``: a proxy that maintains one header passes
the other through untouched, as the client wrote it, so believing a second header from a trusted
peer would let a client choose its own address. ``X-Forwarded-For`` is the one the usual proxies
write (ingress-nginx, Envoy, AWS, GCP and Azure load balancers, Traefik, HAProxy's ``forwardfor``).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from gateway.settings import Network

MAX_HOPS = 32  # entries looked at, from the right; real chains have a handful
MAX_ENTRY_CHARS = 64  # "[" + the longest IPv6 text with a zone id + "]:65535" fits
_MAX_CACHED_PEERS = 4096  # peers remembered as trusted or not (cleared when full)
_V4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96


class ClientAddresses:
    """The client address of a request from its TCP peer and its ``X-Forwarded-For`` values
    (``of``); ``trusted``: the proxies' networks (empty: the peer, always).

    Addresses are checked as integers against each network's (address, mask), parsed with
    ``inet_pton``: ``ipaddress`` took ~6 us an entry (parse, membership, text), paid on each
    access log line while proxies are trusted; this takes ~1 us."""

    __slots__ = ("_peers", "_v4", "_v6", "trusted")

    def __init__(self, trusted: Sequence[Network] = ()) -> None:
        self.trusted = tuple(trusted)
        self._v4 = tuple((int(n.network_address), int(n.netmask)) for n in self.trusted if n.version == 4)
        self._v6 = tuple((int(n.network_address), int(n.netmask)) for n in self.trusted if n.version == 6)
        # Peer -> whether it is trusted: the peers are few (the proxies).
        self._peers: dict[str, bool] = {}

    def of(self, peer: str | None, forwarded_for: Sequence[str]) -> str | None:
        """The client address: ``peer``, unless it is a trusted proxy and ``forwarded_for`` (the
        request's ``X-Forwarded-For`` values, in order) names another hop (the rightmost
        untrusted; see the module's docstring)."""
        if not self.trusted or not peer or not self._peer_trusted(peer):
            return peer
        client = peer
        seen = 0
        for value in reversed(forwarded_for):
            end = len(value)
            while True:  # its entries from the right, found with ``rfind``: nothing left of them is copied
                seen += 1
                if seen > MAX_HOPS:
                    return client
                start = value.rfind(",", 0, end) + 1
                parsed = parse_entry(value[start:end])
                if parsed is None:
                    return client
                client, packed = parsed
                if not self.is_trusted(packed):
                    return client
                if start == 0:
                    break
                end = start - 1
        return client

    def _peer_trusted(self, peer: str) -> bool:
        known = self._peers.get(peer)
        if known is None:
            packed = _packed(peer.partition("%")[0])
            # Not an IP address (a Unix socket's peer): never a proxy.
            known = packed is not None and self.is_trusted(packed)
            if len(self._peers) >= _MAX_CACHED_PEERS:
                self._peers.clear()
            self._peers[peer] = known
        return known

    def is_trusted(self, packed: bytes) -> bool:
        """Whether the address ``packed`` (4 or 16 bytes, as ``inet_pton`` gives; an IPv4-mapped
        IPv6 address as its IPv4 address) is in a trusted network."""
        if len(packed) == 16 and packed[:12] == _V4_MAPPED:
            packed = packed[12:]
        number = int.from_bytes(packed, "big")
        for network, mask in self._v4 if len(packed) == 4 else self._v6:  # noqa: SIM110 (any(): 1 us more)
            if number & mask == network:
                return True
        return False


def parse_entry(entry: str) -> tuple[str, bytes] | None:
    """The address of one ``X-Forwarded-For`` entry (spaces around it, a port after it and an
    IPv6 address's brackets allowed) as text (IPv4 as written, IPv6 in its canonical form, no
    zone id) and packed, or None when it is not one."""
    text = entry.strip(" \t")
    if not text or len(text) > MAX_ENTRY_CHARS:
        return None
    if text[0] == "[":  # [IPv6] or [IPv6]:port
        end = text.find("]")
        if end < 0 or not _is_port_suffix(text[end + 1 :]):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4:port
        text, _, port = text.partition(":")
        if not _is_port_suffix(":" + port):
            return None
    if "%" in text:  # an IPv6 zone id
        text = text.partition("%")[0]
    packed = _packed(text)
    if packed is None:
        return None
    if len(packed) == 16:
        text = socket.inet_ntop(socket.AF_INET6, packed)
    return text, packed


def _packed(text: str) -> bytes | None:
    """``text`` as an IPv4 (dotted quad, no leading zeros) or IPv6 address's bytes, else None."""
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except (OSError, ValueError):  # not an address; ValueError: a NUL character in it
        return None


def _is_port_suffix(text: str) -> bool:
    """Whether ``text`` is empty or ``:`` and 1 to 5 ASCII digits."""
    if not text:
        return True
    port = text[1:]
    return text[0] == ":" and 0 < len(port) <= 5 and port.isascii() and port.isdigit()
