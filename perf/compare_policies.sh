#!/usr/bin/env bash
set -u
# Policies side by side on the real server with the `bench` preset: 8 requests of 10 guided steps sent at
# once, two interleaved rounds. Needs ports 8000-8002 free.
# Usage: bash perf/compare_policies.sh [policy ...]   (default: sequential continuous synerdiff)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
policies=("${@:-sequential continuous synerdiff}")
for round in 1 2; do
for policy in ${policies[@]}; do
  .venv/bin/python -m perf.serve --preset bench --policy $policy > /tmp/serve-$policy.log 2>&1 &
  for i in $(seq 120); do sleep 1; [ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:8000/v2/health/ready)" = 200 ] && break; done
  .venv/bin/synerdiff generate "warm up" --steps 2 --seed 1 --out /tmp/warm --no-progress > /dev/null
  start=$(date +%s.%N)
  .venv/bin/synerdiff generate p0 p1 p2 p3 p4 p5 p6 p7 --steps 10 --seed 100 --concurrency 8 --out /tmp/pc-$policy --no-progress > /tmp/pc-$policy.txt
  end=$(date +%s.%N)
  echo "round $round $policy wall_s=$(echo "$end - $start" | bc) mean_latency_s=$(grep -o 'latency=[0-9.]*' /tmp/pc-$policy.txt | cut -d= -f2 | awk '{s+=$1} END {printf "%.2f", s/NR}') max_latency_s=$(grep -o 'latency=[0-9.]*' /tmp/pc-$policy.txt | cut -d= -f2 | sort -n | tail -1)"
  pkill -TERM tritonserver; sleep 6
done
done
