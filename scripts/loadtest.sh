#!/usr/bin/env bash
# Builds runlog and the load test in release mode, then runs every benchmark scenario with
# the issue's shape (20,000 tasks, 2 workers x 32 slots = 64, 200 SSE clients, a replay of
# 1,000,000 events, the memory of 1,000,000 finished executions), 3 runs each, medians
# reported. Extra arguments go to runlog-loadtest, e.g.
#   ./scripts/loadtest.sh --runs 5
#   ./scripts/loadtest.sh --scenario latency --rate 500
# Figures go to stdout (a JSON line per scenario, then markdown tables); see
# docs/benchmarks.md for what each one means.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
export RUNLOG_NATS_SERVER="$PWD/.tools/pip/bin/nats-server"
cargo build --release -p runlog -p runlog-loadtest

if [[ $# -gt 0 ]]; then
    exec ./target/release/runlog-loadtest "$@"
fi
exec ./target/release/runlog-loadtest \
    --n 20000 --runs 3 \
    --workers 2 --worker-concurrency 32 \
    --scenario throughput,mixed,latency,fanout --rate 200 --seconds 10 \
    --clients 200 --fanout-n 2000 \
    --replay-events 1000000 --memory-executions 1000000
