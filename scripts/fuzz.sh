#!/usr/bin/env bash
# Fuzzes one target with cargo-fuzz (libFuzzer) for a fixed time: `decode`
# (the wire decoder), `workflow` (workflow definitions) or `request_body`
# (the API's request bodies).
#
#   ./scripts/fuzz.sh [SECONDS] [TARGET]      # defaults: 60 s, target `decode`
#
# Installs cargo-fuzz if it is missing, copies the committed seeds
# (fuzz/seeds/TARGET/) into the corpus (fuzz/corpus/TARGET/, git-ignored, kept
# between runs), uses fuzz/TARGET.dict as the libFuzzer dictionary when it
# exists, and runs on the `nightly` toolchain (or, without one, on stable with
# RUSTC_BOOTSTRAP=1). Exits non-zero when libFuzzer finds a crash, naming the
# artifact and the command that reproduces it.
#
# Environment: FUZZ_SANITIZER (default `address`; `none` runs about twice as
# fast, which is fine for this safe-Rust code), FUZZ_JOBS (default 1),
# FUZZ_SEED (libFuzzer's -seed; random when unset), FUZZ_TIMEOUT (seconds one
# input may take before it counts as a hang, default 10), FUZZ_DEV=1 (build
# the target in the dev profile: about 4x quicker to build, slower to run; the
# smoke run uses it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

seconds=${1:-60}
target=${2:-decode}
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}

if ! [[ $seconds =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS] [TARGET]" >&2
    exit 2
fi
if [[ ! -f fuzz/fuzz_targets/$target.rs ]]; then
    echo "no fuzz target '$target' (fuzz/fuzz_targets/$target.rs)" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz needs nightly compiler flags (-Zsanitizer, sancov passes).
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
    cargo_fuzz=(cargo +nightly fuzz)
else
    echo "==> no nightly toolchain: running on stable with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
    cargo_fuzz=(cargo fuzz)
fi

corpus=fuzz/corpus/$target
mkdir -p "$corpus"
if [[ -d fuzz/seeds/$target ]]; then
    cp -n fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
fi

libfuzzer_args=(-max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-10}" -print_final_stats=1)
if [[ -n ${FUZZ_SEED:-} ]]; then
    libfuzzer_args+=(-seed="$FUZZ_SEED")
fi
if [[ -f fuzz/$target.dict ]]; then
    libfuzzer_args+=(-dict="$root/fuzz/$target.dict")
fi
if ((jobs > 1)); then
    libfuzzer_args+=(-fork="$jobs")
fi

log=$(mktemp -t "fuzz-$target.XXXXXX.log")
trap 'rm -f "$log"' EXIT

profile=()
if [[ ${FUZZ_DEV:-0} == 1 ]]; then
    profile=(--dev)
fi

cmd=("${cargo_fuzz[@]}" run "${profile[@]}" --sanitizer "$sanitizer" "$target" "$corpus" -- "${libfuzzer_args[@]}")
echo "==> ${cmd[*]}"
status=0
"${cmd[@]}" 2>&1 | tee "$log" || status=$?

echo
echo "==> summary (target $target, ${seconds}s, toolchain ${toolchain[*]:-stable+RUSTC_BOOTSTRAP})"
# The last status line (#runs, cov, ft, corp, exec/s) and the final stats.
grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1 || true
grep -E '^stat::' "$log" || true
echo "corpus: $(find "$corpus" -type f | wc -l) inputs in $corpus"

artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/^Test unit written to //' || true)
if ((status != 0)) || [[ -n $artifact ]]; then
    echo
    echo "==> CRASH (exit status $status)"
    if [[ -n $artifact ]]; then
        # cargo-fuzz runs libFuzzer from fuzz/, so the path may be relative to it.
        [[ -f $artifact ]] || artifact=fuzz/${artifact#./}
        echo "artifact: $artifact"
        echo "input (hex):"
        od -An -tx1 -v "$artifact" | tr -s ' \n' ' ' | fold -w 96
        echo
        echo "reproduce: cargo ${toolchain[*]:+${toolchain[*]} }fuzz run ${profile[*]:+${profile[*]} }--sanitizer $sanitizer $target $artifact"
    fi
    exit "$((status == 0 ? 1 : status))"
fi
