//! Hugging Face checkpoints: config.json, model.safetensors (or shards listed in
//! model.safetensors.index.json), tokenizer.json and tokenizer_config.json become a `Model`.
//! One code path for a directory on disk and for files handed over as bytes (the browser).

use std::collections::{BTreeMap, BTreeSet};

use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde_json::{Map, Value};

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::model::{f32_vector, Config, LayerWeights, Model, RopeLayout, Weights};
use crate::tensor::{DType, HostTensor};
use crate::tokenizer::Tokenizer;

pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const INDEX: &str = "model.safetensors.index.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// Newer transformers versions save the chat template in its own file.
pub const CHAT_TEMPLATE: &str = "chat_template.jinja";

/// Larger sizes in config.json are a corrupt or hostile file, not a model.
const MAX_SIZE: u64 = 1 << 24;
/// safetensors' own limit on the JSON header.
const MAX_HEADER: u64 = 100_000_000;

/// The model classes sinkstream runs (transformers' `architectures` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    /// Llama with biases on the q/k/v projections.
    Qwen2,
}

impl Architecture {
    pub fn class_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
        }
    }

    fn from_name(s: &str) -> Option<Architecture> {
        Some(match s {
            "LlamaForCausalLM" | "llama" => Architecture::Llama,
            "MistralForCausalLM" | "mistral" => Architecture::Mistral,
            "Qwen2ForCausalLM" | "qwen2" => Architecture::Qwen2,
            _ => return None,
        })
    }
}

/// RoPE frequency scaling from config.json's `rope_scaling`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// Llama 3.1+: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Per-pair RoPE frequencies theta^(-2i/d), with the scaling applied.
pub fn rope_freqs(theta: f64, head_dim: usize, scaling: Option<RopeScaling>) -> Vec<f64> {
    let base = Config::default_rope_freqs(theta, head_dim);
    match scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.into_iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        }) => {
            // Wavelengths (in positions) longer than old/low were never seen whole in training:
            // they are interpolated; shorter than old/high are kept; the band between is blended.
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// config.json, as far as sinkstream needs it.
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub architecture: Architecture,
    pub config: Config,
    /// None when config.json does not say: then the file decides (lm_head.weight present or not).
    pub tie_word_embeddings: Option<bool>,
    /// q/k/v projections have biases (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    /// One or several (Llama 3 lists its end-of-turn tokens too).
    pub eos_token_ids: Vec<u32>,
}

/// A JSON object of a named file, with accessors whose errors name the file and the key.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    file: &'a str,
}

impl<'a> Obj<'a> {
    fn err(&self, msg: String) -> Error {
        Error::Format(format!("{}: {msg}", self.file))
    }

    /// A present, non-null value.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn size_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_SIZE).contains(&n) => Ok(Some(n as usize)),
                Some(n) => Err(self.err(format!("{key} = {n} is out of range (1 to {MAX_SIZE})"))),
                None => Err(self.err(format!("{key} should be a positive integer but is {v}"))),
            },
        }
    }

    fn size(&self, key: &str) -> Result<usize> {
        self.size_opt(key)?.ok_or_else(|| {
            self.err(format!(
                "{key} is missing (every Llama-family config.json has it)"
            ))
        })
    }

    fn num_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.err(format!("{key} should be a number but is {v}"))),
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("{key} should be true or false but is {v}"))),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(format!("{key} should be a string but is {v}"))),
        }
    }

    /// Token ids: a number, a list of numbers, or absent.
    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let one = |v: &Value| {
            v.as_u64()
                .filter(|&n| n <= u32::MAX as u64)
                .map(|n| n as u32)
                .ok_or_else(|| {
                    self.err(format!(
                        "{key} should be a token id (or a list of them) but is {v}"
                    ))
                })
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}

