"""Load a policy file: parse YAML raw, validate into a frozen ``Policy``, explain every problem.

Each problem names the file, the line, the key path and, where we can guess one, a hint:
``routing_policies/default.yaml:14: models.gpt-4o.deployments[1].provider: unknown provider 'azur'
(hint: known providers: openai, local)``. Every problem is reported in one run: duplicate keys
(which YAML would otherwise resolve silently, the last one winning), broken cross-references
(``references.py``) and whatever the models refuse; a key indented too little gets a hint
saying where it belongs.
"""

from __future__ import annotations

import difflib
import gc
import hashlib
import os
import re
import stat
import types
import typing
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ValidationError

from gateway.policy.model import Policy, PolicyReferenceError
from gateway.policy.references import broken_references
from gateway.quoting import bounded, quoted

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
    return load_policy_with_digest(path)[0]


def load_policy_with_digest(path: str | Path) -> tuple[Policy, str]:
    """``load_policy``, and the SHA-256 (hex) of the bytes it parsed: given to the app
    (``build_app(policy_digest=...)``), the file watcher's first look finds an unchanged file
    without parsing it again."""
    shown = str(path)
    try:
        # A plain read: a pipe is fine at start-up (``serve --policy <(envsubst < policy.yaml)``).
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError([PolicyProblem(shown, None, (), f"cannot read file: {exc.strerror}")]) from None
    return parse_policy_bytes(data, shown), hashlib.sha256(data).hexdigest()


_NOT_REGULAR = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket"}


def read_policy_file(path: str | Path, shown_path: str) -> bytes:
    """The bytes of the regular file at ``path``, as a reload reads it; ``PolicyError`` when it
    cannot be read or is not a regular file. Opened without blocking and refused unless regular: a
    named pipe put in its place had the reload's ``read`` wait for a writer forever, and with it
    the watcher, the poll and every reload after (``POST /admin/policy/reload`` never answered,
    the process could not exit). Start-up reads as before (``load_policy_with_digest``): a pipe
    given on the command line is read once, as meant."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise PolicyError(
            [PolicyProblem(shown_path, None, (), f"cannot read file: {exc.strerror}")]
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _NOT_REGULAR.get(stat.S_IFMT(mode), "a device or special file")
            problem = f"cannot read file: not a regular file ({kind})"
            raise PolicyError([PolicyProblem(shown_path, None, (), problem)])
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise PolicyError(
            [PolicyProblem(shown_path, None, (), f"cannot read file: {exc.strerror}")]
        ) from None
    finally:
        os.close(fd)


def parse_policy_bytes(data: bytes, shown_path: str = "<policy>") -> Policy:
    """``parse_policy`` of a file's bytes: text that is not UTF-8 (a binary file, or UTF-16 as
    PowerShell's ``>`` writes) is one problem saying so, never a traceback."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        message = f"not UTF-8 text: {exc.reason} at byte {exc.start}"
        hint = "the file is UTF-16: save it as UTF-8" if utf16 else "save the file as UTF-8 text"
        raise PolicyError([PolicyProblem(shown_path, None, (), message, hint)]) from None
    return parse_policy(text, shown_path)


def parse_policy(text: str, shown_path: str = "<policy>") -> Policy:
    """Validate policy YAML ``text``; ``shown_path`` is used in messages."""
    # Parsing makes a million objects (nodes, marks, values), none in a reference cycle, and the
    # collector's full passes over them, again and again as they grow, took two thirds of the
    # time for a big policy (benchmarks/policy_check.py). Paused meanwhile, as it was found.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _parse_policy(text, shown_path)
    except RecursionError:  # YAML nested thousands deep: the parser's recursion gives out
        raise PolicyError(
            [PolicyProblem(shown_path, None, (), "lists or mappings nested too deeply to be a policy")]
        ) from None
    finally:
        if collecting:
            gc.enable()


