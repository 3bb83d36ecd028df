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

// ---- Hugging Face checkpoints written by the tests ----

/// A directory removed when dropped (also when the test panics).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under the build's target directory (large files stay off /tmp).
    pub fn new(name: &str) -> TempDir {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("test-tmp")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A byte-level BPE tokenizer.json of exactly `vocab` tokens (at least 101): 3 special tokens,
/// "Ġ" (space), "Ċ" (newline), the 94 printable ASCII characters, "ab", "Ġa", then fillers.
pub fn tiny_tokenizer_json(vocab: usize) -> String {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "Ġ", "Ċ"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    tokens.extend(('!'..='~').map(|c| c.to_string()));
    tokens.push("ab".into());
    tokens.push("Ġa".into());
    let mut k = 0;
    while tokens.len() < vocab {
        tokens.push(format!("<|extra_{k}|>"));
        k += 1;
    }
    assert_eq!(tokens.len(), vocab);
    let v: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = (0..3)
        .map(|i| {
            serde_json::json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": v, "merges": ["a b", "Ġ a"]}
    })
    .to_string()
}

/// The HF name of each tensor of a tiny model (tiny_model's own names are GGUF-like).
pub fn hf_tensors(w: &Weights) -> Vec<(String, &HostTensor)> {
    let mut out: Vec<(String, &HostTensor)> = vec![
        ("model.embed_tokens.weight".into(), &w.embed),
        ("model.norm.weight".into(), &w.final_norm),
    ];
    if let Some(h) = &w.lm_head {
        out.push(("lm_head.weight".into(), h));
    }
    for (i, l) in w.layers.iter().enumerate() {
        let n = |s: &str| format!("model.layers.{i}.{s}");
        out.push((n("input_layernorm.weight"), &l.attn_norm));
        out.push((n("post_attention_layernorm.weight"), &l.ffn_norm));
        out.push((n("self_attn.q_proj.weight"), &l.wq));
        out.push((n("self_attn.k_proj.weight"), &l.wk));
        out.push((n("self_attn.v_proj.weight"), &l.wv));
        out.push((n("self_attn.o_proj.weight"), &l.wo));
        out.push((n("mlp.gate_proj.weight"), &l.w_gate));
        out.push((n("mlp.up_proj.weight"), &l.w_up));
        out.push((n("mlp.down_proj.weight"), &l.w_down));
        for (s, b) in [("q", &l.bq), ("k", &l.bk), ("v", &l.bv)] {
            if let Some(b) = b {
                out.push((n(&format!("self_attn.{s}_proj.bias")), b));
            }
        }
    }
    out
}

/// model.safetensors of a tiny model, written with the safetensors crate (F32, F16 or BF16 as
/// the tensors are; vectors 1-D as transformers stores them).
pub fn tiny_safetensors(w: &Weights) -> Vec<u8> {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let views: Vec<(String, TensorView)> = hf_tensors(w)
        .into_iter()
        .map(|(name, t)| {
            let dt = match t.dtype {
                DType::F32 => Dtype::F32,
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
                other => panic!("{other:?} has no safetensors dtype"),
            };
            let vector = name.ends_with("norm.weight") || name.ends_with(".bias");
            let shape = if vector {
                vec![t.cols]
            } else {
                vec![t.rows, t.cols]
            };
            (name, TensorView::new(dt, shape, &t.data).unwrap())
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// config.json of a tiny model: Qwen2 when it has biases, else Llama.
pub fn tiny_config_json(c: &Config, w: &Weights) -> serde_json::Value {
    let qwen = w.layers[0].bq.is_some();
    serde_json::json!({
        "architectures": [if qwen { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": if qwen { "qwen2" } else { "llama" },
        "hidden_size": c.dim,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": c.context_len,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "vocab_size": c.vocab,
        "tie_word_embeddings": w.lm_head.is_none(),
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    })
}

/// Writes a tiny model as a Hugging Face checkpoint directory into `dir`.
pub fn write_tiny_checkpoint(dir: &std::path::Path, c: &Config, w: &Weights) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = serde_json::to_string_pretty(&tiny_config_json(c, w)).unwrap();
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    std::fs::write(dir.join("model.safetensors"), tiny_safetensors(w)).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tiny_tokenizer_json(c.vocab)).unwrap();
    let tc = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "special": true},
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
}
