"""The memory API on Snowflake (fakesnow in the gateway process) against the embedded SQLite
store, probed as a stranger would: one battery of requests sent to a gateway on each store,
whose answers must be the same (status, error code and param, body, order), then SQL
injection through every field that reaches SQL.

fakesnow runs Snowflake SQL on DuckDB: it checks neither credentials nor warehouses, ignores
``VARCHAR(100)`` lengths (Snowflake enforces them: the 101-character ``data_source`` is refused
by the gateway before any store sees it), enforces primary keys (Snowflake does not) and knows
no network; what a real account does beyond it is said in ARCHITECTURE.md (h-snow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gateway.testing.process import ManagedProcess, start

SECRET = "Sn0wPassw0rd-not-in-any-answer"
SNOWFLAKE_ENV = {
    "MEMORY_URL": "snowflake://",
    "SNOWFLAKE_ACCOUNT": "fake",
    "SNOWFLAKE_USER": "fake",
    "SNOWFLAKE_PASSWORD": SECRET,
    "SNOWFLAKE_DATABASE": "SOPHIA",
    "SNOWFLAKE_SCHEMA": "MEMORY",
}
# Emoji (a ZWJ sequence), CJK, Hangul, combining marks (decomposed é and ä), 4-byte characters
# outside the BMP (musical G clef, a CJK extension B ideograph), RTL text and a NUL-free control.
UNICODE = "emoji 😀👩‍👩‍👧 漢字かな 한국어 e\u0301 a\u0308 𝄞 𠜎 مرحبا \t tab"
DIM = 64


def policy_text(fake_url: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        auth: {{mode: open}}
        server: {{max_body_bytes: 4194304}}
        providers:
          fake:
            kind: openai
            base_url: {fake_url}/v1
        models:
          embed:
            deployments: [{{provider: fake, model: upstream-embed}}]
        memory:
          embedding_model: embed
          search_cache_ttl_s: 0
          # One connection at start: fakesnow cannot create its database from two at once.
          pool: {{min_size: 1, max_size: 4}}
        """
    )


def call(method: str, url: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ManagedProcess]]:
    fake = start(["fake-provider", "--port", "0", "--embedding-kind", "words", "--embedding-dim", str(DIM)])
    started: dict[str, ManagedProcess] = {}
    try:
        policy = tmp_path_factory.mktemp("snow") / "policy.yaml"
        policy.write_text(policy_text(fake.url))
        serve = ["serve", "--policy", str(policy), "--port", "0"]
        with ThreadPoolExecutor(2) as pool:
            sqlite = pool.submit(start, serve, env={"SOPHIA_LOG_FORMAT": "json"})
            snow = pool.submit(
                start,
                serve,
                env={"SOPHIA_LOG_FORMAT": "json", **SNOWFLAKE_ENV},
                module="tests.e2e.fakesnow_serve",
                timeout_s=90,
            )
            for name, future in (("sqlite", sqlite), ("snowflake", snow)):
                try:
                    started[name] = future.result()
                except Exception:
                    for process in started.values():
                        process.stop()
                    raise
        yield started
    finally:
        for process in started.values():
            process.stop()
        fake.stop()


_TIMES = ("created_at", "last_updated")
# Searches count accesses in batches flushed every second, off the request path: when a flush
# lands is timing, not the store.
_ACCESS = ("access_count", "last_accessed")