/// Parses JSON that must be an object; `file` names it in errors.
fn json_object(bytes: &[u8], file: &str) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Error::Format(format!(
            "{file}: expected a JSON object, found {}",
            json_kind(&other)
        ))),
        Err(e) => Err(Error::Format(format!(
            "{file} is not valid JSON ({e}); the file is damaged: download it again"
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_rope_scaling(o: &Obj, v: &Value) -> Result<Option<RopeScaling>> {
    let m = v.as_object().ok_or_else(|| {
        o.err(format!(
            "rope_scaling should be an object or null but is {}",
            json_kind(v)
        ))
    })?;
    let s = Obj {
        map: m,
        file: o.file,
    };
    // transformers renamed "type" to "rope_type"; files have either.
    let kind = match s.str_opt("rope_type")? {
        Some(k) => k,
        None => s.str_opt("type")?.unwrap_or("default"),
    };
    let positive = |key: &str| -> Result<f64> {
        match s.num_opt(key)? {
            Some(x) if x > 0.0 => Ok(x),
            Some(x) => Err(s.err(format!("rope_scaling.{key} = {x} must be positive"))),
            None => Err(s.err(format!(
                "rope_scaling.{key} is missing (rope_type \"{kind}\" needs it)"
            ))),
        }
    };
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: positive("factor")?,
        }),
        "llama3" => {
            let sc = RopeScaling::Llama3 {
                factor: positive("factor")?,
                low_freq_factor: positive("low_freq_factor")?,
                high_freq_factor: positive("high_freq_factor")?,
                original_max_position_embeddings: positive("original_max_position_embeddings")?,
            };
            if let RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                ..
            } = sc
            {
                if high_freq_factor <= low_freq_factor {
                    return Err(s.err(format!(
                        "rope_scaling: high_freq_factor {high_freq_factor} must be larger than low_freq_factor {low_freq_factor}"
                    )));
                }
            }
            Some(sc)
        }
        other => {
            return Err(s.err(format!(
                "rope_scaling type \"{other}\" is not supported (default, linear and llama3 are)"
            )))
        }
    })
}

