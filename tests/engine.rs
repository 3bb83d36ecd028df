//! The GPU kernels against the CPU reference on small random models: every weight format the
//! kernels read, odd shapes (vocab 101, 4 heads over 2 KV heads, blocks not a multiple of the
//! tile), every cache policy, tensors split across bindings, caches that wrap many times.
//!
//! Tolerance: max |GPU - CPU| over all logits <= 2e-3 (both sides compute in f32 from the same
//! dequantised weights; only summation order differs; logits here are of order 1-10).

mod common;
use common::*;
use sinkstream::cpu::{CpuModel, CpuSession};
use sinkstream::model::RopeLayout;
use sinkstream::tensor::DType;
use sinkstream::{Gpu, GpuModel, Logits, Policy, Session};
use std::sync::Arc;

const TOL: f32 = 2e-3;

/// Streams `n` random tokens through CPU (token by token) and GPU (in blocks of the given sizes,
/// cycling) and compares every logit.
fn check(
    spec: &TinySpec,
    policy: Policy,
    n: usize,
    blocks: &[usize],
    max_batch: usize,
    binding_limit: Option<u64>,
) {
    check_on(gpu(), spec, policy, n, blocks, max_batch, binding_limit);
}

/// `check` on a given GPU context.
fn check_on(
    g: Arc<Gpu>,
    spec: &TinySpec,
    policy: Policy,
    n: usize,
    blocks: &[usize],
    max_batch: usize,
    binding_limit: Option<u64>,
) {
    let (cfg, w) = tiny_model(spec, 7);
    let cm = CpuModel::new(&cfg, &w);
    let mut cs = CpuSession::new(&cm, policy).unwrap();
    let gm = match binding_limit {
        Some(b) => GpuModel::with_binding_limit(g, &cfg, &w, b).unwrap(),
        None => GpuModel::new(g, &cfg, &w).unwrap(),
    };
    let mut gs = Session::new(Arc::new(gm), policy, max_batch).unwrap();
    let mut rng = Rng(99);
    let toks: Vec<u32> = (0..n).map(|_| rng.below(spec.vocab as u32)).collect();
    let mut cpu = Vec::new();
    for &t in &toks {
        cpu.extend(cs.step(t).unwrap());
    }
    let mut gpu_l = Vec::new();
    let mut i = 0;
    let mut b = 0;
    while i < n {
        let len = blocks[b % blocks.len()].min(n - i);
        gpu_l.extend(gs.feed_blocking(&toks[i..i + len], Logits::All).unwrap());
        i += len;
        b += 1;
    }
    let d = max_abs_diff(&cpu, &gpu_l);
    assert!(gpu_l.iter().all(|v| v.is_finite()));
    assert!(
        d <= TOL,
        "{:?} {policy:?}: max |gpu - cpu| = {d}",
        spec.dtype
    );
}

/// Every weight format the kernels read.
const DTYPES: [DType; 5] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_1,
];

#[test]
fn every_weight_format_matches_cpu() {
    for dtype in DTYPES {
        let spec = TinySpec {
            dtype,
            ..Default::default()
        };
        check(
            &spec,
            Policy::Sink {
                sinks: 3,
                window: 17,
            },
            70,
            &[1, 13, 5, 30],
            32,
            None,
        );
    }
}

#[test]
fn rotate_half_bias_and_untied_head() {
    let spec = TinySpec {
        layout: RopeLayout::Half,
        bias: true,
        tied: false,
        n_heads: 3,
        n_kv_heads: 1,
        ..Default::default()
    };
    check(
        &spec,
        Policy::Sink {
            sinks: 2,
            window: 9,
        },
        50,
        &[7, 1, 11],
        16,
        None,
    );
}

