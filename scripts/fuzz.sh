#!/usr/bin/env bash
# Fuzz the parsers with cargo-fuzz (libFuzzer): the GGUF reader, the whole model load, the
# tokenizer built from GGUF metadata or read from a tokenizer.json, and the safetensors container
# (tests/fuzz/).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      default: 60 s for each of them
#
# Installs cargo-fuzz if it is missing, writes the seed corpus from the default model, runs each
# target for the given time and prints how many inputs it executed. Exits non-zero if any target
# crashed (panic, sanitizer error, timeout, out of memory); the input that did it is saved under
# tests/fuzz/artifacts/TARGET/ and `cargo fuzz run --fuzz-dir tests/fuzz TARGET FILE` replays it.
# The corpus grows in tests/fuzz/corpus/ (not committed) across runs.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(gguf_parse model_load tokenizer tokenizer_json safetensors)
fi
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
fuzz_dir=tests/fuzz

# cargo-fuzz compiles with nightly-only flags (sanitizer, coverage instrumentation); a stable
# toolchain accepts them when told it is building itself. A nightly toolchain works as well.
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
[ -f "$model" ] || scripts/fetch-model.sh
# Fail rather than silently re-resolve: the committed Cargo.lock makes runs reproducible.
cargo metadata --manifest-path "$fuzz_dir/Cargo.toml" --locked --format-version 1 >/dev/null

# One build for all targets and the seed writer, with the targets' instrumentation.
cargo fuzz build --fuzz-dir "$fuzz_dir"
triple="$(rustc -vV | sed -n 's/^host: //p')"
"$fuzz_dir/target/$triple/release/seeds" "$model" "$fuzz_dir/corpus"

status=0
summary=()
for t in "${targets[@]}"; do
    log="$(mktemp)"
    echo "== $t: ${secs} s"
    # -timeout: no input of a few KiB should take seconds; -malloc_limit_mb: nor should it ask for
    # hundreds of MiB at once (an allocation sized by a count read from the file).
    # -detect_leaks=0: the leak scan after inputs that fill lazy statics took 90% of the time;
    # memory that grows across a long run is the soak test's job.
    set +e
    cargo fuzz run --fuzz-dir "$fuzz_dir" "$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
        -detect_leaks=0 -print_final_stats=1 2>&1 | tee "$log" | grep -E '^#[0-9]+.*(pulse|DONE)'
    rc="${PIPESTATUS[0]}"
    set -e
    if [ "$rc" -ne 0 ] || grep -qE 'panicked|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY: libFuzzer' "$log"; then
        status=1
        summary+=("$t: CRASH (see tests/fuzz/artifacts/$t/)")
        tail -n 40 "$log"
    else
        runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
        summary+=("$t: ${runs:-?} executions in ${secs} s, no crash")
    fi
    rm -f "$log"
done
echo
printf '%s\n' "${summary[@]}"
exit "$status"
