//! Streaming evaluation, the paper's way (docs/results.md): the negative log-likelihood of every
//! token of a text streamed through a policy's cache, perplexity statistics, moving averages, the
//! sink-count ablation and the four-policy comparison. Library code: no CLI dependencies.
//!
//! Target `t` (t >= 1) is token `ids[t]`, predicted from the logits after feeding `ids[t-1]`.
//! Streaming policies (sink, window, dense) feed the text in blocks of `chunk` tokens with
//! [`Logits::All`]; every block is exact (each token gets the attention it would get token by
//! token), so `chunk` changes the speed, not the result. `chunk = 1` is the paper's protocol.
//! Recompute re-runs the model over the last W tokens for every target, positions 0..W-1: it can
//! start anywhere in the text, which is what makes a short recompute run after the cache filled
//! affordable.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::cpu;
use crate::engine::{GpuModel, Logits, Session};
use crate::error::{Error, Result};
use crate::Policy;

/// How to evaluate.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Tokens per GPU block for streaming policies (1 = token by token).
    pub chunk: usize,
    /// Tokens per GPU block for each of recompute's re-runs (its window is best fed in one).
    pub recompute_batch: usize,
    /// Record GPU bytes and process RSS about every this many fed tokens (0: start and end only).
    pub memory_every: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            chunk: 64,
            recompute_batch: 128,
            memory_every: 0,
        }
    }
}

/// Memory in use (and time taken) at one point of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemorySample {
    /// Tokens fed so far.
    pub token: usize,
    /// Seconds since the run started: the speed between two samples shows whether the cost per
    /// token changes as the stream goes on.
    pub seconds: f64,
    /// Bytes of every GPU buffer allocated (weights, cache, activations).
    pub gpu_bytes: u64,
    /// The process's resident set size, where the platform tells it (Linux).
    pub rss_bytes: Option<u64>,
}

/// The resident set size of this process (VmRSS of /proc/self/status), in bytes.
pub fn rss_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// One policy's run over one text.
#[derive(Clone, Debug)]
pub struct StreamEval {
    pub policy: Policy,
    /// Block size used (recompute: 1, one target at a time).
    pub chunk: usize,
    /// The targets evaluated: `nll[k]` belongs to target `targets.start + k`.
    pub targets: Range<usize>,
    pub nll: Vec<f64>,
    /// Wall time of the evaluation (session creation and model loading excluded).
    pub seconds: f64,
    /// Tokens pushed through the model (recompute: every re-run's tokens).
    pub tokens_fed: usize,
    /// Memory at the start, at checkpoints and at the end.
    pub memory: Vec<MemorySample>,
}

