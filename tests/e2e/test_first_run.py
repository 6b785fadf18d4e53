"""A first run that just works: start-up failures as one line, the README's scripts, the image.

Start-up failures run ``sophia-gateway serve`` as a process (in a fresh directory, the
repository on ``PYTHONPATH``, as ``gateway.testing.process`` does) and expect exit code 2, one
``sophia-gateway: cannot start: ...`` line on stderr saying what to do, and no traceback.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.policy.model import Breaker
from gateway.testing.fake_provider import FakeConfig
from gateway.testing.process import ManagedProcess, free_port
from gateway.testing.redis_server import INSTALL_HINT, PrivateRedis
from tests.e2e.conftest import start_fakes, start_gateway

REPO = Path(__file__).resolve().parents[2]
PREFIX = "sophia-gateway: cannot start: "


def serve_until_exit(
    tmp_path: Path,
    env: Mapping[str, str],
    *args: str,
    policy: Path | None = None,
    python_path: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` in ``tmp_path`` until it exits by itself (bounded: 60 s)."""
    if policy is None:
        policy = tmp_path / "policy.yaml"
        policy.write_text(MINIMAL_POLICY)
    full_env = {
        # The runner's service URLs (scripts/test.sh sets REDIS_URL) must not reach the gateway.
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KEYS_URL", "MEMORY_URL")},
        "PYTHONPATH": os.pathsep.join(p for p in (python_path, str(REPO)) if p),
        "SOPHIA_LOG_FORMAT": "json",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=tmp_path,
        timeout=60,
    )


MINIMAL_POLICY = textwrap.dedent(
    """\
    version: 1
    auth: {mode: open}
    providers:
      local: {kind: openai, base_url: http://127.0.0.1:9/v1}
    models:
      chat: {deployments: [{provider: local, model: m}]}
    """
)


def the_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one start-up failure line; fails the test on a traceback or another exit code."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, output
    lines = [line for line in result.stderr.splitlines() if line.startswith(PREFIX)]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ----- 18: start-up failures --------------------------------------------------------------------


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = the_line(serve_until_exit(tmp_path, {}, "--port", str(port)))
    assert f"127.0.0.1:{port}" in line and "already in use" in line and "--port or SOPHIA_PORT" in line


@pytest.mark.parametrize("value", ["abc", "70000"])
def test_bad_sophia_port_is_one_line(tmp_path: Path, value: str) -> None:
    result = serve_until_exit(tmp_path, {"SOPHIA_PORT": value, "PYTHONPROFILEIMPORTTIME": "1"})
    line = the_line(result)
    assert f"SOPHIA_PORT must be a port number from 0 to 65535, not '{value}'" in line
    # Said before the app (about 1 s of imports) is imported: at once, as a typo should be.
    imported = [row.rsplit("|", 1)[-1].strip() for row in result.stderr.splitlines() if "|" in row]
    assert "gateway.settings" in imported and "gateway.app" not in imported


def test_bad_memory_url_is_one_line_without_its_password(tmp_path: Path) -> None:
    line = the_line(
        serve_until_exit(tmp_path, {"MEMORY_URL": "postgres://me:hunter2@db/memories"}, "--port", "0")
    )
    assert (
        "MEMORY_URL must be sqlite:///relative/file.db, sqlite:////absolute/file.db or snowflake://" in line
    )
    assert "hunter2" not in line


