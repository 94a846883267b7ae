#!/usr/bin/env bash
# Set up what is missing and run the whole test suite: unit tests (no server), integration tests (each
# session starts a real tritonserver on free loopback ports), GPU tests (skipped without a CUDA device).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "$VENV/bin/python" -m pytest -q tests "$@"
