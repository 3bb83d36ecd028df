//! The browser build in a real browser (headless Chromium, WebGPU on SwiftShader), through
//! wasm-bindgen-test: the WGSL kernels against the CPU reference on tiny random models, the cache
//! rule, and the JavaScript API of src/wasm.rs (load from bytes, generate, chat, stop, settings,
//! stats, the cache map, errors as JS Error objects).
//!
//! Run: scripts/test-web.sh wasm (sets up Chromium, chromedriver and wasm-bindgen-test-runner).
#![cfg(target_arch = "wasm32")]
// The engine shares the device and weights through Arc; on wasm32 (one thread) it is a plain count.
#![allow(clippy::arc_with_non_send_sync)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Function, Object, Promise, Reflect, Uint8Array};
use sinkstream::cache::CacheRule;
use sinkstream::cpu::{CpuModel, CpuSession};
use sinkstream::gguf::{write, Value};
use sinkstream::model::{Config, LayerWeights, RopeLayout, Weights};
use sinkstream::tensor::{quant, DType, HostTensor};
use sinkstream::wasm::Engine;
use sinkstream::{Gpu, GpuModel, Logits, Policy, Session};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const TOL: f32 = 2e-3;

// ---- a tiny random model (as tests/common/mod.rs, which is native-only) ----

struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

#[derive(Clone, Copy)]
struct Spec {
    dtype: DType,
    vocab: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    ffn: usize,
    layout: RopeLayout,
    bias: bool,
    tied: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            dtype: DType::Q4_1,
            vocab: 101,
            dim: 96,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            ffn: 160,
            layout: RopeLayout::Adjacent,
            bias: false,
            tied: true,
        }
    }
}

fn tiny_model(spec: &Spec, seed: u64) -> (Config, Weights) {
    let mut rng = Rng(seed);
    let head_dim = spec.dim / spec.n_heads;
    let config = Config {
        vocab: spec.vocab,
        dim: spec.dim,
        n_layers: spec.n_layers,
        n_heads: spec.n_heads,
        n_kv_heads: spec.n_kv_heads,
        head_dim,
        ffn_dim: spec.ffn,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_layout: spec.layout,
        rope_freqs: Config::default_rope_freqs(10000.0, head_dim),
        context_len: 4096,
    };
    config.validate().unwrap();
    let mut mat = |name: &str, rows: usize, cols: usize, scale: f32| {
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * scale).collect();
        let data = match spec.dtype {
            DType::F32 => bytemuck::cast_slice(&v).to_vec(),
            DType::F16 => quant::f16s(&v),
            DType::BF16 => quant::bf16s(&v),
            DType::Q8_0 => quant::q8_0(&v),
            DType::Q4_1 => quant::q4_1(&v),
        };
        HostTensor {
            name: name.into(),
            dtype: spec.dtype,
            rows,
            cols,
            data,
        }
    };
    let d = spec.dim;
    let s_in = 1.0 / (d as f32).sqrt() * 1.7;
    let (qd, kvd) = (spec.n_heads * head_dim, spec.n_kv_heads * head_dim);
    let mut layers = Vec::new();
    for i in 0..spec.n_layers {
        let p = |s: &str| format!("blk.{i}.{s}");
        layers.push(LayerWeights {
            attn_norm: HostTensor::from_f32(&p("attn_norm.weight"), 1, d, &vec![1.0; d]),
            wq: mat(&p("attn_q.weight"), qd, d, s_in * 2.0),
            wk: mat(&p("attn_k.weight"), kvd, d, s_in * 2.0),
            wv: mat(&p("attn_v.weight"), kvd, d, s_in),
            bq: None,
            bk: None,
            bv: None,
            wo: mat(&p("attn_output.weight"), d, qd, s_in),
            ffn_norm: HostTensor::from_f32(&p("ffn_norm.weight"), 1, d, &vec![1.0; d]),
            w_gate: mat(&p("ffn_gate.weight"), spec.ffn, d, s_in),
            w_up: mat(&p("ffn_up.weight"), spec.ffn, d, s_in),
            w_down: mat(
                &p("ffn_down.weight"),
                d,
                spec.ffn,
                1.0 / (spec.ffn as f32).sqrt(),
            ),
        });
    }
    let mut rng2 = Rng(seed ^ 0xABCDEF);
    let mut vecf = |name: &str, n: usize, scale: f32| {
        let v: Vec<f32> = (0..n).map(|_| 1.0 + rng2.f32() * scale).collect();
        HostTensor::from_f32(name, 1, n, &v)
    };
    for (i, l) in layers.iter_mut().enumerate() {
        l.attn_norm = vecf(&format!("blk.{i}.attn_norm.weight"), d, 0.2);
        l.ffn_norm = vecf(&format!("blk.{i}.ffn_norm.weight"), d, 0.2);
        if spec.bias {
            l.bq = Some(vecf(&format!("blk.{i}.attn_q.bias"), qd, 0.5));
            l.bk = Some(vecf(&format!("blk.{i}.attn_k.bias"), kvd, 0.5));
            l.bv = Some(vecf(&format!("blk.{i}.attn_v.bias"), kvd, 0.5));
        }
    }
    let final_norm = vecf("output_norm.weight", d, 0.2);
    let embed = mat("token_embd.weight", spec.vocab, d, 1.0);
    let lm_head = (!spec.tied).then(|| mat("output.weight", spec.vocab, d, s_in * 3.0));
    let w = Weights {
        embed,
        layers,
        final_norm,
        lm_head,
    };
    w.validate(&config).unwrap();
    (config, w)
}

