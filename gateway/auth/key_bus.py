"""Key changes announced to every process of every replica through Redis pub/sub (``REDIS_URL``),
so a revoked, rotated or updated key stops working everywhere at once instead of when each
process's cached lookup expires (``auth.key_cache_s``).

The process that makes a change (``/admin/keys``: revoke, rotate, end-grace, update) publishes
``{"key_id": "key_...", "change": "revoke"}`` on the channel ``P`` + ``changes`` (``P`` =
``SOPHIA_KEY_BUS_PREFIX``, default ``sophia:keys:``), after the store has it. Only the key's id
(the listings show it) and the kind of change: never a secret, hash, prefix or setting; a
receiver reads the key again from the store. Every process (each worker of ``serve --workers N``
too) holds one subscriber connection and drops the key's cached lookups when a message arrives
(``KeyRing.forget_keys``: its secret, the secret a grace keeps, a refusal cached for either); its
own messages come back too, and cost a scan of the cache. The messages already received are
acted on together (``MAX_BATCH``), with one scan of the cache for all their keys, so a flood of
messages costs their parsing and a scan per batch, never a scan each. A message that is not of that form (or
larger than ``MAX_MESSAGE_BYTES``) is ignored: anyone who may publish on the Redis could only
make processes read keys again.

Nothing of this is on the request path: ``authenticate`` is unchanged, and the subscriber is a
background task started in the app's cleanup context.

Failures (Redis down, restarted, failed over, or not answering):

* **Publishing** is bounded (``PUBLISH_TIMEOUT_S``) and never fails the admin call: a change not
  announced is logged (a warning naming the key and change) and kept (one per key, at most
  ``MAX_UNSENT``): the subscriber announces it again, at most every ``RESEND_S`` while it is
  subscribed (so at once after its own resubscription), because the processes that kept their
  subscription through this one's failure resynchronise nothing. Meanwhile other replicas see it
  when their cached lookup expires, as without Redis. Each publish tries Redis (no outage
  backoff: a skipped announcement while Redis is back would be lost with nobody resynchronising).
  ``sophia-gateway keys ...`` on the store (``announce``) runs no subscriber and tries once.
* **Pub/sub loses what is sent while a subscriber is disconnected.** So each time the subscriber
  (re)subscribes (confirmed by Redis), the process forgets every cached lookup once
  (``KeyRing.forget_all``: known keys are looked up again at their next request): nothing stale
  outlives an outage by more than the reconnect. The first subscription at start does so too (a
  change made while it connected would otherwise be missed).
* **Reconnects** go through the link's ``Outage``: after a failure the subscriber waits a backoff
  (0.1 s doubling to 5 s, with jitter) and tries again, logging once when the link goes down and
  once when it is back. A connection that goes quiet (a network partition: no reset arrives) is
  found by a ping after ``IDLE_PING_S`` without traffic, unanswered for ``PONG_TIMEOUT_S``.

Kinds of Redis (``redis_link.redis_client``): one Redis and Sentinel (the primary's pool: after a
failover the subscriber reconnects to the new primary and resynchronises as above); Cluster
through redis-py's ``ClusterPubSub`` on the node of the channel's slot: a ``PUBLISH`` on any node
reaches the subscribers of every node (Cluster broadcasts classic pub/sub on its bus), so one
subscriber connection per process is enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection
from typing import Any, Protocol

import orjson
from redis.asyncio.client import PubSub

from gateway.auth.keyring import KEY_ID
from gateway.redis_link import (
    FAILURES,
    Outage,
    RedisClient,
    probe_answered,
    redis_client,
)
from gateway.redis_link import probe as probe_script  # (``probe`` names an outage's attempt below)
from gateway.tasks import stop as stop_task

log = logging.getLogger(__name__)

CHANNEL = "changes"  # after the prefix
# What a message may say: the key ring's operations that change how a key authenticates.
CHANGES = frozenset({"revoke", "rotate", "end_grace", "update"})
# An admin call waits at most this for its announcement (a Redis that refuses answers at once).
PUBLISH_TIMEOUT_S = 0.5
# Connecting and subscribing (the subscription confirmed) within this, or the attempt failed.
SUBSCRIBE_TIMEOUT_S = 2.0
# How long one read of the subscription waits before the loop looks at its timers.
LISTEN_S = 0.5
# After this long without any traffic, the subscriber pings; no answer within PONG_TIMEOUT_S:
# the connection is dead (a partition sends no reset), reconnect.
IDLE_PING_S = 15.0
PONG_TIMEOUT_S = 5.0
MAX_MESSAGE_BYTES = 256  # a real message is about 50 bytes
# Messages already received are acted on together, up to this many: one scan of the key cache.
MAX_BATCH = 1000
# Changes this process could not announce are announced again (at most this many kept, the
# oldest let go with a warning), at least this often while any wait.
MAX_UNSENT = 10_000
RESEND_S = 1.0


class KeyCache(Protocol):
    """What the bus drops (``KeyRing``)."""

    def forget_keys(self, key_ids: Collection[str]) -> int: ...

    def forget_all(self) -> None: ...


class KeyBus:
    """The announcements of key changes for ``cache`` (see the module docstring). Counters for
    tests and the recovery metric: ``published``, ``received`` (messages acted on),
    ``resyncs`` (subscriptions made, each a ``forget_all``), ``scans`` (batches of messages
    acted on, each one ``forget_keys``)."""

    def __init__(
        self,
        url: str,
        cache: KeyCache,
        *,
        prefix: str = "sophia:keys:",
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
        idle_ping_s: float = IDLE_PING_S,
        pong_timeout_s: float = PONG_TIMEOUT_S,
    ) -> None:
        self._url = url
        self._cache = cache
        self.channel = prefix + CHANNEL
        self._publish_timeout_s = publish_timeout_s
        self._idle_ping_s = idle_ping_s
        self._pong_timeout_s = pong_timeout_s
        self._client: RedisClient | None = None
        self._outage = Outage()
        self.subscribed = False
        self._first_tried = asyncio.Event()  # set once the first subscription succeeded or failed
        self.published = 0
        self.received = 0
        self.resyncs = 0
        self.scans = 0
        self._unsent: OrderedDict[str, str] = OrderedDict()  # key id -> change, not yet announced
        self._resend_at = 0.0

    async def running(self, _: object = None) -> AsyncIterator[None]:
        """A cleanup context: the client, and the subscriber as a background task (an unreachable
        Redis delays nothing: the task keeps trying)."""
        self._client = redis_client(self._url, self._publish_timeout_s, health_check_interval_s=30)
        task = asyncio.create_task(self._subscribe_forever(self._client))
        yield
        await stop_task(task)  # (a cancel redis-py swallows while it connects is repeated)
        client, self._client = self._client, None
        await client.aclose()

    async def publish(self, key_id: str, change: str) -> bool:
        """Announce that ``key_id`` changed (``change`` one of ``CHANGES``); False, logged, when
        Redis did not take it within ``PUBLISH_TIMEOUT_S``. Never raises for Redis."""
        client = self._client
        if client is None:
            return False
        published = await _publish(
            client, self.channel, key_id, change, self._publish_timeout_s, retried=True
        )
        self.published += published
        if not published:
            self._keep_unsent(key_id, change)
        return published

    @property
    def unsent(self) -> int:
        """Changes waiting to be announced again."""
        return len(self._unsent)

    def _keep_unsent(self, key_id: str, change: str) -> None:
        """Announce it again later: processes that kept their subscription through this process's
        failure (only its publish failed) would otherwise hear of it only when their cached
        lookups expire. A receiver reads the key again whatever the change, so one per key."""
        self._unsent[key_id] = change
        self._unsent.move_to_end(key_id)
        if len(self._unsent) > MAX_UNSENT:
            dropped, _ = self._unsent.popitem(last=False)
            log.warning(
                "key change dropped from those to announce again (too many waiting): other "
                "replicas apply it when their cached lookup expires (auth.key_cache_s)",
                extra={"fields": {"key_id": dropped}},
            )

    async def _resend(self, now: float) -> None:
        """Announce the changes that could not be, oldest first, until one fails again (at most
        once per ``RESEND_S``)."""
        client = self._client
        if not self._unsent or client is None or now < self._resend_at:
            return
        self._resend_at = now + RESEND_S
        while self._unsent:
            key_id, change = next(iter(self._unsent.items()))
            if not await _publish(client, self.channel, key_id, change, self._publish_timeout_s, quiet=True):
                return
            self.published += 1
            self._unsent.pop(key_id, None)  # (unless announced meanwhile by a newer change)
        log.info("key changes announced again to other replicas after a failed announcement")

    async def ping(self) -> float | None:
        """The health monitor's ``redis:keybus`` check: None while this process holds no
        confirmed subscription (changes made elsewhere reach it only when its cached lookups
        expire); else one probe script on the publishing client, bounded by the publish timeout,
        its round trip in seconds, or None when Redis did not answer it."""
        client = self._client
        if client is None:
            return None
        if not self._first_tried.is_set():  # just started: wait for the first subscription's outcome
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                    await self._first_tried.wait()
        if not self.subscribed:
            return None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                probe_answered(await probe_script(client))
        except FAILURES:
            return None
        return time.perf_counter() - started

    def reconnect_counts(self) -> tuple[int, int]:
        """The subscriber's reconnects that ended an outage, and its failed attempts."""
        return self._outage.recovery_actions()

    async def _subscribe_forever(self, client: RedisClient) -> None:
        loop = asyncio.get_running_loop()
        while True:
            probe = self._outage.attempt()
            if probe is None:  # backing off after a failure
                await asyncio.sleep(max(0.01, self._outage.retry_in_s()))
                continue
            pubsub = client.pubsub()
            try:
                try:
                    await self._subscribe(pubsub)
                except FAILURES as exc:
                    if self._outage.failed(probe):
                        self._went_down(exc)
                    continue
                finally:
                    self._outage.finished(probe)
                    # (no await until ``subscribed`` is set below: a waiter sees it)
                    self._first_tried.set()
                if self._outage.succeeded():
                    log.info("redis key bus recovered: key changes reach this process at once again")
                # Whatever was announced before this subscription is lost: look every key up again.
                self.subscribed = True
                self.resyncs += 1
                self._cache.forget_all()
                try:
                    await self._listen(pubsub, loop)
                except FAILURES as exc:
                    self.subscribed = False
                    if self._outage.failed(False):
                        self._went_down(exc)
            finally:
                self.subscribed = False
                with contextlib.suppress(*FAILURES):
                    await pubsub.aclose()

    async def _subscribe(self, pubsub: PubSub) -> None:
        """Subscribe, and wait for Redis to confirm it (messages published after that reach us)."""
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            await pubsub.subscribe(self.channel)
            while True:
                message = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
                if message is not None and message["type"] == "subscribe":
                    return

    async def _listen(self, pubsub: PubSub, loop: asyncio.AbstractEventLoop) -> None:
        """Act on each message until the connection fails (raises one of ``FAILURES``)."""
        heard = loop.time()
        pinged: float | None = None
        while True:
            message = await pubsub.get_message(timeout=LISTEN_S)
            now = loop.time()
            if self._unsent:
                await self._resend(now)
            if message is not None:
                heard, pinged = now, None
                changed: set[str] = set()
                # Every message already here is taken with it (at most MAX_BATCH), and the cache
                # scanned once for all: a flood of messages (a hostile or broken publisher) costs
                # a scan per batch, not one per message.
                for _ in range(MAX_BATCH):
                    if message["type"] == "message":
                        self._receive(message["data"], changed)
                    message = await pubsub.get_message(timeout=0)
                    if message is None:
                        break
                else:
                    if message["type"] == "message":
                        self._receive(message["data"], changed)
                if changed:
                    dropped = self._cache.forget_keys(changed)
                    self.scans += 1
                    log.debug(
                        "keys changed elsewhere", extra={"fields": {"keys": len(changed), "dropped": dropped}}
                    )
            elif pinged is not None:
                if now - pinged > self._pong_timeout_s:
                    raise TimeoutError("no answer to a ping on the subscription")
            elif now - heard > self._idle_ping_s:
                async with asyncio.timeout(self._pong_timeout_s):
                    await pubsub.ping()
                pinged = now

    def _receive(self, data: Any, changed: set[str]) -> None:
        change = _read(data)
        if change is None:
            log.debug("ignored a message on the key bus that is not a key change")
            return
        self.received += 1
        changed.add(change[0])

    def _went_down(self, exc: BaseException) -> None:
        log.warning(
            "redis key bus unavailable: key changes made elsewhere reach this process when its "
            "cached lookups expire (auth.key_cache_s) until it reconnects",
            extra={"fields": {"error": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__}},
        )


