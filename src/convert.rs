//! A loaded model (usually from GGUF) written as a Hugging Face checkpoint: config.json,
//! model.safetensors, tokenizer.json, tokenizer_config.json, with Q/K rows in the rotate-half layout.

use std::borrow::Cow;
use std::collections::HashMap;

use half::{bf16, f16};
use safetensors::{Dtype, View};
use serde_json::json;

use crate::error::{Error, Result};
use crate::hf::{self, Architecture};
use crate::model::{Config, Model, RopeLayout};
use crate::tensor::HostTensor;

/// The element type of the written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDType {
    F32,
    F16,
    BF16,
}

impl OutDType {
    pub fn bytes(self) -> usize {
        match self {
            OutDType::F32 => 4,
            OutDType::F16 | OutDType::BF16 => 2,
        }
    }

    /// transformers' name for it (config.json's torch_dtype).
    pub fn torch_name(self) -> &'static str {
        match self {
            OutDType::F32 => "float32",
            OutDType::F16 => "float16",
            OutDType::BF16 => "bfloat16",
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            OutDType::F32 => Dtype::F32,
            OutDType::F16 => Dtype::F16,
            OutDType::BF16 => Dtype::BF16,
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            OutDType::F32 => bytemuck::cast_slice(values).to_vec(),
            OutDType::F16 => values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            OutDType::BF16 => values
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
}

/// Undoes llama.cpp's Q/K row permutation. llama.cpp stores head h's rows so that adjacent
/// pairs (2i, 2i+1) rotate together: its row h*hd + 2i + t is the Hugging Face row
/// h*hd + t*hd/2 + i (t = 0, 1). Works on whole rows of `cols` values (biases: cols = 1).
pub fn unpermute_rows(values: &[f32], cols: usize, n_heads: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for t in 0..2 {
                let src = h * hd + 2 * i + t;
                let dst = h * hd + t * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The inverse of `unpermute_rows`: what llama.cpp's converter does (for tests).
pub fn permute_rows(values: &[f32], cols: usize, n_heads: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for t in 0..2 {
                let src = h * hd + t * half + i;
                let dst = h * hd + 2 * i + t;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// One tensor to write, converted only when the writer asks for its bytes, so a checkpoint
/// of any size is written holding one converted tensor at a time.
pub struct OutTensor<'m> {
    pub name: String,
    src: &'m HostTensor,
    shape: Vec<usize>,
    dtype: OutDType,
    /// Undo the Q/K permutation with this many heads.
    unpermute_heads: Option<usize>,
    progress: &'m dyn Fn(u64),
}

impl OutTensor<'_> {
    fn values(&self) -> Vec<f32> {
        let v = self.src.to_f32();
        // A bias (one row in memory) permutes like a matrix of n rows of one value.
        let cols = if self.shape.len() == 1 {
            1
        } else {
            self.src.cols
        };
        match self.unpermute_heads {
            Some(heads) => unpermute_rows(&v, cols, heads),
            None => v,
        }
    }
}

impl View for OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let bytes = self.dtype.encode(&self.values());
        (self.progress)(bytes.len() as u64);
        Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bytes()
    }
}

/// Q/K biases on every layer, q/k/v and nothing else, is exactly Qwen2's architecture.
fn architecture(m: &Model) -> Architecture {
    let biased = m.weights.layers.iter().any(|l| l.bq.is_some());
    if biased {
        Architecture::Qwen2
    } else {
        Architecture::Llama
    }
}

fn check_convertible(m: &Model) -> Result<()> {
    let c = &m.config;
    if c.rope_freqs != Config::default_rope_freqs(c.rope_theta, c.head_dim) {
        return Err(Error::invalid(
            "the model's RoPE frequencies are scaled, which convert cannot express in config.json",
        ));
    }
    let l = &m.weights.layers;
    let all = |f: &dyn Fn(&crate::model::LayerWeights) -> bool| l.iter().all(f);
    let none = |f: &dyn Fn(&crate::model::LayerWeights) -> bool| !l.iter().any(f);
    let biases_consistent = all(&|l| l.bq.is_some() && l.bk.is_some() && l.bv.is_some())
        || none(&|l| l.bq.is_some() || l.bk.is_some() || l.bv.is_some());
    if !biases_consistent {
        return Err(Error::invalid(
            "some layers have q/k/v biases and others not; no Hugging Face architecture has that",
        ));
    }
    Ok(())
}

/// Every tensor under its Hugging Face name, in the model's order.
pub fn tensors<'m>(m: &'m Model, dtype: OutDType, progress: &'m dyn Fn(u64)) -> Vec<OutTensor<'m>> {
    let c = &m.config;
    let permuted = c.rope_layout == RopeLayout::Adjacent;
    let mut out = Vec::new();
    let mut add = |name: String, t: &'m HostTensor, heads: Option<usize>| {
        let vector = name.ends_with("norm.weight") || name.ends_with(".bias");
        let shape = if vector {
            vec![t.cols]
        } else {
            vec![t.rows, t.cols]
        };
        out.push(OutTensor {
            name,
            src: t,
            shape,
            dtype,
            unpermute_heads: heads.filter(|_| permuted),
            progress,
        });
    };
    let w = &m.weights;
    add("model.embed_tokens.weight".into(), &w.embed, None);
    for (i, l) in w.layers.iter().enumerate() {
        let n = |s: &str| format!("model.layers.{i}.{s}");
        add(n("input_layernorm.weight"), &l.attn_norm, None);
        add(n("self_attn.q_proj.weight"), &l.wq, Some(c.n_heads));
        add(n("self_attn.k_proj.weight"), &l.wk, Some(c.n_kv_heads));
        add(n("self_attn.v_proj.weight"), &l.wv, None);
        if let Some(b) = &l.bq {
            add(n("self_attn.q_proj.bias"), b, Some(c.n_heads));
        }
        if let Some(b) = &l.bk {
            add(n("self_attn.k_proj.bias"), b, Some(c.n_kv_heads));
        }
        if let Some(b) = &l.bv {
            add(n("self_attn.v_proj.bias"), b, None);
        }
        add(n("self_attn.o_proj.weight"), &l.wo, None);
        add(n("post_attention_layernorm.weight"), &l.ffn_norm, None);
        add(n("mlp.gate_proj.weight"), &l.w_gate, None);
        add(n("mlp.up_proj.weight"), &l.w_up, None);
        add(n("mlp.down_proj.weight"), &l.w_down, None);
    }
    add("model.norm.weight".into(), &w.final_norm, None);
    if let Some(h) = &w.lm_head {
        add("lm_head.weight".into(), h, None);
    }
    out
}

