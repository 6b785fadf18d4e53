#!/usr/bin/env bash
# Install the gateway into ./.venv and serve it on the embedded defaults (routing_policies/default.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || { echo "error: python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/sophia-gateway serve "$@"