/// The Q/K/V projection's rows are reordered into rotation pairs and padded to blocks of 16
/// per section (src/engine.rs `qkv_order`): K/V widths of 24, and heads of 8 whose pairs'
/// blocks span two heads.
#[test]
fn projection_sections_not_whole_blocks() {
    let specs = [
        TinySpec {
            n_heads: 4,
            n_kv_heads: 1,
            ..Default::default()
        },
        TinySpec {
            n_heads: 12,
            n_kv_heads: 3,
            layout: RopeLayout::Half,
            bias: true,
            ..Default::default()
        },
    ];
    for spec in &specs {
        check(
            spec,
            Policy::Sink {
                sinks: 2,
                window: 9,
            },
            40,
            &[7, 1, 11],
            16,
            None,
        );
    }
}

#[test]
fn kernels_without_subgroups_match_cpu() {
    // Where the adapter has subgroups (lavapipe does), the decode matmul shares its inputs by
    // subgroup broadcasts and every other test here runs that variant; this one runs the plain
    // kernels browsers get, natively, for every weight format, single tokens and blocks.
    let plain = Arc::new(Gpu::open_blocking(false).unwrap());
    assert!(!plain.subgroups);
    for dtype in DTYPES {
        let spec = TinySpec {
            dtype,
            bias: true,
            ..Default::default()
        };
        let policy = Policy::Sink {
            sinks: 2,
            window: 9,
        };
        check_on(plain.clone(), &spec, policy, 30, &[1, 5, 1], 8, None);
    }
}

#[test]
fn every_policy_matches_cpu() {
    let spec = TinySpec::default();
    check(
        &spec,
        Policy::Window { window: 11 },
        60,
        &[9, 1, 23],
        32,
        None,
    );
    check(&spec, Policy::Dense { max: 64 }, 60, &[9, 1, 23], 32, None);
    // a cache whose scores no longer fit one uniform window (the wide attention variant)
    check(
        &spec,
        Policy::Dense { max: 4200 },
        40,
        &[9, 1, 23],
        32,
        None,
    );
    check(
        &spec,
        Policy::Recompute { window: 8 },
        30,
        &[3, 1, 7],
        32,
        None,
    );
    // a block longer than the window, and sinks filled from inside a block
    check(
        &spec,
        Policy::Sink {
            sinks: 4,
            window: 6,
        },
        90,
        &[2, 40, 1, 25],
        64,
        None,
    );
}

#[test]
fn cache_wraps_many_times() {
    let spec = TinySpec {
        n_layers: 1,
        ..Default::default()
    };
    // 600 tokens through 1 + 5 slots: the ring wraps 120 times
    check(
        &spec,
        Policy::Sink {
            sinks: 1,
            window: 5,
        },
        600,
        &[64, 3, 1],
        64,
        None,
    );
}

#[test]
fn long_caches_split_the_attention_output() {
    // Caches of 512 slots and more spread each query's keys over splits of 256 (attn_out.wgsl)
    // and combine them (attn_reduce.wgsl): 3 + 700 slots give up to 3 splits, whose boundaries
    // fall in the ring, in the block's scratch rows and (block of 300 at the start) near the
    // sinks; 1,500 tokens wrap the ring twice. The wide variant (scores from storage) splits
    // too: a dense cache of 4,200 slots, filled past two split boundaries.
    // Three head shapes: 24 dimensions with 2 query heads per KV head, 32 with 2, and 64 with 3
    // (the default model's).
    for (dim, n_heads, n_kv_heads) in [(96, 4, 2), (128, 4, 2), (192, 3, 1)] {
        let spec = TinySpec {
            n_layers: 1,
            dim,
            n_heads,
            n_kv_heads,
            ..Default::default()
        };
        check(
            &spec,
            Policy::Sink {
                sinks: 3,
                window: 700,
            },
            1500,
            &[300, 1, 64, 7],
            300,
            None,
        );
        check(&spec, Policy::Dense { max: 4200 }, 600, &[64, 1], 64, None);
    }
}

