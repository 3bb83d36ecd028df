//! The model as loaded from a file: its configuration, its weights (still in the file's formats),
//! its tokenizer and chat template. Format-specific loaders (GGUF here) produce a `Model`.

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::tensor::{DType, HostTensor};
use crate::tokenizer::Tokenizer;

/// How RoPE pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1): llama.cpp's converter permutes Q/K rows so GGUF models need this.
    Adjacent,
    /// Pairs (i, i + head_dim/2): the Hugging Face layout.
    Half,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub norm_eps: f32,
    pub rope_theta: f64,
    pub rope_layout: RopeLayout,
    /// Per pair i (0..head_dim/2): the angle per position step. Llama 3 scaling is folded in here.
    pub rope_freqs: Vec<f64>,
    pub context_len: usize,
}

impl Config {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Standard RoPE inverse frequencies theta^(-2i/d).
    pub fn default_rope_freqs(theta: f64, head_dim: usize) -> Vec<f64> {
        (0..head_dim / 2)
            .map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64))
            .collect()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::format(m));
        if self.n_layers == 0 || self.dim == 0 || self.vocab == 0 || self.ffn_dim == 0 {
            return bad(format!("model config has a zero size: {self:?}"));
        }
        if self.n_heads == 0 || self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "attention head counts are inconsistent: {} query heads is not a multiple of {} key/value heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 || self.head_dim > 256 {
            return bad(format!(
                "head dimension {} is not supported (even, at most 256)",
                self.head_dim
            ));
        }
        if self.dim % 32 != 0 || self.ffn_dim % 32 != 0 || self.q_dim() % 32 != 0 {
            return bad(format!(
                "hidden size {} / FFN size {} / attention size {} must be multiples of 32",
                self.dim,
                self.ffn_dim,
                self.q_dim()
            ));
        }
        if self.rope_freqs.len() != self.head_dim / 2 {
            return bad("RoPE frequency table has the wrong length".into());
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return bad(format!("RMSNorm epsilon {} is not positive", self.norm_eps));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: HostTensor,
    pub wq: HostTensor,
    pub wk: HostTensor,
    pub wv: HostTensor,
    pub bq: Option<HostTensor>,
    pub bk: Option<HostTensor>,
    pub bv: Option<HostTensor>,
    pub wo: HostTensor,
    pub ffn_norm: HostTensor,
    pub w_gate: HostTensor,
    pub w_up: HostTensor,
    pub w_down: HostTensor,
}

#[derive(Debug, Clone)]
pub struct Weights {
    pub embed: HostTensor,
    pub layers: Vec<LayerWeights>,
    pub final_norm: HostTensor,
    /// None: tied to the embedding.
    pub lm_head: Option<HostTensor>,
}

impl Weights {
    pub fn lm_head(&self) -> &HostTensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Checks every tensor's shape against the config.
    pub fn validate(&self, c: &Config) -> Result<()> {
        fn shape(t: &HostTensor, rows: usize, cols: usize) -> Result<()> {
            if t.rows != rows || t.cols != cols {
                return Err(Error::format(format!(
                    "tensor {} has shape {}x{}, the config needs {rows}x{cols}",
                    t.name, t.rows, t.cols
                )));
            }
            t.validate()
        }
        shape(&self.embed, c.vocab, c.dim)?;
        shape(&self.final_norm, 1, c.dim)?;
        if let Some(h) = &self.lm_head {
            shape(h, c.vocab, c.dim)?;
        }
        if self.layers.len() != c.n_layers {
            return Err(Error::format(format!(
                "{} layers of weights for a {}-layer config",
                self.layers.len(),
                c.n_layers
            )));
        }
        for l in &self.layers {
            shape(&l.attn_norm, 1, c.dim)?;
            shape(&l.ffn_norm, 1, c.dim)?;
            shape(&l.wq, c.q_dim(), c.dim)?;
            shape(&l.wk, c.kv_dim(), c.dim)?;
            shape(&l.wv, c.kv_dim(), c.dim)?;
            shape(&l.wo, c.dim, c.q_dim())?;
            shape(&l.w_gate, c.ffn_dim, c.dim)?;
            shape(&l.w_up, c.ffn_dim, c.dim)?;
            shape(&l.w_down, c.dim, c.ffn_dim)?;
            for (b, n) in [(&l.bq, c.q_dim()), (&l.bk, c.kv_dim()), (&l.bv, c.kv_dim())] {
                if let Some(b) = b {
                    shape(b, 1, n)?;
                }
            }
        }
        Ok(())
    }
}

