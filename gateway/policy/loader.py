"""Load a policy file: parse YAML raw, validate into a frozen ``Policy``, explain every problem.

Each problem names the file, the line, the key path and, where we can guess one, a hint:
``routing_policies/default.yaml:14: models.gpt-4o.deployments[1].provider: unknown provider 'azur'
(hint: known providers: openai, local)``.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ValidationError

from gateway.policy.model import Policy, PolicyReferenceError

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong with a policy file."""

    path: str
    line: int | None
    loc: Loc
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        key = f" {format_loc(self.loc)}:" if self.loc else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}:{key} {self.message}{hint}"


class PolicyError(Exception):
    """A policy file could not be loaded; ``problems`` says every reason."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy at ``path``; raise ``PolicyError`` listing every problem."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([PolicyProblem(shown, None, (), f"cannot read file: {exc.strerror}")]) from None
    return parse_policy(text, shown)


def parse_policy(text: str, shown_path: str = "<policy>") -> Policy:
    """Validate policy YAML ``text``; ``shown_path`` is used in messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise PolicyError([PolicyProblem(shown_path, line, (), f"invalid YAML: {reason}")]) from None
    if not isinstance(raw, dict):
        raise PolicyError(
            [PolicyProblem(shown_path, 1, (), "the policy must be a mapping with version, providers, models")]
        )
    references = [
        PolicyProblem(shown_path, _line_of(root, ref.loc), ref.loc, ref.message, ref.hint)
        for ref in _broken_references(raw)
    ]
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(references + _problems(exc, root, shown_path)) from None
    if references:  # pragma: no cover - the model validator finds the same ones
        raise PolicyError(references)
    return policy