impl HfConfig {
    /// Parses config.json.
    pub fn parse(bytes: &[u8]) -> Result<HfConfig> {
        let map = json_object(bytes, CONFIG)?;
        let o = Obj {
            map: &map,
            file: CONFIG,
        };
        let names: Vec<&str> = match o.get("architectures") {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            Some(v) => {
                return Err(o.err(format!(
                    "architectures should be a list of class names but is {v}"
                )))
            }
            None => Vec::new(),
        };
        let architecture = match (names.first(), o.str_opt("model_type")?) {
            (Some(&n), _) => Architecture::from_name(n).ok_or(n),
            (None, Some(t)) => Architecture::from_name(t).ok_or(t),
            (None, None) => {
                return Err(o.err(
                    "neither architectures nor model_type is given, so the model class is unknown"
                        .into(),
                ))
            }
        }
        .map_err(|n| {
            o.err(format!(
                "architecture \"{n}\" is not supported (LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM are)"
            ))
        })?;

        if let Some(act) = o.str_opt("hidden_act")? {
            if act != "silu" {
                return Err(o.err(format!(
                    "hidden_act \"{act}\" is not supported (sinkstream's FFN is SwiGLU: silu)"
                )));
            }
        }
        if o.bool_opt("mlp_bias")? == Some(true) {
            return Err(o.err("mlp_bias = true is not supported (no biases in the FFN)".into()));
        }

        let dim = o.size("hidden_size")?;
        let n_heads = o.size("num_attention_heads")?;
        let n_kv_heads = o.size_opt("num_key_value_heads")?.unwrap_or(n_heads);
        let head_dim = match o.size_opt("head_dim")? {
            Some(h) => h,
            None => {
                if dim % n_heads != 0 {
                    return Err(o.err(format!(
                        "hidden_size {dim} is not divisible by num_attention_heads {n_heads} (and no head_dim is given)"
                    )));
                }
                dim / n_heads
            }
        };
        // Newer transformers versions nest the RoPE settings in rope_parameters.
        let rope_params = match o.get("rope_parameters") {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        };
        let rope_obj = rope_params.map(|m| Obj {
            map: m,
            file: CONFIG,
        });
        let theta = match rope_obj
            .as_ref()
            .map(|r| r.num_opt("rope_theta"))
            .transpose()?
        {
            Some(Some(t)) => t,
            _ => o.num_opt("rope_theta")?.unwrap_or(10000.0),
        };
        if theta <= 1.0 {
            return Err(o.err(format!("rope_theta {theta} must be larger than 1")));
        }
        let scaling = match (o.get("rope_scaling"), rope_params) {
            (Some(v), _) => parse_rope_scaling(&o, v)?,
            (None, Some(m)) => parse_rope_scaling(&o, &Value::Object(m.clone()))?,
            (None, None) => None,
        };
        // sliding_window (Mistral, Qwen2) is not applied: the cache policy decides what each
        // token attends to (a window policy of the same size reproduces it).
        let eps = o.num_opt("rms_norm_eps")?.unwrap_or(1e-6);
        let default_context = match architecture {
            Architecture::Llama => 2048,
            Architecture::Mistral | Architecture::Qwen2 => 32768,
        };
        let config = Config {
            vocab: o.size("vocab_size")?,
            dim,
            n_layers: o.size("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: o.size("intermediate_size")?,
            norm_eps: eps as f32,
            rope_theta: theta,
            rope_layout: RopeLayout::Half,
            rope_freqs: rope_freqs(theta, head_dim, scaling),
            context_len: o
                .size_opt("max_position_embeddings")?
                .unwrap_or(default_context),
        };
        config.validate().map_err(|e| o.err(strip_kind(&e)))?;
        Ok(HfConfig {
            architecture,
            config,
            tie_word_embeddings: o.bool_opt("tie_word_embeddings")?,
            qkv_bias: architecture == Architecture::Qwen2
                || o.bool_opt("attention_bias")? == Some(true),
            bos_token_id: o.ids("bos_token_id")?.first().copied(),
            eos_token_ids: o.ids("eos_token_id")?,
        })
    }
}

/// The files of a checkpoint by name (`config.json`, `model.safetensors`, ...). `take` hands a
/// file's bytes over, so memory can be released as the loader goes; None when absent.
pub trait CheckpointFiles {
    fn take(&mut self, name: &str) -> Result<Option<Vec<u8>>>;
    fn contains(&self, name: &str) -> bool;
    /// For messages: the directory, or the list of names given.
    fn describe(&self) -> String;
}

/// Files given as bytes (the browser, tests). Directory parts of names are dropped, so the
/// relative paths of a picked folder ("SmolLM2/config.json") work as they are.
#[derive(Default)]
pub struct MemoryFiles {
    files: BTreeMap<String, Vec<u8>>,
    /// Every name given, also after its bytes were taken (for messages).
    given: BTreeSet<String>,
}

impl MemoryFiles {
    pub fn new() -> MemoryFiles {
        MemoryFiles::default()
    }

    pub fn insert(&mut self, name: &str, bytes: Vec<u8>) {
        let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
        self.given.insert(base.to_string());
        self.files.insert(base.to_string(), bytes);
    }

    /// The bytes of a file still held.
    pub fn peek(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(|b| b.as_slice())
    }

    /// The names given (directory parts dropped).
    pub fn names(&self) -> Vec<String> {
        self.given.iter().cloned().collect()
    }
}

impl CheckpointFiles for MemoryFiles {
    fn take(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.files.remove(name))
    }
    fn contains(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }
    fn describe(&self) -> String {
        let names: Vec<&str> = self.given.iter().map(|s| s.as_str()).collect();
        format!("the files given ({})", names.join(", "))
    }
}