#[test]
fn tensors_split_across_bindings() {
    for dtype in [DType::Q8_0, DType::Q4_1, DType::F16] {
        let spec = TinySpec {
            dtype,
            tied: false,
            vocab: 301,
            ..Default::default()
        };
        // 64 rows of the widest matrix per binding: the 301-row embedding and head are split
        // into 5 parts each
        let limit = 64 * dtype.gpu_row_bytes(spec.ffn) as u64;
        check(
            &spec,
            Policy::Sink {
                sinks: 2,
                window: 10,
            },
            30,
            &[5, 1],
            16,
            Some(limit),
        );
    }
}

#[test]
fn a_tensor_that_cannot_fit_names_the_limit() {
    let (cfg, w) = tiny_model(&TinySpec::default(), 7);
    let e = GpuModel::with_binding_limit(gpu(), &cfg, &w, 1024)
        .err()
        .expect("must not fit");
    let msg = e.to_string();
    assert!(
        msg.contains("max_storage_buffer_binding_size") && msg.contains("blk.0"),
        "{msg}"
    );
}

#[test]
fn memory_is_fixed_at_creation() {
    let spec = TinySpec::default();
    let (cfg, w) = tiny_model(&spec, 3);
    // a device of its own: other tests allocate on the shared one concurrently
    let g = Arc::new(sinkstream::Gpu::new_blocking().unwrap());
    let gm = Arc::new(GpuModel::new(g.clone(), &cfg, &w).unwrap());
    let mut s = Session::new(
        gm,
        Policy::Sink {
            sinks: 4,
            window: 12,
        },
        16,
    )
    .unwrap();
    s.feed_blocking(&[1, 2, 3], Logits::Last).unwrap();
    let (bytes, bufs) = (g.allocated_bytes(), g.buffer_count());
    let mut rng = Rng(5);
    for _ in 0..200 {
        let t = rng.below(101);
        let l = s.feed_blocking(&[t], Logits::Last).unwrap();
        assert!(l.iter().all(|v| v.is_finite()));
    }
    assert_eq!(s.stats().cache_fill, 16);
    assert_eq!((g.allocated_bytes(), g.buffer_count()), (bytes, bufs));
}

#[test]
fn dense_cache_full_is_an_error() {
    let (cfg, w) = tiny_model(&TinySpec::default(), 3);
    let gm = Arc::new(GpuModel::new(gpu(), &cfg, &w).unwrap());
    let mut s = Session::new(gm, Policy::Dense { max: 10 }, 16).unwrap();
    s.feed_blocking(&[1; 10], Logits::Last).unwrap();
    let e = s.feed_blocking(&[1], Logits::Last).unwrap_err();
    assert!(e.to_string().contains("dense cache"), "{e}");
    assert!(Session::new(s_model(), Policy::Window { window: 0 }, 4).is_err());
    let e = s.feed_blocking(&[500], Logits::Last);
    assert!(e.is_err());
}

fn s_model() -> Arc<GpuModel> {
    let (cfg, w) = tiny_model(&TinySpec::default(), 3);
    Arc::new(GpuModel::new(gpu(), &cfg, &w).unwrap())
}

/// The sampler's candidates picked on the GPU (shaders/select.wgsl) give exactly the tokens the
/// CPU sampler draws from the whole row: greedy, top-k with temperature, top-p, repetition
/// penalty, through a cache that wraps.
#[test]
fn gpu_candidates_draw_the_same_tokens() {
    use sinkstream::generate::Generator;
    use sinkstream::sampler::{Sampler, SamplingConfig};
    let spec = TinySpec {
        vocab: 301,
        ..Default::default()
    };
    let (cfg, w) = tiny_model(&spec, 5);
    let gm = Arc::new(GpuModel::new(gpu(), &cfg, &w).unwrap());
    let configs = [
        (0.0, 0, 1.0, 1.0),
        (0.0, 0, 1.0, 1.5),
        (10.0, 5, 1.0, 1.0),
        (20.0, 40, 0.8, 3.0),
        (15.0, 256, 0.95, 0.8),
    ];
    for (temperature, top_k, top_p, repetition_penalty) in configs {
        let run = |gpu_select: bool| -> Vec<u32> {
            let sc = SamplingConfig {
                temperature,
                top_k,
                top_p,
                repetition_penalty,
                seed: 42,
            };
            let s = Session::new(
                gm.clone(),
                Policy::Sink {
                    sinks: 2,
                    window: 13,
                },
                8,
            )
            .unwrap();
            let mut g = Generator::new(s, Sampler::new(sc).unwrap(), vec![]);
            g.set_gpu_select(gpu_select);
            g.prompt(&[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]).unwrap();
            (0..40).map(|_| g.next_token().unwrap().unwrap()).collect()
        };
        let (on, off) = (run(true), run(false));
        assert_eq!(
            on, off,
            "T={temperature} top-k={top_k} top-p={top_p} penalty={repetition_penalty}"
        );
        if temperature > 0.0 {
            let distinct: std::collections::HashSet<_> = on.iter().collect();
            assert!(distinct.len() > 3, "sampling should vary: {on:?}");
        }
    }
}

