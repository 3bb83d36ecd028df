//! Bad model files get a clear error (what, where, what to do), never a panic. Each case starts
//! from a tiny valid GGUF model written by the test and breaks one thing; the real model is
//! truncated at several points.

mod common;
use sinkstream::gguf::{write, Value};
use sinkstream::{Error, Model};

fn strs(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::Str(s.to_string())).collect())
}

const DIM: u64 = 32;
const FFN: u64 = 64;
const VOCAB: u64 = 6;

fn metadata() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::Str("llama".into())),
        ("llama.embedding_length", Value::U32(DIM as u32)),
        ("llama.block_count", Value::U32(1)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Value::Str("smollm".into())),
        (
            "tokenizer.ggml.tokens",
            strs(&["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġab"]),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array([3, 1, 1, 1, 1, 1].iter().map(|&x| Value::I32(x)).collect()),
        ),
        ("tokenizer.ggml.merges", strs(&["a b", "Ġ ab"])),
    ]
}

/// (name, dims innermost first) of every tensor of the 1-layer model, all F32.
fn tensor_shapes() -> Vec<(&'static str, Vec<u64>)> {
    vec![
        ("token_embd.weight", vec![DIM, VOCAB]),
        ("blk.0.attn_norm.weight", vec![DIM]),
        ("blk.0.attn_q.weight", vec![DIM, DIM]),
        ("blk.0.attn_k.weight", vec![DIM, DIM / 2]),
        ("blk.0.attn_v.weight", vec![DIM, DIM / 2]),
        ("blk.0.attn_output.weight", vec![DIM, DIM]),
        ("blk.0.ffn_norm.weight", vec![DIM]),
        ("blk.0.ffn_gate.weight", vec![DIM, FFN]),
        ("blk.0.ffn_up.weight", vec![DIM, FFN]),
        ("blk.0.ffn_down.weight", vec![FFN, DIM]),
        ("output_norm.weight", vec![DIM]),
    ]
}

fn build(md: &[(&str, Value)], shapes: &[(&str, Vec<u64>)], ty: u32) -> Vec<u8> {
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(_, d)| {
            let n: u64 = d.iter().product();
            (0..n)
                .flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes())
                .collect()
        })
        .collect();
    let tensors: Vec<write::Tensor> = shapes
        .iter()
        .zip(&data)
        .map(|((name, dims), d)| write::Tensor {
            name,
            dims: dims.clone(),
            ggml_type: ty,
            data: d,
        })
        .collect();
    write::gguf(md, &tensors)
}

fn valid() -> Vec<u8> {
    build(&metadata(), &tensor_shapes(), 0)
}

fn load(bytes: &[u8]) -> Result<Model, Error> {
    Model::from_gguf_bytes(bytes, "test.gguf")
}

fn expect_err(bytes: &[u8], needles: &[&str]) {
    let r = std::panic::catch_unwind(|| load(bytes));
    let e = match r {
        Err(_) => panic!("loading panicked; expected an error mentioning {needles:?}"),
        Ok(Ok(_)) => panic!("loaded; expected an error mentioning {needles:?}"),
        Ok(Err(e)) => e.to_string(),
    };
    for n in needles {
        assert!(e.contains(n), "error {e:?} should mention {n:?}");
    }
    assert!(e.contains("test.gguf"), "error {e:?} should name the file");
}

fn set(key: &'static str, v: Value) -> Vec<(&'static str, Value)> {
    let mut md = metadata();
    md.retain(|(k, _)| *k != key);
    md.push((key, v));
    md
}

#[test]
fn the_tiny_model_loads() {
    let m = load(&valid()).unwrap();
    assert_eq!(
        (m.config.vocab, m.config.dim, m.config.n_layers),
        (6, 32, 1)
    );
    assert_eq!(m.tokenizer.encode("ab ab").unwrap(), [3, 5]);
}