def _parse_policy(text: str, shown_path: str) -> Policy:
    try:
        root = _compose(text)
        too_many = _alias_expansion(root, text, shown_path)
        if too_many is not None:
            raise PolicyError([too_many])
        raw = _NamesAsWritten().construct(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        if "maximum nesting depth" in reason:  # libyaml's bound (1,000 levels): as RecursionError
            raise RecursionError from None
        raise PolicyError([PolicyProblem(shown_path, line, (), f"invalid YAML: {reason}")]) from None
    if not isinstance(raw, dict):
        raise PolicyError(
            [PolicyProblem(shown_path, 1, (), "the policy must be a mapping with version, providers, models")]
        )
    found = _duplicate_keys(root, shown_path)
    references = broken_references(raw)
    found += [
        PolicyProblem(shown_path, _line_of(root, ref.loc), ref.loc, ref.message, ref.hint)
        for ref in references
    ]
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        found += _problems(exc, root, shown_path, {ref.loc for ref in references})
    if found:
        raise PolicyError(found)
    return policy


# Values that aliases may add to a policy beyond those written: a policy's legitimate aliases (a
# price block, a team's model list) add a few hundred. YAML shares an alias's value rather than
# copying it, but validation walks every use: aliases of aliases of lists (groups x smoke prompts x
# messages) made a 2.5 KB file a million values, 21 s and 1 GB to check, and more at each level.
MAX_ALIAS_EXPANSION = 100_000


def _alias_expansion(root: yaml.Node | None, text: str, shown_path: str) -> PolicyProblem | None:
    """A problem when aliases make the document more than ``MAX_ALIAS_EXPANSION`` values larger
    than written (counted on the composed nodes, each shared node once, in linear time), naming
    the line of the value whose repetition adds the most."""
    if root is None or "&" not in text:
        return None  # no anchor, so no alias: nothing repeated (a big policy skips the walk)
    size: dict[int, int] = {}  # id(node) -> values in it, aliases expanded
    uses: dict[int, int] = {}  # id(node) -> how many places hold it
    nodes: dict[int, yaml.Node] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()  # on the path being walked: an alias to one of them is a cycle
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _node_children(node)
        if children_done:
            open_.discard(key)
            size[key] = 1 + sum(size.get(id(c), 1) for c in children)
            for child in children:
                uses[id(child)] = uses.get(id(child), 0) + 1
            continue
        if key in size or key in open_:
            continue
        open_.add(key)
        nodes[key] = node
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size and id(c) not in open_)
    added = size[id(root)] - len(size)
    if added <= MAX_ALIAS_EXPANSION:
        return None
    worst = max((k for k in uses if uses[k] > 1), key=lambda k: (uses[k] - 1) * size[k])
    line = nodes[worst].start_mark.line + 1
    return PolicyProblem(
        shown_path,
        line,
        (),
        f"aliases repeat values to {size[id(root)]:,} in all, {added:,} more than written (at most "
        f"{MAX_ALIAS_EXPANSION:,}); the value on this line is used {uses[worst]:,} times",
        "write the repeated parts out, or alias them less",
    )


def _node_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


