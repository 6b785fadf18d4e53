"""Retention and pruning: what ages out of the memory, by the policy's rules.

Per namespace (``memory.namespaces``): archive after ``archive_after_days`` (archived memories
are not searched), delete after ``retention_days``, delete below ``confidence_threshold``. Then
the seed plan's pruning rule for every namespace: not accessed for ``pruning.idle_days`` (never
accessed counts from creation), importance below ``min_importance`` and fewer than
``min_access_count`` accesses. High-importance or often-used memories stay whatever their age.
Run by a background task every ``pruning.interval_s`` and by ``sophia-gateway memory prune``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.memory.records import PruneRule
from gateway.memory.service import MemoryService

log = logging.getLogger("gateway.memory")


@dataclass(slots=True)
class NamespaceReport:
    archived: int = 0
    expired: list[str] = field(default_factory=list)  # past retention_days
    low_confidence: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)  # the seed's idle + low-value rule

    @property
    def deleted(self) -> int:
        return len(self.expired) + len(self.low_confidence) + len(self.pruned)


@dataclass(slots=True)
class LifecycleReport:
    dry_run: bool
    namespaces: dict[str, NamespaceReport] = field(default_factory=dict)

    @property
    def deleted(self) -> int:
        return sum(r.deleted for r in self.namespaces.values())

    def lines(self) -> list[str]:
        verb = "would" if self.dry_run else "did"
        out = []
        for name, r in sorted(self.namespaces.items()):
            out.append(
                f"{name}: {verb} archive {r.archived}, delete {len(r.expired)} past retention, "
                f"{len(r.low_confidence)} below confidence, {len(r.pruned)} idle and low-value"
            )
        out.append(f"total: {verb} delete {self.deleted}")
        return out


async def apply_lifecycle(
    service: MemoryService, *, dry_run: bool, now: datetime | None = None
) -> LifecycleReport:
    """Apply retention and pruning to every namespace; with ``dry_run`` only report."""
    config = service.config
    store = service.store
    now = now or datetime.now(UTC)
    report = LifecycleReport(dry_run)
    namespaces = sorted(set(await store.namespaces()) | set(config.namespaces))
    rule = PruneRule(config.pruning.idle_days, config.pruning.min_importance, config.pruning.min_access_count)
    with service.writing():  # a save meanwhile does not claim these store changes
        for namespace in namespaces:
            r = report.namespaces[namespace] = NamespaceReport()
            retention = config.namespaces.get(namespace)
            if retention is not None:
                if retention.archive_after_days is not None:
                    cutoff = now - timedelta(days=retention.archive_after_days)
                    r.archived = await store.archive_older_than(namespace, cutoff, dry_run=dry_run)
                    if r.archived and not dry_run:
                        service.forget_cached_searches([namespace])  # cached searches may hold them
                if retention.retention_days is not None:
                    cutoff = now - timedelta(days=retention.retention_days)
                    r.expired = await store.delete_older_than(namespace, cutoff, dry_run=dry_run)
                if retention.confidence_threshold is not None:
                    r.low_confidence = await store.delete_below_confidence(
                        namespace, retention.confidence_threshold, dry_run=dry_run
                    )
            if config.pruning.enabled:
                done = set(r.expired) | set(r.low_confidence)
                r.pruned = [i for i in await store.prune_candidates(namespace, rule, now) if i not in done]
                if r.pruned and not dry_run:
                    await store.delete(r.pruned)
            if not dry_run:
                service.forget([(namespace, i) for i in (*r.expired, *r.low_confidence, *r.pruned)])
    if not dry_run:
        await service.save_index()
    return report


async def lifecycle_loop(
    service: MemoryService, interval_s: float, clock: Callable[[], datetime] | None = None
) -> None:
    """Apply the lifecycle every ``interval_s`` until cancelled (the app's background task)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            report = await apply_lifecycle(service, dry_run=False, now=clock() if clock else None)
        except Exception:  # a failing store must not end the loop; the next round retries
            log.warning("memory lifecycle round failed", exc_info=True)
            continue
        if report.deleted:
            log.info("memory lifecycle", extra={"fields": {"deleted": report.deleted}})