def shape(value: Any) -> Any:
    """An answer with what differs by nature between two stores made comparable: times become
    whether they are set, access counts and times only present, scores are rounded."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in _TIMES:
                out[key] = item is not None
            elif key in _ACCESS:
                out[key] = "set by the access flush"
            elif key == "score":
                out[key] = round(item, 4)
            else:
                out[key] = shape(item)
        return out
    if isinstance(value, list):
        return [shape(v) for v in value]
    return value


def vector(*hot: int) -> list[float]:
    out = [0.0] * DIM
    for k in hot:
        out[k] = 1.0
    return out


LONG = "長" * 200_000 + "😀" * 100_000  # 300,000 characters, 1,000,000 UTF-8 bytes
SOURCE_100 = "s" * 98 + "😀漢"  # 100 characters (4-byte ones among them)
INJECT = "x' OR '1'='1'; DROP TABLE memories; --"

# (method, path, body): sent in order to both gateways; every answer must match.
BATTERY: list[tuple[str, str, Any]] = [
    (
        "POST",
        "/v1/memory",
        {
            "namespace": "ns-a",
            "content": UNICODE,
            "id": "u1",
            "metadata": {"キー": "値 😀", "nested": {"list": [1, 2.5, None, True]}, "e\u0301": 1},
            "data_source": SOURCE_100,
            "confidence_score": 0.9,
            "importance_score": 0.1,
        },
    ),
    ("GET", "/v1/memory/u1", None),
    (
        "POST",
        "/v1/memory",
        {
            "memories": [
                {
                    "namespace": "ns-a",
                    "content": "the cat sat on the mat",
                    "id": "b1",
                    "data_source": "slack",
                },
                {"namespace": "ns-a", "content": "the cat ate the fish", "id": "b2", "confidence_score": 0.2},
                {
                    "namespace": "ns.b",
                    "content": "a dog and a cat",
                    "id": "b3",
                    "data_source": "gong",
                    "metadata": {INJECT: INJECT},
                },
                {"namespace": "ns-a", "content": "vector given", "id": "b4", "embedding": vector(1, 2)},
            ]
        },
    ),
    # refusals: the same status, code and param on both
    ("POST", "/v1/memory", {"namespace": "ns-a", "content": "x", "data_source": SOURCE_100 + "s"}),
    ("POST", "/v1/memory", {"namespace": "ns-a", "content": "dup", "id": "b1"}),
    (
        "POST",
        "/v1/memory",
        {
            "memories": [
                {"namespace": "ns-a", "content": "x", "id": "d1"},
                {"namespace": "ns-a", "content": "y", "id": "d1"},
            ]
        },
    ),
    ("POST", "/v1/memory", {"namespace": INJECT, "content": "x"}),
    ("POST", "/v1/memory", {"namespace": "ns-a", "content": "x", "id": INJECT}),
    ("POST", "/v1/memory", {"namespace": "ns-a", "content": ""}),
    ("GET", "/v1/memory/" + urllib.parse.quote(INJECT, safe=""), None),
    ("GET", "/v1/memory/" + urllib.parse.quote("b1' OR 'a'='a", safe=""), None),
    ("GET", "/v1/memory/nope", None),
    ("GET", "/v1/memory/" + urllib.parse.quote("😀漢e\u0301", safe=""), None),
    ("GET", "/v1/memory/" + "x" * 4000, None),
    ("GET", "/v1/memory/U1", None),  # ids compare as written: u1 exists, U1 does not
    # PATCH with row_version: the one read wins, a stale one is a 409, nothing changes
    ("PATCH", "/v1/memory/b1", {"metadata": {"k": "v2"}, "row_version": 1}),
    ("PATCH", "/v1/memory/b1", {"metadata": {"k": "v3"}, "row_version": 1}),
    ("GET", "/v1/memory/b1", None),
    ("PATCH", "/v1/memory/b1", {"content": "the cat sat on the hat", "data_source": SOURCE_100}),
    ("PATCH", "/v1/memory/b1", {"data_source": SOURCE_100 + "x"}),
    ("PATCH", "/v1/memory/nope", {"content": "x", "row_version": 1}),
    ("PATCH", "/v1/memory/" + urllib.parse.quote(INJECT, safe=""), {"confidence_score": 0.5}),
    ("PATCH", "/v1/memory/b2", {"processing_status": "archived"}),
    # search: order, filters, namespaces
    ("POST", "/v1/memory/search", {"query": "cat", "top_k": 10}),
    ("POST", "/v1/memory/search", {"query": "cat", "namespaces": ["ns.b"]}),
    ("POST", "/v1/memory/search", {"query": "cat", "data_source": "slack"}),
    ("POST", "/v1/memory/search", {"query": "cat", "data_source": INJECT}),
    ("POST", "/v1/memory/search", {"query": "cat", "data_source": SOURCE_100}),
    ("POST", "/v1/memory/search", {"query": "cat", "processing_status": "archived"}),
    ("POST", "/v1/memory/search", {"query": "cat", "min_confidence": 0.95}),
    ("POST", "/v1/memory/search", {"vector": vector(1, 2), "top_k": 1}),
    ("POST", "/v1/memory/search", {"query": "cat", "namespaces": [INJECT]}),
    ("POST", "/v1/memory/search", {"query": "cat", "data_source": SOURCE_100 + "x"}),
    # very long content (1 MB of UTF-8, 4-byte characters included), read back whole
    ("POST", "/v1/memory", {"namespace": "ns-a", "content": LONG, "id": "long", "embedding": vector(5)}),
    ("GET", "/v1/memory/long", None),
    # delete, then it is gone on both
    ("DELETE", "/v1/memory/b2", None),
    ("DELETE", "/v1/memory/b2", None),
    ("GET", "/v1/memory/b2", None),
    ("DELETE", "/v1/memory/" + urllib.parse.quote(INJECT, safe=""), None),
    # the job list: filters and the pagination cursor reach SQL
    ("GET", "/v1/memory/jobs?limit=2&after=" + urllib.parse.quote(INJECT, safe=""), None),
    ("GET", "/v1/memory/jobs?status=" + urllib.parse.quote(INJECT, safe=""), None),
    ("GET", "/v1/memory/jobs?limit=0", None),
    ("GET", "/v1/memory/jobs/" + urllib.parse.quote(INJECT, safe=""), None),
    # still all there after the injections
    ("POST", "/v1/memory/search", {"query": "cat dog", "top_k": 100, "processing_status": "active"}),
]


def test_the_battery_answers_the_same_on_both_stores(gateways: dict[str, ManagedProcess]) -> None:
    answers: dict[str, list[tuple[int, Any]]] = {}
    for name, process in gateways.items():
        got = []
        for method, path, body in BATTERY:
            status, answer, headers = call(method, process.url + path, body)
            assert headers["Content-Type"].startswith("application/json"), (name, method, path)
            got.append((status, shape(answer)))
        answers[name] = got
    for (method, path, _), sqlite, snow in zip(BATTERY, answers["sqlite"], answers["snowflake"], strict=True):
        assert snow == sqlite, f"{method} {path[:80]}"
    statuses = [status for status, _ in answers["snowflake"]]
    assert 500 not in statuses and 503 not in statuses
    by_request = dict(zip([(m, p, json.dumps(b)) for m, p, b in BATTERY], answers["snowflake"], strict=True))

    def answer(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return by_request[(method, path, json.dumps(body))]

    # What the store gave back is what was sent, character for character.
    status, stored = answer("GET", "/v1/memory/u1")
    assert status == 200
    assert stored["content"] == UNICODE and stored["data_source"] == SOURCE_100
    assert stored["metadata"] == {"キー": "値 😀", "nested": {"list": [1, 2.5, None, True]}, "e\u0301": 1}
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00$")  # UTC, as SQLite's
    for process in gateways.values():  # the answers above hold times as set or not: read again
        raw = call("GET", process.url + "/v1/memory/u1")[1]
        assert iso.match(raw["created_at"]) and iso.match(raw["last_updated"]), raw["created_at"]
    status, long = answer("GET", "/v1/memory/long")
    assert status == 200 and long["content"] == LONG
    # The stale row_version lost; the winner's metadata stayed.
    assert answer("GET", "/v1/memory/U1")[0] == 404  # binary comparison, as SQLite's
    status, b1 = answer("GET", "/v1/memory/b1")
    assert status == 200 and b1["metadata"] == {"k": "v2"} and b1["row_version"] == 2
    # Injection attempts are values: refused by shape, or found nowhere.
    status, refused = answer("POST", "/v1/memory", {"namespace": INJECT, "content": "x"})
    assert status == 400 and refused["error"]["param"] == "namespace"
    status, unknown = answer("GET", "/v1/memory/jobs?limit=2&after=" + urllib.parse.quote(INJECT, safe=""))
    assert status == 404 and unknown["error"]["param"] == "after"  # as written, not 'id'
    status, hits = answer("POST", "/v1/memory/search", {"query": "cat", "data_source": INJECT})
    assert status == 200 and hits["data"] == []
    status, everything = answer(
        "POST", "/v1/memory/search", {"query": "cat dog", "top_k": 100, "processing_status": "active"}
    )
    assert status == 200
    assert sorted(h["memory"]["id"] for h in everything["data"]) == ["b1", "b3", "b4", "long", "u1"]
    b3 = next(h["memory"] for h in everything["data"] if h["memory"]["id"] == "b3")
    assert b3["metadata"] == {INJECT: INJECT}


def test_no_snowflake_secret_in_answers_health_metrics_or_logs(gateways: dict[str, ManagedProcess]) -> None:
    process = gateways["snowflake"]
    seen = {}
    for path in ("/health", "/health/ready", "/metrics", "/admin/models", "/admin/policy"):
        try:
            with urllib.request.urlopen(process.url + path, timeout=10) as resp:
                seen[path] = resp.read().decode() + json.dumps(dict(resp.headers))
        except urllib.error.HTTPError as err:
            seen[path] = err.read().decode() + json.dumps(dict(err.headers))
    assert [path for path, text in seen.items() if SECRET in text] == []
    assert "memory:store" in seen["/health"]
    assert SECRET not in process.output


# ----- Snowflake failing: at start and while serving (tests/e2e/fakesnow_faults_serve.py)

FAULTS_MODULE = "tests.e2e.fakesnow_faults_serve"
LEAKS = (SECRET, "SECRET-TOKEN-0123456789")


def fault_policy(tmp: Path, connect_timeout_s: float = 1) -> Path:
    policy = tmp / "policy.yaml"
    policy.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            auth: {{mode: open}}
            providers:
              fake: {{kind: openai, base_url: "http://127.0.0.1:9/v1"}}
            models:
              chat:
                deployments: [{{provider: fake, model: m}}]
            memory:
              search_cache_ttl_s: 0
              pool: {{min_size: 1, max_size: 2, connect_timeout_s: {connect_timeout_s}, statement_timeout_s: 1}}
            """
        )
    )
    return policy


