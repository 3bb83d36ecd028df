//! `sinkstream bench`: prefill and decode speed, per-token decode latency deep into a stream,
//! recompute against the sink cache, dispatches, submissions and allocations per token, memory.
//! Every figure is measured here, on the adapter in use; nothing is extrapolated.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::engine::{OpTime, Picked, Select};
use crate::error::Result;
use crate::eval::rss_bytes;
use crate::{GpuModel, Logits, Policy, Session};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Prompt length of the prefill measurement.
    pub prompt_tokens: usize,
    /// Greedy tokens of the decode measurement.
    pub decode_tokens: usize,
    /// Stream positions at which the sink cache's per-token latency is measured.
    pub positions: Vec<u64>,
    /// Decode steps timed at each position.
    pub latency_tokens: usize,
    pub sinks: usize,
    pub window: usize,
    /// Tokens per block when streaming to a position and when prefilling.
    pub batch: usize,
    /// Reach a position without computing the tokens before it (the cache then holds stale
    /// values; the work per token is the same, since it depends only on the cache's geometry).
    pub fast_forward: bool,
    /// Tokens timed under recompute (each re-runs the model over the window).
    pub recompute_tokens: usize,
    /// Also time one decode step and one prefill block per kind of kernel (GPU timestamps).
    pub profile: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            prompt_tokens: 512,
            decode_tokens: 128,
            positions: vec![1_000, 10_000, 100_000],
            latency_tokens: 32,
            sinks: 4,
            window: 1020,
            batch: 64,
            fast_forward: false,
            recompute_tokens: 2,
            profile: false,
        }
    }
}

/// Per-token decode latency at one stream position.
#[derive(Clone, Debug)]
pub struct Latency {
    pub policy: String,
    pub position: u64,
    pub median_ms: f64,
    pub p95_ms: f64,
    /// GPU memory the session holds (its cache and scratch; the weights are shared).
    pub gpu_bytes: u64,
    pub reached_by: &'static str,
}

#[derive(Clone, Debug)]
pub struct BenchReport {
    pub adapter: String,
    pub backend: String,
    /// Whether the matmul used subgroup broadcasts (Gpu::subgroups).
    pub subgroups: bool,
    pub prefill_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens: usize,
    /// Step by step: each token read back before the next step is submitted (as in sampling).
    pub decode_tokens_per_s: f64,
    /// Pipelined greedy (Session::decode_greedy): the next step in flight while a token comes
    /// back; measured in turns with the step-by-step decode on the same session.
    pub decode_pipelined_tokens_per_s: f64,
    pub latency: Vec<Latency>,
    /// (window, ms per token) of recompute, and ms per token of the sink cache of the same size.
    pub recompute: Option<(usize, f64, f64)>,
    pub dispatches_per_token: f64,
    pub submissions_per_token: f64,
    pub objects_created_per_token: f64,
    pub gpu_bytes: u64,
    pub peak_rss_bytes: Option<u64>,
    pub profile: Vec<(String, Vec<OpTime>)>,
}