/// A checkpoint directory on disk.
#[cfg(not(target_arch = "wasm32"))]
pub struct DirFiles {
    dir: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl DirFiles {
    pub fn new(dir: &std::path::Path) -> DirFiles {
        DirFiles {
            dir: dir.to_path_buf(),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl CheckpointFiles for DirFiles {
    fn take(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        let p = self.dir.join(name);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io(format!("cannot read {}: {e}", p.display()))),
        }
    }
    fn contains(&self, name: &str) -> bool {
        self.dir.join(name).is_file()
    }
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// Parses a safetensors file with errors that say what is wrong with it and what to do.
fn parse_safetensors<'a>(bytes: &'a [u8], file: &str) -> Result<SafeTensors<'a>> {
    let bad = |m: String| Error::Format(format!("{file}: {m}"));
    if bytes.is_empty() {
        return Err(bad(
            "the file is empty; download the checkpoint again".into()
        ));
    }
    let Some(head) = bytes.get(..8) else {
        return Err(bad(format!(
            "{} bytes is too short for a safetensors file (it starts with an 8-byte header length); the file is truncated",
            bytes.len()
        )));
    };
    let mut le = [0u8; 8];
    le.copy_from_slice(head);
    let n = u64::from_le_bytes(le);
    let rest = bytes.len() as u64 - 8;
    if n > MAX_HEADER {
        return Err(bad(format!(
            "the header length {n} is absurd (at most {MAX_HEADER}): not a safetensors file, or a corrupt one"
        )));
    }
    if n > rest {
        return Err(bad(format!(
            "the header needs {n} bytes but only {rest} follow: the file is truncated; download it again"
        )));
    }
    SafeTensors::deserialize(bytes).map_err(|e| {
        bad(match e {
            SafeTensorError::MetadataIncompleteBuffer => {
                // Say how far the data should reach, from the header itself.
                let header = &bytes[8..8 + n as usize];
                let end = serde_json::from_slice::<Value>(header)
                    .ok()
                    .and_then(|v| {
                        v.as_object()?
                            .values()
                            .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
                            .max()
                    })
                    .unwrap_or(0);
                let need = 8 + n + end;
                if need > bytes.len() as u64 {
                    format!(
                        "the tensor data runs to byte {need} but the file has only {} bytes: the file is truncated; download it again",
                        bytes.len()
                    )
                } else {
                    format!(
                        "{} bytes follow the last tensor's data (corrupt file)",
                        bytes.len() as u64 - need
                    )
                }
            }
            SafeTensorError::InvalidHeaderDeserialization(e) => format!(
                "the header is not a valid safetensors header ({e}): not a safetensors file, or a corrupt one"
            ),
            SafeTensorError::InvalidHeader(e) => {
                format!("the header is not UTF-8 text ({e}): not a safetensors file")
            }
            SafeTensorError::InvalidOffset(name) => format!(
                "tensor {name}: its data_offsets do not start where the previous tensor's end (corrupt header)"
            ),
            SafeTensorError::TensorInvalidInfo => {
                "a tensor's data_offsets do not match its shape and dtype (corrupt header)".into()
            }
            SafeTensorError::ValidationOverflow => {
                "a tensor's shape is absurd (its size overflows): corrupt header".into()
            }
            other => format!("{other} (corrupt file)"),
        })
    })
}

/// What one tensor must look like.
#[derive(Clone, Copy)]
struct Want {
    rows: usize,
    cols: usize,
    /// 1-D in the file (norms, biases).
    vector: bool,
}

fn tensor_from_view(
    name: &str,
    view: &safetensors::tensor::TensorView,
    want: Want,
    file: &str,
) -> Result<HostTensor> {
    let dtype = match view.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        other => {
            return Err(Error::Format(format!(
                "{file}: tensor {name} has dtype {other:?}, which sinkstream does not read (F32, F16 and BF16 are); convert the checkpoint to one of them"
            )))
        }
    };
    let shape = view.shape();
    let ok = if want.vector {
        shape == [want.cols]
    } else {
        shape == [want.rows, want.cols]
    };
    if !ok {
        let need = if want.vector {
            format!("[{}]", want.cols)
        } else {
            format!("[{}, {}]", want.rows, want.cols)
        };
        return Err(Error::Format(format!(
            "{file}: tensor {name} has shape {shape:?}, the config needs {need}"
        )));
    }
    let t = HostTensor {
        name: name.to_string(),
        dtype,
        rows: want.rows,
        cols: want.cols,
        data: view.data().to_vec(),
    };
    t.validate()?;
    Ok(t)
}

