#!/usr/bin/env bash
# Install the gateway into ./.venv and serve it on the embedded defaults (routing_policies/default.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
install_into_venv .
exec .venv/bin/sophia-gateway serve "$@"
