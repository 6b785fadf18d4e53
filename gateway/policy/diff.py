"""What changes between two policies, section by section (``sophia-gateway policy diff``).

The comparison is generic: each part is compared through its ``model_dump()``, field by field,
so a field added to the policy models later (a deployment's ``rollout``, a group's ``shadow``)
shows up here without a change to this module. Only the parts whose entries have an identity
are matched by it rather than by position: model groups and providers by name, cache categories
by name, and a group's deployments by provider and upstream model (what hot reload also uses to
keep a deployment's live figures), so a renamed upstream model is one deployment removed and
another added.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import orjson
from pydantic import BaseModel

from gateway.policy.model import Deployment, ModelGroup, Policy

ChangeKind = Literal["added", "removed", "changed"]


@dataclass(frozen=True, slots=True)
class Change:
    """One value that differs, at ``path`` (``price.input_per_mtok``, ``rules[0].use``)."""

    path: str
    kind: ChangeKind
    before: object = None  # None when added
    after: object = None  # None when removed

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "kind": self.kind, "before": self.before, "after": self.after}


@dataclass(frozen=True, slots=True)
class Entry:
    """A named entry (provider, cache category) added, removed or changed. ``settings`` holds
    an added or removed entry's settings that differ from the defaults."""

    name: str
    status: ChangeKind
    changes: tuple[Change, ...] = ()
    settings: dict[str, object] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "changes": [c.as_json() for c in self.changes],
            "settings": self.settings,
        }


@dataclass(frozen=True, slots=True)
class GroupDiff:
    """One model group added, removed or changed. Deployments are named ``provider/model``;
    a change to a deployment that stays has the path ``deployments[provider/model].field``."""

    name: str
    status: ChangeKind
    deployments_added: dict[str, dict[str, object]]  # name -> its settings that are not defaults
    deployments_removed: dict[str, dict[str, object]]
    changes: tuple[Change, ...]
    settings: dict[str, object] = field(default_factory=dict)  # an added or removed group's

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "deployments_added": self.deployments_added,
            "deployments_removed": self.deployments_removed,
            "changes": [c.as_json() for c in self.changes],
            "settings": self.settings,
        }


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    """Everything that differs between two policies; ``settings`` holds the rest of the file
    (weights, routing, retry, breaker, cache.rules, memory, auth, ...) by key path."""

    groups: tuple[GroupDiff, ...]
    providers: tuple[Entry, ...]
    cache_categories: tuple[Entry, ...]
    settings: tuple[Change, ...]

    @property
    def empty(self) -> bool:
        return not (self.groups or self.providers or self.cache_categories or self.settings)

    def as_json(self) -> dict[str, object]:
        return {
            "groups": [g.as_json() for g in self.groups],
            "providers": [p.as_json() for p in self.providers],
            "cache_categories": [c.as_json() for c in self.cache_categories],
            "settings": [c.as_json() for c in self.settings],
        }


def diff_policies(old: Policy, new: Policy) -> PolicyDiff:
    """What changes from ``old`` to ``new``, in ``old``'s order then ``new``'s additions."""
    return PolicyDiff(
        groups=tuple(
            diff
            for name in _names(old.models, new.models)
            if (diff := _group_diff(name, old.models.get(name), new.models.get(name))) is not None
        ),
        providers=tuple(_hide_header_values(e) for e in _entries(old.providers, new.providers)),
        cache_categories=tuple(_entries(old.cache.categories, new.cache.categories)),
        settings=tuple(changes(_rest(old), _rest(new))),
    )


def _rest(policy: Policy) -> dict[str, object]:
    """The policy but for the parts matched by name (groups, providers, cache categories)."""
    dumped = policy.model_dump(mode="json", exclude={"models", "providers"})
    del dumped["cache"]["categories"]
    return dumped


