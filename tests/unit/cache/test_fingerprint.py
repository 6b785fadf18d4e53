"""Cache keys: canonical, parameter-sensitive, tenant-scoped."""

from __future__ import annotations

import hashlib

import orjson

from gateway.cache import fingerprint

BODY = {
    "model": "chat",
    "messages": [{"role": "user", "content": "What is our Q3 revenue?"}],
    "temperature": 0,
}


def key(body: dict[str, object], tenant: str = "t1") -> str:
    return fingerprint.request_key("/v1/chat/completions", tenant, body)


def test_key_order_and_whitespace_do_not_matter() -> None:
    reordered = orjson.loads(
        b'{ "temperature" : 0,\n "messages": [{"content": "What is our Q3 revenue?", "role": "user"}], "model":"chat"}'
    )
    assert key(BODY) == key(reordered)


def test_every_answer_changing_parameter_changes_the_key() -> None:
    base = key(BODY)
    for field, value in {
        "temperature": 0.5,
        "top_p": 0.1,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "none",
        "response_format": {"type": "json_object"},
        "seed": 1,
        "max_tokens": 5,
        "stop": ["\n"],
        "n": 2,
        "model": "other",
        "stream": True,
    }.items():
        assert key({**BODY, field: value}) != base, field
    assert key({**BODY, "messages": [{"role": "user", "content": "What is our Q4 revenue?"}]}) != base


def test_delivery_and_bookkeeping_fields_do_not_change_the_key() -> None:
    assert key({**BODY, "user": "u-1", "metadata": {"a": "b"}, "store": True}) == key(BODY)
    # A stream with include_usage ends with a usage chunk: cached apart from one without.
    assert key({**BODY, "stream": True, "stream_options": {"include_usage": True}}) != key(
        {**BODY, "stream": True}
    )


def test_tenants_never_share_a_key() -> None:
    a = fingerprint.tenant_of("Bearer sk-team-a")
    b = fingerprint.tenant_of("Bearer sk-team-b")
    assert a != b and "sk-team" not in a
    assert key(BODY, a) != key(BODY, b)
    assert fingerprint.tenant_of(None) == fingerprint.tenant_of("") == "anonymous"


def test_semantic_scope_ignores_only_the_prompt() -> None:
    other_prompt = {**BODY, "messages": [{"role": "user", "content": "Q3 revenue, please"}]}
    scope = fingerprint.semantic_scope("/v1/chat/completions", "t", BODY)
    assert fingerprint.semantic_scope("/v1/chat/completions", "t", other_prompt) == scope
    assert fingerprint.semantic_scope("/v1/chat/completions", "t", {**BODY, "temperature": 1}) != scope
    assert fingerprint.prompt_text(BODY) == "user: What is our Q3 revenue?"


def test_whole_floats_and_ints_are_the_same_number() -> None:
    assert key({**BODY, "temperature": 0.0}) == key(BODY)
    assert key({**BODY, "top_p": 1.0}) == key({**BODY, "top_p": 1})
    assert key({**BODY, "top_p": 0.5}) != key({**BODY, "top_p": 1})


def test_keys_are_the_canonical_json_of_endpoint_tenant_and_body() -> None:
    """Serialised once when no whole float is in sight, walked when one may be: same key either way."""
    for body in (
        BODY,
        {**BODY, "temperature": 0.0, "top_p": 1e20, "tools": [{"x": [-0.0, 2.5]}]},
        {**BODY, "messages": [{"role": "user", "content": "version 2.0, 3e+4"}]},
    ):
        kept = {**body, "stream": False}
        canonical = orjson.dumps(
            ["chat/completions", "t", fingerprint._numbers(kept)], option=orjson.OPT_SORT_KEYS
        )
        assert fingerprint.request_key("chat/completions", "t", body) == hashlib.sha256(canonical).hexdigest()


def test_the_front_door_is_part_of_the_key() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    responses = {"model": "m", "input": "hi", "temperature": 0}
    keys = {
        fingerprint.request_key("chat/completions", "t", chat),
        fingerprint.request_key("responses", "t", responses),
        fingerprint.request_key("chat/completions", "t", responses),
        fingerprint.request_key("responses", "t", chat),
    }
    assert len(keys) == 4


