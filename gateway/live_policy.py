"""The policy in force, and changing it while the gateway serves (hot reload).

A reload reads the policy file, validates it exactly as ``sophia-gateway policy check`` does
(``policy/loader.parse_policy``) and, if it is valid and means something new, swaps it in at one
point on the event loop: the router's groups and targets, the cache's categories and rules, the
request limits, the teams, and whatever subscribed (``subscribe``). Requests in flight finish on
the objects they hold; new requests see the new policy. Provider clients whose entry did not
change are reused; the others are started before the swap and the replaced ones closed once no
request planned on the replaced policy can still use them (at most a group's
``retry.deadline_s`` and a provider's ``timeouts.total_s``). An invalid file changes
nothing: its problems are logged with file:line and kept for ``GET /admin/policy``.

Reloads come from the file watcher (watchfiles on the file's directory, so an edit in place, an
editor's rename and a Kubernetes ConfigMap's symlink swap all count), SIGHUP and ``POST
/admin/policy/reload``; one runs at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, Literal

import watchfiles

from gateway.auth.keyring import KeyRing
from gateway.cache.service import ResponseCache, load_semantic_index
from gateway.observability import audit
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.loader import PolicyError, parse_policy_bytes, read_policy_file
from gateway.policy.model import Policy
from gateway.policy.versions import (
    PolicyStatus,
    ReloadFailure,
    ReloadOutcome,
    ReloadResult,
    policy_version,
    restart_only_changes,
)
from gateway.providers.base import Transport
from gateway.providers.client import ProviderClient
from gateway.providers.registry import adapter_for
from gateway.routing.router import Router
from gateway.routing.target import DeploymentState
from gateway.service.calls import RequestService
from gateway.service.responses import cache_budgets
from gateway.settings import provider_key
from gateway.tasks import stop as stop_task

log = logging.getLogger("gateway.policy")

# watchfiles groups the events of one save (write, rename, a ConfigMap's several symlink steps)
# over this many milliseconds; its default (1.6 s) would make a reload slow to land.
# A changed file is applied once two reads this far apart agree (a slow in-place write).
_SETTLE_S = 0.25
# The file is also read this often and reloaded when its bytes changed: what no directory watch
# sees (its directory replaced, a symlink moved to a directory not watched, a network or FUSE
# file system without inotify) is applied within this long.
POLL_S = 2.0
_SETTLE_ROUNDS = 20
_DEBOUNCE_MS = 100
_DRAIN_POLL_S = 0.2  # how often a replaced provider client checks whether its requests are done
_EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()


def provider_clients(
    policy: Policy,
    env: Mapping[str, str],
    transports: Mapping[str, Transport] | None = None,
    reuse: Mapping[str, ProviderClient] | None = None,
) -> dict[str, ProviderClient]:
    """A client per provider of ``policy``, its key read from ``env`` (not started). A client in
    ``reuse`` whose policy entry is unchanged is kept as it is (its connections with it)."""
    given = transports or {}
    kept = reuse or {}
    clients = {}
    for name, cfg in policy.providers.items():
        old = kept.get(name)
        if old is not None and old.config == cfg:
            clients[name] = old
            continue
        key, problem = provider_key(env, cfg.api_key_env) if cfg.api_key_env else (None, "")
        clients[name] = ProviderClient(name, cfg, adapter_for(cfg), key, given.get(name))
        if not clients[name].configured:
            # Said when the process starts and on the reload that brings it (a typo in a
            # variable's name otherwise showed only as 503 provider_not_configured answers).
            log.warning(
                f"provider key variable {problem}: the provider's deployments are skipped",
                extra={"fields": {"provider": name, "key_env": cfg.api_key_env}},
            )
    return clients


class LivePolicy:
    """The policy in force and its reloads (see the module docstring); one per app
    (``keys.POLICY_CONTROL``), run by its cleanup context (``running``)."""

    def __init__(
        self,
        policy: Policy,
        path: str | None,
        *,
        env: Mapping[str, str],
        transports: Mapping[str, Transport] | None,
        clients: dict[str, ProviderClient],
        router: Router,
        cache: ResponseCache,
        service: RequestService,
        key_ring: KeyRing,
        metrics: GatewayMetrics,
        watch: bool = True,
        started_digest: str | None = None,
        worker: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.path = path
        self.clients = clients
        self._env = env
        self._transports = transports
        self._router = router
        self._cache = cache
        self._service = service
        self._key_ring = key_ring
        self._metrics = metrics
        self._watch = watch and path is not None
        self.watching = True  # False once the file watcher has stopped (it could not watch)
        self._clock = clock
        # In a worker set each worker watches the file and reloads it on its own (one audit line
        # each, which may differ: one worker may fail to start a client): the line says which.
        self._worker = worker
        self._subscribers: list[Callable[[Policy], None]] = []
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[object]] = set()
        self._retiring: list[ProviderClient] = []
        self._stop = asyncio.Event()
        # Of the bytes last read, so unrelated events are cheap; at first those the process started
        # on, when known: the watcher's first look at an unchanged file then parses nothing.
        self._file_digest: str | None = started_digest
        self._started = policy  # restart-only settings are compared with what the process started on
        self.version = policy_version(policy)
        self.loaded_at = clock()
        self.source = "startup"
        self.pending_restart: tuple[str, ...] = ()
        self.last_error: ReloadFailure | None = None
        # Set once the watcher has looked at the file a first time (tests wait on it).
        self.first_check_done = asyncio.Event()
        # Set once the file watch is in place, so that any edit from then on is seen by it (or
        # once the watcher gave up: ``watching`` is then False). Tests wait on it, not a sleep.
        self.watch_started = asyncio.Event()
        metrics.child(metrics.policy_info, self.version).set(1)

    def subscribe(self, on_change: Callable[[Policy], None]) -> None:
        """Call ``on_change(policy)`` with each policy applied from now on, at the swap (it must
        not await or raise: it runs inside the one step that switches the policy)."""
        self._subscribers.append(on_change)

    def status(self) -> PolicyStatus:
        return PolicyStatus(
            self.version,
            self.loaded_at,
            self.source,
            self.path,
            self._watch and self.watching,
            self.pending_restart,
            self.last_error,
        )

    # ----- lifetime

    async def running(self, app: object) -> AsyncIterator[None]:
        """Cleanup context: start the provider clients (closing those started if one fails) and
        the watcher; at the end stop watching and close every client, replaced ones included."""
        started: list[ProviderClient] = []
        try:
            for client in self.clients.values():
                await client.start()
                started.append(client)
        except BaseException:
            for client in started:
                await client.close()
            raise
        if self._watch and self.path is not None and not _regular_file(self.path):
            # ``serve --policy <(envsubst < policy.yaml)``: a pipe, read once at start-up as
            # given. It cannot change, and the watcher's first look at it was a refused reload
            # ("not a regular file"), the policy degraded in /health and an invalid reload
            # counted for good (an outside probe). Not watched; /admin/policy says so.
            self.watching = False
            self.first_check_done.set()
            self.watch_started.set()
            log.info(
                "policy read from a pipe at start-up: not watched (serve a file to reload it)",
                extra={"fields": {"path": self.path}},
            )
        elif self._watch:
            self._spawn(self._watch_file())
            self._spawn(self._poll_file())
        try:
            yield
        finally:
            self._stop.set()
            await asyncio.gather(*(stop_task(task) for task in list(self._tasks)))
            closed: set[int] = set()  # a test's MockTransport may serve several clients
            for client in [*self.clients.values(), *self._retiring]:
                if id(client.transport) not in closed:
                    closed.add(id(client.transport))
                    await client.close()

    def reload_soon(self, source: str) -> None:
        """Reload in the background (a signal handler cannot await)."""
        self._spawn(self.reload(source))

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----- reloading

    async def reload(self, source: str, data: bytes | None = None, *, first: bool = False) -> ReloadOutcome:
        """Read (unless the watcher has just read ``data``), validate and apply the policy file;
        one reload at a time. ``first``: the watcher's look at the file when it starts, which is
        no reload when the file still says what the process started on (not counted).

        A reload the gateway starts itself (``file``: an edit the watcher saw; ``signal``:
        SIGHUP) writes its audit line here (actor ``file`` or ``signal``, the path, the versions
        before and after, applied, unchanged or refused); ``POST /admin/policy/reload``'s handler
        writes its own, with the credential and the client (``admin_policy.py``)."""
        before = self.version
        outcome = await self._reload(source, data, first=first)
        if source != "admin" and not (first and outcome.result == "unchanged"):
            fields: dict[str, object] = {}
            if outcome.result not in ("applied", "unchanged"):
                fields["code"] = "policy_invalid" if outcome.result == "invalid" else "policy_reload_failed"
            fields |= {
                "path": self.path,
                "version_before": before,
                "version_after": outcome.version,
                "result": outcome.result,
            }
            if outcome.problems:
                fields["problems"] = len(outcome.problems)
            if self._worker is not None:
                fields["worker"] = self._worker
            result = {"applied": audit.OK, "unchanged": audit.OK, "invalid": audit.REFUSED}
            audit.record("policy.reload", result.get(outcome.result, audit.FAILED), source, fields)
        return outcome

    async def _reload(self, source: str, data: bytes | None, *, first: bool) -> ReloadOutcome:
        if self.path is None:
            return self._refused(source, ("this gateway was not started from a policy file",))
        async with self._lock:
            try:
                if data is None:
                    # A file that cannot be read has no bytes (as ``_read_or_empty`` says), so
                    # its return, even with the bytes it had, is a change that clears the error.
                    self._file_digest = _EMPTY_DIGEST
                    data = await asyncio.to_thread(_read, self.path)
                self._file_digest = hashlib.sha256(data).hexdigest()
                policy = await asyncio.to_thread(_parse, data, self.path)
            except PolicyError as exc:
                return self._refused(source, tuple(str(p) for p in exc.problems), "invalid")
            return await self._apply(policy, source, first)

    async def _apply(self, policy: Policy, source: str, first: bool = False) -> ReloadOutcome:
        # The heavy parts run in a thread, off the event loop (with the parse): the version's
        # hash of the whole policy and the router's groups and states. Built on the loop, a
        # policy of 170,000 groups held it for 5.6 s in one step, answering nothing meanwhile.
        version = await asyncio.to_thread(policy_version, policy)
        if version == self.version:
            self.last_error = None  # the file is valid and says what is in force
            if first:  # start-up read this file already: nothing was reloaded
                return ReloadOutcome("unchanged", self.version, (), self.pending_restart)
            return self._done("unchanged", source)
        clients = provider_clients(policy, self._env, self._transports, reuse=self.clients)
        fresh = [c for c in clients.values() if all(c is not old for old in self.clients.values())]
        try:
            for client in fresh:
                await client.start()
        except Exception as exc:  # a transport that cannot start: keep serving on the old policy
            for client in fresh:
                await client.close()
            return self._refused(source, (f"a provider client failed to start: {exc!r}",), "failed")
        try:
            await asyncio.to_thread(load_semantic_index, policy.cache)
            prepared = await asyncio.to_thread(self._router.prepare, policy, clients)
        except BaseException:
            for client in fresh:
                await client.close()
            raise
        replaced = [c for c in self.clients.values() if all(c is not new for new in clients.values())]
        draining = self._router.states_of({c.name for c in replaced})
        routing = self._router.routing_now()  # requests planned on the policy being replaced
        old = self.policy
        # Bound on the wait: a request that arrived before the swap starts no attempt after its
        # group's deadline, and an attempt lasts at most its provider's total timeout.
        wait_s = max((g.retry or old.retry).deadline_s for g in old.models.values()) if old.models else 0.0
        wait_s += max(c.config.timeouts.total_s for c in replaced) if replaced else 0.0
        # The swap: no await from here to the end of the block.
        self._router.reconfigure(policy, clients, prepared)
        self._cache.store.set_budgets(cache_budgets(policy))  # with kept responses' (issue 17)
        self._cache.reconfigure(policy.cache)
        self._service.reconfigure(policy.limits)
        self._key_ring.reconfigure(policy.auth.teams, policy.auth.key_cache_s, policy.models.keys())
        for on_change in self._subscribers:
            on_change(policy)
        old_version = self.version
        self.policy, self.clients, self.version = policy, clients, version
        self.loaded_at, self.source, self.last_error = self._clock(), source, None
        self.pending_restart = restart_only_changes(self._started, policy)
        m = self._metrics
        m.policy_info.children.pop((old_version,), None)
        m.child(m.policy_info, version).set(1)
        if replaced:
            self._retiring += replaced
            self._spawn(self._retire(replaced, draining, routing, wait_s))
        fields = {"version": version, "previous": old_version, "source": source}
        if self.pending_restart:
            fields["pending_restart"] = ", ".join(self.pending_restart)
        log.info("policy reloaded", extra={"fields": fields})
        if self.pending_restart:
            log.warning(
                "policy settings that apply only after a restart changed",
                extra={"fields": {"settings": ", ".join(self.pending_restart)}},
            )
        return self._done("applied", source)

    def _done(self, result: ReloadResult, source: str) -> ReloadOutcome:
        self._metrics.child(self._metrics.policy_reloads, result).inc()
        return ReloadOutcome(result, self.version, (), self.pending_restart)

    def _refused(
        self, source: str, problems: tuple[str, ...], result: ReloadResult = "failed"
    ) -> ReloadOutcome:
        self.last_error = ReloadFailure(self._clock(), source, problems)
        self._metrics.child(self._metrics.policy_reloads, result).inc()
        log.warning(
            "policy reload refused, the policy in force keeps serving",
            extra={"fields": {"version": self.version, "source": source, "result": result}},
        )
        for problem in problems:
            log.warning("policy problem: %s", problem, extra={"fields": {"source": source}})
        return ReloadOutcome(result, self.version, problems, self.pending_restart)

    async def _retire(
        self,
        clients: list[ProviderClient],
        states: list[DeploymentState],
        routing: Callable[[], int],
        wait_s: float,
    ) -> None:
        """Close replaced clients once no request can use them any more (for at most ``wait_s``):
        no attempt on them in flight (``states``: a stream until it ends) and no request planned
        on the replaced policy still being routed (``routing``), since such a request may yet fail
        over to one of them. If the app stops first, its cleanup closes them."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and (routing() > 0 or any(s.stats.in_flight > 0 for s in states)):
            await asyncio.sleep(_DRAIN_POLL_S)
        in_use = {id(c.transport) for c in self.clients.values()}
        for client in clients:
            self._retiring.remove(client)
            if id(client.transport) not in in_use:  # a test's MockTransport may be shared
                await client.close()

    # ----- watching the file

    async def _watch_file(self) -> None:
        """Reload when the file's bytes change. The directory is watched, not the file: editors
        replace files by rename, and a ConfigMap swaps a symlink in that directory; when the
        path is a symlink into another directory (a checkout linked in), that one is watched
        too, and the watch moves with the symlink (``_watch_until_moved``). ``_poll_file`` covers
        what these watches cannot see."""
        assert self.path is not None
        try:
            # A change between start-up and now (or a restarted worker) is a reload; the file as
            # the process read it at start is none (it was counted as one, in every process).
            await self._check(first=True)
        except Exception:  # as below: keep watching
            log.exception("policy reload failed", extra={"fields": {"path": self.path}})
        finally:
            self.first_check_done.set()
        while not self._stop.is_set():
            try:
                await self._watch_until_moved()
            except (OSError, RuntimeError) as exc:
                # A watched directory removed: the kubelet deletes a ConfigMap's previous
                # timestamped directory, the symlink's target, at each update. While the path's
                # own directory is there, watch again where the symlink leads now.
                if isinstance(exc, FileNotFoundError) and os.path.isdir(_directory(self.path)):
                    continue
                self.watching = False  # no such directory, no inotify: say so, keep serving
                self.watch_started.set()  # nobody waits for a watch that will never be
                log.warning(
                    "cannot watch the policy file; reload with SIGHUP or POST /admin/policy/reload",
                    extra={"fields": {"path": self.path, "error": repr(exc)}},
                )
                return

    async def _watch_until_moved(self) -> None:
        """Watch the path's directory and its symlink target's; return when the target is in
        another directory than when the watch began (a check is made then: a change may have
        come between the two watches)."""
        assert self.path is not None
        real = os.path.realpath(self.path)
        directories = list(dict.fromkeys(_directory(p) for p in (self.path, real)))
        directories = [d for d in directories if os.path.isdir(d)] or directories
        loop = asyncio.get_running_loop()
        try:
            async for _ in watchfiles.awatch(
                *directories,
                watch_filter=PolicyFileEvents(self.path, real),
                debounce=_DEBOUNCE_MS,
                recursive=False,
                stop_event=_StopTellingStart(
                    self._stop, lambda: loop.call_soon_threadsafe(self.watch_started.set)
                ),
            ):
                try:
                    await self._check()
                except Exception:  # one change that could not be read or applied: keep watching
                    log.exception("policy reload failed", extra={"fields": {"path": self.path}})
                if _directory(os.path.realpath(self.path)) != _directory(real):
                    return
        finally:
            if not self._stop.is_set():
                try:
                    await self._check()
                except Exception:
                    log.exception("policy reload failed", extra={"fields": {"path": self.path}})

    async def _poll_file(self) -> None:
        """Every ``POLL_S``: a ``stat`` of the path (through its symlinks), and when that changed
        (another file, size or modification time) one read, and a check (``_check``) when the
        bytes differ from those last applied or refused."""
        assert self.path is not None
        polled: str | None = None  # a file gone (or unreadable) is reported once, not every poll
        stamp: tuple[int, int, int, int] | None = None
        while not self._stop.is_set():
            # A plain sleep (one timer; the cleanup cancels the task): a timeout around an
            # event's wait cost callgrind's runs a few thousand instructions a request.
            await asyncio.sleep(POLL_S)
            try:
                st = os.stat(self.path)
                now = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                now = None
            if now == stamp:
                continue
            stamp = now
            digest = hashlib.sha256(await self._read_or_empty()).hexdigest()
            seen, polled = polled, digest
            if digest not in (self._file_digest, seen) and not self._lock.locked():
                try:
                    await self._check()
                except Exception:  # as the watcher: keep polling
                    log.exception("policy reload failed", extra={"fields": {"path": self.path}})

    async def _check(self, *, first: bool = False) -> None:
        assert self.path is not None
        data = await self._read_settled()
        if hashlib.sha256(data).hexdigest() != self._file_digest:
            # Apply the bytes just read (one read per change); a file that was gone is read again
            # so that the reload names the problem if it stays gone.
            await self.reload("file", data or None, first=first)

    async def _read_settled(self) -> bytes:
        """The file's bytes once two reads ``_SETTLE_S`` apart agree, and the file's identity
        (inode, size, modification time) with them, for at most ``_SETTLE_ROUNDS`` rounds: an
        editor writing in place, slowly, could otherwise have a valid first half applied, and
        requests to the groups it has not written yet refused meanwhile. The same bytes from two
        saves (a burst of saves, the same invalid text every third) passed for a settled file on
        bytes alone, and were refused in the middle of a burst that ended valid."""
        assert self.path is not None
        data = await self._read_stamped()
        for _ in range(_SETTLE_ROUNDS):
            await asyncio.sleep(_SETTLE_S)
            again = await self._read_stamped()
            if again == data:
                break
            data = again
        return data[1]

    async def _read_stamped(self) -> tuple[tuple[int, int, int] | None, bytes]:
        """The file's identity, taken before its bytes are read (a save between the two shows in
        the next identity), and the bytes."""
        assert self.path is not None
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        return stamp, await self._read_or_empty()

    async def _read_or_empty(self) -> bytes:
        assert self.path is not None
        try:
            return await asyncio.to_thread(_read, self.path)
        except PolicyError:
            return b""  # gone for a moment (a rename in progress): reload says so if it stays