/// Peak resident set size of this process (VmHWM of /proc/self/status), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Deterministic filler tokens (the work per token does not depend on which tokens they are).
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Greedy decode steps from the session's current state, the token picked on the GPU as in
/// generation (only its id comes back); returns each step's seconds.
fn decode_steps(s: &mut Session, first: u32, n: usize) -> Result<Vec<f64>> {
    let greedy = Select {
        k: 1,
        penalty: 1.0,
        ..Select::default()
    };
    let mut next = first;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        next = match s.feed_select_blocking(&[next], &greedy)? {
            Picked::Candidates(c) => c.first().map_or(0, |c| c.0),
            Picked::Row(row) => argmax(&row),
        };
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// A new session of `policy` at stream position `p`, reached by fast-forward or by streaming
/// `filler` tokens; with the GPU bytes the session itself holds.
fn session_at(
    model: &Arc<GpuModel>,
    policy: Policy,
    p: u64,
    o: &BenchOptions,
    filler: &[u32],
    progress: &mut dyn FnMut(&str),
) -> Result<(Session, u64)> {
    let gpu = &model.gpu;
    let before = gpu.allocated_bytes();
    let mut s = Session::new(model.clone(), policy, o.batch)?;
    let own = gpu.allocated_bytes() - before;
    if o.fast_forward {
        s.fast_forward(p);
    } else {
        while s.count() < p {
            let k = ((p - s.count()) as usize).min(o.batch);
            s.feed_blocking(&filler[..k], Logits::Skip)?;
            if s.count() % 1024 < k as u64 {
                progress(&format!("streaming to {p}: {}", s.count()));
            }
        }
    }
    Ok((s, own))
}

/// Runs the benchmark; `progress` receives a line per phase (the CLI prints it on stderr).
pub fn run(
    model: &Arc<GpuModel>,
    o: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport> {
    let gpu = model.gpu.clone();
    let vocab = model.config.vocab;
    let sink = Policy::Sink {
        sinks: o.sinks,
        window: o.window,
    };

    // Prefill, then greedy decode, on a fresh sink session.
    progress(&format!("prefill: {} tokens", o.prompt_tokens));
    let mut s = Session::new(model.clone(), sink, o.batch)?;
    let prompt = tokens(o.prompt_tokens.max(1), vocab, 1);
    // warm-up of both kernel variants (single token and block): drivers may compile on first use
    s.feed_blocking(&prompt[..2.min(prompt.len())], Logits::Last)?;
    s.feed_blocking(&prompt[..1], Logits::Last)?;
    s.reset();
    let t0 = Instant::now();
    let logits = s.feed_blocking(&prompt, Logits::Last)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    progress(&format!("decode: {} tokens", o.decode_tokens));
    let c0 = gpu.objects_created();
    let (mut d_serial, mut s_serial) = (0u64, 0u64);
    // in turns of up to 32 tokens: step by step, then pipelined, so both see the same load
    let mut times = Vec::with_capacity(o.decode_tokens);
    let (mut piped_s, mut piped_n) = (0.0, 0);
    let mut next = argmax(&logits);
    while times.len() < o.decode_tokens {
        let k = 32.min(o.decode_tokens - times.len());
        let (d1, s1) = (s.stats().dispatches, s.stats().submissions);
        let t = decode_steps(&mut s, next, k)?;
        times.extend(t);
        let (d2, s2) = (s.stats().dispatches, s.stats().submissions);
        d_serial += d2 - d1;
        s_serial += s2 - s1;
        let t0 = Instant::now();
        let ids = s.decode_greedy_blocking(next, k, |_| false)?;
        piped_s += t0.elapsed().as_secs_f64();
        piped_n += ids.len();
        next = *ids.last().unwrap_or(&next);
    }
    let n = o.decode_tokens.max(1) as f64;
    let dispatches_per_token = d_serial as f64 / n;
    let submissions_per_token = s_serial as f64 / n;
    let objects_created_per_token = (gpu.objects_created() - c0) as f64 / (n + piped_n as f64);
    let decode_s: f64 = times.iter().sum();

    // Latency deep into the stream: one session per position, reached first, then timed in
    // interleaved rounds (a few steps at each position in turn), so that the machine's load
    // drifting during the run falls on every position alike.
    let mut positions = o.positions.clone();
    positions.sort_unstable();
    positions.dedup();
    let filler = tokens(o.batch, vocab, 2);
    let reached_by = if o.fast_forward {
        "fast-forward"
    } else {
        "streaming"
    };
    let mut sessions = Vec::new();
    for &p in &positions {
        let (s, own) = session_at(model, sink, p, o, &filler, progress)?;
        sessions.push((s, own, Vec::with_capacity(o.latency_tokens)));
    }
    let all_created = gpu.allocated_bytes();
    let per_round = 4.min(o.latency_tokens);
    let mut done = 0;
    while done < o.latency_tokens {
        let k = per_round.min(o.latency_tokens - done);
        for (s, _, t) in sessions.iter_mut() {
            t.extend(decode_steps(s, 1, k)?);
        }
        done += k;
    }
    let growth = gpu.allocated_bytes() - all_created;
    let mut latency = Vec::new();
    for (&p, (_, own, mut t)) in positions.iter().zip(sessions) {
        t.sort_by(f64::total_cmp);
        latency.push(Latency {
            policy: format!("sink {}+{}", o.sinks, o.window),
            position: p,
            median_ms: percentile(&t, 0.5) * 1e3,
            p95_ms: percentile(&t, 0.95) * 1e3,
            gpu_bytes: own + growth,
            reached_by,
        });
        progress(&format!(
            "position {p}: median {:.1} ms per token",
            percentile(&t, 0.5) * 1e3
        ));
    }

    // Dense attention at the positions its memory allows (the model's context).
    let ctx = model.config.context_len as u64;
    if let Some(&p) = positions
        .iter()
        .find(|&&p| p + o.latency_tokens as u64 <= ctx)
    {
        let dense = Policy::Dense {
            max: model.config.context_len,
        };
        let (mut s, own) = session_at(model, dense, p, o, &filler, progress)?;
        let mut t = decode_steps(&mut s, 1, o.latency_tokens)?;
        t.sort_by(f64::total_cmp);
        latency.push(Latency {
            policy: format!("dense (up to {ctx})"),
            position: p,
            median_ms: percentile(&t, 0.5) * 1e3,
            p95_ms: percentile(&t, 0.95) * 1e3,
            gpu_bytes: own,
            reached_by,
        });
    }

    // Recompute at window S + W against the sink cache of the same size, both with a full cache.
    let mut recompute = None;
    if o.recompute_tokens > 0 {
        let w = o.sinks + o.window;
        progress(&format!(
            "recompute: {} tokens over a window of {w}",
            o.recompute_tokens
        ));
        let mut r = Session::new(model.clone(), Policy::Recompute { window: w }, o.batch)?;
        let hist = tokens(w, vocab, 3);
        // fill the history without timing: from here on every token re-runs the model over w
        r.feed_blocking(&hist[..w - 1], Logits::Skip)?;
        let t = decode_steps(&mut r, hist[w - 1], o.recompute_tokens)?;
        let rec = t.iter().sum::<f64>() / t.len() as f64;
        let sink_ms = latency
            .iter()
            .find(|l| l.policy.starts_with("sink"))
            .map(|l| l.median_ms)
            .unwrap_or(decode_s / n * 1e3);
        recompute = Some((w, rec * 1e3, sink_ms));
    }

    let mut profile = Vec::new();
    if o.profile {
        let mut s = Session::new(model.clone(), sink, o.batch)?;
        let p = tokens(o.batch, vocab, 4);
        s.feed_blocking(&p, Logits::Skip)?;
        profile.push(("decode step".to_string(), s.profile_block(&p[..1])?));
        profile.push((
            format!("prefill block of {}", o.batch),
            s.profile_block(&p)?,
        ));
        // the same step once the cache is full: every query attends to all S + W keys
        s.fast_forward((sink.rule().slots() + 1000) as u64);
        profile.push((
            format!("decode step, full cache ({} keys)", sink.rule().slots()),
            s.profile_block(&p[..1])?,
        ));
    }

    Ok(BenchReport {
        adapter: gpu.info.name.clone(),
        backend: format!("{:?}", gpu.info.backend),
        subgroups: gpu.subgroups,
        prefill_tokens: prompt.len(),
        prefill_tokens_per_s: prompt.len() as f64 / prefill_s,
        decode_tokens: o.decode_tokens,
        decode_tokens_per_s: n / decode_s,
        decode_pipelined_tokens_per_s: piped_n as f64 / piped_s,
        latency,
        recompute,
        dispatches_per_token,
        submissions_per_token,
        objects_created_per_token,
        gpu_bytes: gpu.allocated_bytes(),
        peak_rss_bytes: peak_rss_bytes().or_else(rss_bytes),
        profile,
    })
}

impl BenchReport {
    pub fn to_json(&self) -> Value {
        json!({
            "adapter": self.adapter,
            "backend": self.backend,
            "subgroups": self.subgroups,
            "prefill_tokens": self.prefill_tokens,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens": self.decode_tokens,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "decode_pipelined_tokens_per_s": self.decode_pipelined_tokens_per_s,
            "latency": self.latency.iter().map(|l| json!({
                "policy": l.policy,
                "position": l.position,
                "median_ms": l.median_ms,
                "p95_ms": l.p95_ms,
                "gpu_bytes": l.gpu_bytes,
                "reached_by": l.reached_by,
            })).collect::<Vec<_>>(),
            "recompute": self.recompute.map(|(w, r, s)| json!({
                "window": w,
                "recompute_ms_per_token": r,
                "sink_ms_per_token": s,
                "sink_speedup": r / s,
            })),
            "dispatches_per_token": self.dispatches_per_token,
            "submissions_per_token": self.submissions_per_token,
            "gpu_objects_created_per_token": self.objects_created_per_token,
            "gpu_bytes": self.gpu_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "profile": self.profile.iter().map(|(name, ops)| json!({
                "block": name,
                "ops": ops.iter().map(|o| json!({
                    "kernel": o.name, "dispatches": o.dispatches, "ms": o.seconds * 1e3,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let mut line = |s: String| {
            t.push_str(&s);
            t.push('\n');
        };
        line(format!(
            "adapter      {} ({}), {}",
            self.adapter,
            self.backend,
            if self.subgroups {
                "subgroup kernels"
            } else {
                "plain kernels (no subgroups)"
            }
        ));
        line(format!(
            "prefill      {:.1} tokens/s ({} tokens)",
            self.prefill_tokens_per_s, self.prefill_tokens
        ));
        line(format!(
            "decode       {:.2} tokens/s ({} tokens, greedy, step by step)",
            self.decode_tokens_per_s, self.decode_tokens
        ));
        line(format!(
            "decode       {:.2} tokens/s (the same, pipelined: next step in flight)",
            self.decode_pipelined_tokens_per_s
        ));
        for l in &self.latency {
            line(format!(
                "latency      {:<22} at {:>7}: median {:7.2} ms, p95 {:7.2} ms, session GPU {} bytes ({})",
                l.policy, l.position, l.median_ms, l.p95_ms, l.gpu_bytes, l.reached_by
            ));
        }
        if let Some((w, r, s)) = self.recompute {
            line(format!(
                "recompute    window {w}: {r:.1} ms per token, sink {s:.2} ms: sink is {:.1}x faster",
                r / s
            ));
        }
        line(format!(
            "per token    {:.1} dispatches, {:.2} submissions, {:.2} GPU objects created",
            self.dispatches_per_token, self.submissions_per_token, self.objects_created_per_token
        ));
        line(format!(
            "memory       GPU {} bytes, peak RSS {}",
            self.gpu_bytes,
            self.peak_rss_bytes
                .map_or("-".to_string(), |b| format!("{b} bytes"))
        ));
        for (name, ops) in &self.profile {
            let total: f64 = ops.iter().map(|o| o.seconds).sum();
            line(format!(
                "profile      {name}: {:.2} ms on the GPU",
                total * 1e3
            ));
            for o in ops {
                line(format!(
                    "  {:<18} {:>5} dispatches {:9.3} ms {:5.1}%",
                    o.name,
                    o.dispatches,
                    o.seconds * 1e3,
                    100.0 * o.seconds / total
                ));
            }
        }
        t
    }
}
