//! Long streams through the sink cache with a tiny random model and the real kernels: nothing
//! grows, nothing goes non-finite, and positions stay inside the cache.
//! `cargo test --release --test soak -- --ignored` runs the 1,000,000-token version.

mod common;
use common::*;
use sinkstream::{CacheRule, Gpu, GpuModel, Logits, Policy, Session};
use std::sync::Arc;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

fn soak(total: u64) {
    let (cfg, w) = tiny_model(
        &TinySpec {
            n_layers: 1,
            ..Default::default()
        },
        11,
    );
    let gpu = Arc::new(Gpu::new_blocking().unwrap());
    let gm = Arc::new(GpuModel::new(gpu.clone(), &cfg, &w).unwrap());
    let policy = Policy::Sink {
        sinks: 4,
        window: 60,
    };
    let rule: CacheRule = policy.rule();
    let mut s = Session::new(gm, policy, 64).unwrap();
    let mut rng = Rng(1);
    // warm up: first blocks create the driver's internal state
    let warm: Vec<u32> = (0..64).map(|_| rng.below(101)).collect();
    s.feed_blocking(&warm, Logits::Last).unwrap();
    let (bytes0, bufs0, rss0) = (gpu.allocated_bytes(), gpu.buffer_count(), rss_kib());
    let mut fed = 64u64;
    let mut i = 0u64;
    while fed < total {
        // mostly blocks, with single-token decode steps mixed in
        let n = if i % 8 == 7 {
            1
        } else {
            64.min(total - fed) as usize
        };
        let toks: Vec<u32> = (0..n).map(|_| rng.below(101)).collect();
        let l = s.feed_blocking(&toks, Logits::Last).unwrap();
        assert!(
            l.iter().all(|v| v.is_finite()),
            "non-finite logits after {fed} tokens"
        );
        fed += n as u64;
        i += 1;
        // the position of the newest token, as the kernels compute it, never leaves the cache
        assert!(rule.attended_len(fed - 1) <= rule.slots());
    }
    let st = s.stats();
    assert_eq!(st.tokens_streamed, fed);
    assert_eq!(st.cache_fill, rule.slots());
    assert_eq!(
        (gpu.allocated_bytes(), gpu.buffer_count()),
        (bytes0, bufs0),
        "GPU memory moved"
    );
    let rss1 = rss_kib();
    eprintln!("{fed} tokens: GPU {bytes0} bytes in {bufs0} buffers throughout; RSS {rss0} KiB -> {rss1} KiB");
    assert!(
        rss1 < rss0 + 64 * 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
}

#[test]
fn soak_50k_tokens() {
    soak(50_000);
}

#[test]
#[ignore = "about 1M tokens; run with --ignored"]
fn soak_1m_tokens() {
    soak(1_000_000);
}
