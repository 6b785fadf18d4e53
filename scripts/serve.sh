#!/usr/bin/env bash
# Install the gateway and serve it on the embedded defaults (routing_policies/default.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e .
exec sophia-gateway serve "$@"