def start_line(output: str) -> str:
    """The one ``cannot start`` line (log lines, written by a thread, may come after it)."""
    lines = [line for line in output.splitlines() if line.startswith("sophia-gateway: cannot start")]
    assert len(lines) == 1, output[-2000:]
    return lines[0]


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        ("refused", "SNOWFLAKE_USER"),
        ("down", "SNOWFLAKE_ACCOUNT"),
        ("warehouse", "SNOWFLAKE_WAREHOUSE"),
        ("hang", "SNOWFLAKE_WAREHOUSE"),
        # DDL needs no warehouse: the store opens, then the index's first read is refused.
        ("warehouse-after-ddl", "000606 (57P03): No active warehouse"),
    ],
)
def test_a_snowflake_that_fails_at_start_is_one_line_naming_the_settings(
    tmp_path: Path, fault: str, named: str
) -> None:
    (tmp_path / "fault").write_text(fault)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KEYS_URL", "MEMORY_URL")},
        **SNOWFLAKE_ENV,
        "SOPHIA_LOG_FORMAT": "json",
        "SOPHIA_TEST_SNOWFLAKE_FAULT": str(tmp_path / "fault"),
        "SOPHIA_TEST_SNOWFLAKE_CONNECTS": str(tmp_path / "connects"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            FAULTS_MODULE,
            "serve",
            "--policy",
            str(fault_policy(tmp_path)),
            "--port",
            "0",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 30
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    last = start_line(done.stderr)
    assert "Snowflake" in last and named in last
    for leak in LEAKS:
        assert leak not in done.stderr + done.stdout
    logins = (tmp_path / "connects").read_text().count("connect\n")
    if fault == "refused":
        # Snowflake locks a user after 5 refused logins in a row: one per start, not the pool's
        # three attempts (a crash loop or replicas would lock it in two starts).
        assert logins == 1
    elif fault == "down":
        assert logins == 3  # the network's failures keep their retries


def test_a_slow_snowflake_still_starts_the_store_statement_by_statement(tmp_path: Path) -> None:
    """statement_timeout_s bounds each of the migration's statements, not all of them together:
    seven statements of 0.3 s each (2.1 s) start under a 1 s statement timeout (a CI run once
    failed to start because fakesnow's first statements took more than 1 s in all)."""
    fault = tmp_path / "fault"
    fault.write_text("slow")
    process = start(
        ["serve", "--policy", str(fault_policy(tmp_path)), "--port", "0"],
        env={"SOPHIA_TEST_SNOWFLAKE_FAULT": str(fault), **SNOWFLAKE_ENV},
        module=FAULTS_MODULE,
        timeout_s=90,
    )
    try:
        fault.write_text("")
        assert health(process.url)["dependencies"]["memory:store"]["status"] == "up"
        status, _, _ = call(
            "POST", process.url + "/v1/memory", {"namespace": "ns", "content": "x", "embedding": [1.0, 0.0]}
        )
        assert status == 201
    finally:
        process.stop()


def test_memory_prune_beside_a_snowflake_without_a_warehouse_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "fault").write_text("warehouse-after-ddl")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KEYS_URL", "MEMORY_URL")},
        **SNOWFLAKE_ENV,
        "SOPHIA_TEST_SNOWFLAKE_FAULT": str(tmp_path / "fault"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    done = subprocess.run(
        [sys.executable, "-m", FAULTS_MODULE, "memory", "prune", "--policy", str(fault_policy(tmp_path))],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert "Traceback" not in output and SECRET not in output and "SECRET-TOKEN" not in output
    assert "000606 (57P03): No active warehouse" in start_line(output)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ManagedProcess, Path]]:
    """One gateway for every fault while serving (each ends with the store back and up)."""
    tmp_path = tmp_path_factory.mktemp("faulty")
    fault = tmp_path / "fault"
    process = start(
        ["serve", "--policy", str(fault_policy(tmp_path)), "--port", "0"],
        env={"SOPHIA_LOG_FORMAT": "json", "SOPHIA_TEST_SNOWFLAKE_FAULT": str(fault), **SNOWFLAKE_ENV},
        module=FAULTS_MODULE,
        timeout_s=90,
    )
    try:
        yield process, fault
    finally:
        fault.write_text("")
        process.stop()


