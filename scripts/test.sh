#!/usr/bin/env bash
# Runs the whole test suite: installs the pinned tools, then every test target and the doc
# tests of the workspace, then (with a nightly toolchain, and no extra arguments) a 30 s
# run of each fuzz target. Extra arguments go to the main `cargo test` run, e.g.
#   ./scripts/test.sh -p runlog-events
#   ./scripts/test.sh -- --nocapture
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
export RUNLOG_NATS_SERVER="$PWD/.tools/pip/bin/nats-server"

# Incremental state for ~40 test binaries takes more disk than the binaries themselves and
# buys little for a whole-suite run; `CARGO_INCREMENTAL=1 ./scripts/test.sh` turns it back on.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Modules of a crate must not import each other in a circle.
./scripts/check-module-cycles.py

locked=()
if [[ ${CI:-} == true && -f Cargo.lock ]]; then
    locked=(--locked) # CI builds exactly the committed lock file
fi

# `--all-targets` leaves out doc tests and cargo refuses to mix `--doc` with other target
# selections, hence two runs.
cargo test "${locked[@]}" --workspace --all-targets "$@"
cargo test "${locked[@]}" --workspace --doc

# Fuzz targets, briefly: only where nightly is installed, and only for the whole suite.
if (($# == 0)) && [[ ${RUNLOG_FUZZ_SMOKE:-1} != 0 ]]; then
    ./scripts/fuzz-smoke.sh
fi
