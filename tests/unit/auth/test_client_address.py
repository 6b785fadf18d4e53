"""The client address behind trusted proxies (``auth/client_address.py``): the rightmost untrusted
``X-Forwarded-For`` entry, as nginx's ``real_ip_recursive on`` finds it. Over HTTP in
``tests/unit/http/test_auth_throttle.py``; here, the rule's cases one by one."""

from __future__ import annotations

import pytest

from gateway.auth.client_address import MAX_HOPS, ClientAddresses, parse_entry
from gateway.auth.throttle import FailedAuthThrottle
from gateway.settings import parse_networks

INGRESS = "10.0.0.7"
CLIENTS = ClientAddresses(parse_networks("10.0.0.0/24, 127.0.0.1, fd00::/8"))


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        # An untrusted peer's header is never read: any client can write it.
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),
        ("10.0.1.1", ["198.51.100.1"], "10.0.1.1"),  # outside the trusted /24
        # A trusted peer: the entry it appended.
        (INGRESS, ["198.51.100.1"], "198.51.100.1"),
        (INGRESS, [" 198.51.100.1 "], "198.51.100.1"),
        # What the client wrote itself, left of it, is not believed.
        (INGRESS, ["1.1.1.1, 198.51.100.1"], "198.51.100.1"),
        (INGRESS, ["10.0.0.99, 198.51.100.1"], "198.51.100.1"),  # a trusted-looking spoof too
        # A chain of trusted proxies: each skipped, the first untrusted from the right wins.
        (INGRESS, ["1.1.1.1, 198.51.100.1, 10.0.0.3, 127.0.0.1"], "198.51.100.1"),
        # Several headers are one list, in order.
        (INGRESS, ["1.1.1.1, 198.51.100.1", "10.0.0.3", "127.0.0.1"], "198.51.100.1"),
        (INGRESS, ["198.51.100.1", "203.0.113.5"], "203.0.113.5"),
        # Every entry trusted: the leftmost (an internal client).
        (INGRESS, ["10.0.0.3, 10.0.0.4"], "10.0.0.3"),
        # Absent, empty or garbage: the last address reached (the peer when it is the rightmost).
        (INGRESS, [], INGRESS),
        (INGRESS, [""], INGRESS),
        (INGRESS, ["unknown"], INGRESS),
        (INGRESS, ["198.51.100.1, garbage"], INGRESS),
        (INGRESS, ["garbage, 10.0.0.3"], "10.0.0.3"),
        (INGRESS, ["198.51.100.1,"], INGRESS),
        (INGRESS, ["198.51.100.1 10.0.0.3"], INGRESS),
        (INGRESS, ["198.051.100.1"], INGRESS),  # leading zeros: not an address inet_pton reads
        (INGRESS, ["198.51.100.1\x00"], INGRESS),
        (INGRESS, ["for=198.51.100.1"], INGRESS),  # RFC 7239's syntax is not this header's
        (INGRESS, ["1" * 5000], INGRESS),
        (INGRESS, ["<script>alert(1)</script>"], INGRESS),
        # Ports (Azure's Application Gateway writes them) and IPv6, in brackets or not.
        (INGRESS, ["198.51.100.1:4711"], "198.51.100.1"),
        (INGRESS, ["198.51.100.1:http"], INGRESS),
        (INGRESS, ["198.51.100.1:123456"], INGRESS),
        (INGRESS, ["[2001:DB8::1]:4711"], "2001:db8::1"),
        (INGRESS, ["2001:db8:0:0::1"], "2001:db8::1"),
        (INGRESS, ["[2001:db8::1"], INGRESS),
        (INGRESS, ["fe80::1%eth0"], "fe80::1"),
        ("fd00::5", ["198.51.100.1, fd00::6"], "198.51.100.1"),
        ("::ffff:10.0.0.7", ["198.51.100.1"], "198.51.100.1"),  # a dual-stack socket's IPv4 peer
        # A peer that is not an IP address (a worker's Unix socket): never a proxy.
        ("", ["198.51.100.1"], ""),
        (None, ["198.51.100.1"], None),
    ],
)
def test_the_rightmost_untrusted_entry_from_a_trusted_peer(
    peer: str | None, headers: list[str], client: str | None
) -> None:
    assert CLIENTS.of(peer, headers) == client


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert ClientAddresses().of(INGRESS, ["198.51.100.1"]) == INGRESS
    assert ClientAddresses(parse_networks("none")).of("127.0.0.1", ["198.51.100.1"]) == "127.0.0.1"


def test_a_header_of_thousands_of_entries_is_looked_at_only_at_its_right_end() -> None:
    """Only a client inside a trusted network can make such a list walk far (a trusted proxy
    appends an outside client's address at the right); the walk stops at ``MAX_HOPS``."""
    trusted_run = ", ".join(f"10.0.0.{i % 200 + 1}" for i in range(5000))
    last_walked = f"10.0.0.{(5000 - MAX_HOPS) % 200 + 1}"  # the MAX_HOPS-th entry from the right
    assert CLIENTS.of(INGRESS, ["198.51.100.1, " + trusted_run]) == last_walked
    assert CLIENTS.of(INGRESS, [trusted_run + ", 198.51.100.1"]) == "198.51.100.1"
    # Within the cap the walk reaches the untrusted entry; one more hop and it stops before it.
    near = ["198.51.100.1", *(["10.0.0.3"] * (MAX_HOPS - 1))]
    assert CLIENTS.of(INGRESS, near) == "198.51.100.1"
    assert CLIENTS.of(INGRESS, ["10.0.0.4", *near[1:], "10.0.0.3"]) == "10.0.0.3"
    # Thousands of headers: the same.
    assert CLIENTS.of(INGRESS, ["198.51.100.1"] + ["10.0.0.3"] * 5000) == "10.0.0.3"


def test_an_entry_is_an_address_with_an_optional_port() -> None:
    assert parse_entry(" 192.0.2.1 ") == ("192.0.2.1", bytes([192, 0, 2, 1]))
    assert parse_entry("[::1]:80") == ("::1", bytes(15) + b"\x01")
    for bad in ("", " ", "192.0.2", "192.0.2.1.5", "192.0.2.256", "::1:80:", "[::1]x", "[::1]:", "x" * 65):
        assert parse_entry(bad) is None, bad


def test_an_ipv4_mapped_network_in_the_settings_is_its_ipv4_network() -> None:
    """(h-probe) Addresses are compared as IPv4 when IPv4-mapped (``::ffff:10.0.0.5`` is
    ``10.0.0.5``), so a network written mapped (as a dual-stack socket shows a peer) was an IPv6
    network nothing was ever in: accepted, and silently never trusted nor exempt."""
    assert parse_networks("::ffff:10.0.0.0/104, ::ffff:127.0.0.1") == parse_networks("10.0.0.0/8, 127.0.0.1")
    clients = ClientAddresses(parse_networks("::ffff:10.0.0.0/104"))
    assert clients.of("10.0.0.5", ["203.0.113.9"]) == "203.0.113.9"
    assert clients.of("::ffff:10.0.0.5", ["203.0.113.9"]) == "203.0.113.9"
    throttle = FailedAuthThrottle(3, 60, exempt=parse_networks("::ffff:203.0.113.0/120"))
    assert throttle.exempt("203.0.113.9") and throttle.exempt("::ffff:203.0.113.9")
    assert parse_networks("::/0") != parse_networks("0.0.0.0/0")  # wider than the mapped /96: kept
