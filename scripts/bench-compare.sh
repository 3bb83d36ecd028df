#!/usr/bin/env bash
# sinkstream against llama.cpp on this machine with the same GGUF, side by side in one go: ROUNDS
# rounds (default 3), each running
#   1. target/release/sinkstream bench (prefill 512 tokens, decode 128 greedy, latency at 1000),
#   2. scripts/bench-llamacpp.py --backend cpu    with $LLAMACPP_CPU_PY,
#   3. scripts/bench-llamacpp.py --backend vulkan with $LLAMACPP_VULKAN_PY (GGML_VK_VISIBLE_DEVICES=0
#      unless set, so that llama.cpp accepts a CPU-type Vulkan device such as lavapipe),
# one after the other, so that a slow spell of a shared machine hits every engine alike. Prints
# one JSON object: {"sinkstream", "llamacpp_cpu", "llamacpp_vulkan", "ratios", "ratios_per_round",
# "rounds", "load_avg"}: each engine's speeds are medians over the rounds (its "runs" hold every
# round's report), each ratio is sinkstream's median tokens/s over llama.cpp's (above 1:
# sinkstream is faster), and ratios_per_round the same ratios within each round.
#
# LLAMACPP_CPU_PY / LLAMACPP_VULKAN_PY: python interpreters of two virtual environments with
# llama-cpp-python built for the CPU and for Vulkan (scripts/setup-llamacpp.sh makes them); either
# may be left unset to skip that engine. Optional: MODEL (a GGUF; default the one in models/),
# LLAMACPP_THREADS (default: all cores), ROUNDS (default 3).
# Progress goes to stderr, the JSON to stdout. Run it on an idle machine: every figure is a speed.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
ROUNDS="${ROUNDS:-3}"
case "$ROUNDS" in
  '' | *[!0-9]* | 0) echo "bench-compare: ROUNDS must be a whole number >= 1, not '$ROUNDS'" >&2; exit 2 ;;
esac
SINKSTREAM=target/release/sinkstream
[ -x "$SINKSTREAM" ] || cargo build --release --locked
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
chmod 700 "$XDG_RUNTIME_DIR"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

llamacpp() { # name python backend round
  local py=$2
  [ -n "$py" ] || return 0
  local args=(--model "$MODEL" --backend "$3" --repeats 1)
  [ -z "${LLAMACPP_THREADS:-}" ] || args+=(--threads "$LLAMACPP_THREADS")
  echo "bench-compare: round $4: $1 (load average $(loadavg))" >&2
  loadavg >"$out/$1.$4.load"
  "$py" scripts/bench-llamacpp.py "${args[@]}" >"$out/$1.$4.json"
}

[ -n "${LLAMACPP_CPU_PY:-}" ] || echo "bench-compare: llamacpp_cpu skipped (no interpreter given)" >&2
[ -n "${LLAMACPP_VULKAN_PY:-}" ] || echo "bench-compare: llamacpp_vulkan skipped (no interpreter given)" >&2
for round in $(seq "$ROUNDS"); do
  echo "bench-compare: round $round: sinkstream (load average $(loadavg))" >&2
  loadavg >"$out/sinkstream.$round.load"
  "$SINKSTREAM" bench --json --model "$MODEL" --positions 1000 --latency-tokens 16 \
    --recompute-tokens 0 >"$out/sinkstream.$round.json"
  llamacpp llamacpp_cpu "${LLAMACPP_CPU_PY:-}" cpu "$round"
  GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}" \
    llamacpp llamacpp_vulkan "${LLAMACPP_VULKAN_PY:-}" vulkan "$round"
done
loadavg >"$out/end.load"

python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
from pathlib import Path

d, rounds = Path(sys.argv[1]), int(sys.argv[2])
SPEEDS = {
    "sinkstream": ("decode_tokens_per_s", "decode_pipelined_tokens_per_s", "prefill_tokens_per_s"),
    "llamacpp": ("gen_tokens_per_s", "prompt_tokens_per_s"),
}


def engine(name):
    """The engine's runs in round order, and their merge: the last report with medians."""
    runs = [json.loads((d / f"{name}.{i}.json").read_text())
            for i in range(1, rounds + 1) if (d / f"{name}.{i}.json").exists()]
    if not runs:
        return None, []
    merged = dict(runs[-1])
    for k in SPEEDS["sinkstream" if name == "sinkstream" else "llamacpp"]:
        merged[k] = statistics.median(r[k] for r in runs)
    merged["runs"] = runs
    return merged, runs


def ratios(s, cpu, vk):
    def q(ours, other, key):
        return None if other is None else ours / other[key]
    return {
        "decode_vs_cpu": q(s["decode_tokens_per_s"], cpu, "gen_tokens_per_s"),
        "decode_vs_vulkan": q(s["decode_tokens_per_s"], vk, "gen_tokens_per_s"),
        "decode_pipelined_vs_cpu": q(s["decode_pipelined_tokens_per_s"], cpu, "gen_tokens_per_s"),
        "decode_pipelined_vs_vulkan": q(s["decode_pipelined_tokens_per_s"], vk, "gen_tokens_per_s"),
        "prefill_vs_cpu": q(s["prefill_tokens_per_s"], cpu, "prompt_tokens_per_s"),
        "prefill_vs_vulkan": q(s["prefill_tokens_per_s"], vk, "prompt_tokens_per_s"),
    }


r, per = {}, {}
for k in ("sinkstream", "llamacpp_cpu", "llamacpp_vulkan"):
    r[k], per[k] = engine(k)
at = lambda runs, i: runs[i] if i < len(runs) else None
r["ratios"] = ratios(r["sinkstream"], r["llamacpp_cpu"], r["llamacpp_vulkan"])
r["ratios_per_round"] = [ratios(s, at(per["llamacpp_cpu"], i), at(per["llamacpp_vulkan"], i))
                         for i, s in enumerate(per["sinkstream"])]
r["rounds"] = rounds
r["load_avg"] = {f.stem: [float(x) for x in f.read_text().split()]
                 for f in sorted(d.glob("*.load"))}
print(json.dumps(r))
PY