def changes(before: object, after: object, path: str = "") -> list[Change]:
    """The differences between two ``model_dump(mode="json")`` values: mappings key by key,
    lists of mappings of the same length item by item, anything else as one value."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[Change] = []
        for key in _names(before, after):
            sub = f"{path}.{key}" if path else str(key)
            if key not in after:
                if before[key] is not None:  # a variant's unset parameter is no change
                    found.append(Change(sub, "removed", before[key], None))
            elif key not in before:
                if after[key] is not None:
                    found.append(Change(sub, "added", None, after[key]))
            else:
                found += changes(before[key], after[key], sub)
        return found
    if isinstance(before, list) and isinstance(after, list) and _has_mappings(before, after):
        # Item by item (rules[0].use); items past the shorter list's end are added or removed.
        found = [
            c
            for i, (b, a) in enumerate(zip(before, after, strict=False))
            for c in changes(b, a, f"{path}[{i}]")
        ]
        found += [Change(f"{path}[{i}]", "removed", b, None) for i, b in enumerate(before) if i >= len(after)]
        found += [Change(f"{path}[{i}]", "added", None, a) for i, a in enumerate(after) if i >= len(before)]
        return found
    return [] if before == after else [Change(path, "changed", before, after)]


def _has_mappings(*lists: list[object]) -> bool:
    return any(isinstance(item, dict) for items in lists for item in items)


def deployment_names(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """``provider/model`` for each (provider, upstream model); a pair listed twice in one group
    gets ``#2``, ``#3``... so every name is unique."""
    seen: dict[str, int] = {}
    out = []
    for provider, model in pairs:
        name = f"{provider}/{model}"
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def group_deployments(group: ModelGroup) -> dict[str, Deployment]:
    """A group's deployments by ``deployment_names``, in policy order."""
    deps = group.deployments
    return dict(zip(deployment_names((d.provider, d.model) for d in deps), deps, strict=True))


def _group_diff(name: str, old: ModelGroup | None, new: ModelGroup | None) -> GroupDiff | None:
    if old is None or new is None:
        present = new if old is None else old
        assert present is not None
        deps = {n: _settings(d, exclude={"provider", "model"}) for n, d in group_deployments(present).items()}
        return GroupDiff(
            name,
            "added" if old is None else "removed",
            deps if old is None else {},
            deps if new is None else {},
            (),
            _settings(present, exclude={"deployments"}),
        )
    before, after = group_deployments(old), group_deployments(new)
    found = changes(
        old.model_dump(mode="json", exclude={"deployments"}),
        new.model_dump(mode="json", exclude={"deployments"}),
    )
    stay = [n for n in before if n in after]
    if stay != [n for n in after if n in before]:
        found.append(Change("deployments.order", "changed", stay, [n for n in after if n in before]))
    for dep in stay:
        found += changes(
            before[dep].model_dump(mode="json"), after[dep].model_dump(mode="json"), f"deployments[{dep}]"
        )
    added = {n: _settings(d, exclude={"provider", "model"}) for n, d in after.items() if n not in before}
    removed = {n: _settings(d, exclude={"provider", "model"}) for n, d in before.items() if n not in after}
    if not (found or added or removed):
        return None
    return GroupDiff(name, "changed", added, removed, tuple(found))


def _entries(old: Mapping[str, BaseModel], new: Mapping[str, BaseModel]) -> Iterable[Entry]:
    for name in _names(old, new):
        if name not in new:
            yield Entry(name, "removed", settings=_settings(old[name]))
        elif name not in old:
            yield Entry(name, "added", settings=_settings(new[name]))
        else:
            found = changes(old[name].model_dump(mode="json"), new[name].model_dump(mode="json"))
            if found:
                yield Entry(name, "changed", tuple(found))


# A provider's static headers may carry a credential the policy cannot refuse by its name (a proxy's
# own key in front of the provider: Helicone-Auth, Ocp-Apim-Subscription-Key...), and a diff's
# output lands in CI logs and pull requests: it says which header is added, removed or changed,
# never its value.
HIDDEN = "(value hidden)"


def _hide_header_values(entry: Entry) -> Entry:
    def hidden(path: str, value: object) -> object:
        is_header = path == "headers" or path.startswith("headers.")
        return HIDDEN if is_header and value is not None else value

    return Entry(
        entry.name,
        entry.status,
        tuple(
            Change(c.path, c.kind, hidden(c.path, c.before), hidden(c.path, c.after)) for c in entry.changes
        ),
        {path: hidden(path, value) for path, value in entry.settings.items()},
    )


def _settings(model: BaseModel, exclude: set[str] | None = None) -> dict[str, object]:
    """``model``'s settings that differ from the defaults, flattened to key paths; a tagged
    union's tag (``kind``, ``type``) is always kept."""
    dumped = model.model_dump(mode="json", exclude=exclude)
    shown = model.model_dump(mode="json", exclude=exclude, exclude_defaults=True)
    for tag in ("kind", "type"):
        if tag in dumped:
            shown = {tag: dumped[tag], **shown}
    return dict(_flatten(shown))


