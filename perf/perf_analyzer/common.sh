# Sourced by run.sh and bursts.sh: the settings every recipe shares, and perf_analyzer's library path.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MODEL="${MODEL:-diffusion}"
GRPC_URL="${GRPC_URL:-127.0.0.1:8001}"
OUT="${OUT:-$ROOT/build/perf_analyzer}"
PROMPTS="${PROMPTS:-$ROOT/perf/perf_analyzer/prompts.json}"
VENV="${SYNERDIFF_VENV:-$ROOT/.venv}"
SP="$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
# The wheel's perf_analyzer links libcudart.so.12 even on CPU hosts.
export LD_LIBRARY_PATH="$SP/nvidia/cuda_runtime/lib:${LD_LIBRARY_PATH:-}"
mkdir -p "$OUT"
