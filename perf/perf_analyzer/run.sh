#!/usr/bin/env bash
# perf_analyzer 2.51 against a running SynerDiff server: streaming gRPC (the models are decoupled),
# JSON prompts, open-loop Poisson request rates, CSV export.
#   [MODEL=diffusion|txt2img] [GRPC_URL=127.0.0.1:8001] [RATES=1:3:1] [OUT=build/perf_analyzer] \
#   [LOAD="--concurrency-range 2"] [PROMPTS=perf/perf_analyzer/prompts.json] \
#   perf/perf_analyzer/run.sh [extra perf_analyzer flags]
# Notes (see perf/perf_analyzer/NOTES.md and docs/perf.md): PA's latency for a decoupled model is to the LAST response
# (the image); server-side "compute infer" covers only execute() (the enqueue), not the generation. PA's Poisson
# schedule is one fixed draw over MAX_TRIALS x INTERVAL_MS, looped: below a few hundred requests in that span it
# offers well under the asked rate (read Inferences/Second); bursts.sh with BURST=1 is a seeded alternative.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
RATES="${RATES:-1:3:1}"
INTERVAL_MS="${INTERVAL_MS:-8000}"
exec "$VENV/bin/perf_analyzer" -m "$MODEL" -i grpc -u "$GRPC_URL" --streaming \
  --input-data "$PROMPTS" \
  ${LOAD:---request-rate-range $RATES --request-distribution poisson} \
  --measurement-interval "$INTERVAL_MS" --stability-percentage "${STABILITY_PCT:-50}" --max-trials "${MAX_TRIALS:-10}" \
  --profile-export-file "$OUT/$MODEL-profile.json" -f "$OUT/$MODEL.csv" "${@}"
