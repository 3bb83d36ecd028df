//! What the fuzz targets and the seed writer share: the tokenizer target's input format and a
//! builder for tiny but complete GGUF models, so seeds and targets cannot drift apart.

use sinkstream::gguf::{write, Value};

/// Runs `f` on a thread of its own and waits for it: for encoding with a tokenizer built from
/// the input. tokenizers 0.23 keeps each BPE model's word cache in a thread-local map keyed by a
/// fresh id per model, and never removes the entry when the model is dropped: encoding with a new
/// tokenizer per input on one thread grew the fuzzer by about 12 KB an input (2 GB in ten
/// minutes, libFuzzer's out-of-memory limit). The thread's exit frees it. Only inputs that build
/// a tokenizer pay for the thread. A panic in `f` still stops the fuzzer: libfuzzer-sys's panic
/// hook aborts.
pub fn on_fresh_thread(f: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        let _ = s.spawn(f).join();
    });
}

/// Separates the sections of a tokenizer input. 0xFF never occurs in UTF-8, so a section's
/// strings can hold any text.
pub const SECTION: u8 = 0xFF;
/// Separates the items of a list section (tokens, merges). Also never in UTF-8.
pub const ITEM: u8 = 0xFE;

/// The tokenizer target's input, one field per GGUF metadata key it feeds. The input is the
/// sections in this order separated by `SECTION`; a missing section leaves its key out, so the
/// fuzzer reaches "key missing" as easily as "value wrong".
///
/// 0 tokenizer.ggml.model, 1 tokenizer.ggml.pre, 2 tokenizer.ggml.tokens (items), 3
/// tokenizer.ggml.merges (items), 4 tokenizer.ggml.token_type (one signed byte per token), 5
/// tokenizer.ggml.bos_token_id and 6 tokenizer.ggml.eos_token_id (decimal text), 7 the text to
/// encode with the tokenizer once built.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TokenizerInput {
    pub model: Option<String>,
    pub pre: Option<String>,
    pub tokens: Option<Vec<String>>,
    pub merges: Option<Vec<String>>,
    pub token_type: Option<Vec<i8>>,
    pub bos: Option<u64>,
    pub eos: Option<u64>,
    pub text: String,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn items(b: &[u8]) -> Vec<String> {
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|&c| c == ITEM).map(text).collect()
}

fn id(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.trim().parse().ok()
}

