#!/usr/bin/env bash
# perf_analyzer 2.51 against a running SynerDiff server with on/off bursts: Poisson at BURST x RATE req/s
# for ON_S seconds, then OFF_S seconds of silence, CYCLES times, looped (--request-intervals, written by
# perf/perf_analyzer/intervals.py); streaming gRPC (the models are decoupled), JSON prompts, CSV export.
#   [MODEL=diffusion|txt2img] [GRPC_URL=127.0.0.1:8001] [RATE=1] [BURST=4] [ON_S=5] [OFF_S=ON_S x (BURST-1)] \
#   [CYCLES=1] [SEED=0] [OUT=build/perf_analyzer] [PROMPTS=perf/perf_analyzer/prompts.json] \
#   [INTERVAL_MS=one loop of the file] perf/perf_analyzer/bursts.sh [extra perf_analyzer flags]
# --request-intervals replaces --request-rate-range / --request-distribution / --concurrency-range (PA
# refuses the combination). The mean rate over a cycle is RATE when OFF_S is left at its default. Each
# measurement window lasts one loop of the file by default, so every window holds the same burst
# pattern; PA needs at least 3 windows (STABILITY_PCT is loose by default: bursty latencies vary). PA reports
# the file's rate truncated to an integer ("Request Rate: 0" for 0.85 req/s): the generator's stderr line has it.
# Writes $OUT/$MODEL-bursts.csv, $OUT/$MODEL-bursts-profile.json and the intervals file
# $OUT/$MODEL-bursts-intervals.txt. Notes: perf/perf_analyzer/NOTES.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
RATE="${RATE:-1}"
BURST="${BURST:-4}"
ON_S="${ON_S:-5}"
CYCLES="${CYCLES:-1}"
SEED="${SEED:-0}"
INTERVALS="$OUT/$MODEL-bursts-intervals.txt"
"$VENV/bin/python" "$ROOT/perf/perf_analyzer/intervals.py" --rate "$RATE" --burst "$BURST" --on-s "$ON_S" \
  ${OFF_S:+--off-s "$OFF_S"} --cycles "$CYCLES" --seed "$SEED" --out "$INTERVALS"
INTERVAL_MS="${INTERVAL_MS:-$(awk '{ total += $1 } END { printf "%d", (total + 500) / 1000 }' "$INTERVALS")}"
exec "$VENV/bin/perf_analyzer" -m "$MODEL" -i grpc -u "$GRPC_URL" --streaming \
  --input-data "$PROMPTS" --request-intervals "$INTERVALS" \
  --measurement-interval "$INTERVAL_MS" --stability-percentage "${STABILITY_PCT:-100}" --max-trials "${MAX_TRIALS:-6}" \
  --profile-export-file "$OUT/$MODEL-bursts-profile.json" -f "$OUT/$MODEL-bursts.csv" "${@}"