def _flatten(value: object, path: str = "") -> Iterable[tuple[str, object]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _flatten(item, f"{path}.{key}" if path else str(key))
    elif path:
        yield path, value


def _names(old: Mapping[str, object], new: Mapping[str, object]) -> Sequence[str]:
    return [*old, *(name for name in new if name not in old)]


# ----- the report

ShareTable = Mapping[str, Mapping[str, float]]  # group -> deployment name -> first-choice share
_MOVED = 0.0005  # a share that moves less than this (0.05 points) is shown as unchanged


def share_rows(before: ShareTable, after: ShareTable) -> dict[str, list[dict[str, object]]]:
    """Each group's deployments with their share before and after (None where absent), the
    deployments of ``before`` first."""
    out: dict[str, list[dict[str, object]]] = {}
    for group in _names(before, after):
        old, new = before.get(group, {}), after.get(group, {})
        out[group] = [
            {"deployment": dep, "before": old.get(dep), "after": new.get(dep)} for dep in _names(old, new)
        ]
    return out


def report_json(diff: PolicyDiff, before: ShareTable, after: ShareTable, sources: Mapping[str, str]) -> bytes:
    """The diff as JSON for scripts: ``changed``, the sections of ``PolicyDiff.as_json`` and
    ``shares`` (every group's deployments, share before and after), keys sorted."""
    body: dict[str, object] = {
        **sources,
        "changed": not diff.empty,
        **diff.as_json(),
        "shares": share_rows(before, after),
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def render(diff: PolicyDiff, before: ShareTable, after: ShareTable, header: Sequence[str]) -> str:
    """The diff as text, group by group, each changed group with its share table."""
    if diff.empty:
        return "\n".join([*header, "", "No changes."])
    lines = list(header)
    rows = share_rows(before, after)
    changed = {g.name: g for g in diff.groups}
    for group, shares in rows.items():
        entry = changed.get(group)
        moved = any(_moved(r["before"], r["after"]) for r in shares)
        if entry is None and not moved:
            continue
        status = entry.status if entry is not None else "unchanged, but its shares move"
        lines += ["", f"model group '{group}': {status}"]
        if entry is not None:
            lines += _group_lines(entry)
        lines += _share_lines(shares)
    for title, entries in (("providers", diff.providers), ("cache categories", diff.cache_categories)):
        if entries:
            lines += ["", title]
            lines += [line for e in entries for line in _entry_lines(e)]
    if diff.settings:
        lines += ["", "settings"]
        lines += [_change_line(c) for c in diff.settings]
    return "\n".join(lines)


def _group_lines(entry: GroupDiff) -> list[str]:
    lines = [f"  {_mark(entry.status)} {k}: {_show(v)}" for k, v in entry.settings.items()]
    for mark, deps in (("+", entry.deployments_added), ("-", entry.deployments_removed)):
        for name, settings in deps.items():
            shown = ", ".join(f"{k} {_show(v)}" for k, v in settings.items())
            lines.append(f"  {mark} deployment {name}" + (f" ({shown})" if shown else ""))
    lines += [_change_line(c) for c in entry.changes]
    return lines


def _share_lines(rows: Sequence[Mapping[str, object]]) -> list[str]:
    width = max([len(str(r["deployment"])) for r in rows] + [len("first-choice share")])
    lines = [f"  {'first-choice share':<{width}}  {'before':>7}  {'after':>7}"]
    for r in rows:
        b, a = r["before"], r["after"]
        move = ""
        if isinstance(b, float) and isinstance(a, float) and _moved(b, a):
            move = f"  {(a - b) * 100:+.1f} pts"
        lines.append(f"  {r['deployment']!s:<{width}}  {_percent(b):>7}  {_percent(a):>7}{move}")
    return lines


def _entry_lines(entry: Entry) -> list[str]:
    if entry.status != "changed":
        shown = ", ".join(f"{k} {_show(v)}" for k, v in entry.settings.items())
        return [f"  {_mark(entry.status)} {entry.name}" + (f" ({shown})" if shown else "")]
    return [_change_line(Change(f"{entry.name}.{c.path}", c.kind, c.before, c.after)) for c in entry.changes]


def _change_line(change: Change) -> str:
    if change.kind == "added":
        return f"  + {change.path}: {_show(change.after)}"
    if change.kind == "removed":
        return f"  - {change.path}: {_show(change.before)}"
    return f"  ~ {change.path}: {_show(change.before)} -> {_show(change.after)}"


def _mark(status: ChangeKind) -> str:
    return {"added": "+", "removed": "-", "changed": "~"}[status]


def _moved(before: object, after: object) -> bool:
    if isinstance(before, float) and isinstance(after, float):
        return abs(after - before) >= _MOVED
    return before != after


def _percent(share: object) -> str:
    return f"{share:.1%}" if isinstance(share, float) else "-"


def _show(value: object) -> str:
    """A value as the policy file would spell it: text bare, the rest as compact JSON without
    the keys left unset (null)."""
    if isinstance(value, str):
        return value
    return orjson.dumps(_set_keys(value)).decode()


def _set_keys(value: object) -> object:
    if isinstance(value, dict):
        return {k: _set_keys(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_set_keys(v) for v in value]
    return value