@pytest.mark.parametrize(
    ("url", "says"),
    [
        # A generated password with a character the URL parser cuts at, not percent-encoded:
        # redis-py's traceback quoted the cut ("Port could not be cast to integer value as 'Xy7'").
        ("redis://:Xy7#q9Zsecret@127.0.0.1:9/0", "cannot be read: Port could not be cast"),
        ("redis://default:pa/ss9Zsecret@127.0.0.1:9/0", "cannot be read: Port could not be cast"),
        ("http://:Xy7q9Zsecret@127.0.0.1:9/0", "must specify one of the following schemes"),
        ("redis://:Xy7q9Zsecret@127.0.0.1:9/0?ssl_cert_reqs=none", "the option 'ssl_cert_reqs'"),
        ("rediss://:Xy7q9Zsecret@127.0.0.1:9/0?ssl_cert_reqs=bogus", "Invalid SSL Certificate"),
    ],
)
def test_a_malformed_redis_url_is_one_line_without_any_of_its_password(
    tmp_path: Path, url: str, says: str
) -> None:
    result = serve_until_exit(tmp_path, {"REDIS_URL": url}, "--port", "0")
    line = the_line(result)
    assert line.startswith(f"{PREFIX}REDIS_URL ") and says in line
    assert "percent-encoded: %40 %3A %2F %3F %23 %25" in line
    output = result.stdout + result.stderr
    assert not [piece for piece in ("Xy7", "pa/", "q9Z", "secret") if piece in output], output


def test_memory_url_naming_a_file_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("not a directory")
    url = f"sqlite:///{tmp_path}/plain-file/memory.db"
    line = the_line(serve_until_exit(tmp_path, {"MEMORY_URL": url}, "--port", "0"))
    assert "cannot open the memory store" in line and "set memory.path or MEMORY_URL" in line


def test_missing_snowflake_variables_are_named(tmp_path: Path) -> None:
    env = {name: "" for name in os.environ if name.startswith("SNOWFLAKE_")}
    line = the_line(serve_until_exit(tmp_path, {**env, "MEMORY_URL": "snowflake://"}, "--port", "0"))
    for name in ("SNOWFLAKE_ACCOUNT", "SNOWFLAKE_USER", "SNOWFLAKE_DATABASE", "SNOWFLAKE_SCHEMA"):
        assert name in line


def test_missing_snowflake_extra_gives_the_pip_command(tmp_path: Path) -> None:
    # A ``snowflake`` package without ``connector`` first on the path: the import fails exactly
    # as it does where snowflake-connector-python is not installed.
    shadow = tmp_path / "shadow"
    (shadow / "snowflake").mkdir(parents=True)
    (shadow / "snowflake" / "__init__.py").write_text("")
    result = serve_until_exit(
        tmp_path, {"MEMORY_URL": "snowflake://"}, "--port", "0", python_path=str(shadow)
    )
    assert the_line(result).endswith(f"{sys.executable} -m pip install 'sophia-gateway[snowflake]'")


@pytest.fixture(scope="module")
def embedders() -> Iterator[dict[str, ManagedProcess]]:
    fakes = start_fakes({"dim8": ["--embedding-dim", "8"], "dim16": ["--embedding-dim", "16"]})
    try:
        yield fakes
    finally:
        for fake in fakes.values():
            fake.stop()