/// The HF names of one layer's tensors.
fn layer_name(i: usize, s: &str) -> String {
    format!("model.layers.{i}.{s}")
}

/// Every tensor the model needs (name -> shape), and the optional ones.
fn wanted(h: &HfConfig) -> (BTreeMap<String, Want>, BTreeSet<String>) {
    let c = &h.config;
    let mat = |rows, cols| Want {
        rows,
        cols,
        vector: false,
    };
    let vec = |n| Want {
        rows: 1,
        cols: n,
        vector: true,
    };
    let mut w = BTreeMap::new();
    let mut optional = BTreeSet::new();
    w.insert("model.embed_tokens.weight".to_string(), mat(c.vocab, c.dim));
    w.insert("model.norm.weight".to_string(), vec(c.dim));
    // An explicit tie_word_embeddings decides; without one, the file does (lm_head present or not).
    if h.tie_word_embeddings != Some(true) {
        w.insert("lm_head.weight".to_string(), mat(c.vocab, c.dim));
        if h.tie_word_embeddings.is_none() {
            optional.insert("lm_head.weight".to_string());
        }
    }
    for i in 0..c.n_layers {
        let l = |s| layer_name(i, s);
        w.insert(l("input_layernorm.weight"), vec(c.dim));
        w.insert(l("post_attention_layernorm.weight"), vec(c.dim));
        w.insert(l("self_attn.q_proj.weight"), mat(c.q_dim(), c.dim));
        w.insert(l("self_attn.k_proj.weight"), mat(c.kv_dim(), c.dim));
        w.insert(l("self_attn.v_proj.weight"), mat(c.kv_dim(), c.dim));
        w.insert(l("self_attn.o_proj.weight"), mat(c.dim, c.q_dim()));
        w.insert(l("mlp.gate_proj.weight"), mat(c.ffn_dim, c.dim));
        w.insert(l("mlp.up_proj.weight"), mat(c.ffn_dim, c.dim));
        w.insert(l("mlp.down_proj.weight"), mat(c.dim, c.ffn_dim));
        for (s, n) in [
            ("self_attn.q_proj.bias", c.q_dim()),
            ("self_attn.k_proj.bias", c.kv_dim()),
            ("self_attn.v_proj.bias", c.kv_dim()),
        ] {
            w.insert(l(s), vec(n));
            if !h.qkv_bias {
                optional.insert(l(s));
            }
        }
    }
    (w, optional)
}

/// Biases the kernels have no place for: refused rather than silently dropped.
fn unsupported_tensor(name: &str) -> bool {
    name.ends_with("self_attn.o_proj.bias") || (name.contains(".mlp.") && name.ends_with(".bias"))
}

/// Reads the shard names from model.safetensors.index.json.
pub(crate) fn shard_names(bytes: &[u8]) -> Result<Vec<String>> {
    let map = json_object(bytes, INDEX)?;
    let wm = map
        .get("weight_map")
        .and_then(|v| v.as_object())
        .ok_or_else(|| Error::Format(format!("{INDEX}: weight_map is missing or not an object")))?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in wm {
        let f = file.as_str().ok_or_else(|| {
            Error::Format(format!(
                "{INDEX}: weight_map[\"{tensor}\"] should be a file name but is {file}"
            ))
        })?;
        // Shards live next to the index; a path elsewhere is a broken or hostile index.
        if f.is_empty() || f.contains(['/', '\\']) || f == "." || f == ".." {
            return Err(Error::Format(format!(
                "{INDEX}: weight_map[\"{tensor}\"] = \"{f}\" is not a file name in the checkpoint directory"
            )));
        }
        shards.insert(f.to_string());
    }
    if shards.is_empty() {
        return Err(Error::Format(format!("{INDEX}: weight_map is empty")));
    }
    Ok(shards.into_iter().collect())
}