impl TokenizerInput {
    pub fn decode(data: &[u8]) -> TokenizerInput {
        let mut s = data.split(|&c| c == SECTION);
        let mut next = || s.next();
        TokenizerInput {
            model: next().map(text),
            pre: next().map(text),
            tokens: next().map(items),
            merges: next().map(items),
            token_type: next().map(|b| b.iter().map(|&x| x as i8).collect()),
            bos: next().and_then(id),
            eos: next().and_then(id),
            text: next().map(text).unwrap_or_default(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        fn list(v: &[String]) -> Vec<u8> {
            v.iter()
                .map(|s| s.as_bytes())
                .collect::<Vec<_>>()
                .join(&ITEM)
        }
        let num = |v: Option<u64>| v.map(|x| x.to_string().into_bytes()).unwrap_or_default();
        let sections: Vec<Vec<u8>> = vec![
            self.model.clone().unwrap_or_default().into_bytes(),
            self.pre.clone().unwrap_or_default().into_bytes(),
            self.tokens.as_deref().map(list).unwrap_or_default(),
            self.merges.as_deref().map(list).unwrap_or_default(),
            self.token_type
                .as_deref()
                .map(|t| t.iter().map(|&x| x as u8).collect())
                .unwrap_or_default(),
            num(self.bos),
            num(self.eos),
            self.text.clone().into_bytes(),
        ];
        sections.join(&SECTION)
    }

    /// The GGUF metadata these fields stand for.
    pub fn metadata(&self) -> Vec<(&'static str, Value)> {
        let strs = |v: &[String]| Value::Array(v.iter().map(|s| Value::Str(s.clone())).collect());
        let mut md = Vec::new();
        if let Some(m) = &self.model {
            md.push(("tokenizer.ggml.model", Value::Str(m.clone())));
        }
        if let Some(p) = &self.pre {
            md.push(("tokenizer.ggml.pre", Value::Str(p.clone())));
        }
        if let Some(t) = &self.tokens {
            md.push(("tokenizer.ggml.tokens", strs(t)));
        }
        if let Some(m) = &self.merges {
            md.push(("tokenizer.ggml.merges", strs(m)));
        }
        if let Some(t) = &self.token_type {
            let v = t.iter().map(|&x| Value::I32(x as i32)).collect();
            md.push(("tokenizer.ggml.token_type", Value::Array(v)));
        }
        if let Some(b) = self.bos {
            md.push(("tokenizer.ggml.bos_token_id", Value::U64(b)));
        }
        if let Some(e) = self.eos {
            md.push(("tokenizer.ggml.eos_token_id", Value::U64(e)));
        }
        md
    }
}

/// A tiny model in the shape the loader accepts: one layer, hidden size 32, one head of 32,
/// FFN 32, every tensor Q4_1 (20 bytes per 32 weights) so a whole model is a few KiB, which
/// keeps libFuzzer's inputs small and its executions fast. `tokenizer` supplies the vocabulary
/// (its token count sets the embedding rows); `extra` is appended to the metadata
/// (e.g. a chat template).
pub fn tiny_model(tokenizer: &TokenizerInput, extra: Vec<(&'static str, Value)>) -> Vec<u8> {
    const DIM: u64 = 32;
    let vocab = tokenizer.tokens.as_ref().map_or(1, |t| t.len().max(1)) as u64;
    let mut md = vec![
        ("general.architecture", Value::Str("llama".into())),
        ("llama.embedding_length", Value::U32(DIM as u32)),
        ("llama.block_count", Value::U32(1)),
        ("llama.attention.head_count", Value::U32(1)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.feed_forward_length", Value::U32(DIM as u32)),
        ("llama.context_length", Value::U32(2048)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
    ];
    md.extend(tokenizer.metadata());
    md.extend(extra);
    let shapes: [(&str, u64); 11] = [
        ("token_embd.weight", vocab),
        ("blk.0.attn_norm.weight", 1),
        ("blk.0.attn_q.weight", DIM),
        ("blk.0.attn_k.weight", DIM),
        ("blk.0.attn_v.weight", DIM),
        ("blk.0.attn_output.weight", DIM),
        ("blk.0.ffn_norm.weight", 1),
        ("blk.0.ffn_gate.weight", DIM),
        ("blk.0.ffn_up.weight", DIM),
        ("blk.0.ffn_down.weight", DIM),
        ("output_norm.weight", 1),
    ];
    // One Q4_1 block per row: scale 1/16 (f16 0x2C00), minimum 0, nibbles varying by row.
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(_, rows)| {
            (0..rows)
                .flat_map(|r| {
                    let mut b = vec![0x00, 0x2C, 0x00, 0x00];
                    b.extend((0..16).map(|j| ((r as u8).wrapping_add(j) & 0x0F) * 0x11));
                    b
                })
                .collect()
        })
        .collect();
    let tensors: Vec<write::Tensor> = shapes
        .iter()
        .zip(&data)
        .map(|(&(name, rows), d)| write::Tensor {
            name,
            dims: if rows == 1 {
                vec![DIM]
            } else {
                vec![DIM, rows]
            },
            ggml_type: 3,
            data: d,
        })
        .collect();
    write::gguf(&md, &tensors)
}

/// The byte-level BPE vocabulary of the unit tests: enough for every code path of the builder.
pub fn small_tokenizer() -> TokenizerInput {
    let s = |v: &[&str]| Some(v.iter().map(|x| x.to_string()).collect());
    TokenizerInput {
        model: Some("gpt2".into()),
        pre: Some("smollm".into()),
        tokens: s(&["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġab", "<|im_end|>"]),
        merges: s(&["a b", "Ġ ab"]),
        token_type: Some(vec![3, 1, 1, 1, 1, 1, 3]),
        bos: Some(0),
        eos: Some(6),
        text: "ab ab<|im_end|> b a1".into(),
    }
}