async def announce(url: str, prefix: str, key_id: str, change: str) -> bool:
    """Publish one key change from a process that runs no bus (``keys revoke`` and the like on
    the store, ``keys_command.py``), on the channel the gateways' buses of ``prefix`` hear; False
    (logged) when Redis did not take it within ``PUBLISH_TIMEOUT_S``."""
    client = redis_client(url, PUBLISH_TIMEOUT_S, health_check_interval_s=0)
    try:
        return await _publish(client, prefix + CHANNEL, key_id, change, PUBLISH_TIMEOUT_S)
    finally:
        with contextlib.suppress(*FAILURES):
            await client.aclose()


async def _publish(
    client: RedisClient,
    channel: str,
    key_id: str,
    change: str,
    timeout_s: float,
    *,
    quiet: bool = False,
    retried: bool = False,
) -> bool:
    """PUBLISH one change within ``timeout_s``; False when Redis did not take it, logged unless
    ``quiet`` (``retried``: the caller will announce it again, and the line says so)."""
    if change not in CHANGES:
        raise ValueError(f"not a key change: {change!r}")  # a caller's bug
    payload = orjson.dumps({"key_id": key_id, "change": change})
    try:
        async with asyncio.timeout(timeout_s):
            await client.publish(channel, payload)
    except FAILURES as exc:
        if quiet:
            return False
        log.warning(
            "key change not announced to other replicas: "
            + ("announced again once Redis takes it; until then " if retried else "")
            + "they apply it when their cached lookup expires (auth.key_cache_s)",
            extra={"fields": {"key_id": key_id, "change": change, "error": type(exc).__name__}},
        )
        return False
    return True


def _read(data: object) -> tuple[str, str] | None:
    """A message's (key id, change), or None when it is not one this module publishes."""
    if not isinstance(data, bytes | str) or len(data) > MAX_MESSAGE_BYTES:
        return None
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    key_id, change = body.get("key_id"), body.get("change")
    if not (isinstance(key_id, str) and KEY_ID.fullmatch(key_id) and change in CHANGES):
        return None
    return key_id, str(change)