/// Loads every wanted tensor from model.safetensors or the shards of the index.
fn load_tensors(
    files: &mut dyn CheckpointFiles,
    want: &BTreeMap<String, Want>,
    optional: &BTreeSet<String>,
) -> Result<BTreeMap<String, HostTensor>> {
    let shards = if files.contains(WEIGHTS) {
        vec![WEIGHTS.to_string()]
    } else if let Some(index) = files.take(INDEX)? {
        shard_names(&index)?
    } else if files.contains("pytorch_model.bin") || files.contains("pytorch_model.bin.index.json")
    {
        return Err(Error::Format(format!(
            "{WEIGHTS} is missing and pytorch_model.bin (PyTorch pickle) is not supported; convert the checkpoint to safetensors"
        )));
    } else {
        return Err(Error::Format(format!(
            "{WEIGHTS} (or {INDEX} with its shards) is missing from {}",
            files.describe()
        )));
    };
    let mut out = BTreeMap::new();
    for shard in &shards {
        let bytes = files.take(shard)?.ok_or_else(|| {
            Error::Format(format!(
                "{shard} is missing from {} ({INDEX} lists it)",
                files.describe()
            ))
        })?;
        let st = parse_safetensors(&bytes, shard)?;
        for (name, view) in st.iter() {
            if unsupported_tensor(name) {
                return Err(Error::Format(format!(
                    "{shard}: tensor {name} is a bias sinkstream's kernels do not have (only q/k/v projections may have biases)"
                )));
            }
            if let Some(&w) = want.get(name) {
                if !out.contains_key(name) {
                    out.insert(name.to_string(), tensor_from_view(name, &view, w, shard)?);
                }
            }
        }
    }
    if let Some(missing) = want
        .keys()
        .find(|n| !out.contains_key(*n) && !optional.contains(*n))
    {
        return Err(Error::Format(format!(
            "tensor {missing} is missing (looked in {}); the checkpoint is incomplete or not a Llama-family checkpoint",
            shards.join(", ")
        )));
    }
    Ok(out)
}

/// A token given as a string or as an AddedToken object ({"content": ...}).
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The chat template from tokenizer_config.json: a string, or a list of named templates.
fn template_source(o: &Obj) -> Result<Option<String>> {
    match o.get("chat_template") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let named = |want: Option<&str>| {
                list.iter().find_map(|t| {
                    let name = t.get("name")?.as_str()?;
                    if want.is_some_and(|w| w != name) {
                        return None;
                    }
                    t.get("template")?.as_str().map(str::to_string)
                })
            };
            named(Some("default"))
                .or_else(|| named(None))
                .map(Some)
                .ok_or_else(|| {
                    o.err("chat_template is a list without a {\"name\", \"template\"} entry".into())
                })
        }
        Some(v) => Err(o.err(format!(
            "chat_template should be a string but is {}",
            json_kind(v)
        ))),
    }
}

impl Model {
    /// Loads a Hugging Face checkpoint from its files. `source` names it in error messages.
    pub fn from_hf_files(files: &mut dyn CheckpointFiles, source: &str) -> Result<Model> {
        let wrap = |e: Error| match e {
            Error::Format(m) => Error::Format(format!("{source}: {m}")),
            Error::Tokenizer(m) => Error::Tokenizer(format!("{source}: {m}")),
            other => other,
        };
        load_hf(files).map_err(wrap).map(|mut m| {
            m.source = source.to_string();
            m
        })
    }

    /// Loads a Hugging Face checkpoint directory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_hf_dir(dir: &std::path::Path) -> Result<Model> {
        if !dir.join(CONFIG).is_file() {
            return Err(Error::Io(format!(
                "{} is a directory without {CONFIG}; pass a .gguf model file or a Hugging Face checkpoint directory ({CONFIG}, {WEIGHTS}, {TOKENIZER})",
                dir.display()
            )));
        }
        Model::from_hf_files(&mut DirFiles::new(dir), &dir.display().to_string())
    }
}