impl StreamEval {
    /// Targets predicted per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.nll.len() as f64 / self.seconds.max(1e-9)
    }

    pub fn mean_nll(&self) -> f64 {
        mean(&self.nll).unwrap_or(f64::NAN)
    }

    pub fn ppl(&self) -> f64 {
        self.mean_nll().exp()
    }

    /// The NLLs of the targets in `r` that this run evaluated.
    pub fn nll_in(&self, r: Range<usize>) -> &[f64] {
        let lo = r.start.max(self.targets.start);
        let hi = r.end.min(self.targets.end);
        if lo >= hi {
            return &[];
        }
        &self.nll[lo - self.targets.start..hi - self.targets.start]
    }

    /// Perplexity over the targets in `r` this run evaluated; None if there are none.
    pub fn ppl_in(&self, r: Range<usize>) -> Option<f64> {
        perplexity(self.nll_in(r))
    }

    /// Perplexity after the cache first filled: targets t > S+W (every one of their queries
    /// attends to a full cache). None for dense, whose cache never fills, or a short run.
    pub fn ppl_after_fill(&self) -> Option<f64> {
        self.after_fill().and_then(|r| self.ppl_in(r))
    }

    fn after_fill(&self) -> Option<Range<usize>> {
        match self.policy {
            Policy::Dense { .. } => None,
            p => Some(p.rule().slots() + 1..usize::MAX),
        }
    }

    /// Memory at the start and the end of the run.
    pub fn memory_start_end(&self) -> Option<(MemorySample, MemorySample)> {
        Some((*self.memory.first()?, *self.memory.last()?))
    }

    /// A label such as `sink 4+124`.
    pub fn label(&self) -> String {
        policy_label(self.policy)
    }

    /// Summary as JSON (no per-token values).
    pub fn summary_json(&self) -> Value {
        let rule = self.policy.rule();
        let after = self.after_fill().map(|r| self.nll_in(r).len()).unwrap_or(0);
        let mem = |m: Option<&MemorySample>| {
            m.map(|m| json!({"token": m.token, "seconds": m.seconds, "gpu_bytes": m.gpu_bytes, "rss_bytes": m.rss_bytes}))
        };
        json!({
            "policy": self.policy.name(),
            "label": self.label(),
            "sinks": rule.sinks,
            "window": rule.window,
            "cache_slots": rule.slots(),
            "chunk": self.chunk,
            "first_target": self.targets.start,
            "predicted": self.nll.len(),
            "ppl": self.ppl(),
            "mean_nll": self.mean_nll(),
            "ppl_after_fill": self.ppl_after_fill(),
            "tokens_after_fill": after,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second(),
            "tokens_fed": self.tokens_fed,
            "gpu_bytes_start": self.memory.first().map(|m| m.gpu_bytes),
            "gpu_bytes_end": self.memory.last().map(|m| m.gpu_bytes),
            "rss_start": self.memory.first().and_then(|m| m.rss_bytes),
            "rss_end": self.memory.last().and_then(|m| m.rss_bytes),
            "memory": self.memory.iter().map(|m| mem(Some(m))).collect::<Vec<_>>(),
        })
    }
}

/// `sink 4+124`, `window 128`, `dense`, `recompute 128`.
pub fn policy_label(p: Policy) -> String {
    match p {
        Policy::Sink { sinks, window } => format!("sink {sinks}+{window}"),
        Policy::Window { window } => format!("window {window}"),
        Policy::Dense { .. } => "dense".into(),
        Policy::Recompute { window } => format!("recompute {window}"),
    }
}

/// Arithmetic mean; None for an empty slice.
pub fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// exp(mean NLL); None for an empty slice.
pub fn perplexity(nll: &[f64]) -> Option<f64> {
    mean(nll).map(f64::exp)
}

/// Trailing moving average: out[i] is the mean of v[i+1-w ..= i] (fewer at the start).
pub fn moving_average(v: &[f64], w: usize) -> Vec<f64> {
    let w = w.max(1);
    let mut out = Vec::with_capacity(v.len());
    let mut sum = 0.0;
    for i in 0..v.len() {
        sum += v[i];
        if i >= w {
            sum -= v[i - w];
        }
        out.push(sum / (i + 1).min(w) as f64);
    }
    out
}

/// Perplexity of consecutive segments of `len` targets (the last may be shorter):
/// (first target, end target exclusive, perplexity).
pub fn segment_ppl(first: usize, nll: &[f64], len: usize) -> Vec<(usize, usize, f64)> {
    let len = len.max(1);
    nll.chunks(len)
        .enumerate()
        .map(|(i, c)| {
            let a = first + i * len;
            (a, a + c.len(), perplexity(c).unwrap_or(f64::NAN))
        })
        .collect()
}

fn checked_nll(logits: &[f32], target: u32, t: usize) -> Result<f64> {
    let v = cpu::nll(logits, target);
    if !v.is_finite() {
        return Err(Error::gpu(format!(
            "the model's log-likelihood of token {t} is not finite ({v}); the GPU produced bad logits"
        )));
    }
    Ok(v)
}

fn check_targets(ids: &[u32], targets: &Range<usize>) -> Result<()> {
    if targets.start == 0 || targets.start >= targets.end || targets.end > ids.len() {
        return Err(Error::invalid(format!(
            "targets {}..{} are not a non-empty range within 1..{} (a text of {} tokens)",
            targets.start,
            targets.end,
            ids.len(),
            ids.len()
        )));
    }
    Ok(())
}