/// The bytes of model.safetensors, with the header's `format: pt` so transformers loads it.
fn metadata() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_string(), "pt".to_string())]))
}

/// The raw vocabulary string of a token id ("<|im_start|>"), for tokenizer_config.json.
fn token(m: &Model, id: Option<u32>) -> serde_json::Value {
    match id.and_then(|id| m.tokenizer.id_to_token(id)) {
        Some(s) => json!(s),
        None => serde_json::Value::Null,
    }
}

/// config.json for `m` written in `dtype`.
pub fn config_json(m: &Model, dtype: OutDType) -> Result<String> {
    check_convertible(m)?;
    let c = &m.config;
    let arch = architecture(m);
    // The f32 epsilon's shortest decimal form (1e-5), not its binary expansion.
    let eps: f64 = format!("{}", c.norm_eps)
        .parse()
        .unwrap_or(c.norm_eps as f64);
    let mut j = json!({
        "architectures": [arch.class_name()],
        "model_type": arch.model_type(),
        "hidden_size": c.dim,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.context_len,
        "rms_norm_eps": eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": null,
        "vocab_size": c.vocab,
        "tie_word_embeddings": m.weights.lm_head.is_none(),
        "torch_dtype": dtype.torch_name(),
        "bos_token_id": m.tokenizer.bos_id(),
        "eos_token_id": m.tokenizer.eos_id(),
        "use_cache": true,
    });
    if arch == Architecture::Llama {
        j["attention_bias"] = json!(false);
        j["mlp_bias"] = json!(false);
    }
    serde_json::to_string_pretty(&j).map_err(|e| Error::invalid(format!("config.json: {e}")))
}

/// tokenizer_config.json: the chat template and the BOS/EOS tokens.
pub fn tokenizer_config_json(m: &Model) -> Result<String> {
    let j = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": false,
        "add_eos_token": false,
        "bos_token": token(m, m.tokenizer.bos_id()),
        "eos_token": token(m, m.tokenizer.eos_id()),
        "clean_up_tokenization_spaces": false,
        "model_max_length": m.config.context_len,
        "chat_template": m.chat_template.source(),
    });
    serde_json::to_string_pretty(&j)
        .map_err(|e| Error::invalid(format!("tokenizer_config.json: {e}")))
}

