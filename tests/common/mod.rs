//! Helpers shared by the integration tests: the default model, a GPU, small random models.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use sinkstream::{Gpu, Model};

pub fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The default model, loaded once per test binary.
pub fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let p = model_path();
        assert!(
            p.exists(),
            "{} is missing: run scripts/fetch-model.sh",
            p.display()
        );
        Model::load(&p).expect("load the default model")
    })
}

pub fn gpu() -> Arc<Gpu> {
    static G: OnceLock<Arc<Gpu>> = OnceLock::new();
    G.get_or_init(|| {
        Arc::new(Gpu::new_blocking().expect("a GPU adapter (install mesa-vulkan-drivers)"))
    })
    .clone()
}

pub fn austen(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/austen")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

use sinkstream::model::{Config, LayerWeights, RopeLayout, Weights};
use sinkstream::tensor::{quant, DType, HostTensor};

/// Deterministic pseudo-random numbers (splitmix64) so tests need no extra crate.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

pub struct TinySpec {
    pub dtype: DType,
    pub vocab: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn: usize,
    pub layout: RopeLayout,
    pub bias: bool,
    pub tied: bool,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
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

/// A small random model whose matrices are stored in `spec.dtype`.
pub fn tiny_model(spec: &TinySpec, seed: u64) -> (Config, Weights) {
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
    let mut layers = Vec::new();
    for i in 0..spec.n_layers {
        let p = |s: &str| format!("blk.{i}.{s}");
        let qd = spec.n_heads * head_dim;
        let kvd = spec.n_kv_heads * head_dim;
        layers.push(LayerWeights {
            attn_norm: HostTensor::from_f32(&p("attn_norm"), 1, d, &vec![1.0; d]),
            wq: mat(&p("wq"), qd, d, s_in * 2.0),
            wk: mat(&p("wk"), kvd, d, s_in * 2.0),
            wv: mat(&p("wv"), kvd, d, s_in),
            bq: None,
            bk: None,
            bv: None,
            wo: mat(&p("wo"), d, qd, s_in),
            ffn_norm: HostTensor::from_f32(&p("ffn_norm"), 1, d, &vec![1.0; d]),
            w_gate: mat(&p("gate"), spec.ffn, d, s_in),
            w_up: mat(&p("up"), spec.ffn, d, s_in),
            w_down: mat(&p("down"), d, spec.ffn, 1.0 / (spec.ffn as f32).sqrt()),
        });
    }
    let mut rng2 = Rng(seed ^ 0xABCDEF);
    let mut vecf = |name: &str, n: usize, scale: f32| {
        let v: Vec<f32> = (0..n).map(|_| 1.0 + rng2.f32() * scale).collect();
        HostTensor::from_f32(name, 1, n, &v)
    };
    for l in layers.iter_mut() {
        l.attn_norm = vecf("attn_norm", d, 0.2);
        l.ffn_norm = vecf("ffn_norm", d, 0.2);
        if spec.bias {
            l.bq = Some(vecf("bq", l.wq.rows, 0.5));
            l.bk = Some(vecf("bk", l.wk.rows, 0.5));
            l.bv = Some(vecf("bv", l.wv.rows, 0.5));
        }
    }
    let final_norm = vecf("output_norm", d, 0.2);
    let embed = mat("token_embd", spec.vocab, d, 1.0);
    let lm_head = if spec.tied {
        None
    } else {
        Some(mat("output", spec.vocab, d, s_in * 3.0))
    };
    let w = Weights {
        embed,
        layers,
        final_norm,
        lm_head,
    };
    w.validate(&config).unwrap();
    (config, w)
}