#[test]
fn header_errors() {
    expect_err(&[], &["empty"]);
    expect_err(b"PK\x03\x04 this is a zip", &["not a GGUF file"]);
    expect_err(
        b"Hello, I am a text file renamed to model.gguf\n",
        &["not a GGUF file"],
    );
    let mut v = valid();
    v[4..8].copy_from_slice(&7u32.to_le_bytes());
    expect_err(&v, &["version 7"]);
    let mut v = valid();
    v[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    expect_err(&v, &["tensor count"]);
    let mut v = valid();
    v[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    expect_err(&v, &["metadata count"]);
    // the first key's length claims more bytes than the file has
    let mut v = valid();
    v[24..32].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    expect_err(&v, &["truncated or corrupt"]);
}

#[test]
fn tensor_table_errors() {
    // a tensor whose data runs past the end of the file
    let v = valid();
    expect_err(
        &v[..v.len() - 4],
        &["runs past the end", "output_norm.weight"],
    );
    // unsupported type (Q4_K = 12): dims chosen to be a whole number of 256-blocks is irrelevant,
    // the type is refused first
    let bytes = build(&metadata(), &tensor_shapes(), 12);
    expect_err(&bytes, &["Q4_K", "token_embd.weight"]);
    // overlapping and misaligned offsets: rewrite the offset of the second tensor
    let v = valid();
    let name = b"blk.0.attn_norm.weight";
    let at = v.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // after the name: n_dims u32, dims u64 x1, type u32, offset u64
    let off_at = at + 4 + 8 + 4;
    let mut o = v.clone();
    o[off_at..off_at + 8].copy_from_slice(&0u64.to_le_bytes());
    expect_err(&o, &["overlap"]);
    let mut o = v.clone();
    o[off_at..off_at + 8].copy_from_slice(&(32u64 * 24 + 4).to_le_bytes());
    expect_err(&o, &["not aligned"]);
}

#[test]
fn metadata_and_shape_errors() {
    expect_err(
        &build(
            &set("llama.block_count", Value::Str("thirty".into())),
            &tensor_shapes(),
            0,
        ),
        &["llama.block_count", "string"],
    );
    let mut md = metadata();
    md.retain(|(k, _)| *k != "llama.embedding_length");
    expect_err(
        &build(&md, &tensor_shapes(), 0),
        &["llama.embedding_length", "missing"],
    );
    expect_err(
        &build(
            &set("general.architecture", Value::Str("gpt2".into())),
            &tensor_shapes(),
            0,
        ),
        &["architecture"],
    );
    // head_count not dividing the hidden size; kv heads not dividing heads
    expect_err(
        &build(
            &set("llama.attention.head_count", Value::U32(3)),
            &tensor_shapes(),
            0,
        ),
        &["not divisible"],
    );
    expect_err(
        &build(
            &set("llama.attention.head_count_kv", Value::U32(3)),
            &tensor_shapes(),
            0,
        ),
        &["not a multiple"],
    );
    // a missing tensor
    let mut shapes = tensor_shapes();
    shapes.retain(|(n, _)| *n != "blk.0.ffn_up.weight");
    expect_err(
        &build(&metadata(), &shapes, 0),
        &["blk.0.ffn_up.weight", "missing"],
    );
    // a tensor of the wrong shape
    let mut shapes = tensor_shapes();
    shapes[2].1 = vec![DIM, DIM / 2];
    expect_err(
        &build(&metadata(), &shapes, 0),
        &["blk.0.attn_q.weight", "shape"],
    );
}

#[test]
fn tokenizer_errors() {
    // vocabulary size different from the embedding rows
    let md = set(
        "tokenizer.ggml.tokens",
        strs(&["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġab", "x"]),
    );
    let md: Vec<_> = md
        .into_iter()
        .map(|(k, v)| {
            if k == "tokenizer.ggml.token_type" {
                (
                    k,
                    Value::Array(
                        [3, 1, 1, 1, 1, 1, 1]
                            .iter()
                            .map(|&x| Value::I32(x))
                            .collect(),
                    ),
                )
            } else {
                (k, v)
            }
        })
        .collect();
    expect_err(&build(&md, &tensor_shapes(), 0), &["7 tokens", "6 rows"]);
    expect_err(
        &build(
            &set("tokenizer.ggml.merges", strs(&["a q"])),
            &tensor_shapes(),
            0,
        ),
        &["merges"],
    );
    let mut md = metadata();
    md.retain(|(k, _)| *k != "tokenizer.ggml.tokens");
    expect_err(&build(&md, &tensor_shapes(), 0), &["tokenizer.ggml.tokens"]);
}

/// Found by fuzzing (tests/fuzz, model_load and gguf_parse): a tensor whose element count fits
/// in 64 bits but whose byte size does not (2^62 F32 values, 3 * 2^62 F16 values) had its size wrap,
/// to 0 bytes for the F32 one, and passed the end-of-file check.
#[test]
fn tensor_byte_size_overflow() {
    for (dims, ty) in [(vec![1u64 << 62], 0u32), (vec![3 << 62], 1)] {
        let mut tensors: Vec<write::Tensor> = Vec::new();
        let shapes = tensor_shapes();
        let data: Vec<Vec<u8>> = shapes
            .iter()
            .map(|(_, d)| vec![0u8; d.iter().product::<u64>() as usize * 4])
            .collect();
        for ((name, d), bytes) in shapes.iter().zip(&data) {
            let huge = *name == "output_norm.weight";
            tensors.push(write::Tensor {
                name,
                dims: if huge { dims.clone() } else { d.clone() },
                ggml_type: if huge { ty } else { 0 },
                data: if huge { &[] } else { bytes },
            });
        }
        let bytes = write::gguf(&metadata(), &tensors);
        let e = sinkstream::gguf::Gguf::parse(&bytes)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("output_norm.weight") && e.contains("absurd dimensions"),
            "{dims:?}: {e}"
        );
        expect_err(&bytes, &["output_norm.weight", "absurd dimensions"]);
    }
}

/// Sizes in the metadata are bounded before anything is built from them: the RoPE table has
/// key_length / 2 entries, so 2^40 asked for 4 TiB and aborted the process.
#[test]
fn absurd_sizes_in_metadata() {
    for (key, v, needle) in [
        ("llama.attention.key_length", 1u64 << 40, "absurd"),
        ("llama.attention.key_length", 1 << 20, "head dimension"),
        ("llama.attention.head_count_kv", 1 << 40, "absurd"),
        ("llama.context_length", 1 << 40, "absurd"),
    ] {
        expect_err(
            &build(&set(key, Value::U64(v)), &tensor_shapes(), 0),
            &[needle],
        );
    }
}

/// A tokenizer.json's id table goes up to the largest id the file names. An id of three billion
/// in the BPE vocabulary of a small file is corruption: an error, not a table of three billion
/// entries (nor, as before, a table of 7 whose encoder hands out an id far past it). An added
/// token's id in the file is renumbered by the tokenizers crate: the table stays small.
#[test]
fn tokenizer_json_with_absurd_ids() {
    use sinkstream::tokenizer::Tokenizer;
    let m = load(&valid()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&m.tokenizer.to_json().unwrap()).unwrap();
    let read = |j: &serde_json::Value| {
        std::panic::catch_unwind(|| Tokenizer::from_json_bytes(j.to_string().as_bytes()))
            .expect("no panic")
    };
    assert_eq!(read(&json).unwrap().vocab_size(), 6);
    let mut sparse = json.clone();
    sparse["model"]["vocab"]["ab"] = serde_json::json!(3_000_000_000u32);
    let e = read(&sparse).unwrap_err().to_string();
    assert!(
        e.contains("token id of 3000000000") && e.contains("corrupt"),
        "{e}"
    );
    let mut added = json.clone();
    added["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": 4_000_000_000u32, "content": "<huge>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    assert_eq!(read(&added).unwrap().vocab_size(), 7);
}

/// Found by fuzzing (tests/fuzz, tokenizer_json): a syntax error inside the decoder made the
/// tokenizers crate panic (caught natively, but with a panic message on stderr, and an abort in
/// the browser). It is now a plain JSON error.
#[test]
fn tokenizer_json_syntax_error_in_the_decoder() {
    for bad in [
        &br#"{"decoder":{"type":"ByteLevel",}}"#[..],
        br#"{"decoder":{"type":"ByteLevel","add_prefix_space":true{"#,
    ] {
        let r = std::panic::catch_unwind(|| sinkstream::tokenizer::Tokenizer::from_json_bytes(bad));
        let e = r.expect("no panic").unwrap_err().to_string();
        assert!(
            e.contains("not valid JSON") && !e.contains("panicked"),
            "{e}"
        );
    }
}

#[test]
fn truncated_real_model() {
    let bytes = std::fs::read(common::model_path()).expect("run scripts/fetch-model.sh");
    for cut in [
        0usize,
        3,
        100,
        4096,
        1 << 20,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        let r = std::panic::catch_unwind(|| Model::from_gguf_bytes(&bytes[..cut], "cut.gguf"));
        match r {
            Ok(Err(e)) => assert!(!e.to_string().is_empty()),
            Ok(Ok(_)) => panic!("a model cut at {cut} bytes loaded"),
            Err(_) => panic!("a model cut at {cut} bytes panicked"),
        }
    }
}

#[test]
fn paths() {
    let e = Model::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a directory"), "{e}");
    let e = Model::load(std::path::Path::new("/nonexistent/model.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read") && e.contains("/nonexistent/model.gguf"),
        "{e}"
    );
}