pub struct Model {
    pub config: Config,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
    /// Where it came from, for messages.
    pub source: String,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("source", &self.source)
            .finish()
    }
}

impl Model {
    /// Loads a GGUF file from memory. `source` names it in error messages.
    pub fn from_gguf_bytes(bytes: &[u8], source: &str) -> Result<Model> {
        let wrap = |e: Error| match e {
            Error::Format(m) => Error::Format(format!("{source}: {m}")),
            Error::Tokenizer(m) => Error::Tokenizer(format!("{source}: {m}")),
            other => other,
        };
        let g = Gguf::parse(bytes).map_err(wrap)?;
        let config = gguf_config(&g).map_err(wrap)?;
        let weights = gguf_weights(&g, bytes, &config).map_err(wrap)?;
        let tokenizer = Tokenizer::from_gguf(&g).map_err(wrap)?;
        if tokenizer.vocab_size() != config.vocab {
            return Err(wrap(Error::Tokenizer(format!(
                "the tokenizer has {} tokens but the embedding has {} rows",
                tokenizer.vocab_size(),
                config.vocab
            ))));
        }
        let token_text = |key: &str| -> Result<String> {
            Ok(match g.get_u64(key)? {
                Some(id) if (id as usize) < tokenizer.vocab_size() => {
                    tokenizer.token_str(id as u32)
                }
                _ => String::new(),
            })
        };
        let bos = token_text("tokenizer.ggml.bos_token_id").map_err(wrap)?;
        let eos = token_text("tokenizer.ggml.eos_token_id").map_err(wrap)?;
        let chat_template = match g.get_str("tokenizer.chat_template").map_err(wrap)? {
            Some(src) => ChatTemplate::new(src, &bos, &eos).map_err(wrap)?,
            None => ChatTemplate::chatml(),
        };
        Ok(Model {
            config,
            weights,
            tokenizer,
            chat_template,
            source: source.to_string(),
        })
    }

    /// Loads a model from disk: a GGUF file, or a Hugging Face checkpoint directory (also when
    /// given one of its files: config.json, *.safetensors, the index).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: &std::path::Path) -> Result<Model> {
        if path.is_dir() {
            return Model::load_hf_dir(path);
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if let (Some(name), Some(dir)) = (name, path.parent()) {
            let hf_file = name == crate::hf::CONFIG
                || name == crate::hf::INDEX
                || name.ends_with(".safetensors");
            if hf_file && dir.join(crate::hf::CONFIG).is_file() {
                let dir = if dir.as_os_str().is_empty() {
                    std::path::Path::new(".")
                } else {
                    dir
                };
                return Model::load_hf_dir(dir);
            }
        }
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io(format!("cannot read model {}: {e}", path.display())))?;
        Model::from_gguf_bytes(&bytes, &path.display().to_string())
    }

    /// Token ids that end a reply: EOS plus the chat end marker where the vocabulary has one.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.tokenizer.eos_id().into_iter().collect();
        for s in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"] {
            if let Ok(ids) = self.tokenizer.encode(s) {
                if ids.len() == 1 && self.tokenizer.is_special(ids[0]) && !v.contains(&ids[0]) {
                    v.push(ids[0]);
                }
            }
        }
        v
    }
}