/// generation_config.json, so transformers' generate() stops where sinkstream does.
fn generation_config_json(m: &Model) -> String {
    let stop = m.stop_tokens();
    json!({
        "bos_token_id": m.tokenizer.bos_id(),
        "eos_token_id": stop,
    })
    .to_string()
}

/// The small files of the checkpoint (everything but the weights), by name.
pub fn text_files(m: &Model, dtype: OutDType) -> Result<Vec<(&'static str, String)>> {
    Ok(vec![
        (hf::CONFIG, config_json(m, dtype)?),
        (hf::TOKENIZER, m.tokenizer.to_json()?),
        (hf::TOKENIZER_CONFIG, tokenizer_config_json(m)?),
        ("generation_config.json", generation_config_json(m)),
    ])
}

/// Bytes of the weights file: what a progress bar should count to.
pub fn weights_bytes(m: &Model, dtype: OutDType) -> u64 {
    tensors(m, dtype, &|_| {})
        .iter()
        .map(|t| t.data_len() as u64)
        .sum()
}

/// The whole checkpoint in memory, file name -> bytes (small models; tests; the browser).
pub fn to_memory(m: &Model, dtype: OutDType) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files: Vec<(String, Vec<u8>)> = text_files(m, dtype)?
        .into_iter()
        .map(|(n, s)| (n.to_string(), s.into_bytes()))
        .collect();
    let t = tensors(m, dtype, &|_| {});
    let st = safetensors::serialize(t.into_iter().map(|t| (t.name.clone(), t)), metadata())
        .map_err(|e| Error::invalid(format!("writing {}: {e}", hf::WEIGHTS)))?;
    files.push((hf::WEIGHTS.to_string(), st));
    Ok(files)
}

/// Writes the checkpoint into the new directory `out`. Everything goes into a hidden temporary
/// directory beside it first, renamed to `out` at the end: an interrupted or failed conversion
/// never leaves a half-written checkpoint under the name asked for. `progress` receives the
/// bytes of each tensor as it is written.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_dir(
    m: &Model,
    dtype: OutDType,
    out: &std::path::Path,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let io = |what: &str, p: &std::path::Path, e: &dyn std::fmt::Display| {
        Error::Io(format!("{what} {}: {e}", p.display()))
    };
    if out.exists() {
        return Err(Error::Io(format!(
            "{} already exists; remove it or choose another --out",
            out.display()
        )));
    }
    let tmp = temp_dir_for(out)?;
    let texts = text_files(m, dtype)?;
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| io("cannot create", &tmp, &e))?;
        for (name, text) in &texts {
            let p = tmp.join(name);
            std::fs::write(&p, text).map_err(|e| io("cannot write", &p, &e))?;
        }
        let p = tmp.join(hf::WEIGHTS);
        let t = tensors(m, dtype, progress);
        safetensors::serialize_to_file(t.into_iter().map(|t| (t.name.clone(), t)), metadata(), &p)
            .map_err(|e| io("cannot write", &p, &e))?;
        std::fs::rename(&tmp, out)
            .map_err(|e| io("cannot rename the finished checkpoint to", out, &e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// The temporary directory `write_dir` writes into: hidden, beside `out`, named after it.
#[cfg(not(target_arch = "wasm32"))]
pub fn temp_dir_for(out: &std::path::Path) -> Result<std::path::PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{}: not a directory name", out.display())))?;
    Ok(out.with_file_name(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_by_hand_and_round_trip() {
        // One head of dim 4, rows of one value: llama.cpp's rows (0, 1, 2, 3) are HF rows
        // (0, 2, 1, 3): adjacent pairs (0,1), (2,3) become half pairs (0,2), (1,3).
        assert_eq!(
            unpermute_rows(&[10.0, 11.0, 12.0, 13.0], 1, 1),
            [10.0, 12.0, 11.0, 13.0]
        );
        // Two heads of dim 4, rows of 2 values: each head separately.
        let g: Vec<f32> = (0..16).map(|x| x as f32).collect();
        let h = unpermute_rows(&g, 2, 2);
        assert_eq!(&h[..8], &[0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]);
        assert_eq!(&h[8..], &[8.0, 9.0, 12.0, 13.0, 10.0, 11.0, 14.0, 15.0]);
        assert_eq!(permute_rows(&h, 2, 2), g);
        // 3 heads of dim 8 (rows of 5 values)
        let g: Vec<f32> = (0..3 * 8 * 5).map(|x| x as f32 * 0.5).collect();
        assert_eq!(permute_rows(&unpermute_rows(&g, 5, 3), 5, 3), g);
    }
}