def health(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as err:
        return dict(json.loads(err.read()))


def store_failures(process: ManagedProcess) -> list[dict[str, Any]]:
    """The gateway's "memory store failed" log records so far, in order (its log is stderr)."""
    records = [json.loads(line) for line in process.stderr.splitlines() if line.startswith("{")]
    return [r for r in records if r["msg"] == "memory store failed"]


@pytest.mark.parametrize("fault", ["down", "warehouse", "hang"])
def test_a_snowflake_failing_while_serving_is_a_503_and_health_says_so(
    faulty: tuple[ManagedProcess, Path], fault: str
) -> None:
    process, fault_file = faulty
    url = process.url
    fault_file.write_text("")  # whatever an earlier case left
    mem = f"m-{fault}"  # each case's own memory: the gateway serves them all in turn
    status, _, _ = call(
        "POST", url + "/v1/memory", {"namespace": "ns", "content": "x", "id": mem, "embedding": [1.0, 0.0]}
    )
    assert status == 201
    logged_before = len(store_failures(process))
    fault_file.write_text(fault)
    answers = []
    for method, path, body in (
        ("GET", f"/v1/memory/{mem}", None),
        ("POST", "/v1/memory", {"namespace": "ns", "content": "y", "embedding": [0.0, 1.0]}),
        ("PATCH", f"/v1/memory/{mem}", {"confidence_score": 0.5}),
        ("DELETE", f"/v1/memory/{mem}", None),
        ("GET", "/v1/memory/jobs", None),
    ):
        started = time.monotonic()
        status, answer, headers = call(method, url + path, body)
        elapsed = time.monotonic() - started
        assert elapsed < 8, (method, path, elapsed)  # the statement bound (1 s) and the acquire bound (1 s)
        assert status == 503, (method, path, answer)
        assert answer["error"]["type"] == "service_unavailable"
        assert answer["error"]["code"] == "memory_store_unavailable"
        answers.append(json.dumps(answer) + json.dumps(headers))
    if fault == "warehouse":  # what Snowflake said is in the log line of each refused request
        deadline = time.monotonic() + 10  # the log is written by a thread, read by another
        while True:
            said = store_failures(process)[logged_before:]  # this case's
            if len(said) >= 5 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(said) == 5
        assert all(r["detail"].startswith("Snowflake: 000606 (57P03): No active warehouse") for r in said)
    report = health(url)
    assert report["status"] == "degraded"
    store = report["dependencies"]["memory:store"]
    if fault == "warehouse":
        # SELECT 1 needs no warehouse; the operations refused for want of one say it (h-snowtx).
        assert store["status"] == "degraded", store
        assert "SNOWFLAKE_WAREHOUSE" in store["detail"] and "000606 (57P03)" in store["detail"]
    else:
        assert store["status"] == "down"
    fault_file.write_text("")
    recovered = time.monotonic() + 15
    while call("GET", url + f"/v1/memory/{mem}")[0] != 200:  # back once Snowflake is
        assert time.monotonic() < recovered, "the memory store did not come back"
        time.sleep(0.2)
    again = health(url)
    assert again["dependencies"]["memory:store"]["status"] == "up", again  # a warehouse again
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    shown = "".join(answers) + json.dumps(report) + json.dumps(again) + metrics + process.output
    for leak in LEAKS:
        assert leak not in shown


# ----- the real connector (no fakesnow): key-pair files and an account that cannot be reached


def serve_real(
    tmp: Path, extra: dict[str, str], connect_timeout_s: float = 1
) -> subprocess.CompletedProcess[str]:
    """``serve`` with the real connector and ``extra`` SNOWFLAKE_* variables; it must stop."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SNOWFLAKE_", "REDIS_URL", "KEYS_URL"))},
        "MEMORY_URL": "snowflake://",
        "SNOWFLAKE_ACCOUNT": "sophia-no-such-account-0",
        "SNOWFLAKE_USER": "sophia",
        "SNOWFLAKE_DATABASE": "SOPHIA",
        "SNOWFLAKE_SCHEMA": "MEMORY",
        "SOPHIA_LOG_FORMAT": "json",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        **extra,
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--policy",
            str(fault_policy(tmp, connect_timeout_s)),
            "--port",
            "0",
        ],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )


def pem_key(path: Path, passphrase: str | None) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


PASSPHRASE = "Key-Passphrase-not-in-any-line"


@pytest.mark.parametrize(
    ("key", "passphrase", "said"),
    [
        ("missing", None, "SNOWFLAKE_PRIVATE_KEY_PATH cannot be read (FileNotFoundError"),
        ("encrypted", None, "encrypted: set SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"),
        ("encrypted", "wrong-" + PASSPHRASE, "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE does not decrypt it"),
        ("plain", PASSPHRASE, "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE is set but the key"),
        ("garbage", None, "SNOWFLAKE_PRIVATE_KEY_PATH is not a PEM private key"),
    ],
)
def test_a_key_pair_file_the_connector_cannot_use_is_one_line_naming_it(
    tmp_path: Path, key: str, passphrase: str | None, said: str
) -> None:
    path = tmp_path / "key.p8"
    if key == "encrypted":
        pem_key(path, PASSPHRASE)
    elif key == "plain":
        pem_key(path, None)
    elif key == "garbage":
        path.write_text("not a key")
    extra = {"SNOWFLAKE_PRIVATE_KEY_PATH": str(path)}
    if passphrase:
        extra["SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"] = passphrase
    done = serve_real(tmp_path, extra)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert said in start_line(output) and "Traceback" not in output and PASSPHRASE not in output


def test_an_account_that_cannot_be_reached_is_one_line_and_no_connector_chatter(tmp_path: Path) -> None:
    # No network here (or no such account): the connector's own retries, the pool's three
    # attempts of 0.5 s (each a connect() that logs its INFO lines first), then the start-up
    # line. Its INFO lines (version, "Connecting to GLOBAL Snowflake domain", every query on a
    # live account) are not the gateway's log.
    started = time.monotonic()
    done = serve_real(tmp_path, {"SNOWFLAKE_PASSWORD": SECRET}, connect_timeout_s=0.5)
    output = done.stdout + done.stderr
    assert time.monotonic() - started < 40
    assert done.returncode == 2, output[-2000:]
    assert "Snowflake" in start_line(output)
    assert "Traceback" not in output and SECRET not in output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    chatter = [r for r in records if r["logger"].startswith("snowflake.connector") and r["level"] == "info"]
    assert chatter == []


@pytest.mark.parametrize("store", ["sqlite", "snowflake"])
def test_concurrent_writes_to_one_gateway_are_all_answered(
    gateways: dict[str, ManagedProcess], store: str
) -> None:
    # The pool runs several statements at once; each write appends to the change log, numbered
    # MAX(seq) + 1: two writes numbered alike (a 500 under fakesnow, whose DuckDB enforces the
    # log's key; on Snowflake, which enforces none, a second row of one seq a follower skips).
    url = gateways[store].url

    def write(k: int) -> int:
        body = {"namespace": "race", "content": f"race {k}", "id": f"race-{k}", "embedding": vector(k % DIM)}
        return call("POST", url + "/v1/memory", body)[0]

    def change(k: int) -> int:
        return call("PATCH", url + f"/v1/memory/race-{k}", {"importance_score": 0.9})[0]

    def remove(k: int) -> int:
        return call("DELETE", url + f"/v1/memory/race-{k}")[0]

    with ThreadPoolExecutor(12) as pool:
        assert list(pool.map(write, range(36))) == [201] * 36
        assert list(pool.map(change, range(36))) == [200] * 36
        assert list(pool.map(remove, range(0, 36, 2))) == [200] * 18
    status, found, _ = call(
        "POST", url + "/v1/memory/search", {"vector": vector(1), "top_k": 100, "namespaces": ["race"]}
    )
    assert status == 200
    assert sorted(h["memory"]["id"] for h in found["data"]) == sorted(f"race-{k}" for k in range(1, 36, 2))


def upload(url: str, name: str, text: str) -> dict[str, Any]:
    boundary = "sophia-h-snow-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="namespace"\r\n\r\nfiles\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="data_source"\r\n\r\n{SOURCE_100}\r\n'.encode(),
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        + text.encode()
        + f"\r\n--{boundary}--\r\n".encode(),
    ]
    request = urllib.request.Request(url + "/v1/memory/files", data=b"".join(parts), method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 202
        return dict(json.loads(resp.read()))


def test_ingest_jobs_page_and_filter_the_same_on_both_stores(gateways: dict[str, ManagedProcess]) -> None:
    seen: dict[str, list[Any]] = {}
    for name, process in gateways.items():
        url = process.url
        ids = []
        for k, text in enumerate([UNICODE * 3, "plain words " * 50, "漢字 " * 400]):
            job = upload(url, f"file-{k}-漢.txt", text)
            deadline = time.monotonic() + 30
            while job["status"] not in ("done", "failed"):
                assert time.monotonic() < deadline, job
                time.sleep(0.05)
                status, job, _ = call("GET", f"{url}/v1/memory/jobs/{job['id']}")
                assert status == 200
            assert job["status"] == "done", job
            ids.append(job["id"])
        pages, after = [], ""
        while True:
            status, page, _ = call("GET", f"{url}/v1/memory/jobs?limit=1{after}")
            assert status == 200
            pages.append(page)
            if not page["has_more"]:
                break
            after = "&after=" + page["last_id"]
        assert [p["data"][0]["id"] for p in pages] == ids[::-1]  # newest first
        assert [p["has_more"] for p in pages] == [True, True, False]
        status, done, _ = call("GET", f"{url}/v1/memory/jobs?status=done,failed&limit=10")
        assert status == 200 and [j["id"] for j in done["data"]] == ids[::-1]
        status, none, _ = call("GET", f"{url}/v1/memory/jobs?status=paused")
        assert status == 200 and none["data"] == [] and none["has_more"] is False
        seen[name] = [
            {
                k: v
                for k, v in p["data"][0].items()
                if k not in ("id", "started_at", "updated_at", "finished_at")
            }
            for p in pages
        ]
    assert seen["snowflake"] == seen["sqlite"]
    assert (
        seen["snowflake"][0]["data_source"] == SOURCE_100 and seen["snowflake"][0]["file"] == "file-2-漢.txt"
    )


@pytest.mark.parametrize(
    "url",
    [
        "snowflake://sophia:Hunter2Secret@xy12345/SOPHIA/MEMORY?warehouse=AI_WH",
        "snowflake://xy12345.eu-west-1/SOPHIA?password=Hunter2Secret",
    ],
)
def test_a_snowflake_url_with_credentials_is_refused_without_repeating_them(tmp_path: Path, url: str) -> None:
    # snowflake-sqlalchemy's URL form: the gateway read only the scheme and then asked for
    # SNOWFLAKE_* variables (or, with them set, connected with those and ignored the URL's).
    done = serve_real(tmp_path, {"MEMORY_URL": url, "SNOWFLAKE_PASSWORD": SECRET})
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    line = start_line(output)
    assert "MEMORY_URL for Snowflake is snowflake:// alone" in line and "SNOWFLAKE_*" in line
    assert "Hunter2Secret" not in output and "xy12345" not in output and SECRET not in output
