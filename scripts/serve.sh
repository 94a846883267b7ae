#!/usr/bin/env bash
# Set up what is missing, export the default model (preset `tiny`, or PRESET=bench|sd15), render the CPU
# model repository and run tritonserver in the foreground on 127.0.0.1 (HTTP 8000, gRPC 8001, metrics 8002).
# Extra arguments go to `python -m perf.serve` (e.g. --policy sequential, --preset bench).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "$VENV/bin/python" -m perf.serve --preset "${PRESET:-tiny}" "$@"
