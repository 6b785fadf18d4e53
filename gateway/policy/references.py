"""Cross-references inside a policy file, checked on the raw YAML data.

Names that must be keys elsewhere in the file: a deployment's provider (a shadow's candidate
too), a rule's group, the embedding models of memory, of the semantic cache and of shadows, cache
categories, a team's model groups. Checked before the
models validate, so every broken reference is reported in one run alongside any other problem:
the model validators (``model.py``) stop at the first one and run only once everything else
is valid; they remain the guard for policies built in code. Messages and hints are the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gateway.policy.model import Cache, PolicyReferenceError
from gateway.quoting import listed, quoted

_DEFAULT_CACHE = Cache()


def broken_references(raw: Mapping[Any, Any]) -> list[PolicyReferenceError]:
    """Every broken cross-reference of the raw policy ``raw``, in file order of the checks."""
    models = _mapping(raw.get("models"))
    return [
        *_deployment_providers(_mapping(raw.get("providers")), models),
        *_rule_targets(models),
        *_embedding_models(raw, models),
        *_cache_categories(raw.get("cache", {})),
        *_team_models(raw, models),
        *_rollouts(models),
    ]


def _mapping(value: object) -> Mapping[Any, Any] | None:
    return value if isinstance(value, Mapping) else None


def _items(value: object) -> Iterator[tuple[int, Mapping[Any, Any]]]:
    """(index, entry) for the mapping entries of a raw list."""
    for i, entry in enumerate(value if isinstance(value, list) else []):
        if isinstance(entry, Mapping):
            yield i, entry


def _known(names: Mapping[Any, Any]) -> str:
    return listed(sorted(str(n) for n in names))


def _deployment_providers(
    providers: Mapping[Any, Any] | None, models: Mapping[Any, Any] | None
) -> Iterator[PolicyReferenceError]:
    if providers is None or models is None:
        return
    for name, group in models.items():
        wanted: list[tuple[tuple[str | int, ...], Mapping[Any, Any]]] = [
            (("models", str(name), "deployments", i, "provider"), dep)
            for i, dep in _items(group.get("deployments") if isinstance(group, Mapping) else None)
        ]
        shadow = _mapping(group.get("shadow")) if isinstance(group, Mapping) else None
        candidate = _mapping(shadow.get("deployment")) if shadow is not None else None
        if candidate is not None:
            wanted.append((("models", str(name), "shadow", "deployment", "provider"), candidate))
        for loc, dep in wanted:
            provider = dep.get("provider")
            if isinstance(provider, str) and provider not in providers:
                yield PolicyReferenceError(
                    loc, f"unknown provider {quoted(provider)}", f"known providers: {_known(providers)}"
                )


def _rule_targets(models: Mapping[Any, Any] | None) -> Iterator[PolicyReferenceError]:
    if models is None:
        return
    for name, group in models.items():
        for i, rule in _items(group.get("rules") if isinstance(group, Mapping) else None):
            use, loc = rule.get("use"), ("models", str(name), "rules", i, "use")
            if not isinstance(use, str):
                continue
            if use not in models:
                yield PolicyReferenceError(
                    loc, f"unknown model group {quoted(use)}", f"known model groups: {_known(models)}"
                )
            elif use == name:
                yield PolicyReferenceError(
                    loc, "a rule may not point at its own group", "name another group, or drop the rule"
                )
            elif isinstance(models[use], Mapping) and models[use].get("rules"):
                yield PolicyReferenceError(
                    loc,
                    f"group {quoted(use)} has rules of its own",
                    "rules are applied once; point at a group without rules",
                )


def _team_models(raw: Mapping[Any, Any], models: Mapping[Any, Any] | None) -> Iterator[PolicyReferenceError]:
    """A team's ``models`` naming a group the file does not have (``model._team_models_exist``,
    which runs only once everything else validates: an outside probe found it reported only on
    a second run, after the file's other errors were fixed)."""
    auth = _mapping(raw.get("auth"))
    teams = _mapping(auth.get("teams")) if auth is not None else None
    if models is None or teams is None:
        return
    for team_name, team in teams.items():
        wanted = team.get("models") if isinstance(team, Mapping) else None
        for i, model in enumerate(wanted if isinstance(wanted, list) else ()):
            if isinstance(model, str) and model not in models:
                yield PolicyReferenceError(
                    ("auth", "teams", str(team_name), "models", i),
                    f"unknown model group {quoted(model)}",
                    f"known model groups: {_known(models)}",
                )