thread_local! {
    static GPU: RefCell<Option<Arc<Gpu>>> = const { RefCell::new(None) };
}

/// One device for the whole test binary (creating one compiles every pipeline).
async fn gpu() -> Arc<Gpu> {
    if let Some(g) = GPU.with(|g| g.borrow().clone()) {
        return g;
    }
    let g = Arc::new(Gpu::new().await.expect("a WebGPU adapter"));
    GPU.with(|c| *c.borrow_mut() = Some(g.clone()));
    g
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Streams `n` random tokens through the CPU reference (token by token) and the GPU (in blocks of
/// the given sizes, cycling) and compares every logit.
async fn check(
    spec: &Spec,
    policy: Policy,
    n: usize,
    blocks: &[usize],
    max_batch: usize,
    binding_limit: Option<u64>,
) {
    let (cfg, w) = tiny_model(spec, 7);
    let cm = CpuModel::new(&cfg, &w);
    let mut cs = CpuSession::new(&cm, policy).unwrap();
    let g = gpu().await;
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
    let (mut i, mut b) = (0, 0);
    while i < n {
        let len = blocks[b % blocks.len()].min(n - i);
        gpu_l.extend(gs.feed(&toks[i..i + len], Logits::All).await.unwrap());
        i += len;
        b += 1;
    }
    assert!(gpu_l.iter().all(|v| v.is_finite()));
    let d = max_abs_diff(&cpu, &gpu_l);
    assert!(
        d <= TOL,
        "{:?} {policy:?}: max |gpu - cpu| = {d}",
        spec.dtype
    );
}

// ---- the kernels against the CPU reference, inside the browser ----

#[wasm_bindgen_test]
async fn every_weight_format_matches_cpu() {
    for dtype in [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_1,
    ] {
        let spec = Spec {
            dtype,
            ..Default::default()
        };
        let policy = Policy::Sink {
            sinks: 3,
            window: 17,
        };
        check(&spec, policy, 40, &[1, 13, 5, 30], 32, None).await;
    }
}

#[wasm_bindgen_test]
async fn rotate_half_bias_and_untied_head() {
    let spec = Spec {
        layout: RopeLayout::Half,
        bias: true,
        tied: false,
        n_heads: 3,
        n_kv_heads: 1,
        ..Default::default()
    };
    let policy = Policy::Sink {
        sinks: 2,
        window: 9,
    };
    check(&spec, policy, 30, &[7, 1, 11], 16, None).await;
}

#[wasm_bindgen_test]
async fn every_policy_matches_cpu() {
    let spec = Spec::default();
    let blocks = [9, 1, 23];
    check(&spec, Policy::Window { window: 11 }, 40, &blocks, 32, None).await;
    check(&spec, Policy::Dense { max: 64 }, 40, &blocks, 32, None).await;
    check(
        &spec,
        Policy::Recompute { window: 6 },
        12,
        &[3, 1],
        32,
        None,
    )
    .await;
    // a block longer than the window, and sinks filled from inside a block
    let sink = Policy::Sink {
        sinks: 4,
        window: 6,
    };
    check(&spec, sink, 60, &[2, 40, 1, 25], 64, None).await;
}

#[wasm_bindgen_test]
async fn cache_wraps_many_times_and_tensors_split() {
    let spec = Spec {
        n_layers: 1,
        ..Default::default()
    };
    // 200 tokens through 1 + 5 slots: the ring wraps 40 times
    let policy = Policy::Sink {
        sinks: 1,
        window: 5,
    };
    check(&spec, policy, 200, &[64, 3, 1], 64, None).await;
    // 2 + 600 slots: each query's attention output split in runs of 256 keys, then combined
    // (attn_out.wgsl, attn_reduce.wgsl); 700 tokens wrap the ring once
    let policy = Policy::Sink {
        sinks: 2,
        window: 600,
    };
    check(&spec, policy, 700, &[64, 1], 64, None).await;
    // 64 rows of the widest matrix per binding: the 301-row embedding and head are split into
    // 5 parts each
    let spec = Spec {
        dtype: DType::Q8_0,
        tied: false,
        vocab: 301,
        ..Default::default()
    };
    let limit = 64 * spec.dtype.gpu_row_bytes(spec.ffn) as u64;
    let policy = Policy::Sink {
        sinks: 2,
        window: 10,
    };
    check(&spec, policy, 20, &[5, 1], 16, Some(limit)).await;
}

#[wasm_bindgen_test]
async fn memory_is_fixed_at_creation() {
    let (cfg, w) = tiny_model(&Spec::default(), 3);
    let g = Arc::new(Gpu::new().await.unwrap());
    let gm = Arc::new(GpuModel::new(g.clone(), &cfg, &w).unwrap());
    let policy = Policy::Sink {
        sinks: 4,
        window: 12,
    };
    let mut s = Session::new(gm, policy, 16).unwrap();
    s.feed(&[1, 2, 3], Logits::Last).await.unwrap();
    let before = (g.allocated_bytes(), g.buffer_count());
    let mut rng = Rng(5);
    for _ in 0..40 {
        let l = s.feed(&[rng.below(101)], Logits::Last).await.unwrap();
        assert!(l.iter().all(|v| v.is_finite()));
    }
    assert_eq!(s.stats().cache_fill, 16);
    assert_eq!(s.stats().tokens_streamed, 43);
    assert_eq!((g.allocated_bytes(), g.buffer_count()), before);
}

// ---- the cache rule, compiled to wasm32 (usize is 32 bits here) ----

#[wasm_bindgen_test]
fn cache_rule_paper_example() {
    let r = CacheRule {
        sinks: 4,
        window: 4,
    };
    let seen: Vec<_> = r.attended(9).collect();
    assert_eq!(
        seen,
        vec![
            (0, 0),
            (1, 1),
            (2, 2),
            (3, 3),
            (6, 4),
            (7, 5),
            (8, 6),
            (9, 7)
        ]
    );
    assert_eq!(r.attended_len(9), 8);
    assert_eq!(r.write_head(10), 6);
    assert_eq!(r.fill(3), 3);
    assert_eq!(r.fill(100), 8);
}

#[wasm_bindgen_test]
fn cache_rule_many_wraps_and_huge_counts() {
    for &(s, w) in &[(4usize, 60usize), (0, 7), (1, 1), (3, 2), (4, 1020)] {
        let r = CacheRule {
            sinks: s,
            window: w,
        };
        let mut holder: Vec<Option<u64>> = vec![None; r.slots()];
        let total = (w as u64) * 300 + 17;
        let step = if w > 100 { 97 } else { 1 };
        for n in 0..total {
            holder[r.slot(n)] = Some(n);
            if n % step != 0 && n != total - 1 {
                continue;
            }
            let seen: Vec<_> = r.attended(n).collect();
            assert_eq!(seen.len(), r.attended_len(n));
            assert!(seen.len() <= s + w);
            for (i, &(m, p)) in seen.iter().enumerate() {
                assert_eq!(p, i);
                assert_eq!(
                    holder[r.slot(m)],
                    Some(m),
                    "slot of {m} overwritten at n={n}"
                );
            }
            assert_eq!(r.slot_tokens(n + 1), holder);
        }
        // Streams longer than 2^32 tokens: slots stay in range on a 32-bit target.
        let big = (1u64 << 40) + 12345;
        assert!(r.slot(big) < r.slots());
        assert_eq!(r.attended_len(big), s + w);
        assert_eq!(
            r.slot_tokens(big).iter().filter(|x| x.is_some()).count(),
            s + w
        );
    }
}

// ---- the JavaScript API (src/wasm.rs) on a tiny GGUF model ----

/// The tiny model as a GGUF file with a byte-level tokenizer: 3 special tokens, space, newline,
/// the 94 printable ASCII characters and two merges (vocab 101), and no chat template (ChatML).
fn tiny_gguf(spec: &Spec, seed: u64) -> (Vec<u8>, Config, Weights) {
    let (cfg, w) = tiny_model(spec, seed);
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "Ġ", "Ċ"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    tokens.extend(('!'..='~').map(|c| c.to_string()));
    tokens.push("ab".into());
    tokens.push("Ġa".into());
    assert_eq!(tokens.len(), spec.vocab);
    let mut types = vec![3i32, 3, 3];
    types.resize(tokens.len(), 1);
    let strs = |v: &[String]| Value::Array(v.iter().map(|s| Value::Str(s.clone())).collect());
    let u32v = |x: usize| Value::U32(x as u32);
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::Str("llama".into())),
        ("llama.embedding_length", u32v(cfg.dim)),
        ("llama.block_count", u32v(cfg.n_layers)),
        ("llama.attention.head_count", u32v(cfg.n_heads)),
        ("llama.attention.head_count_kv", u32v(cfg.n_kv_heads)),
        ("llama.feed_forward_length", u32v(cfg.ffn_dim)),
        ("llama.context_length", u32v(cfg.context_len)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Value::Str("smollm".into())),
        ("tokenizer.ggml.tokens", strs(&tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            strs(&["a b".to_string(), "Ġ a".to_string()]),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ];
    let code = |d: DType| match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_1 => 3,
        DType::Q8_0 => 8,
        DType::BF16 => 30,
    };
    let mut all: Vec<&HostTensor> = vec![&w.embed, &w.final_norm];
    for l in &w.layers {
        all.extend([
            &l.attn_norm,
            &l.wq,
            &l.wk,
            &l.wv,
            &l.wo,
            &l.ffn_norm,
            &l.w_gate,
            &l.w_up,
            &l.w_down,
        ]);
    }
    let tensors: Vec<write::Tensor> = all
        .iter()
        .map(|t| write::Tensor {
            name: &t.name,
            dims: if t.rows == 1 {
                vec![t.cols as u64]
            } else {
                vec![t.cols as u64, t.rows as u64]
            },
            ggml_type: code(t.dtype),
            data: &t.data,
        })
        .collect();
    let bytes = write::gguf(&md, &tensors);
    (bytes, cfg, w)
}

fn obj(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in pairs {
        Reflect::set(&o, &JsValue::from_str(k), v).unwrap();
    }
    o.into()
}

fn get(o: &JsValue, key: &str) -> JsValue {
    Reflect::get(o, &JsValue::from_str(key)).unwrap()
}

fn num(o: &JsValue, key: &str) -> f64 {
    get(o, key)
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number"))
}

fn error_message(e: &JsValue) -> String {
    let e: &js_sys::Error = e.dyn_ref().expect("errors are JS Error objects");
    assert_eq!(String::from(e.name()), "SinkstreamError");
    String::from(e.message())
}

async fn engine(spec: &Spec, options: JsValue) -> (Engine, Config, Weights) {
    let (bytes, cfg, w) = tiny_gguf(spec, 11);
    let arr = Uint8Array::from(&bytes[..]);
    let e = Engine::from_bytes(arr.into(), options)
        .await
        .unwrap_or_else(|e| panic!("load: {}", error_message(&e)));
    (e, cfg, w)
}

/// Collects the pieces a generation streams; optionally calls `stop` after `stop_after` pieces.
struct Pieces {
    got: Rc<RefCell<Vec<String>>>,
    cb: Closure<dyn FnMut(JsValue)>,
}

fn pieces(stop_after: Option<(usize, Rc<Engine>)>) -> Pieces {
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    let cb = Closure::<dyn FnMut(JsValue)>::new(move |p: JsValue| {
        g.borrow_mut().push(p.as_string().unwrap());
        if let Some((n, e)) = &stop_after {
            if g.borrow().len() == *n {
                e.stop();
            }
        }
    });
    Pieces { got, cb }
}

async fn wait(p: Promise) -> Result<JsValue, JsValue> {
    JsFuture::from(p).await
}

/// Greedy decoding through the engine equals greedy decoding of the CPU reference.
#[wasm_bindgen_test]
async fn api_greedy_generation_matches_cpu_reference() {
    let spec = Spec::default();
    let (e, cfg, w) = engine(&spec, obj(&[("sinks", 2.into()), ("window", 14.into())])).await;
    let prompt = "ab ab!";
    let ids = e.encode(prompt).unwrap();
    assert!(!ids.is_empty());
    let cm = CpuModel::new(&cfg, &w);
    let mut cs = CpuSession::new(
        &cm,
        Policy::Sink {
            sinks: 2,
            window: 14,
        },
    )
    .unwrap();
    let mut logits = Vec::new();
    for &t in &ids {
        logits = cs.step(t).unwrap();
    }
    let stop = [2u32, 0];
    let mut want = Vec::new();
    for _ in 0..24 {
        let mut best = 0;
        for (i, x) in logits.iter().enumerate() {
            if *x > logits[best] {
                best = i;
            }
        }
        let best = best as u32;
        if stop.contains(&best) {
            break;
        }
        want.push(best);
        logits = cs.step(best).unwrap();
    }
    let p = pieces(None);
    let r = wait(e.generate(
        prompt.into(),
        p.cb.as_ref().clone(),
        obj(&[("maxTokens", 24.into())]),
    ))
    .await
    .unwrap();
    let got: Vec<u32> = js_sys::Uint32Array::from(get(&r, "ids")).to_vec();
    assert_eq!(got, want, "greedy ids: engine vs CPU reference");
    // the pieces are the decoded text, and the stream went past the 16-slot cache
    let text: String = p.got.borrow().concat();
    assert_eq!(text, get(&r, "text").as_string().unwrap());
    assert_eq!(text, e.decode(got.clone()).unwrap());
    let st = e.stats().into();
    assert_eq!(num(&st, "tokensStreamed") as usize, ids.len() + got.len());
    assert_eq!(num(&st, "cacheSlots"), 16.0);
}

/// Stop in flight, busy errors, settings, stats, and the cache map after the ring wrapped.
#[wasm_bindgen_test]
async fn api_stop_stats_cache_map_and_errors() {
    let spec = Spec {
        n_layers: 1,
        ..Default::default()
    };
    let (e, _, _) = engine(
        &spec,
        obj(&[
            ("sinks", 3.into()),
            ("window", 9.into()),
            ("temperature", 0.8.into()),
            ("seed", 5.into()),
        ]),
    )
    .await;
    let e = Rc::new(e);
    let bytes0 = num(&e.stats().into(), "gpuBytes");

    // Stop after 5 pieces: the promise resolves with "stopped"; a second generation while the
    // first runs is a clear error.
    let p = pieces(Some((5, e.clone())));
    let running = e.generate(
        "ab".into(),
        p.cb.as_ref().clone(),
        obj(&[("maxTokens", 200.into())]),
    );
    assert!(e.busy());
    let busy = wait(e.generate("x".into(), JsValue::NULL, JsValue::UNDEFINED)).await;
    assert!(error_message(&busy.unwrap_err()).contains("already running"));
    assert!(error_message(&e.reset().unwrap_err()).contains("while a generation is running"));
    let r = wait(running).await.unwrap();
    assert_eq!(get(&r, "stopReason").as_string().unwrap(), "stopped");
    assert!(num(&r, "tokens") >= 5.0 && num(&r, "tokens") <= 6.0);
    assert!(!e.busy());

    // Keep streaming well past the 12-slot cache: memory stays flat, the map follows the rule.
    let r = wait(e.generate(
        "ab ab".into(),
        JsValue::NULL,
        obj(&[("maxTokens", 30.into())]),
    ))
    .await
    .unwrap();
    let st: JsValue = e.stats().into();
    let total = num(&st, "tokensStreamed") as u64;
    assert!(total > 12, "streamed {total}");
    assert_eq!(num(&st, "cacheFill"), 12.0);
    assert_eq!(num(&st, "gpuBytes"), bytes0);
    let rule = CacheRule {
        sinks: 3,
        window: 9,
    };
    assert_eq!(num(&st, "writeHead") as usize, rule.write_head(total));
    let map: JsValue = e.cache_map().into();
    let slots = js_sys::Array::from(&get(&map, "slots"));
    assert_eq!(slots.length(), 12);
    let want = rule.slot_tokens(total);
    let gen_ids: Vec<u32> = js_sys::Uint32Array::from(get(&r, "ids")).to_vec();
    for (i, n) in want.iter().enumerate() {
        let s = slots.get(i as u32);
        assert_eq!(num(&s, "n") as u64, n.unwrap(), "slot {i}");
        let id = num(&s, "id") as u32;
        assert_eq!(get(&s, "text").as_string().unwrap(), e.token_text(id));
        // the newest token is the last generated one
        if n.unwrap() == total - 1 {
            assert_eq!(Some(&id), gen_ids.last());
        }
    }

    // Settings: sampling changes keep the stream, cache changes restart it.
    e.set_sampling(obj(&[("temperature", 0.into()), ("topP", 0.9.into())]))
        .unwrap();
    assert_eq!(num(&e.stats().into(), "tokensStreamed") as u64, total);
    let err = e
        .set_sampling(obj(&[("temprature", 1.into())]))
        .unwrap_err();
    assert!(error_message(&err).contains("unknown option \"temprature\""));
    let err = e.set_sampling(obj(&[("topP", 0.into())])).unwrap_err();
    assert!(error_message(&err).contains("top-p"));
    let err = e.set_cache(obj(&[("policy", "lru".into())])).unwrap_err();
    assert!(error_message(&err).contains("unknown cache policy"));
    let err = e.set_cache(obj(&[("window", 0.into())])).unwrap_err();
    assert!(error_message(&err).contains("window of at least 1"));
    e.set_cache(obj(&[("policy", "window".into()), ("window", 6.into())]))
        .unwrap();
    let st: JsValue = e.stats().into();
    assert_eq!(num(&st, "tokensStreamed"), 0.0);
    assert_eq!(num(&st, "cacheSlots"), 6.0);
    assert_eq!(
        get(&e.settings().into(), "policy").as_string().unwrap(),
        "window"
    );

    // Chat: two rounds through the ChatML template, the second continues the cache.
    let r1 = wait(e.chat("hi".into(), JsValue::NULL, obj(&[("maxTokens", 4.into())])))
        .await
        .unwrap();
    let after1 = num(&r1, "tokensStreamed");
    let r2 = wait(e.chat("ab".into(), JsValue::NULL, obj(&[("maxTokens", 4.into())])))
        .await
        .unwrap();
    assert!(num(&r2, "tokensStreamed") > after1);
    e.reset().unwrap();
    assert_eq!(num(&e.stats().into(), "tokensStreamed"), 0.0);
}

#[wasm_bindgen_test]
async fn api_errors_are_js_errors() {
    let err = Engine::from_bytes(Uint8Array::from(&b"not a model"[..]).into(), JsValue::NULL)
        .await
        .err()
        .unwrap();
    let msg = error_message(&err);
    assert!(msg.contains("model format"), "{msg}");
    let err = Engine::from_bytes(JsValue::from_str("nope"), JsValue::NULL)
        .await
        .err()
        .unwrap();
    assert!(error_message(&err).contains("Uint8Array"));
    let (bytes, _, _) = tiny_gguf(&Spec::default(), 1);
    let err = Engine::from_bytes(
        Uint8Array::from(&bytes[..]).into(),
        obj(&[("windw", 3.into())]),
    )
    .await
    .err()
    .unwrap();
    assert!(error_message(&err).contains("unknown option \"windw\""));
    let (e, _, _) = engine(&Spec::default(), JsValue::NULL).await;
    let err = wait(e.generate("".into(), JsValue::NULL, JsValue::NULL))
        .await
        .unwrap_err();
    assert!(error_message(&err).contains("empty"));
    // a throwing callback ends the generation with an error naming it, and the engine stays usable
    let throwing = Function::new_with_args("p", "throw new Error('boom')");
    let err = wait(e.generate("ab".into(), throwing.into(), JsValue::NULL))
        .await
        .unwrap_err();
    assert!(error_message(&err).contains("boom"));
    let ok = wait(e.generate("ab".into(), JsValue::NULL, obj(&[("maxTokens", 2.into())]))).await;
    assert!(ok.is_ok());
    // an unreachable URL is a clear error, not a hang
    let err = Engine::from_url("http://127.0.0.1:9/none.gguf".into(), JsValue::NULL)
        .await
        .err()
        .unwrap();
    assert!(error_message(&err).contains("cannot fetch"));
}

// ---- Hugging Face checkpoints given as files (Engine.fromFiles) ----

/// Greedy ids of the CPU reference after `prompt`, stopping at a stop token.
fn cpu_greedy(cfg: &Config, w: &Weights, prompt: &[u32], n: usize, policy: Policy) -> Vec<u32> {
    let cm = CpuModel::new(cfg, w);
    let mut cs = CpuSession::new(&cm, policy).unwrap();
    let mut logits = Vec::new();
    for &t in prompt {
        logits = cs.step(t).unwrap();
    }
    let mut out = Vec::new();
    for _ in 0..n {
        let mut best = 0;
        for (i, x) in logits.iter().enumerate() {
            if *x > logits[best] {
                best = i;
            }
        }
        let best = best as u32;
        if [2u32, 0].contains(&best) {
            break;
        }
        out.push(best);
        logits = cs.step(best).unwrap();
    }
    out
}

/// The tiny GGUF model converted in memory to a Hugging Face checkpoint (f16, rotate-half),
/// handed over as a Map of files with folder-relative names, as a picked directory gives them:
/// greedy generation through the engine equals the CPU reference of the same files, and that
/// reference equals the GGUF's (the Q/K permutation was undone correctly).
#[wasm_bindgen_test]
async fn api_loads_a_hf_checkpoint_from_files() {
    use sinkstream::convert::{to_memory, OutDType};
    use sinkstream::hf::MemoryFiles;
    let spec = Spec::default();
    let (bytes, cfg, w) = tiny_gguf(&spec, 11);
    let m = sinkstream::Model::from_gguf_bytes(&bytes, "tiny.gguf").unwrap();
    let files = to_memory(&m, OutDType::F16).unwrap();
    let map = js_sys::Map::new();
    let mut mem = MemoryFiles::new();
    for (name, data) in &files {
        map.set(
            &JsValue::from_str(&format!("tiny-ckpt/{name}")),
            &Uint8Array::from(&data[..]).into(),
        );
        mem.insert(name, data.clone());
    }
    let hf = sinkstream::Model::from_hf_files(&mut mem, "tiny").unwrap();
    assert_eq!(hf.config.rope_layout, RopeLayout::Half);
    assert_eq!(hf.weights.layers[0].wq.dtype, DType::F16);

    let policy = Policy::Sink {
        sinks: 2,
        window: 14,
    };
    let e = Engine::from_files(
        map.into(),
        obj(&[("sinks", 2.into()), ("window", 14.into())]),
    )
    .await
    .unwrap_or_else(|e| panic!("fromFiles: {}", error_message(&e)));
    let prompt = "ab ab!";
    let ids = e.encode(prompt).unwrap();
    let want = cpu_greedy(&hf.config, &hf.weights, &ids, 16, policy);
    // The GGUF's reference agrees on the first tokens (f16 rounding aside).
    let gguf = cpu_greedy(&cfg, &w, &ids, 4, policy);
    assert_eq!(want[..gguf.len().min(4)], gguf[..gguf.len().min(4)]);
    let r = wait(e.generate(
        prompt.into(),
        JsValue::NULL,
        obj(&[("maxTokens", 16.into())]),
    ))
    .await
    .unwrap();
    let got: Vec<u32> = js_sys::Uint32Array::from(get(&r, "ids")).to_vec();
    assert_eq!(got, want, "greedy ids: fromFiles engine vs CPU reference");
    assert_eq!(
        get(&e.info().into(), "source").as_string().unwrap(),
        "the Hugging Face checkpoint"
    );

    // Errors: a missing file, a value that is not bytes, not a Map/object.
    let partial = js_sys::Map::new();
    for (name, data) in &files {
        if name != "config.json" {
            partial.set(
                &JsValue::from_str(name),
                &Uint8Array::from(&data[..]).into(),
            );
        }
    }
    let err = Engine::from_files(partial.into(), JsValue::NULL)
        .await
        .err()
        .unwrap();
    assert!(error_message(&err).contains("config.json is missing"));
    let err = Engine::from_files(obj(&[("config.json", "{}".into())]), JsValue::NULL)
        .await
        .err()
        .unwrap();
    assert!(error_message(&err).contains("Uint8Array"));
    let err = Engine::from_files(JsValue::from_str("x"), JsValue::NULL)
        .await
        .err()
        .unwrap();
    assert!(error_message(&err).contains("Map"));
}
