#!/usr/bin/env bash
# The browser tests, in headless Chromium with WebGPU (SwiftShader on machines without a GPU):
#   wasm     wasm-bindgen-test: the WGSL kernels against the CPU reference inside the browser, the
#            cache rule, and the JavaScript API of src/wasm.rs on tiny random models   (~1 min)
#   e2e      the demo page with the real default model: load, chat past a small cache, the cache
#            picture, stop, reload from Cache Storage; saves target/web-test/demo-e2e.png (~1-2 min)
#   package  npm pack, install into a scratch project, 10 greedy tokens in a page equal the
#            native binary's                                                          (~1 min)
# Each step installs what it needs when missing (scripts/web-setup.sh).
# Usage: scripts/test-web.sh [wasm] [e2e] [package]   (no argument: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(wasm e2e package)
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
chmod 700 "$XDG_RUNTIME_DIR"
scripts/web-setup.sh
scripts/build-web.sh
for step in "${steps[@]}"; do
  start=$(date +%s)
  case "$step" in
    wasm)
      CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/wasm}" CARGO_PROFILE_RELEASE_DEBUG=0 \
        cargo test --release --locked --target wasm32-unknown-unknown --no-default-features --test wasm ;;
    e2e)
      [ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] || scripts/fetch-model.sh
      node web/test/e2e.mjs ;;
    package)
      [ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] || scripts/fetch-model.sh
      [ -x target/release/sinkstream ] || cargo build --release --locked
      node web/test/package.mjs ;;
    *) echo "test-web: unknown step $step (wasm, e2e, package)" >&2; exit 2 ;;
  esac
  echo "test-web: $step passed in $(( $(date +%s) - start )) s" >&2
done