# libyaml's parser when PyYAML was built with it (the wheels are), else PyYAML's own. The policy
# is parsed once, into nodes (kept for line numbers and hints), then constructed from them: parsed
# twice with the pure-Python parser, a policy of 20,000 groups took 33 s and 420 MB to check
# (benchmarks/policy_check.py).
_Loader: type[yaml.SafeLoader | yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(text: str) -> yaml.Node | None:
    """The document's nodes (None for an empty one), as ``yaml.compose`` with ``_Loader``."""
    loader = _Loader(text)
    try:
        node: yaml.Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


class _NamesAsWritten(yaml.constructor.SafeConstructor):
    """``SafeLoader``'s constructor (no Python objects) reading every mapping key as the text written. A policy's keys are all
    names (settings, providers, model groups, teams, categories), but YAML 1.1 reads ``on``,
    ``yes``, ``no``, ``3.5``, ``null`` and ``2024-01-01`` as a boolean, a number, null or a date:
    a provider named ``on`` was "unknown provider 'on' (hint: known providers: True)", and a group
    named ``yes`` was ``models[1].[key]: Input should be a valid string``. Editors' YAML 1.2 reads
    most of them as text too. (Values keep their types: ``provider: on`` is still not text.)"""

    def __init__(self) -> None:
        super().__init__()
        self._merged: list[tuple[yaml.MappingNode, list[tuple[yaml.Node, yaml.Node]]]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                key.tag = _STR_TAG
        return super().construct_mapping(node, deep)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # PyYAML writes a merge (``<<: *base``) into the node itself; the nodes outlive the
        # construction (lines, duplicate keys, hints), so each is given back as written.
        if any(key.tag == _MERGE_TAG for key, _ in node.value):
            self._merged.append((node, list(node.value)))
        super().flatten_mapping(node)

    def construct(self, root: yaml.Node) -> Any:
        """The document's data; ``root`` as it was composed afterwards."""
        try:
            return self.construct_document(root)
        finally:
            for node, value in reversed(self._merged):
                node.value = value


_LOC_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def format_loc(loc: Loc) -> str:
    """``("models", "gpt-4o", "deployments", 1)`` -> ``models.gpt-4o.deployments[1]``; a key
    beyond ``quoting.QUOTE_MAX_CHARS`` characters is cut (``bounded``), and a control character
    in one is written escaped (``\\x1b``): never sent raw to the terminal showing the problem."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = _LOC_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", bounded(part))
            out += f".{text}" if out else text
    return out


def _problems(
    exc: ValidationError, root: yaml.Node | None, shown_path: str, reported: set[Loc]
) -> list[PolicyProblem]:
    """The model's complaints as problems; references already in ``reported`` are left out."""
    problems = []
    for err in exc.errors():
        raw_loc: Loc = tuple(err["loc"])
        loc, at = _resolve(raw_loc)
        message = err["msg"].removeprefix("Value error, ")
        hint = (
            _indentation_hint(root, loc, err["type"])
            or _unquoted_hint(root, loc, err["type"])
            or _hint(err, loc, raw_loc)
        )
        ctx = err.get("ctx") or {}
        ref = ctx.get("error")
        if isinstance(ref, PolicyReferenceError):
            if ref.loc in reported:
                continue  # found on the raw data, with every other broken reference
            problems.append(
                PolicyProblem(shown_path, _line_of(root, ref.loc), ref.loc, ref.message, ref.hint)
            )
            continue
        if err["type"] == "extra_forbidden" and loc:
            message = f"unknown key {quoted(loc[-1])}"
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # A variant's tag (``kind``, ``type``) is missing or names no variant.
            field = str(ctx.get("discriminator", "")).strip("'")
            loc = (*loc, field)
            message, hint = _tag_problem(field, ctx.get("tag"), _tags(at, field))
        problems.append(PolicyProblem(shown_path, _line_of(root, loc), loc, message, hint))
    return problems


def _tag_problem(field: str, tag: object, known: list[str]) -> tuple[str, str]:
    """Message and hint for a variant tag that is missing (``tag`` None) or unknown."""
    names = f"known {field}s: {', '.join(known)}"
    if tag is None:
        return "Field required", f"add this key; {names}"
    close = difflib.get_close_matches(str(tag), known, n=1)
    guess = f"did you mean {quoted(close[0])}? " if close else ""
    return f"unknown {field} {quoted(tag)}", guess + names


def _hint(err: Any, loc: Loc, raw_loc: Loc) -> str | None:
    kind = err["type"]
    if kind == "extra_forbidden" and loc:
        key = str(loc[-1])
        allowed = _fields_of(_resolve(raw_loc[:-1])[1])
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            return f"did you mean {quoted(close[0])}?"
        owners = _other_variants_with(raw_loc[:-1], key)
        if owners:
            return f"{quoted(key)} is a key of {owners} only"
        return f"allowed keys: {', '.join(allowed)}" if allowed else None
    if kind == "missing":
        return "add this key"
    if kind == "literal_error":
        expected = (err.get("ctx") or {}).get("expected")
        return f"expected {expected}" if expected else None
    return None


# What YAML 1.1 makes of an unquoted word or number, by its tag.
_READ_AS = {
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
}


def _unquoted_hint(root: yaml.Node | None, loc: Loc, kind: str) -> str | None:
    """For text that YAML read as something else (``provider: on``, ``model: 2024-01-01``,
    ``use: yes``): which, and to quote it. Keys are read as written, so a provider named ``on``
    is fine, but a value naming it is true unless quoted."""
    if kind != "string_type":
        return None
    node = _node_at(root, loc)
    # A plain scalar's style is None (PyYAML's parser) or '' (libyaml's); quoted ones have a quote.
    if not isinstance(node, yaml.ScalarNode) or node.style or node.tag not in _READ_AS:
        return None
    return f"YAML reads {bounded(node.value)} as {_READ_AS[node.tag]}: quote it, {quoted(node.value)}"


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
    if origin is tuple:  # ``tuple[X, ...]`` (a list that keeps its model hashable: price tiers)
        return typing.get_args(tp)[0]
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


def _first_keys(node: yaml.MappingNode) -> dict[str, int]:
    """Each key of ``node`` and the place of its first entry, made once per mapping: a linear scan
    per problem made a file with 40,000 problems take a minute to report (an outside probe)."""
    index = _KEY_INDEX.get(node)
    if index is None:
        index = _KEY_INDEX[node] = {}
        for i, (key, _) in enumerate(node.value):
            index.setdefault(str(key.value), i)
    return index


_KEY_INDEX: weakref.WeakKeyDictionary[yaml.MappingNode, dict[str, int]] = weakref.WeakKeyDictionary()


def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        at = _first_keys(node).get(str(part))
        if at is not None:
            key, value = node.value[at]
            # For an empty value the key itself is the thing to point at.
            found: yaml.Node = value if not isinstance(value, yaml.ScalarNode) or value.value else key
            return found
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        child: yaml.Node = node.value[part]
        return child
    return None


def _duplicate_keys(root: yaml.Node | None, shown_path: str) -> list[PolicyProblem]:
    """Keys given twice in one mapping (YAML keeps the last silently), with both lines."""
    problems: list[PolicyProblem] = []
    seen: set[int] = set()  # an alias makes a node reachable twice

    def walk(node: yaml.Node | None, loc: Loc) -> None:
        if node is None or id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))
        if not isinstance(node, yaml.MappingNode):
            return
        first_line: dict[str, int] = {}  # keys are read as written (``_NamesAsWritten``): 1 is "1"
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                continue
            line, name = key.start_mark.line + 1, str(key.value)
            if name in first_line:
                problems.append(
                    PolicyProblem(
                        shown_path,
                        line,
                        (*loc, name),
                        f"duplicate key {quoted(name)} (lines {first_line[name]} and {line}); "
                        "YAML would keep only the last",
                        "keep one of them",
                    )
                )
            else:
                first_line[name] = line
            walk(value, (*loc, name))

    walk(root, ())
    return problems


