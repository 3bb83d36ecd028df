#!/usr/bin/env python3
"""llama.cpp baseline for `sinkstream bench`: the same GGUF, the same machine, the same shape of run.

Measures, through llama-cpp-python (llama_cpp.Llama, n_ctx 2048, fixed seed):
  - prefill: one prompt of exactly 512 tokens (the start of a text file, Emma by default),
    tokens/s;
  - decode: 128 greedy tokens right after that prompt (positions 512..639; EOS is never
    checked, so all 128 are produced), tokens/s, and the median and p95 of the per-token
    latency (one step = evaluate the last token, then pick the next one greedily).
A warm-up run (the full prompt and a few decode steps) comes first and is not counted; then
--repeats runs, reported as medians (latency percentiles over the steps of all runs). Prints one
JSON object on stdout.

Dependency: llama-cpp-python 0.3.36, built from source for each backend into its own virtual
environment by scripts/setup-llamacpp.sh (CMake builds of llama.cpp, about 10 minutes each); --backend only labels the run and sets
n_gpu_layers (0 for cpu, -1 = all layers for vulkan). llama.cpp skips CPU-type Vulkan devices
such as Mesa's lavapipe unless they are named: GGML_VK_VISIBLE_DEVICES=0.

  python scripts/bench-llamacpp.py --backend cpu
  GGML_VK_VISIBLE_DEVICES=0 python scripts/bench-llamacpp.py --backend vulkan
"""

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from pathlib import Path

import llama_cpp

REPO = Path(__file__).resolve().parent.parent
PROMPT_TOKENS = 512
GEN_TOKENS = 128
SEED = 1234


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list (as sinkstream bench reports it)."""
    return sorted_values[round((len(sorted_values) - 1) * p)]


class LogCapture:
    """Keeps llama.cpp's log lines (printed nowhere) to learn which device the model went to."""

    def __init__(self):
        self.lines = []
        self._cb = llama_cpp.llama_log_callback(self._log)  # keep a reference alive
        llama_cpp.llama_log_set(self._cb, ctypes.c_void_p(0))

    def _log(self, level, text, user_data):
        self.lines.append(text.decode("utf-8", "replace"))

    def devices(self):
        text = "".join(self.lines)
        out = []
        for line in text.splitlines():
            if "using device " in line:
                out.append(line.split("using device ", 1)[1].strip())
        return out


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def prompt_tokens(llm, text_path, n):
    text = Path(text_path).read_text(encoding="utf-8")
    chars = 4 * n
    while True:
        toks = llm.tokenize(text[:chars].encode("utf-8"), add_bos=False, special=False)
        if len(toks) > n or chars >= len(text):
            break
        chars *= 2
    if len(toks) < n:
        sys.exit(f"{text_path}: only {len(toks)} tokens, {n} needed")
    return toks[:n]


def run_once(llm, sampler, prompt, gen_tokens):
    """One prefill of `prompt` from an empty cache, then `gen_tokens` greedy steps.
    Returns (prefill seconds, per-step seconds, generated tokens)."""
    ctx = llm.ctx
    llm.reset()  # eval() below clears the KV cache from position 0 on
    t0 = time.perf_counter()
    llm.eval(prompt)
    llama_cpp.llama_synchronize(ctx)
    prefill_s = time.perf_counter() - t0
    token = llama_cpp.llama_sampler_sample(sampler, ctx, -1)
    steps, generated = [], []
    for _ in range(gen_tokens):
        t = time.perf_counter()
        llm.eval([token])
        token = llama_cpp.llama_sampler_sample(sampler, ctx, -1)  # reads the logits: syncs
        steps.append(time.perf_counter() - t)
        generated.append(token)
    return prefill_s, steps, generated


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--backend", choices=["cpu", "vulkan"], default="cpu",
                    help="label of the run; vulkan offloads every layer (n_gpu_layers=-1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="CPU threads (default: all cores)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--text", default=str(REPO / "data/austen/emma.txt"),
                    help="text whose first 512 tokens are the prompt")
    a = ap.parse_args()
    if a.repeats < 1 or a.threads < 1:
        ap.error("--repeats and --threads must be at least 1")

    log = LogCapture()
    load_avg_start = os.getloadavg()
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_ctx=2048,
        n_batch=PROMPT_TOKENS,
        n_ubatch=PROMPT_TOKENS,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        n_gpu_layers=-1 if a.backend == "vulkan" else 0,
        seed=SEED,
        verbose=False,
    )
    prompt = prompt_tokens(llm, a.text, PROMPT_TOKENS)
    sampler = llama_cpp.llama_sampler_init_greedy()
    try:
        run_once(llm, sampler, prompt, 4)  # warm-up: first-use costs (pipelines, pages, caches)
        runs = [run_once(llm, sampler, prompt, GEN_TOKENS) for _ in range(a.repeats)]
    finally:
        llama_cpp.llama_sampler_free(sampler)

    prefill = [PROMPT_TOKENS / r[0] for r in runs]
    gen = [GEN_TOKENS / sum(r[1]) for r in runs]
    steps = sorted(s for r in runs for s in r[1])
    devices = log.devices()
    out = {
        "engine": "llama.cpp",
        "backend": a.backend,
        "device": "; ".join(devices) if devices else f"CPU: {cpu_name()}",
        "threads": a.threads,
        "llama_cpp_python": llama_cpp.__version__,
        "model": os.path.basename(a.model),
        "prompt_tokens": PROMPT_TOKENS,
        "prompt_tokens_per_s": statistics.median(prefill),
        "gen_tokens": GEN_TOKENS,
        "gen_tokens_per_s": statistics.median(gen),
        "latency_median_ms": percentile(steps, 0.5) * 1e3,
        "latency_p95_ms": percentile(steps, 0.95) * 1e3,
        "repeats": a.repeats,
        "runs": [{"prompt_tokens_per_s": p, "gen_tokens_per_s": g} for p, g in zip(prefill, gen)],
        "gen_text_start": llm.detokenize(runs[-1][2][:24]).decode("utf-8", "replace"),
        "load_avg_start": load_avg_start,
        "load_avg_end": os.getloadavg(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
