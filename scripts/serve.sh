#!/usr/bin/env bash
# Serves the demo on http://127.0.0.1:PORT/demo/ (default port 8080) with the model next to it:
# target/site/ holds links to web/demo, web/index.js, web/pkg (built by scripts/build-web.sh,
# run first when missing) and models/. Usage: scripts/serve.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-${PORT:-8080}}"
[ -f web/pkg/sinkstream_bg.wasm ] || scripts/build-web.sh
root="$PWD"
site="$root/target/site"
mkdir -p "$site"
ln -sfn "$root/web/demo" "$site/demo"
ln -sfn "$root/web/pkg" "$site/pkg"
ln -sfn "$root/web/index.js" "$site/index.js"
ln -sfn "$root/models" "$site/models"
cat > "$site/index.html" <<'HTML'
<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url=demo/"><a href="demo/">sinkstream demo</a>
HTML
[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] ||
  echo "serve: models/SmolLM2-135M-Instruct.Q4_1.gguf is missing (scripts/fetch-model.sh); the demo can still load a .gguf you pick" >&2
echo "serve: open http://127.0.0.1:$port/demo/  (Ctrl-C to stop)" >&2
cd "$site"
exec python3 -m http.server "$port" --bind 127.0.0.1