def memory_policy(tmp_path: Path, fakes: Mapping[str, ManagedProcess], embedding_model: str) -> Path:
    """A policy whose memory (at absolute paths under ``tmp_path``) embeds with ``embedding_model``."""
    dead = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / f"memory-{embedding_model}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            auth: {{mode: open}}
            providers:
              dim8: {{kind: openai, base_url: {fakes["dim8"].url}/v1}}
              dim16: {{kind: openai, base_url: {fakes["dim16"].url}/v1}}
              down: {{kind: openai, base_url: {dead}/v1, timeouts: {{connect_s: 1}}}}
            models:
              dim8: {{deployments: [{{provider: dim8, model: e}}]}}
              dim16: {{deployments: [{{provider: dim16, model: e}}]}}
              down: {{deployments: [{{provider: down, model: e}}]}}
            memory:
              embedding_model: {embedding_model}
              path: {tmp_path}/memory.sqlite3
              index_dir: {tmp_path}/memory-index
            """
        )
    )
    return path


def add_memory(gateway: ManagedProcess) -> None:
    request = urllib.request.Request(
        gateway.url + "/v1/memory",
        data=b'{"namespace": "notes", "content": "the sky is blue"}',
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 201


def test_stored_vectors_of_another_dimension_are_one_line(
    tmp_path: Path, embedders: dict[str, ManagedProcess]
) -> None:
    first = start_gateway(memory_policy(tmp_path, embedders, "dim8"))
    try:
        add_memory(first)
    finally:
        assert first.stop() == 0
    result = serve_until_exit(tmp_path, {}, "--port", "0", policy=memory_policy(tmp_path, embedders, "dim16"))
    line = the_line(result)
    assert "holds 8-dimensional vectors" in line and "'dim16' makes 16-dimensional ones" in line
    assert "use another memory.path or MEMORY_URL" in line
    # The same store with the model that made it starts, and so does one whose embedding model
    # cannot be reached (the check is skipped with a warning: a provider that is down must not
    # keep the gateway from starting).
    for model in ("dim8", "down"):
        gateway = start_gateway(memory_policy(tmp_path, embedders, model))
        assert gateway.stop() == 0
    assert "cannot check the embedding model's dimension at start" in gateway.stderr


# ----- 17: scripts/test.sh on a machine without Redis -------------------------------------------
#
# The real script runs in a copy of ``scripts/`` with a PATH of its own: bash, python3 and dirname,
# plus stand-ins for ``id`` (root or not), ``apt-get`` (records its arguments; "install" puts the
# real redis-server, or do-nothing prometheus and promtool, on the PATH) and ``.venv/bin/python``
# (records the pip and pytest commands, and the REDIS_URL they would see). Redis runs for real, on a free port.

REDIS_SERVER = shutil.which("redis-server")


@dataclass
class ScriptRun:
    result: subprocess.CompletedProcess[str]
    log: list[str]  # what the stand-ins recorded, one line per call


def stand_in(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\nimport os, sys\n{textwrap.dedent(body)}")
    path.chmod(0o755)


def run_script(
    tmp_path: Path,
    *args: str,
    script: str = "test.sh",
    uid: int = 1000,
    redis_server: bool = True,
    apt: bool = False,
    port: int = 0,
) -> ScriptRun:
    """Run ``scripts/<script> args...`` in the sandbox described above."""
    repo, bin_dir, log = tmp_path / "repo", tmp_path / "bin", tmp_path / "calls.log"
    (repo / "scripts").mkdir(parents=True)
    for name in (script, "venv.sh"):
        shutil.copy(REPO / "scripts" / name, repo / "scripts" / name)
    (repo / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    for tool in ("bash", "dirname"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    # The interpreter itself: a python3 on PATH may be a shim (pyenv) needing tools not here.
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    record = f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
    stand_in(bin_dir / "id", f"print({uid})")
    stand_in(
        repo / ".venv" / "bin" / "python",
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + ' | REDIS_URL=' + os.environ.get('REDIS_URL', '') + '\\n')",
    )
    stand_in(repo / ".venv" / "bin" / "sophia-gateway", record)
    if apt:
        stand_in(
            bin_dir / "apt-get",
            f"""\
            {record}
            if "install" in sys.argv and "redis-server" in sys.argv:
                os.symlink({REDIS_SERVER!r}, {str(bin_dir / "redis-server")!r})
            if "install" in sys.argv and "prometheus" in sys.argv:
                for tool in ("prometheus", "promtool"):
                    path = os.path.join({str(bin_dir)!r}, tool)
                    open(path, "w").write("#!/bin/sh\\n")
                    os.chmod(path, 0o755)
            """,
        )
    if redis_server:
        assert REDIS_SERVER is not None, INSTALL_HINT
        (bin_dir / "redis-server").symlink_to(REDIS_SERVER)
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "SOPHIA_TEST_REDIS_PORT": str(port),
    }
    result = subprocess.run(
        ["bash", str(repo / "scripts" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        executable=shutil.which("bash"),
        timeout=60,
    )
    lines = log.read_text().splitlines() if log.exists() else []
    return ScriptRun(result, lines)


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_port() -> Iterator[int]:
    """A free port; whatever Redis the script starts there is shut down afterwards."""
    port = free_port()
    yield port
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"SHUTDOWN NOSAVE\r\n")
        sock.recv(16)


def test_without_redis_server_and_not_root_one_line_names_the_package(
    tmp_path: Path, redis_port: int
) -> None:
    run = run_script(tmp_path, "tests/unit", uid=1000, redis_server=False, apt=True, port=redis_port)
    assert run.result.returncode == 1
    assert run.result.stderr.splitlines() == [
        "error: the tests need redis-server: install the package redis-server "
        "(Debian/Ubuntu: sudo apt-get install redis-server), then run this again"
    ]
    assert run.log == []  # neither apt-get, pip nor pytest ran


@pytest.mark.parametrize(
    ("uid", "redis_server"),
    [(0, False), (1000, True)],
    ids=["root-installs-and-starts-redis", "redis-server-present-is-started"],
)
def test_the_script_brings_redis_up_and_hands_it_to_the_tests(
    tmp_path: Path, redis_port: int, uid: int, redis_server: bool
) -> None:
    run = run_script(tmp_path, "tests/unit", uid=uid, redis_server=redis_server, apt=True, port=redis_port)
    assert run.result.returncode == 0, run.result.stderr
    installs = [line for line in run.log if line.startswith(("update", "install"))]
    if uid == 0:  # root installs what is missing: redis-server, then prometheus (the dashboard test)
        assert installs == [
            "update -qq",
            "install -y -qq redis-server",
            "update -qq",
            "install -y -qq prometheus",
        ]
    else:  # not root: redis-server was there; the missing prometheus is named, nothing installed
        assert installs == []
        assert (
            "note: the Prometheus dashboard test is skipped: install the package prometheus "
            "(Debian/Ubuntu: sudo apt-get install prometheus)"
        ) in run.result.stderr.splitlines()
    assert f"started redis-server on 127.0.0.1:{redis_port} (left running)" in run.result.stderr
    assert redis_answers(redis_port)
    assert (tmp_path / f"sophia-test-redis-{redis_port}.pid").exists()  # never the system's pid file
    url = f"redis://127.0.0.1:{redis_port}/0"
    assert run.log[-2:] == [
        f"-m pip install --quiet --disable-pip-version-check -e .[test,tracing] | REDIS_URL={url}",
        f"-m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests/unit | REDIS_URL={url}",
    ]


def test_a_running_redis_is_used_as_it_is(tmp_path: Path) -> None:
    with PrivateRedis() as server:
        run = run_script(tmp_path, "tests/unit", port=server.port)
        assert run.result.returncode == 0, run.result.stderr
        assert "started" not in run.result.stderr
        assert run.log[-1] == (
            f"-m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests/unit | REDIS_URL={server.url}"
        )


def test_serve_script_installs_into_its_venv_and_passes_its_arguments(tmp_path: Path) -> None:
    run = run_script(tmp_path, "--port", "9000", script="serve.sh", redis_server=False)
    assert run.result.returncode == 0, run.result.stderr
    assert run.log == [
        "-m pip --version | REDIS_URL=",
        "-m pip install --quiet --disable-pip-version-check -e . | REDIS_URL=",
        "serve --port 9000",
    ]


# ----- 20: the Docker image (no engine here: the files are read as Docker reads them) -------------


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over context-relative paths (Go's filepath.Match plus
    ``**``: ``*`` stays within one path element, ``**/`` spans any number of them)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out.strip("/") + r"\Z")


def in_build_context(path: str) -> bool:
    """Whether ``path`` (relative to the repository) is sent to the Docker daemon: a path is left
    out when it or a directory above it matches a pattern (the last matching line wins)."""
    parts = path.split("/")
    sent = True
    for line in dockerignore_patterns():
        negated = line.startswith("!")
        regex = docker_pattern(line.removeprefix("!"))
        if any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            sent = negated
    return sent


def test_build_context_leaves_out_local_state_and_keeps_what_the_image_copies() -> None:
    for local in (".venv/bin/python", "data/memory.sqlite3", "sophia_gateway.egg-info/PKG-INFO", ".env"):
        assert not in_build_context(local), local
    assert not in_build_context("gateway/__pycache__/app.cpython-311.pyc")
    copied = [
        line.split()[1:-1]
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
    ]
    sources = [source for sources in copied for source in sources]
    assert sorted(sources) == ["README.md", "gateway", "pyproject.toml", "routing_policies"]
    for source in sources:
        files = (
            [source]
            if (REPO / source).is_file()
            else [
                str(p.relative_to(REPO))
                for p in (REPO / source).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            ]
        )
        assert files and all(in_build_context(f) for f in files), source


def test_image_installs_the_snowflake_extra_unless_told_not_to() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG EXTRAS=snowflake" in dockerfile
    assert 'pip install --no-cache-dir --prefix=/install ".${EXTRAS:+[$EXTRAS]}"' in dockerfile
    with (REPO / "pyproject.toml").open("rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert any(req.startswith("snowflake-connector-python") for req in extras["snowflake"])
    # What the RUN line's shell makes of it, with the default and with --build-arg EXTRAS=.
    for value, spec in (("snowflake", ".[snowflake]"), ("", ".")):
        shell = subprocess.run(
            ["sh", "-c", 'printf %s ".${EXTRAS:+[$EXTRAS]}"'],
            capture_output=True,
            text=True,
            env={"EXTRAS": value},
        )
        assert shell.stdout == spec


# ----- 21: the README says what happens -----------------------------------------------------------
#
# Each test checks the behaviour on real processes, then that the README states it (whitespace
# aside, as the README wraps its lines).


def readme_says(*phrases: str) -> None:
    text = " ".join((REPO / "README.md").read_text().split())
    for phrase in phrases:
        assert " ".join(phrase.split()) in text, phrase


def chat(conn: http.client.HTTPConnection) -> tuple[int, str | None, str | None, str | None]:
    """(status, x-gateway-provider, x-gateway-attempts, x-gateway-fallback) of one demo request."""
    body = b'{"model": "demo-chat", "messages": [{"role": "user", "content": "hello"}]}'
    conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    return (
        resp.status,
        resp.getheader("x-gateway-provider"),
        resp.getheader("x-gateway-attempts"),
        resp.getheader("x-gateway-fallback"),
    )


def connect(gateway: ManagedProcess) -> http.client.HTTPConnection:
    address = urllib.parse.urlsplit(gateway.url)
    assert address.hostname is not None and address.port is not None
    return http.client.HTTPConnection(address.hostname, address.port, timeout=10)


def test_demo_split_and_breaker_are_what_the_readme_says(tmp_path: Path) -> None:
    fakes = start_fakes({"a": [], "b": ["--latency-ms", "50"]})  # the README's two commands
    gateway = None
    try:
        demo = (REPO / "routing_policies" / "demo.yaml").read_text()
        for name, port in (("a", "9101"), ("b", "9102")):
            assert f"http://127.0.0.1:{port}/v1" in demo
            demo = demo.replace(f"http://127.0.0.1:{port}/v1", f"{fakes[name].url}/v1")
        (tmp_path / "demo.yaml").write_text(demo)
        gateway = start_gateway(tmp_path / "demo.yaml")
        conn = connect(gateway)
        served = Counter(chat(conn)[1] for _ in range(400))
        # ~97 % to fake-a; fake-b keeps its exploration share (2.5 %). Expected 12 for fake-b:
        # outside 1..40 is a chance below 1e-4.
        assert served["fake-a"] + served["fake-b"] == 400 and 1 <= served["fake-b"] <= 40, served
        fakes["a"].stop()
        answers = [chat(conn) for _ in range(30)]
        assert {(status, provider) for status, provider, _, _ in answers} == {(200, "fake-b")}
        failures = Breaker().consecutive_failures
        retried = [i for i, answer in enumerate(answers) if answer[2:] == ("2", "true")]
        assert len(retried) == failures, answers  # then fake-a's breaker is open...
        assert all(answer[2:] == ("1", "false") for answer in answers[retried[-1] + 1 :]), answers
        status, raw = http_get(gateway.url + "/admin/models")  # ...as the admin view shows
        assert status == 200
        states = {d["provider"]: d["breaker"] for d in json.loads(raw)["models"]["demo-chat"]["deployments"]}
        assert states["fake-a"] == "open"
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()
    readme_says(
        "Nearly all requests (about 97 %) go to `fake-a`",
        "`fake-b` keeps its exploration share (`routing.exploration` / 2, about 2.5-3 %)",
        "the first ones with `x-gateway-attempts: 2` and `x-gateway-fallback: true`",
        f"after {failures} failures in a row (`breaker.consecutive_failures`) fake-a's breaker opens "
        "and requests go straight to `fake-b` with `x-gateway-attempts: 1`",
    )


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_draining_refuses_new_connections_and_finishes_requests_in_flight(tmp_path: Path) -> None:
    fakes = start_fakes({"slow": ["--latency-ms", "1500"]})
    gateway = None
    try:
        policy = tmp_path / "slow.yaml"
        policy.write_text(MINIMAL_POLICY.replace("http://127.0.0.1:9/v1", fakes["slow"].url + "/v1"))
        gateway = running = start_gateway(policy)
        in_flight: dict[str, int] = {}

        def slow_request() -> None:
            conn = connect(running)
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=b'{"model": "chat", "messages": [{"role": "user", "content": "x"}]}',
                headers={"content-type": "application/json"},
            )
            in_flight["status"] = conn.getresponse().status

        thread = threading.Thread(target=slow_request)
        thread.start()
        poll_until(lambda: json.loads(http_get(fakes["slow"].url + "/_fake/stats")[1])["requests"] >= 1)
        gateway.signal(signal.SIGTERM)
        # The listening socket closes at once: new connections are refused while the request runs.
        poll_until(lambda: not accepts_connections(gateway))
        assert "status" not in in_flight
        thread.join(10)
        assert in_flight == {"status": 200}
        assert gateway.wait(10) == 0
    finally:
        if gateway is not None:
            gateway.stop()
        fakes["slow"].stop()
    readme_says(
        "the listening socket closes at once, so new connections are refused",
        "only a request already being handled when draining starts gets 503 `draining`",
    )


def poll_until(condition: Callable[[], bool], deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def accepts_connections(gateway: ManagedProcess) -> bool:
    address = urllib.parse.urlsplit(gateway.url)
    assert address.hostname is not None and address.port is not None
    try:
        socket.create_connection((address.hostname, address.port), timeout=1).close()
    except ConnectionRefusedError:
        return False
    return True


def test_unknown_path_is_a_404_without_a_code(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(MINIMAL_POLICY)
    gateway = start_gateway(policy)
    try:
        status, raw = http_get(gateway.url + "/v1/no-such-thing")
    finally:
        gateway.stop()
    error = json.loads(raw)["error"]
    assert status == 404 and error["type"] == "invalid_request_error" and error["code"] is None
    assert "/v1/no-such-thing" in error["message"]
    readme_says(
        "| 404 | unknown model (message lists the available ones) | `invalid_request_error` / `model_not_found` |",
        "| 404 | unknown path (message names the method and path) | `invalid_request_error` / code `null`",
    )


def test_fake_provider_port_default_is_the_readmes() -> None:
    assert FakeConfig().port == 9000
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "fake-provider", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert "default: 9000" in " ".join(result.stdout.split())
    readme_says(
        "Listens on `127.0.0.1:9000` unless told otherwise",
        "`sophia-gateway fake-provider [--host H] [--port P]` (default `127.0.0.1:9000`",
    )


def test_a_memory_index_dir_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    """Under a regular file: a traceback (``NotADirectoryError`` from the index's lock) and exit 1
    before (an outside probe)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        MINIMAL_POLICY
        + f"memory: {{embedding_model: chat, path: '{tmp_path / 'm.sqlite3'}', index_dir: '{blocker / 'idx'}'}}\n"
    )
    line = the_line(serve_until_exit(tmp_path, {}, "--port", "0", policy=policy))
    assert "memory index directory" in line and "memory.index_dir" in line
