"""Failed authentication attempts counted per client address, and the addresses refused for them.

A client address (the TCP peer; from a peer in ``SOPHIA_TRUSTED_PROXIES``, the address its
``X-Forwarded-For`` names: ``auth/client_address.py``, resolved by the edge) that fails ``limit``
times within ``window_s`` of its first failure (a virtual key that is missing, malformed, unknown, revoked or expired; a wrong ``SOPHIA_ADMIN_TOKEN``) is
refused, before its credential is looked at, for what is left of that window: every request that
needs a credential, a correct one included (otherwise the refusal would tell a guesser which guess
was right). Refused attempts are not counted: a client that waits the ``Retry-After`` it was told
gets back in. So an address gets at most ``limit`` guesses a window.

IPv6 clients are counted per /64 (one host is commonly given a whole /64, and would otherwise get
``limit`` guesses per address of it); an IPv4-mapped IPv6 address counts as its IPv4 address.
Addresses in ``exempt`` are never counted: by default (``DEFAULT_EXEMPT``) loopback and the private,
shared and link-local ranges. Every client of a reverse proxy, an ingress controller or a load
balancer that does not keep the client's address arrives from that one (usually private) address,
and counting them together would let any stranger, or one application left with a revoked key,
lock every user out. So by default only public clients are throttled: peers reaching the gateway
directly, and behind trusted proxies the public addresses their ``X-Forwarded-For`` names (the
exemption is checked on that resolved address); ``SOPHIA_AUTH_THROTTLE_EXEMPT`` sets the list.
A peer without an address (a worker's Unix socket) is never counted. The exemption is checked when a failure is counted, never on a request that
succeeds (an exempt address is never in the table, so its lookup misses).

The table holds at most ``max_addresses`` addresses; its entries are in the order their windows
end (each window is ``window_s`` long and starts at insertion), so the ended ones are dropped
from its front, and when it is full the oldest is evicted.

Shared (``shared``: ``auth/redis_throttle.RedisFailures`` when ``REDIS_URL`` is set): every
worker and replica counts an address's failures in one Redis counter, so ``limit`` holds across
all of them. Redis is asked only where it cannot cost a request that succeeds (``fail`` and
``refusal_s``): each failure is counted there (one round trip, on the failure path) and the table
takes the shared count and window from the answer; a request is checked against Redis only when
this process's table already holds its address, below the limit, within its window (it failed
here lately, and may since have failed elsewhere). A request from an address absent from the table
is decided here as before, with no round trip: an address that reached the limit elsewhere and
never failed here has its first credential here checked, and a wrong one is refused with the 429
(its count already past the limit) rather than a 401, a right one served (ARCHITECTURE.md,
h-sharedthrottle). Redis down, slow or unreadable: the count of this process decides, as without
Redis (``limit`` failures a window in each process). A refusal whose count came from Redis has
the count read again at most every ``RECHECK_S`` while the address keeps knocking, and is lifted
when it is gone or below the limit (an operator's ``DEL``).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.settings import DEFAULT_EXEMPT, Network, parse_networks

MAX_ADDRESSES = 10_000  # ~1.5 MB at most: an address string and a small entry each
# A refused address whose count came from Redis has it read again at most this often, so an
# operator's ``DEL`` of its counter lifts the refusal on every process within this long.
RECHECK_S = 1.0
_V4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96


class SharedFailures(Protocol):
    """Failures counted for every process (``auth/redis_throttle.RedisFailures``). Each returns
    (the key's failures in its window, seconds left of the window), or None when it cannot say
    (the caller then counts in process); neither raises."""

    async def count(self, key: str, window_s: float) -> tuple[int, float] | None:
        """Count one failure of ``key`` (its window starting now when it had none)."""
        ...

    async def look(self, key: str, window_s: float) -> tuple[int, float] | None:
        """``key``'s failures, not counting one."""
        ...


class _Failures:
    __slots__ = ("count", "recheck_at", "shared", "window_end")

    def __init__(self, window_end: float) -> None:
        self.window_end = window_end
        self.count = 1
        self.shared = False  # the count is Redis's (not failures only this process saw)
        self.recheck_at = 0.0  # (refused, shared) when to read the shared count again


class FailedAuthThrottle:
    """The failures of each client address in its current window (``failed``), and how long an
    address that reached ``limit`` is refused (``retry_after_s``). ``limit`` 0: off, nothing is
    counted. ``clock``: seconds, monotonic. ``shared``: the failures counted for every process
    (None: this process's count alone)."""

    __slots__ = ("_clock", "_exempt", "_max", "failures", "limit", "shared", "window_s")

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        exempt: Sequence[Network] | None = None,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedFailures | None = None,
    ) -> None:
        self.limit = limit
        self.shared = shared
        self.window_s = window_s
        self._exempt = tuple(parse_networks(DEFAULT_EXEMPT) if exempt is None else exempt)
        self._max = max(1, max_addresses)
        self._clock = clock
        # Client key -> its failures. Read by the edge (``http/auth.py``) before anything else:
        # while it is empty (no failure within a window), nothing more is done.
        self.failures: dict[str, _Failures] = {}

    def retry_after_s(self, address: str | None) -> float:
        """Seconds ``address`` is still refused for; 0.0 when it is not."""
        key = self.client_key(address)
        entry = self.failures.get(key) if key is not None else None
        if entry is None or entry.count < self.limit:
            return 0.0
        left = entry.window_end - self._clock()
        if left > 0:
            return left
        del self.failures[key]  # type: ignore[arg-type]  # (key is not None: an entry was found)
        return 0.0

    def failed(self, address: str | None) -> bool:
        """Count a failed attempt from ``address`` in this process; True when this one reached
        ``limit`` (the address is refused from now on, for the rest of its window)."""
        if self.limit <= 0:
            return False
        key = self.client_key(address)
        if key is None or self.exempt(address):
            return False
        return self._count_here(key) == self.limit

    async def fail(self, address: str | None) -> int:
        """Count a failed attempt from ``address``, here and in ``shared`` (one round trip): the
        address's failures in its window, this one included (shared when Redis answered, else
        this process's); 0 when it is not counted (off, no address, exempt). ``limit``: this one
        got the address refused; above it: it was refused already (elsewhere, or by a failure
        that ended while this one ran)."""
        if self.limit <= 0:
            return 0
        key = self.client_key(address)
        if key is None or self.exempt(address):
            return 0
        here = self._count_here(key)
        if self.shared is None:
            return here
        seen = await self.shared.count(key, self.window_s)
        return here if seen is None else self._adopt(key, *seen)

    async def refusal_s(self, address: str | None) -> float:
        """Seconds ``address`` is still refused for (0.0: not refused). This process's table
        decides; ``shared`` is asked only when the table holds the address below the limit
        within its window (it failed here lately, and may have failed elsewhere since)."""
        left = self.retry_after_s(address)
        if self.shared is None:
            return left
        if left > 0:
            return await self._still_refused(address, left)
        key = self.client_key(address)
        if key is None or key not in self.failures:
            return 0.0
        seen = await self.shared.look(key, self.window_s)
        if seen is None:  # Redis cannot say: this process's count decided
            return 0.0
        self._adopt(key, *seen)
        return self.retry_after_s(address)

    async def _still_refused(self, address: str | None, left: float) -> float:
        """A refusal whose count came from Redis, read again at most every ``RECHECK_S``: lifted
        when the shared count is gone or below the limit (an operator's ``DEL``). A count of
        failures this process saw while Redis could not count them stands for its window."""
        key = self.client_key(address)
        entry = self.failures.get(key) if key is not None else None
        now = self._clock()
        if key is None or entry is None or not entry.shared or now < entry.recheck_at or self.shared is None:
            return left
        entry.recheck_at = now + RECHECK_S
        seen = await self.shared.look(key, self.window_s)
        if seen is None or seen[0] >= self.limit:
            return left
        count, left_s = seen
        if count <= 0 or left_s <= 0:
            self.failures.pop(key, None)
        else:
            entry.count, entry.window_end = count, now + min(left_s, self.window_s)
        return self.retry_after_s(address)

    def _count_here(self, key: str) -> int:
        """One more failure of ``key`` in the table: its count in its window."""
        now = self._clock()
        table = self.failures
        entry = table.get(key)
        if entry is not None and entry.window_end > now:
            entry.count += 1
            return entry.count
        if entry is not None:
            del table[key]  # its window ended: a new one starts now, at the end of the order
        self._make_room(now)
        table[key] = _Failures(now + self.window_s)
        return 1

    def _adopt(self, key: str, count: int, left_s: float) -> int:
        """Take the shared count (``count`` failures, ``left_s`` seconds left of their window)
        for ``key`` when it is not below this process's own: the count that decides, returned.
        (A shared window may end before the entries ahead of it in the table: it is then dropped
        at its next lookup or with them, the bound on the table's size unchanged.)"""
        now = self._clock()
        table = self.failures
        entry = table.get(key)
        if entry is not None and entry.window_end <= now:
            del table[key]
            entry = None
        # A counter's expiry is Redis's to say but never more than a window: one left with a
        # longer one (by hand, by another writer under the prefix) refused the address for as long.
        left_s = min(left_s, self.window_s)
        if count <= 0 or left_s <= 0:  # no shared window (it ended, or was deleted)
            return entry.count if entry is not None else 0
        if entry is None:
            self._make_room(now)
            entry = table[key] = _Failures(now + left_s)
            entry.count, entry.shared, entry.recheck_at = count, True, now + RECHECK_S
            return count
        if count >= entry.count:
            entry.count = count
            entry.window_end = now + left_s
        entry.shared = count >= entry.count  # else this process saw failures Redis did not count
        entry.recheck_at = now + RECHECK_S  # (just read)
        return entry.count

    def _make_room(self, now: float) -> None:
        """Drop the ended windows from the front of the table, then the oldest while it is full."""
        table = self.failures
        while table:
            oldest = next(iter(table))
            if table[oldest].window_end > now and len(table) < self._max:
                return
            del table[oldest]

    def exempt(self, address: str | None) -> bool:
        """Whether ``address`` (an IPv4-mapped one as its IPv4 address) is in an exempt network.
        Only asked when a failure is counted."""
        if not self._exempt or not address:
            return False
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._exempt)

    def client_key(self, address: str | None) -> str | None:
        """What ``address`` is counted under: itself for IPv4, its /64 for IPv6 (the IPv4 address
        of an IPv4-mapped one); None when it is not counted (no address)."""
        if not address:
            return None
        if ":" not in address:
            return address
        # ``inet_pton``, not ``ipaddress`` (``IPv6Address(...).exploded`` took ~10 us): an IPv6
        # client pays this on each request while any address is in the table.
        try:
            packed = socket.inet_pton(socket.AF_INET6, address.partition("%")[0])  # (no zone id)
        except OSError:
            return address  # not an address aiohttp gives; counted as it is
        if packed[:12] == _V4_MAPPED:
            return self.client_key(socket.inet_ntop(socket.AF_INET, packed[12:]))
        return packed[:8].hex() + "/64"  # its first 64 bits (inet_ntop would cost 0.6 us more)