fn load_hf(files: &mut dyn CheckpointFiles) -> Result<Model> {
    let config_bytes = files.take(CONFIG)?.ok_or_else(|| {
        Error::Format(format!(
            "{CONFIG} is missing from {}; a Hugging Face checkpoint needs {CONFIG}, {WEIGHTS} and {TOKENIZER}",
            files.describe()
        ))
    })?;
    let h = HfConfig::parse(&config_bytes)?;
    let c = h.config.clone();

    // The tokenizer first: it is small, and a missing one should not cost reading gigabytes.
    let tok_bytes = files.take(TOKENIZER)?.ok_or_else(|| {
        Error::Tokenizer(format!(
            "{TOKENIZER} is missing from {}; sinkstream needs the fast-tokenizer file (a SentencePiece tokenizer.model alone is not enough)",
            files.describe()
        ))
    })?;
    let mut tokenizer = Tokenizer::from_json_bytes(&tok_bytes)?;
    drop(tok_bytes);
    if tokenizer.vocab_size() > c.vocab {
        return Err(Error::Tokenizer(format!(
            "the tokenizer has {} tokens but the embedding has only {} rows (vocab_size in {CONFIG})",
            tokenizer.vocab_size(),
            c.vocab
        )));
    }
    let tc_bytes = files.take(TOKENIZER_CONFIG)?;
    let tc_map = match &tc_bytes {
        Some(b) => Some(json_object(b, TOKENIZER_CONFIG)?),
        None => None,
    };
    let empty = Map::new();
    let tc = Obj {
        map: tc_map.as_ref().unwrap_or(&empty),
        file: TOKENIZER_CONFIG,
    };
    let in_vocab = |id: u32| (id as usize) < tokenizer.vocab_size();
    let bos_text = token_string(tc.get("bos_token"));
    let eos_text = token_string(tc.get("eos_token"));
    let bos = bos_text
        .as_deref()
        .and_then(|t| tokenizer.token_id(t))
        .or(h.bos_token_id.filter(|&id| in_vocab(id)));
    let eos = eos_text.as_deref().and_then(|t| tokenizer.token_id(t)).or(h
        .eos_token_ids
        .iter()
        .copied()
        .find(|&id| in_vocab(id)));
    let bos_text =
        bos_text.unwrap_or_else(|| bos.map(|id| tokenizer.token_str(id)).unwrap_or_default());
    let eos_text =
        eos_text.unwrap_or_else(|| eos.map(|id| tokenizer.token_str(id)).unwrap_or_default());
    tokenizer.set_bos_eos(bos, eos);
    let template_file = match files.take(CHAT_TEMPLATE)? {
        Some(b) => Some(
            String::from_utf8(b)
                .map_err(|_| Error::Tokenizer(format!("{CHAT_TEMPLATE} is not UTF-8 text")))?,
        ),
        None => None,
    };
    // transformers prefers chat_template.jinja over the copy in tokenizer_config.json.
    let (template, from) = match template_file {
        Some(t) => (Some(t), CHAT_TEMPLATE),
        None => (template_source(&tc)?, TOKENIZER_CONFIG),
    };
    let chat_template = match template {
        Some(src) => ChatTemplate::new(&src, &bos_text, &eos_text)
            .map_err(|e| Error::Tokenizer(format!("{from}: {}", strip_kind(&e))))?,
        None => ChatTemplate::chatml(),
    };

    let (want, optional) = wanted(&h);
    let mut t = load_tensors(files, &want, &optional)?;
    let lm_head = t.remove("lm_head.weight");
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let mut take = |s: &str| take_tensor(&mut t, &layer_name(i, s));
        let attn_norm = f32_vector(take("input_layernorm.weight")?);
        let (wq, wk, wv) = (
            take("self_attn.q_proj.weight")?,
            take("self_attn.k_proj.weight")?,
            take("self_attn.v_proj.weight")?,
        );
        let wo = take("self_attn.o_proj.weight")?;
        let ffn_norm = f32_vector(take("post_attention_layernorm.weight")?);
        let (w_gate, w_up, w_down) = (
            take("mlp.gate_proj.weight")?,
            take("mlp.up_proj.weight")?,
            take("mlp.down_proj.weight")?,
        );
        let mut bias = |s: &str| t.remove(&layer_name(i, s)).map(f32_vector);
        layers.push(LayerWeights {
            attn_norm,
            wq,
            wk,
            wv,
            bq: bias("self_attn.q_proj.bias"),
            bk: bias("self_attn.k_proj.bias"),
            bv: bias("self_attn.v_proj.bias"),
            wo,
            ffn_norm,
            w_gate,
            w_up,
            w_down,
        });
    }
    let weights = Weights {
        embed: take_tensor(&mut t, "model.embed_tokens.weight")?,
        final_norm: f32_vector(take_tensor(&mut t, "model.norm.weight")?),
        lm_head,
        layers,
    };
    weights.validate(&c)?;
    Ok(Model {
        config: c,
        weights,
        tokenizer,
        chat_template,
        source: String::new(),
    })
}

