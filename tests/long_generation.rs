//! The real model generating far past its cache: 20,000 sampled tokens through a 4+252 sink
//! cache (78 times its size): every row of logits finite, no collapse into one repeated token,
//! GPU memory unchanged.
//! Ignored in CI (about an hour on software Vulkan):
//! `cargo test --release --test long_generation -- --ignored --nocapture`; docs/reliability.md
//! records what it printed. A 400-token version runs in CI.

mod common;
use common::*;
use sinkstream::generate::Generator;
use sinkstream::sampler::{Sampler, SamplingConfig};
use sinkstream::{GpuModel, Policy, Session};
use std::sync::Arc;

fn generate(total: usize) {
    let m = model();
    let gm = Arc::new(GpuModel::new(gpu(), &m.config, &m.weights).unwrap());
    let policy = Policy::Sink {
        sinks: 4,
        window: 252,
    };
    let sc = SamplingConfig {
        temperature: 0.7,
        top_k: 40,
        top_p: 0.9,
        repetition_penalty: 1.1,
        seed: 7,
    };
    let session = Session::new(gm.clone(), policy, 64).unwrap();
    let mut g = Generator::new(session, Sampler::new(sc).unwrap(), vec![]);
    // every row of logits comes back, so each one can be checked
    g.set_gpu_select(false);
    let bytes = gpu().allocated_bytes();
    let prompt = m
        .tokenizer
        .encode("It is a truth universally acknowledged, that a single man in possession")
        .unwrap();
    g.prompt(&prompt).unwrap();
    let mut ids = Vec::with_capacity(total);
    let mut longest_run = 0;
    let mut run = 0;
    let t0 = std::time::Instant::now();
    for i in 0..total {
        let id = g.next_token().unwrap().expect("no stop tokens are set");
        let row = g.pending_row().expect("the whole row");
        assert!(
            row.iter().all(|v| v.is_finite()),
            "non-finite logits after {} tokens",
            i + 1
        );
        run = if ids.last() == Some(&id) { run + 1 } else { 1 };
        longest_run = longest_run.max(run);
        ids.push(id);
        if (i + 1) % 1000 == 0 || i + 1 == total {
            let window = &ids[ids.len().saturating_sub(1000)..];
            let mut distinct: Vec<u32> = window.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            eprintln!(
                "{:>6} tokens, {:.1} tokens/s, {} distinct in the last {}, longest run {}, cache {:?}",
                i + 1,
                (i + 1) as f64 / t0.elapsed().as_secs_f64(),
                distinct.len(),
                window.len(),
                longest_run,
                g.session().stats().cache_fill
            );
            assert!(
                distinct.len() >= window.len() / 20,
                "collapsed: {} distinct tokens in the last {}",
                distinct.len(),
                window.len()
            );
        }
    }
    assert!(
        longest_run < 64,
        "one token repeated {longest_run} times in a row"
    );
    let text = m.tokenizer.decode(&ids[ids.len() - 200..]).unwrap();
    eprintln!("the last 200 tokens: {text:?}");
    assert_eq!(gpu().allocated_bytes(), bytes, "GPU memory moved");
}

#[test]
fn generates_past_the_cache_without_collapsing() {
    // 400 tokens: past the 256-slot cache by half its size
    generate(400);
}

#[test]
#[ignore = "about an hour on software Vulkan"]
fn generates_20000_tokens() {
    generate(20_000);
}