def format_loc(loc: Loc) -> str:
    """``("models", "gpt-4o", "deployments", 1)`` -> ``models.gpt-4o.deployments[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problems(exc: ValidationError, root: yaml.Node | None, shown_path: str) -> list[PolicyProblem]:
    problems = []
    for err in exc.errors():
        raw_loc: Loc = tuple(err["loc"])
        loc, at = _resolve(raw_loc)
        message = err["msg"].removeprefix("Value error, ")
        hint = _hint(err, loc, raw_loc)
        ctx = err.get("ctx") or {}
        ref = ctx.get("error")
        if isinstance(ref, PolicyReferenceError):
            if ref.loc[-1] == "provider":
                continue  # reported by _broken_references, even when other fields are wrong too
            problems.append(
                PolicyProblem(shown_path, _line_of(root, ref.loc), ref.loc, ref.message, ref.hint)
            )
            continue
        if err["type"] == "extra_forbidden" and loc:
            message = f"unknown key '{loc[-1]}'"
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # A variant's tag (``kind``, ``type``) is missing or names no variant.
            field = str(ctx.get("discriminator", "")).strip("'")
            loc = (*loc, field)
            message, hint = _tag_problem(field, ctx.get("tag"), _tags(at, field))
        problems.append(PolicyProblem(shown_path, _line_of(root, loc), loc, message, hint))
    return problems


def _tag_problem(field: str, tag: object, known: list[str]) -> tuple[str, str]:
    """Message and hint for a variant tag that is missing (``tag`` None) or unknown."""
    listed = f"known {field}s: {', '.join(known)}"
    if tag is None:
        return "Field required", f"add this key; {listed}"
    close = difflib.get_close_matches(str(tag), known, n=1)
    guess = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown {field} '{tag}'", guess + listed


def _broken_references(raw: dict[Any, Any]) -> list[PolicyReferenceError]:
    """Deployments naming a provider the file does not define (checked on the raw data, so they
    are reported alongside any other problem rather than only once everything else is fixed)."""
    providers = raw.get("providers")
    models = raw.get("models")
    if not isinstance(providers, dict) or not isinstance(models, dict):
        return []
    known = ", ".join(sorted(str(p) for p in providers))
    out = []
    for name, group in models.items():
        deployments = group.get("deployments") if isinstance(group, dict) else None
        for i, dep in enumerate(deployments if isinstance(deployments, list) else []):
            provider = dep.get("provider") if isinstance(dep, dict) else None
            if isinstance(provider, str) and provider not in providers:
                out.append(
                    PolicyReferenceError(
                        ("models", str(name), "deployments", i, "provider"),
                        f"unknown provider '{provider}'",
                        f"known providers: {known}",
                    )
                )
    return out


def _hint(err: Any, loc: Loc, raw_loc: Loc) -> str | None:
    kind = err["type"]
    if kind == "extra_forbidden" and loc:
        key = str(loc[-1])
        allowed = _fields_of(_resolve(raw_loc[:-1])[1])
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            return f"did you mean '{close[0]}'?"
        owners = _other_variants_with(raw_loc[:-1], key)
        if owners:
            return f"'{key}' is a key of {owners} only"
        return f"allowed keys: {', '.join(allowed)}" if allowed else None
    if kind == "missing":
        return "add this key"
    if kind == "literal_error":
        expected = (err.get("ctx") or {}).get("expected")
        return f"expected {expected}" if expected else None
    return None


def _other_variants_with(raw_loc: Loc, key: str) -> str | None:
    """When ``raw_loc`` ends at a tagged union's variant, the other variants that have ``key``
    (``kind anthropic``), so a key used on the wrong variant says where it belongs."""
    if not raw_loc:
        return None
    union = _resolve(raw_loc[:-1])[1]
    found = _variant(union, raw_loc[-1])
    if found is None:
        return None
    field = found[1]
    tags = [
        tag
        for model in _models_in(union)
        if key in model.model_fields
        for tag in _literal_values(model, field)
    ]
    return f"{field} {', '.join(tags)}" if tags else None


def _resolve(loc: Loc) -> tuple[Loc, Any]:
    """``loc`` as the policy file spells it, and the type it leads to (None past the models).

    Pydantic puts the tag of a tagged union's variant in the path (``providers.x.openai.base_url``);
    the file has no such key, so it is dropped (``providers.x.base_url``).
    """
    current: Any = Policy
    out: list[str | int] = []
    for part in loc:
        variant = _variant(current, part)
        if variant is not None:
            current = variant[0]
            continue
        out.append(part)
        current = _step(current, part)
    return tuple(out), current


def _fields_of(tp: Any) -> list[str]:
    """The field names of ``tp`` when it is a policy model, else none."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _models_in(tp: Any) -> list[type[BaseModel]]:
    """The models of a union of models (the variants of a tagged union); empty for anything else."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return []
    return [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]


def _variant(tp: Any, part: str | int) -> tuple[type[BaseModel], str] | None:
    """The variant of tagged union ``tp`` whose tag is ``part``, and the name of its tag field,
    if ``tp`` is one and has it."""
    models = _models_in(tp)
    if len(models) < 2:  # ``Retry | None`` and the like: pydantic adds no tag to their paths
        return None
    for model in models:
        for name in model.model_fields:
            if part in _literal_values(model, name):
                return model, name
    return None


def _tags(tp: Any, field: str) -> list[str]:
    """The tags of tagged union ``tp``, by the name of its tag ``field``."""
    return [tag for model in _models_in(tp) for tag in _literal_values(model, field)]


def _literal_values(model: type[BaseModel], field: str) -> list[str]:
    """The values of ``model``'s ``field`` when it is a ``Literal``, else none."""
    info = model.model_fields.get(field)
    if info is None or typing.get_origin(info.annotation) is not Literal:
        return []
    return [str(value) for value in typing.get_args(info.annotation)]


def _step(tp: Any, part: str | int) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _step(typing.get_args(tp)[0], part)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _step(options[0], part) if options else None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(str(part))
        return field.annotation if field else None
    if origin in (dict, list):
        return typing.get_args(tp)[-1]
    return None


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """1-based line of the deepest node along ``loc`` (a missing key reports its parent)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        node = _child(node, part)
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if str(key.value) == str(part):
                # For an empty value the key itself is the thing to point at.
                found: yaml.Node = value if not isinstance(value, yaml.ScalarNode) or value.value else key
                return found
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        child: yaml.Node = node.value[part]
        return child
    return None


def policy_json_schema() -> dict[str, Any]:
    """JSON Schema of the policy format, for editors (``routing_policies/policy.schema.json``)."""
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Sophia Gateway routing policy"
    return schema