fn take_tensor(t: &mut BTreeMap<String, HostTensor>, name: &str) -> Result<HostTensor> {
    t.remove(name)
        .ok_or_else(|| Error::Format(format!("tensor {name} is missing")))
}

/// Strips the "tokenizer: " kind prefix an inner error already carries.
fn strip_kind(e: &Error) -> String {
    match e {
        Error::Tokenizer(m) | Error::Format(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1e-12)
    }

    #[test]
    fn llama3_rope_scaling_by_hand() {
        // theta 10000, head_dim 8: base frequencies 1, 0.1, 0.01, 0.001 (wavelengths 2*pi/f:
        // 6.28, 62.8, 628.3, 6283). factor 8, low 1, high 4, original context 1000: wavelengths
        // under 1000/4 = 250 are kept, over 1000/1 = 1000 divided by 8, and 628.3 is blended:
        // smooth = (1000/628.3185 - 1) / (4 - 1) = 0.19718314,
        // f = 0.01 * ((1 - smooth)/8 + smooth) = 0.01 * 0.29753525 = 0.0029753525.
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 1000.0,
        };
        let f = rope_freqs(10000.0, 8, Some(s));
        let want = [1.0, 0.1, 0.002_975_352_507, 0.000_125];
        for (i, (g, w)) in f.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-11, "pair {i}: {g} vs {w}");
        }
        // Llama 3.1's own settings (theta 500000, head_dim 128, factor 8, 1, 4, 8192): the
        // fastest pair is untouched, the slowest (wavelength about 2.6M positions) divided by 8.
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let base = Config::default_rope_freqs(500000.0, 128);
        let f = rope_freqs(500000.0, 128, Some(s));
        assert_eq!(f[0], 1.0);
        assert!(close(f[63], base[63] / 8.0));
        // Linear: everything divided.
        let f = rope_freqs(10000.0, 8, Some(RopeScaling::Linear { factor: 4.0 }));
        assert!(close(f[1], 0.025));
    }

    #[test]
    fn config_json_fields() {
        let j = br#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "vocab_size": 151936,
            "max_position_embeddings": 32768, "tie_word_embeddings": true, "hidden_act": "silu",
            "bos_token_id": 151643, "eos_token_id": [151645, 151643], "sliding_window": null}"#;
        let h = HfConfig::parse(j).unwrap();
        assert_eq!(h.architecture, Architecture::Qwen2);
        assert!(h.qkv_bias);
        let c = &h.config;
        assert_eq!(
            (c.dim, c.head_dim, c.n_kv_heads, c.ffn_dim),
            (896, 64, 2, 4864)
        );
        assert_eq!(c.rope_layout, RopeLayout::Half);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(h.eos_token_ids, [151645, 151643]);
        assert_eq!(h.tie_word_embeddings, Some(true));
        // Llama 3.2 style: rope_scaling, explicit head_dim, model_type only.
        let j = br#"{"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 64, "rope_theta": 500000.0, "vocab_size": 128256,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
              "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#;
        let h = HfConfig::parse(j).unwrap();
        assert_eq!(h.architecture, Architecture::Llama);
        assert!(!h.qkv_bias);
        assert_eq!(h.config.context_len, 2048);
        assert_eq!(h.config.rope_freqs[0], 1.0);
        assert!(close(
            h.config.rope_freqs[31],
            Config::default_rope_freqs(500000.0, 64)[31] / 32.0
        ));
    }
}
