#!/usr/bin/env bash
# Installs what the browser build and its tests need, each step only when missing:
#   rust   the wasm32 target and wasm-bindgen-cli of the exact version in Cargo.lock
#   browser Debian's Chromium + chromedriver (headless, WebGPU on SwiftShader)
#   npm     web/node_modules (playwright-core, driving that Chromium)
# Usage: scripts/web-setup.sh [rust] [browser] [npm]   (no argument: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
want=("$@")
[ ${#want[@]} -eq 0 ] && want=(rust browser npm)
has() { [[ " ${want[*]} " == *" $1 "* ]]; }

if has rust; then
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
  fi
  v=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
  [ -n "$v" ] || { echo "wasm-bindgen is not in Cargo.lock" >&2; exit 1; }
  if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$v" ] ||
     [ "$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}')" != "$v" ]; then
    echo "web-setup: installing wasm-bindgen-cli $v (about 4 minutes)" >&2
    # Not --locked: its locked tree pins a crate the registry mirror cannot serve.
    cargo install wasm-bindgen-cli --version "$v" --force
  fi
fi

if has browser; then
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
  fi
fi

if has npm; then
  command -v node >/dev/null && command -v npm >/dev/null ||
    { echo "web-setup: Node.js 20+ and npm are needed for the browser tests (https://nodejs.org)" >&2; exit 1; }
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
    { echo "web-setup: Node.js $(node --version) is too old: playwright-core needs 20+" >&2; exit 1; }
  want=$(node -p 'require("./web/package-lock.json").packages["node_modules/playwright-core"].version')
  have=$(node -p 'try { require("./web/node_modules/playwright-core/package.json").version } catch { "" }')
  if [ "$want" != "$have" ]; then
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
