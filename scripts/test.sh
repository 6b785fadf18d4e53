#!/usr/bin/env bash
# Install the gateway with its test extras into ./.venv and run the whole test suite
# (unit, in-process request path, integration against Redis/PostgreSQL/fakesnow, whole-process e2e,
# and the import-linter layer contracts).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || { echo "error: python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