fn gguf_config(g: &Gguf) -> Result<Config> {
    let arch = g
        .get_str("general.architecture")?
        .ok_or_else(|| Error::format("metadata general.architecture is missing"))?;
    if !matches!(arch, "llama" | "mistral" | "qwen2") {
        return Err(Error::format(format!(
            "architecture {arch:?} is not supported (llama, mistral, qwen2 are)"
        )));
    }
    let key = |k: &str| format!("{arch}.{k}");
    // Every size is bounded before use: sizes from a corrupt file must not become allocations.
    let opt = |k: &str| -> Result<Option<usize>> {
        let Some(v) = g.get_u64(&key(k))? else {
            return Ok(None);
        };
        usize::try_from(v)
            .ok()
            .filter(|&v| v <= 1 << 24)
            .map(Some)
            .ok_or_else(|| Error::format(format!("metadata {} = {v} is absurd", key(k))))
    };
    let req = |k: &str| -> Result<usize> {
        opt(k)?.ok_or_else(|| Error::format(format!("metadata {} is missing", key(k))))
    };
    let dim = req("embedding_length")?;
    let n_heads = req("attention.head_count")?;
    let n_kv_heads = opt("attention.head_count_kv")?.unwrap_or(n_heads);
    if n_heads == 0 || dim % n_heads != 0 {
        return Err(Error::format(format!(
            "hidden size {dim} is not divisible by the head count {n_heads}"
        )));
    }
    let head_dim = opt("attention.key_length")?.unwrap_or(dim / n_heads);
    // The RoPE table below has head_dim / 2 entries: check head_dim (as validate() does)
    // before building it, so a corrupt key_length cannot ask for gigabytes.
    if head_dim > 256 {
        return Err(Error::format(format!(
            "head dimension {head_dim} is not supported (even, at most 256)"
        )));
    }
    let rope_theta = g.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0);
    if !(rope_theta > 1.0 && rope_theta.is_finite()) {
        return Err(Error::format(format!(
            "rope.freq_base {rope_theta} is not valid"
        )));
    }
    let embed = g
        .tensor("token_embd.weight")
        .ok_or_else(|| Error::format("tensor token_embd.weight is missing"))?;
    let vocab = embed.dims.get(1).copied().unwrap_or(0) as usize;
    let c = Config {
        vocab,
        dim,
        n_layers: req("block_count")?,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: req("feed_forward_length")?,
        norm_eps: g
            .get_f64(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5) as f32,
        rope_theta,
        // llama.cpp permutes the Q/K rows of Llama-style models for adjacent-pair RoPE; Qwen2
        // keeps the Hugging Face layout (llama.cpp's "NEOX" rope type).
        rope_layout: if arch == "qwen2" {
            RopeLayout::Half
        } else {
            RopeLayout::Adjacent
        },
        rope_freqs: Config::default_rope_freqs(rope_theta, head_dim),
        context_len: opt("context_length")?.unwrap_or(2048),
    };
    c.validate()?;
    Ok(c)
}

fn gguf_tensor(g: &Gguf, bytes: &[u8], name: &str) -> Result<HostTensor> {
    let t = g
        .tensor(name)
        .ok_or_else(|| Error::format(format!("tensor {name} is missing")))?;
    let (cols, rows) = match t.dims.as_slice() {
        [c] => (*c, 1),
        [c, r] => (*c, *r),
        d => {
            return Err(Error::format(format!(
                "tensor {name} has {} dimensions, expected 1 or 2",
                d.len()
            )))
        }
    };
    let ht = HostTensor {
        name: name.to_string(),
        dtype: t.dtype,
        rows: rows as usize,
        cols: cols as usize,
        data: bytes[t.start..t.start + t.len].to_vec(),
    };
    ht.validate()?;
    Ok(ht)
}

/// Norm weights and biases are tiny: keep them f32 whatever the file has.
pub(crate) fn f32_vector(t: HostTensor) -> HostTensor {
    if t.dtype == DType::F32 {
        return t;
    }
    let v = t.to_f32();
    HostTensor::from_f32(&t.name, t.rows, t.cols, &v)
}

fn gguf_weights(g: &Gguf, bytes: &[u8], c: &Config) -> Result<Weights> {
    let t = |n: &str| gguf_tensor(g, bytes, n);
    let opt = |n: &str| -> Result<Option<HostTensor>> {
        if g.tensor(n).is_some() {
            Ok(Some(f32_vector(t(n)?)))
        } else {
            Ok(None)
        }
    };
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let p = |s: &str| format!("blk.{i}.{s}");
        layers.push(LayerWeights {
            attn_norm: f32_vector(t(&p("attn_norm.weight"))?),
            wq: t(&p("attn_q.weight"))?,
            wk: t(&p("attn_k.weight"))?,
            wv: t(&p("attn_v.weight"))?,
            bq: opt(&p("attn_q.bias"))?,
            bk: opt(&p("attn_k.bias"))?,
            bv: opt(&p("attn_v.bias"))?,
            wo: t(&p("attn_output.weight"))?,
            ffn_norm: f32_vector(t(&p("ffn_norm.weight"))?),
            w_gate: t(&p("ffn_gate.weight"))?,
            w_up: t(&p("ffn_up.weight"))?,
            w_down: t(&p("ffn_down.weight"))?,
        });
    }
    let w = Weights {
        embed: t("token_embd.weight")?,
        layers,
        final_norm: f32_vector(t("output_norm.weight")?),
        lm_head: if g.tensor("output.weight").is_some() {
            Some(t("output.weight")?)
        } else {
            None
        },
    };
    w.validate(c)?;
    Ok(w)
}