# Errors where the value at a key is not the mapping (or not the key) the model expected: what a
# key indented too little produces, e.g. a provider's base_url read as a provider of its own.
_SHAPE_ERRORS = frozenset(
    {"extra_forbidden", "dict_type", "model_type", "model_attributes_type", "union_tag_not_found"}
)


def _indentation_hint(root: yaml.Node | None, loc: Loc, kind: str) -> str | None:
    """A hint when the key at ``loc`` (or, for a missing key, its sibling below) looks indented
    too little: it is a key of the block-style entry just above it, not of this level."""
    if kind == "missing" and len(loc) >= 2:
        return _missing_key_below(root, loc)
    if kind not in _SHAPE_ERRORS or not loc or not isinstance(loc[-1], str):
        return None
    parent = _node_at(root, loc[:-1])
    if not isinstance(parent, yaml.MappingNode):
        return None
    above: tuple[yaml.Node, yaml.Node] | None = None
    for key, value in parent.value:
        if str(key.value) == loc[-1]:
            break
        above = (key, value)
    else:
        return None
    if above is None:
        return None
    above_loc: Loc = (*loc[:-1], str(above[0].value))
    node, tp = above[1], _resolve(above_loc)[1]
    if isinstance(node, yaml.SequenceNode) and node.value:  # the last item of a list above
        above_loc, node, tp = (*above_loc, len(node.value) - 1), node.value[-1], _step(tp, 0)
    if not isinstance(node, yaml.MappingNode) or node.flow_style or not node.value:
        return None
    if loc[-1] not in {f for model in (_models_in(tp) or [tp]) for f in _fields_of(model)}:
        return None
    first = node.value[0][0]
    return (
        f"indented too little? {quoted(loc[-1])} is a key of {format_loc(above_loc)} above: indent it "
        f"like {quoted(first.value)} (line {first.start_mark.line + 1}, column {first.start_mark.column + 1})"
    )


def _missing_key_below(root: yaml.Node | None, loc: Loc) -> str | None:
    """For ``a.b.key: Field required``: a ``key`` after ``b`` at ``b``'s own level (or, for an
    item of a list ``b[i]``, at the level of the list's key)."""
    owner, key = loc[:-1], loc[-1]
    level = owner
    while level and isinstance(level[-1], int):
        level = level[:-1]
    parent = _node_at(root, level[:-1])
    if not level or not isinstance(parent, yaml.MappingNode):
        return None
    at = _first_keys(parent).get(str(level[-1]))
    if at is None:
        return None
    for k, _ in parent.value[at + 1 :]:
        if str(k.value) == key:
            return (
                f"indented too little? {quoted(key)} on line {k.start_mark.line + 1} is at the level of "
                f"{quoted(level[-1])}; indent it under {format_loc(owner)}"
            )
    return None


def _node_at(root: yaml.Node | None, loc: Loc) -> yaml.Node | None:
    """The value node at ``loc``, None when the path leaves the document."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            at = _first_keys(node).get(str(part))
            node = None if at is None else node.value[at][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return None
    return node


def policy_json_schema() -> dict[str, Any]:
    """JSON Schema of the policy format, for editors (``routing_policies/policy.schema.json``)."""
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Sophia Gateway routing policy"
    return schema
