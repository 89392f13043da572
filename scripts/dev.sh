#!/usr/bin/env bash
# Starts runlog in development mode (`runlog dev`) with the pinned nats-server.
# Extra arguments go to `runlog dev`, e.g. ./scripts/dev.sh --help
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
export RUNLOG_NATS_SERVER="$PWD/.tools/pip/bin/nats-server"
exec cargo run --release -p runlog -- dev "$@"
