#!/usr/bin/env bash
# Builds the browser package: the library for wasm32 (release, without the CLI) and its
# JavaScript bindings (wasm-bindgen --target web) into web/pkg/. `cd web && npm pack` then makes
# the npm tarball; scripts/serve.sh serves the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/web-setup.sh rust
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/wasm}"
# No debug info in the .wasm (the native release profile keeps some for profiling).
export CARGO_PROFILE_RELEASE_DEBUG=0
cargo build --release --locked --lib --target wasm32-unknown-unknown --no-default-features
rm -rf web/pkg
wasm-bindgen --target web --out-dir web/pkg --out-name sinkstream \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/sinkstream.wasm"
rm -f web/pkg/.gitignore web/pkg/package.json
if command -v wasm-opt >/dev/null; then
  wasm-opt -O2 --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    web/pkg/sinkstream_bg.wasm -o web/pkg/sinkstream_bg.wasm
fi
echo "build-web: $(du -h web/pkg/sinkstream_bg.wasm | cut -f1) web/pkg/sinkstream_bg.wasm" >&2