def _rollouts(models: Mapping[Any, Any] | None) -> Iterator[PolicyReferenceError]:
    """Every group's rollout problems (``model._one_rollout_per_group``, which stops at the first
    and runs only once everything else validates: an outside probe fixed a file one run per
    problem): two rollouts in a group, the group's only deployment rolled out, a candidate the
    group has already, and a candidate another group deploys (its live figures are the
    deployment's, shared by every group using it: the gates counted the other group's traffic,
    and a rollout was promoted with no request of its own group)."""
    if models is None:
        return
    used: dict[tuple[str, str], list[str]] = {}
    for name, group in models.items():
        for _, dep in _items(group.get("deployments") if isinstance(group, Mapping) else None):
            if (pair := _pair(dep)) is not None:
                used.setdefault(pair, []).append(str(name))
    for name, group in models.items():
        deployments = list(_items(group.get("deployments") if isinstance(group, Mapping) else None))
        rolling = [i for i, dep in deployments if dep.get("rollout") is not None]
        if not rolling:
            continue
        first = rolling[0]
        for extra in rolling[1:]:
            yield PolicyReferenceError(
                ("models", str(name), "deployments", extra, "rollout"),
                "a group may roll out one deployment at a time",
                f"deployment {first} is in rollout already; drop one of the rollouts",
            )
        if len(deployments) == 1:
            yield PolicyReferenceError(
                ("models", str(name), "deployments", first, "rollout"),
                "the group's only deployment cannot be rolled out",
                "a rollout shifts traffic from the group's other deployments; add the one it replaces",
            )
            continue
        pair = _pair(dict(deployments)[first])
        if pair is None:  # (the model's own problems say what is wrong with it)
            continue
        same = [i for i, dep in deployments if i != first and _pair(dep) == pair]
        where = f"{pair[0]}/{pair[1]}"
        if same:
            yield PolicyReferenceError(
                ("models", str(name), "deployments", first, "rollout"),
                f"the rollout's candidate {quoted(where)} is deployment {same[0]} of the group already",
                "a rollout brings in a deployment the group does not have: change the "
                "candidate's provider or model, or drop the duplicate entry",
            )
        others = sorted({g for g in used.get(pair, ()) if g != str(name)})
        if others:
            yield PolicyReferenceError(
                ("models", str(name), "deployments", first, "rollout"),
                f"the rollout's candidate {quoted(where)} is deployed in group {quoted(others[0])} too",
                "a deployment's live figures are shared by every group using it, so the rollout's "
                "gates would count the other group's traffic: roll it out where it is not deployed "
                "yet, or drop it from the other group (a rule can send that group's requests here)",
            )


def _pair(deployment: Mapping[Any, Any]) -> tuple[str, str] | None:
    provider, model = deployment.get("provider"), deployment.get("model")
    return (provider, model) if isinstance(provider, str) and isinstance(model, str) else None


def _embedding_models(
    raw: Mapping[Any, Any], models: Mapping[Any, Any] | None
) -> Iterator[PolicyReferenceError]:
    if models is None:
        return
    wanted: list[tuple[tuple[str | int, ...], object]] = []
    memory = _mapping(raw.get("memory"))
    if memory is not None:
        wanted.append((("memory", "embedding_model"), memory.get("embedding_model")))
    cache = _mapping(raw.get("cache"))
    categories = _mapping(cache.get("categories")) if cache is not None else None
    for cname, category in (categories or {}).items():
        semantic = _mapping(category.get("semantic")) if isinstance(category, Mapping) else None
        if semantic is not None:
            at = ("cache", "categories", str(cname), "semantic", "embedding_model")
            wanted.append((at, semantic.get("embedding_model")))
    for name, group in models.items():
        shadow = _mapping(group.get("shadow")) if isinstance(group, Mapping) else None
        if shadow is not None:
            wanted.append((("models", str(name), "shadow", "embedding_model"), shadow.get("embedding_model")))
    for loc, model in wanted:
        if isinstance(model, str) and model not in models:
            yield PolicyReferenceError(
                loc, f"unknown model group {quoted(model)}", f"known model groups: {_known(models)}"
            )


def _cache_categories(cache: object) -> Iterator[PolicyReferenceError]:
    if not isinstance(cache, Mapping):
        return
    categories = cache.get("categories", _DEFAULT_CACHE.categories)
    if not isinstance(categories, Mapping):
        return
    known = f"known categories: {_known(categories)}"
    default = cache.get("default_category", _DEFAULT_CACHE.default_category)
    if isinstance(default, str) and default not in categories:
        yield PolicyReferenceError(
            ("cache", "default_category"), f"unknown cache category {quoted(default)}", known
        )
    for i, rule in _items(cache.get("rules")):
        category = rule.get("category")
        if isinstance(category, str) and category not in categories:
            yield PolicyReferenceError(
                ("cache", "rules", i, "category"), f"unknown cache category {quoted(category)}", known
            )
