#!/usr/bin/env bash
# sinkstream against llama.cpp on this machine with the same GGUF, one after the other in one go:
#   1. target/release/sinkstream bench (prefill 512 tokens, decode 128 greedy, latency at 1000),
#   2. scripts/bench-llamacpp.py --backend cpu    with $LLAMACPP_CPU_PY,
#   3. scripts/bench-llamacpp.py --backend vulkan with $LLAMACPP_VULKAN_PY (GGML_VK_VISIBLE_DEVICES=0
#      unless set, so that llama.cpp accepts a CPU-type Vulkan device such as lavapipe),
# then prints one JSON object: {"sinkstream", "llamacpp_cpu", "llamacpp_vulkan", "ratios", "load_avg"}
# where each ratio is sinkstream's tokens/s over llama.cpp's (above 1: sinkstream is faster).
#
# LLAMACPP_CPU_PY / LLAMACPP_VULKAN_PY: python interpreters of two virtual environments with
# llama-cpp-python built for the CPU and for Vulkan (scripts/setup-llamacpp.sh makes them); either
# may be left unset to skip that run. Optional: MODEL (a GGUF; default the one in models/),
# LLAMACPP_THREADS (default: all cores), LLAMACPP_REPEATS (default 3).
# Progress goes to stderr, the JSON to stdout. Run it on an idle machine: every figure is a speed.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
SINKSTREAM=target/release/sinkstream
[ -x "$SINKSTREAM" ] || cargo build --release --locked
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
chmod 700 "$XDG_RUNTIME_DIR"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

llamacpp() { # name python backend
  local py=$2
  if [ -z "$py" ]; then
    echo "bench-compare: $1 skipped (no interpreter given)" >&2
    echo null >"$out/$1.json"
    return
  fi
  local args=(--model "$MODEL" --backend "$3" --repeats "${LLAMACPP_REPEATS:-3}")
  [ -z "${LLAMACPP_THREADS:-}" ] || args+=(--threads "$LLAMACPP_THREADS")
  echo "bench-compare: $1 (load average $(loadavg))" >&2
  loadavg >"$out/$1.load"
  "$py" scripts/bench-llamacpp.py "${args[@]}" >"$out/$1.json"
}

echo "bench-compare: sinkstream (load average $(loadavg))" >&2
loadavg >"$out/sinkstream.load"
"$SINKSTREAM" bench --json --model "$MODEL" --positions 1000 --latency-tokens 16 \
  --recompute-tokens 0 >"$out/sinkstream.json"
llamacpp llamacpp_cpu "${LLAMACPP_CPU_PY:-}" cpu
GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}" \
  llamacpp llamacpp_vulkan "${LLAMACPP_VULKAN_PY:-}" vulkan
loadavg >"$out/end.load"

python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path

d = Path(sys.argv[1])
r = {k: json.loads((d / f"{k}.json").read_text())
     for k in ("sinkstream", "llamacpp_cpu", "llamacpp_vulkan")}
s = r["sinkstream"]

def ratio(ours, other, key):
    return None if other is None else ours / other[key]

r["ratios"] = {
    "decode_vs_cpu": ratio(s["decode_tokens_per_s"], r["llamacpp_cpu"], "gen_tokens_per_s"),
    "decode_vs_vulkan": ratio(s["decode_tokens_per_s"], r["llamacpp_vulkan"], "gen_tokens_per_s"),
    "decode_pipelined_vs_cpu": ratio(s["decode_pipelined_tokens_per_s"], r["llamacpp_cpu"], "gen_tokens_per_s"),
    "decode_pipelined_vs_vulkan": ratio(s["decode_pipelined_tokens_per_s"], r["llamacpp_vulkan"], "gen_tokens_per_s"),
    "prefill_vs_cpu": ratio(s["prefill_tokens_per_s"], r["llamacpp_cpu"], "prompt_tokens_per_s"),
    "prefill_vs_vulkan": ratio(s["prefill_tokens_per_s"], r["llamacpp_vulkan"], "prompt_tokens_per_s"),
}
r["load_avg"] = {f.stem: [float(x) for x in f.read_text().split()]
                 for f in sorted(d.glob("*.load"))}
print(json.dumps(r))
EOF