def test_responses_input_items_have_prompt_text() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "What is the weather?"},
            {"role": "user", "content": [{"type": "input_text", "text": "In Oslo"}]},
            {"type": "function_call_output", "call_id": "c", "output": "3C"},
        ],
    }
    assert fingerprint.prompt_text(body) == "What is the weather? In Oslo 3C"
    assert fingerprint.prompt_text({"model": "m", "input": "hi"}) == "hi"


def test_prompts_that_differ_in_their_images_are_not_semantic_neighbours() -> None:
    """Only text is embedded: "Describe this picture" with a cat and with a dog embedded alike
    (cosine 1.0) and the dog got the cat's answer. The non-text parts are in the scope."""

    def asking(url: str) -> dict[str, object]:
        parts = [
            {"type": "text", "text": "Describe this picture"},
            {"type": "image_url", "image_url": {"url": url}},
        ]
        return {**BODY, "messages": [{"role": "user", "content": parts}]}

    cat = fingerprint.semantic_scope("chat", "t", asking("https://x/cat.png"))
    assert fingerprint.semantic_scope("chat", "t", asking("https://x/dog.png")) != cat
    assert fingerprint.semantic_scope("chat", "t", asking("https://x/cat.png")) == cat
    reworded = asking("https://x/cat.png")
    reworded["messages"][0]["content"][0]["text"] = "What is in this picture?"  # type: ignore[index]
    assert fingerprint.semantic_scope("chat", "t", reworded) == cat  # the same image: neighbours still
    # Anthropic's blocks and Responses' items alike; text-only prompts keep the scope they had.
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}
    other = {**block, "source": {**block["source"], "data": "BBB"}}  # type: ignore[dict-item]
    one = {**BODY, "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, block]}]}
    two = {**BODY, "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, other]}]}
    assert fingerprint.semantic_scope("m", "t", one) != fingerprint.semantic_scope("m", "t", two)
    plain = {**BODY, "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]}
    assert fingerprint.semantic_scope("m", "t", plain) == fingerprint.semantic_scope("m", "t", BODY)


def test_the_key_memo_gives_request_keys_own_key_asked_first_or_again() -> None:
    """``KeyMemo`` (the response cache's) answers a body it has seen from memory: every body,
    first asked or repeated, gets exactly ``request_key``'s key, whatever its field order, whole
    floats, left-out fields and ``stream``."""
    memo = fingerprint.KeyMemo()
    bodies: list[dict[str, object]] = [
        BODY,
        orjson.loads(
            b'{"temperature": 0.0, "model": "chat", "messages": [{"content": "What is our Q3 revenue?", "role": "user"}]}'
        ),
        {**BODY, "user": "alice", "metadata": {"a": "b"}},
        {**BODY, "stream": True},
        {**BODY, "stream": False},
        {**BODY, "stream": 1},
        {**BODY, "max_tokens": 10.0},
        {**BODY, "temperature": 0.5},
    ]
    for tenant in ("t1", "t2"):
        for body in bodies:
            for _ in range(3):
                assert memo.key("chat", tenant, body) == fingerprint.request_key("chat", tenant, body)
                assert memo.key("responses", tenant, body) == fingerprint.request_key(
                    "responses", tenant, body
                )
    assert len(memo) == 2 * 2 * len(bodies)


def test_the_key_memo_is_bounded_by_bytes() -> None:
    memo = fingerprint.KeyMemo(max_bytes=64 * 1024)
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 2048}]}
    assert memo.key("chat", "t", big) == fingerprint.request_key("chat", "t", big)
    assert len(memo) == 0  # above a 64th of the bound: not kept
    for n in range(1000):
        body = {**BODY, "seed": n}
        assert memo.key("chat", "t", body) == fingerprint.request_key("chat", "t", body)
    entry = len(orjson.dumps({**BODY, "seed": 999})) + fingerprint.KeyMemo.ENTRY_OVERHEAD
    assert 0 < len(memo) <= 64 * 1024 // (entry - 2)  # the oldest dropped
    last = {**BODY, "seed": 999}
    assert memo.key("chat", "t", last) == fingerprint.request_key("chat", "t", last)