class _StopTellingStart(asyncio.Event):
    """The stop event given to ``watchfiles.awatch`` (``stop``, which it only reads and, when
    cancelled, sets), and which calls ``on_start`` the first time watchfiles reads it. watchfiles'
    ``RustNotify`` adds its inotify watches when it is created and keeps every change from then on
    until ``watch()`` returns it; ``watch()`` (in a worker thread) asks ``is_set()`` at each 50 ms
    step of its wait. So the first question means the watches are in place and the wait is on:
    an edit after it is seen. (The first check's ``first_check_done`` came before ``awatch`` had
    created anything: a test editing the file right after it passed by luck.) ``on_start`` runs
    in watchfiles' thread."""

    def __init__(self, stop: asyncio.Event, on_start: Callable[[], object]) -> None:
        super().__init__()
        self._stop = stop
        self._on_start: Callable[[], object] | None = on_start

    def is_set(self) -> bool:
        if self._on_start is not None:
            on_start, self._on_start = self._on_start, None
            on_start()
        return self._stop.is_set()

    def set(self) -> None:
        self._stop.set()

    def clear(self) -> None:
        self._stop.clear()

    async def wait(self) -> Literal[True]:
        return await self._stop.wait()


class PolicyFileEvents:
    """watchfiles' filter for the policy's directory: only events on the policy file itself (an
    edit in place, or an editor's rename over it) and on the entries a mounted ConfigMap swaps
    (``..data``, ``..<timestamp>``) wake the watcher. Anything else in the directory, above all
    the gateway's own log file when ``serve > gateway.log`` runs next to its policy, is ignored:
    otherwise each log line would be a change, each change a check and a log line, forever."""

    __slots__ = ("_names",)

    def __init__(self, path: str, target: str | None = None) -> None:
        # The path's name, and its symlink target's (watched in the target's directory).
        self._names = frozenset(os.path.basename(p) for p in (path, target or path))

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        name = os.path.basename(path)
        return name in self._names or name.startswith("..")


def _directory(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _read(path: str) -> bytes:
    return read_policy_file(path, path)  # as start-up reads it: a fifo refused, never waited on


def _parse(data: bytes, path: str) -> Policy:
    return parse_policy_bytes(data, path)  # exactly what ``policy check`` runs


def _regular_file(path: str) -> bool:
    """Whether ``path`` is a regular file (through symlinks); True when it cannot be looked at
    now (gone, unreadable: the watcher reports that as it happens)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True
