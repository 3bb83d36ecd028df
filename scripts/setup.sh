#!/usr/bin/env bash
# Everything sinkstream needs on a fresh Debian/Ubuntu machine: a Vulkan driver (software
# Vulkan, Mesa's lavapipe, when there is no GPU driver) and the default model. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if command -v apt-get >/dev/null && ! dpkg -s mesa-vulkan-drivers >/dev/null 2>&1; then
  echo "installing mesa-vulkan-drivers (Vulkan drivers, including software Vulkan)..." >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi
command -v cargo >/dev/null || { echo "error: Rust is needed: install it from https://rustup.rs" >&2; exit 1; }
scripts/fetch-model.sh
