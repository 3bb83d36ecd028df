#!/usr/bin/env bash
# Set up and run every test: the library, the GPU kernels against the CPU reference (on whatever
# Vulkan adapter is present, software Vulkan included), the real model, the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
chmod 700 "$XDG_RUNTIME_DIR"
cargo test --release --locked "$@"
# The browser build: its tests in headless Chromium with WebGPU, the demo end to end, the npm package.
scripts/test-web.sh