/// Evaluates `policy` on targets `targets` (1 <= start < end <= ids.len()) of `ids`.
///
/// Streaming policies feed `ids[..targets.end - 1]` from the start (a stream cannot skip) and
/// keep the NLLs of `targets`; recompute evaluates only `targets`, each from the W tokens before
/// it. `progress` is called with the number of targets each step finished.
pub fn evaluate(
    model: &Arc<GpuModel>,
    policy: Policy,
    ids: &[u32],
    targets: Range<usize>,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<StreamEval> {
    check_targets(ids, &targets)?;
    if opts.chunk == 0 || opts.recompute_batch == 0 {
        return Err(Error::invalid("the chunk size must be at least 1"));
    }
    if let Policy::Recompute { window } = policy {
        return recompute(model, window, ids, targets, opts, progress);
    }
    let fed = &ids[..targets.end - 1];
    if let Policy::Dense { max } = policy {
        if fed.len() > max {
            return Err(Error::CacheFull(format!(
                "the dense policy holds {max} tokens but {} must be fed; raise the maximum context or evaluate fewer tokens",
                fed.len()
            )));
        }
    }
    let chunk = opts.chunk;
    let mut session = Session::new(model.clone(), policy, chunk)?;
    let vocab = model.config.vocab;
    let t0 = Instant::now();
    let sample = |s: &Session, token: usize| MemorySample {
        token,
        seconds: t0.elapsed().as_secs_f64(),
        gpu_bytes: s.stats().gpu_bytes,
        rss_bytes: rss_bytes(),
    };
    let mut memory = vec![sample(&session, 0)];
    let mut next_sample = opts.memory_every;
    let mut nll = Vec::with_capacity(targets.len());
    let mut done = 0usize;
    for block in fed.chunks(chunk) {
        let logits = session.feed_blocking(block, Logits::All)?;
        let mut counted = 0;
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            let t = done + i + 1;
            if targets.contains(&t) {
                nll.push(checked_nll(row, ids[t], t)?);
                counted += 1;
            }
        }
        done += block.len();
        progress(counted);
        if opts.memory_every > 0 && done >= next_sample && done < fed.len() {
            memory.push(sample(&session, done));
            next_sample = done + opts.memory_every;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    memory.push(sample(&session, done));
    Ok(StreamEval {
        policy,
        chunk,
        targets,
        nll,
        seconds,
        tokens_fed: done,
        memory,
    })
}

/// Recompute: for each target t, a fresh dense cache of W slots gets `ids[t-W..t]` (fewer at
/// the start) at positions 0.. and the last logits predict `ids[t]`; exactly what
/// `Policy::Recompute` does token by token, but able to start at any target.
fn recompute(
    model: &Arc<GpuModel>,
    window: usize,
    ids: &[u32],
    targets: Range<usize>,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<StreamEval> {
    let batch = opts.recompute_batch.min(window);
    let mut session = Session::new(model.clone(), Policy::Dense { max: window }, batch)?;
    let t0 = Instant::now();
    let sample = |s: &Session, token: usize| MemorySample {
        token,
        seconds: t0.elapsed().as_secs_f64(),
        gpu_bytes: s.stats().gpu_bytes,
        rss_bytes: rss_bytes(),
    };
    let mut memory = vec![sample(&session, 0)];
    let mut nll = Vec::with_capacity(targets.len());
    let mut fed = 0;
    for t in targets.clone() {
        let ctx = &ids[t.saturating_sub(window)..t];
        session.reset();
        let logits = session.feed_blocking(ctx, Logits::Last)?;
        nll.push(checked_nll(&logits, ids[t], t)?);
        fed += ctx.len();
        progress(1);
    }
    let seconds = t0.elapsed().as_secs_f64();
    memory.push(sample(&session, targets.end - 1));
    Ok(StreamEval {
        policy: Policy::Recompute { window },
        chunk: 1,
        targets,
        nll,
        seconds,
        tokens_fed: fed,
        memory,
    })
}

/// The NLLs of the CPU reference (`cpu::CpuSession`, token by token) for targets 1..=`count`.
pub fn cpu_nll(model: &cpu::CpuModel, policy: Policy, ids: &[u32]) -> Result<Vec<f64>> {
    let mut s = cpu::CpuSession::new(model, policy)?;
    let mut out = Vec::with_capacity(ids.len().saturating_sub(1));
    for t in 1..ids.len() {
        let logits = s.step(ids[t - 1])?;
        out.push(cpu::nll(&logits, ids[t]));
    }
    Ok(out)
}

/// The sink-count ablation: for each S, `sink S+(cache-S)`, so every run has the same number
/// of slots (S = 0 is window attention).
pub fn ablation_policies(sinks: &[usize], cache: usize) -> Result<Vec<Policy>> {
    if sinks.is_empty() {
        return Err(Error::invalid("the ablation needs at least one sink count"));
    }
    sinks
        .iter()
        .map(|&s| {
            if s >= cache {
                return Err(Error::invalid(format!(
                    "{s} sinks leave no window in a cache of {cache} slots"
                )));
            }
            let p = Policy::Sink {
                sinks: s,
                window: cache - s,
            };
            p.validate()?;
            Ok(p)
        })
        .collect()
}

/// One run of a comparison or ablation: the policy and the targets it is evaluated on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub policy: Policy,
    pub targets: Range<usize>,
}

/// The paper's comparison for a text of `n` tokens and a cache of `cache` slots:
/// dense (on the first `dense_limit + 1` tokens at most, it stops at the model's context),
/// window C, recompute C (on `recompute_tokens` targets starting right after the cache filled,
/// where it starts to differ from dense) and sink S+(C-S).
pub fn compare_plan(
    n: usize,
    cache: usize,
    sinks: usize,
    recompute_tokens: usize,
    dense_limit: usize,
) -> Result<Vec<Planned>> {
    if n < 2 {
        return Err(Error::invalid(format!(
            "the text gives {n} token(s); at least 2 are needed"
        )));
    }
    if sinks >= cache {
        return Err(Error::invalid(format!(
            "{sinks} sinks leave no window in a cache of {cache} slots"
        )));
    }
    let all = 1..n;
    let mut plan = Vec::new();
    let dense_end = n.min(dense_limit + 1);
    if dense_end >= 2 {
        plan.push(Planned {
            policy: Policy::Dense { max: dense_end - 1 },
            targets: 1..dense_end,
        });
    }
    plan.push(Planned {
        policy: Policy::Window { window: cache },
        targets: all.clone(),
    });
    if recompute_tokens > 0 {
        // Targets t <= C see their whole prefix, as under dense: start where recompute differs.
        let start = (cache + 1).min(n - 1).max(1);
        let end = (start + recompute_tokens).min(n);
        plan.push(Planned {
            policy: Policy::Recompute { window: cache },
            targets: start..end,
        });
    }
    plan.push(Planned {
        policy: Policy::Sink {
            sinks,
            window: cache - sinks,
        },
        targets: all,
    });
    for p in &plan {
        p.policy.validate()?;
    }
    Ok(plan)
}

/// Runs each planned evaluation in turn.
pub fn run_plan(
    model: &Arc<GpuModel>,
    ids: &[u32],
    plan: &[Planned],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<StreamEval>> {
    let mut out = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        out.push(evaluate(
            model,
            p.policy,
            ids,
            p.targets.clone(),
            opts,
            &mut |k| progress(i, k),
        )?);
    }
    Ok(out)
}

fn fmt_ppl(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{p:.2}"))
}

/// The comparison as a markdown table. Columns: perplexity over every target the run covered,
/// after the cache filled (t > C), and on the targets every run covered (the common range, the
/// fairest comparison when recompute or dense stop early).
pub fn table_markdown(runs: &[StreamEval]) -> String {
    let common = common_targets(runs);
    let cr = common
        .as_ref()
        .map_or("-".to_string(), |r| format!("t={}..{}", r.start, r.end - 1));
    let mut s = format!(
        "| policy | cache slots | targets | ppl | ppl after fill | ppl on common {cr} | tokens/s |\n|---|---|---|---|---|---|---|\n"
    );
    for r in runs {
        let slots = match r.policy {
            Policy::Dense { .. } => "all".to_string(),
            p => p.rule().slots().to_string(),
        };
        s += &format!(
            "| {} | {} | t={}..{} | {:.2} | {} | {} | {:.2} |\n",
            r.label(),
            slots,
            r.targets.start,
            r.targets.end - 1,
            r.ppl(),
            fmt_ppl(r.ppl_after_fill()),
            fmt_ppl(common.clone().and_then(|c| r.ppl_in(c))),
            r.tokens_per_second()
        );
    }
    s
}

/// The targets every run evaluated, if they share any.
pub fn common_targets(runs: &[StreamEval]) -> Option<Range<usize>> {
    let lo = runs.iter().map(|r| r.targets.start).max()?;
    let hi = runs.iter().map(|r| r.targets.end).min()?;
    (lo < hi).then_some(lo..hi)
}

/// The comparison as JSON: `common_targets` and one summary per run with `ppl_common`.
pub fn table_json(runs: &[StreamEval]) -> Value {
    let common = common_targets(runs);
    let rows: Vec<Value> = runs
        .iter()
        .map(|r| {
            let mut j = r.summary_json();
            j["ppl_common"] = json!(common.clone().and_then(|c| r.ppl_in(c)));
            j
        })
        .collect();
    json!({
        "common_targets": common.map(|c| [c.start, c.end - 1]),
        "runs": rows,
    })
}

/// A plot series: the moving average of a run's NLL against the target index, thinned to at
/// most `max_points` points.
pub fn smoothed_series(r: &StreamEval, window: usize, max_points: usize) -> Vec<(f64, f64)> {
    let ma = moving_average(&r.nll, window);
    let step = ma.len().div_ceil(max_points.max(1)).max(1);
    let mut pts: Vec<(f64, f64)> = ma
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == ma.len())
        .map(|(i, v)| ((r.targets.start + i) as f64, *v))
        .collect();
    pts.dedup_by(|a, b| a.0 == b.0);
    pts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_is_trailing() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(moving_average(&v, 2), vec![1.0, 1.5, 2.5, 3.5, 4.5]);
        assert_eq!(moving_average(&v, 1), v.to_vec());
        assert_eq!(moving_average(&v, 10), vec![1.0, 1.5, 2.0, 2.5, 3.0]);
        assert!(moving_average(&[], 3).is_empty());
    }

    #[test]
    fn perplexity_and_segments() {
        assert_eq!(perplexity(&[]), None);
        let p = perplexity(&[1.0f64.ln(), 4.0f64.ln()]).unwrap();
        assert!((p - 2.0).abs() < 1e-12);
        let s = segment_ppl(1, &[0.0; 5], 2);
        assert_eq!(
            s.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
            vec![(1, 3), (3, 5), (5, 6)]
        );
    }

    #[test]
    fn ablation_keeps_the_cache_size() {
        let ps = ablation_policies(&[0, 1, 2, 4, 8], 128).unwrap();
        for (p, s) in ps.iter().zip([0, 1, 2, 4, 8]) {
            assert_eq!(p.rule().slots(), 128);
            assert_eq!(p.rule().sinks, s);
        }
        assert!(ablation_policies(&[128], 128).is_err());
        assert!(ablation_policies(&[], 128).is_err());
    }

    #[test]
    fn compare_plan_has_four_policies() {
        let p = compare_plan(2000, 128, 4, 50, 8192).unwrap();
        let names: Vec<_> = p.iter().map(|x| x.policy.name()).collect();
        assert_eq!(names, ["dense", "window", "recompute", "sink"]);
        assert_eq!(p[0].targets, 1..2000);
        assert_eq!(p[2].targets, 129..179);
        assert_eq!(p[3].policy.rule().slots(), 128);
        let p = compare_plan(20000, 128, 4, 0, 8192).unwrap();
        assert_eq!(p[0].targets, 1..8193);
        assert_eq!(p.len(), 3);
    }
}