/// Pipelined greedy decoding (the next step submitted before the last token is read back, the
/// pick passed on the GPU) gives the tokens of step-by-step greedy decoding, through a cache
/// that wraps, and a step taken back after a stop token leaves the session exactly where
/// step-by-step decoding leaves it.
#[test]
fn pipelined_greedy_matches_step_by_step() {
    use sinkstream::engine::{Picked, Select};
    let spec = TinySpec {
        vocab: 301,
        ..Default::default()
    };
    let gm = {
        let (cfg, w) = tiny_model(&spec, 11);
        Arc::new(GpuModel::new(gpu(), &cfg, &w).unwrap())
    };
    let prompt = [3u32, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5];
    let greedy = Select {
        k: 1,
        penalty: 1.0,
        ..Select::default()
    };
    for policy in [
        Policy::Sink {
            sinks: 2,
            window: 13,
        },
        Policy::Window { window: 9 },
        Policy::Dense { max: 200 },
    ] {
        let new = |prompt: &[u32]| {
            let mut s = Session::new(gm.clone(), policy, 8).unwrap();
            let l = s.feed_blocking(&prompt[..prompt.len() - 1], Logits::Skip);
            l.unwrap();
            s
        };
        // step by step
        let mut a = new(&prompt);
        let mut next = *prompt.last().unwrap();
        let mut serial = Vec::new();
        for _ in 0..60 {
            next = match a.feed_select_blocking(&[next], &greedy).unwrap() {
                Picked::Candidates(c) => c[0].0,
                Picked::Row(_) => panic!("greedy picks one candidate"),
            };
            serial.push(next);
        }
        let mut b = new(&prompt);
        let piped = b
            .decode_greedy_blocking(*prompt.last().unwrap(), 60, |_| false)
            .unwrap();
        assert_eq!(piped, serial, "{policy:?}");
        assert_eq!(a.count(), b.count());

        // stop at the 50th token (the caches have wrapped): one step was already in flight
        // and is taken back
        let first = 49;
        let mut c = new(&prompt);
        let mut produced = 0;
        let got = c
            .decode_greedy_blocking(*prompt.last().unwrap(), 60, |_| {
                produced += 1;
                produced == first + 1
            })
            .unwrap();
        assert_eq!(got, serial[..=first], "{policy:?}");
        let mut d = new(&prompt);
        // token by token, like the decode steps (a block computes in another order)
        for &t in std::iter::once(prompt.last().unwrap()).chain(&serial[..first]) {
            d.feed_blocking(&[t], Logits::Skip).unwrap();
        }
        assert_eq!(c.count(), d.count(), "{policy:?}");
        // both go on with the same block of tokens and agree
        let more = [7u32, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18];
        let lc = c.feed_blocking(&more, Logits::All).unwrap();
        let ld = d.feed_blocking(&more, Logits::All).unwrap();
        let diff = lc
            .iter()
            .zip(&ld)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            diff <= 1e-5,
            "{policy:?}: logits differ by {diff} after the take-back"
        );
    }
}
