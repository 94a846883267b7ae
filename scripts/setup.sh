#!/usr/bin/env bash
# Idempotent set-up for a fresh machine of the project's kind (Debian 12, CPython 3.11, no GPU).
# Creates .venv, installs the project with torch pinned to the local CPU build, the Triton server
# (inside the nvidia-pytriton wheel) with its Python-backend stub, and perf_analyzer's runtime libs.
# Sourced by serve.sh and test.sh; exports VENV, SITE_PACKAGES, TRITON_HOME.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SYNERDIFF_VENV:-$ROOT/.venv}"
STAMP="$VENV/.synerdiff-installed"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "[setup] installing Python packages into $VENV" >&2
  "$VENV/bin/pip" install -q --upgrade pip 2>/dev/null || true
  # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q -e "$ROOT[export,cpu,dev]" 2> >(grep -v "is ignored: it is neither" >&2)
  touch "$STAMP"
fi

SITE_PACKAGES="$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
TRITON_HOME="$SITE_PACKAGES/pytriton/tritonserver"
STUB_SRC="$TRITON_HOME/python_backend_stubs/$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')/triton_python_backend_stub"
if [ ! -x "$TRITON_HOME/backends/python/triton_python_backend_stub" ]; then
  cp "$STUB_SRC" "$TRITON_HOME/backends/python/"
fi
# perf_analyzer (from the tritonclient wheel) links libb64 and libcudart even on CPU.
if ! ldconfig -p | grep -q libb64.so.0d; then
  echo "[setup] installing libb64-0d" >&2
  (apt-get update -qq && apt-get install -y -qq libb64-0d) >/dev/null
fi
export VENV SITE_PACKAGES TRITON_HOME
