#!/usr/bin/env bash
# A short run of every fuzz target, for the test command: fuzzes each target
# in fuzz/fuzz_targets/ for FUZZ_SMOKE_SECONDS (default 30) with a fixed
# libFuzzer seed, so that a run on one machine repeats. The targets are built
# once, in the dev profile (FUZZ_DEV=1): building the engine with coverage
# instrumentation in release takes about 12 minutes on a 2-core machine, in
# dev under 3, and 30 s finds what 30 s finds either way. That the committed
# seeds are current is checked by the workspace tests
# (events/tests/fuzz_seeds.rs).
#
#   ./scripts/fuzz-smoke.sh
#
# Skips, saying so, when no nightly toolchain is installed: cargo-fuzz needs
# one, and the test command must run on a machine with only stable. Long
# runs are ./scripts/fuzz.sh SECONDS TARGET.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "==> fuzz smoke run skipped: no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi

seconds=${FUZZ_SMOKE_SECONDS:-30}

failed=()
for file in fuzz/fuzz_targets/*.rs; do
    target=$(basename "$file" .rs)
    if ! FUZZ_SEED=${FUZZ_SEED:-1} FUZZ_DEV=${FUZZ_DEV:-1} \
        ./scripts/fuzz.sh "$seconds" "$target"; then
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "==> fuzz smoke run FAILED: ${failed[*]} (see the artifacts above)"
    exit 1
fi
echo "==> fuzz smoke run: every target ran ${seconds}s without a crash"
