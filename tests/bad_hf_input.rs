//! Bad Hugging Face checkpoints get a clear error (what, where, what to do), never a panic. Each
//! case starts from a tiny valid checkpoint written by the test (2 layers, F32, byte-level BPE)
//! and breaks one thing: the safetensors file, config.json, the index, the tokenizer files.

mod common;
use common::*;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use sinkstream::hf::MemoryFiles;
use sinkstream::model::{Config, RopeLayout, Weights};
use sinkstream::tensor::DType;
use sinkstream::{Error, Model};

fn tiny() -> (Config, Weights) {
    tiny_model(
        &TinySpec {
            dtype: DType::F32,
            layout: RopeLayout::Half,
            ..Default::default()
        },
        4,
    )
}

/// The files of the valid checkpoint, by name.
fn valid() -> Vec<(String, Vec<u8>)> {
    let (c, w) = tiny();
    vec![
        (
            "config.json".into(),
            tiny_config_json(&c, &w).to_string().into_bytes(),
        ),
        ("model.safetensors".into(), tiny_safetensors(&w)),
        (
            "tokenizer.json".into(),
            tiny_tokenizer_json(c.vocab).into_bytes(),
        ),
        (
            "tokenizer_config.json".into(),
            br#"{"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}"#.to_vec(),
        ),
    ]
}

fn with(files: &[(String, Vec<u8>)], name: &str, bytes: Option<Vec<u8>>) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = files.iter().filter(|(n, _)| n != name).cloned().collect();
    if let Some(b) = bytes {
        out.push((name.to_string(), b));
    }
    out
}

fn load(files: &[(String, Vec<u8>)]) -> Result<Model, Error> {
    let mut m = MemoryFiles::new();
    for (n, b) in files {
        m.insert(n, b.clone());
    }
    Model::from_hf_files(&mut m, "ckpt")
}

fn expect_err(files: &[(String, Vec<u8>)], needles: &[&str]) -> String {
    let r = std::panic::catch_unwind(|| load(files));
    let e = match r {
        Err(_) => panic!("loading panicked; expected an error mentioning {needles:?}"),
        Ok(Ok(_)) => panic!("loaded; expected an error mentioning {needles:?}"),
        Ok(Err(e)) => e.to_string(),
    };
    for n in needles {
        assert!(e.contains(n), "error {e:?} should mention {n:?}");
    }
    assert!(e.contains("ckpt"), "error {e:?} should name the checkpoint");
    println!("{e}");
    e
}

/// config.json with one key changed (None: removed).
fn config_with(key: &str, v: Option<Value>) -> Vec<(String, Vec<u8>)> {
    let (c, w) = tiny();
    let mut j = tiny_config_json(&c, &w);
    let o = j.as_object_mut().unwrap();
    match v {
        Some(v) => o.insert(key.to_string(), v),
        None => o.remove(key),
    };
    with(&valid(), "config.json", Some(j.to_string().into_bytes()))
}

/// model.safetensors rebuilt with `edit` applied to the (name, dtype, shape, bytes) list.
fn safetensors_with(
    edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>),
) -> Vec<(String, Vec<u8>)> {
    let (_, w) = tiny();
    let mut list: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = hf_tensors(&w)
        .into_iter()
        .map(|(n, t)| {
            let vector = n.ends_with("norm.weight") || n.ends_with(".bias");
            let shape = if vector {
                vec![t.cols]
            } else {
                vec![t.rows, t.cols]
            };
            (n, Dtype::F32, shape, t.data.clone())
        })
        .collect();
    edit(&mut list);
    let views: Vec<(String, TensorView)> = list
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    with(&valid(), "model.safetensors", Some(bytes))
}

#[test]
fn the_tiny_checkpoint_loads() {
    let m = load(&valid()).unwrap();
    assert_eq!(
        (m.config.vocab, m.config.dim, m.config.n_layers),
        (101, 96, 2)
    );
    assert_eq!(m.config.rope_layout, RopeLayout::Half);
}

#[test]
fn bad_safetensors() {
    let v = valid();
    let st = v
        .iter()
        .find(|(n, _)| n == "model.safetensors")
        .unwrap()
        .1
        .clone();
    let put = |b: Vec<u8>| with(&v, "model.safetensors", Some(b));
    expect_err(&put(Vec::new()), &["model.safetensors", "empty"]);
    expect_err(
        &put(st[..5].to_vec()),
        &["model.safetensors", "too short", "truncated"],
    );
    // cut inside the JSON header
    expect_err(&put(st[..40].to_vec()), &["model.safetensors", "truncated"]);
    let mut absurd = st.clone();
    absurd[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect_err(
        &put(absurd),
        &["model.safetensors", "header length 1099511627776 is absurd"],
    );
    // the tensor data runs past the end of the file
    expect_err(
        &put(st[..st.len() - 10].to_vec()),
        &["model.safetensors", "runs to byte", "truncated"],
    );
    // a header that is not JSON
    let mut garbage = st.clone();
    garbage[8] = b'#';
    expect_err(&put(garbage), &["not a valid safetensors header"]);
    // a GGUF renamed to model.safetensors
    let mut gguf = b"GGUF\x03\x00\x00\x00".to_vec();
    gguf.extend_from_slice(&[0u8; 64]);
    expect_err(&put(gguf), &["model.safetensors"]);
    // bytes after the last tensor
    let mut extra = st.clone();
    extra.extend_from_slice(&[0; 16]);
    expect_err(&put(extra), &["16 bytes follow the last tensor"]);
    // every cut of the header and the start of the data: an error each time, never a panic
    for cut in (0..600).chain((600..st.len()).step_by(9973)) {
        let r = std::panic::catch_unwind(|| load(&put(st[..cut].to_vec())));
        assert!(
            matches!(r, Ok(Err(_))),
            "cut at {cut}: {:?}",
            r.map(|x| x.map(|_| ()))
        );
    }
}

#[test]
fn bad_tensors() {
    // wrong dtype
    let f = safetensors_with(|l| {
        let t = l
            .iter_mut()
            .find(|t| t.0 == "model.layers.1.mlp.up_proj.weight")
            .unwrap();
        t.1 = Dtype::I32;
    });
    expect_err(
        &f,
        &[
            "model.layers.1.mlp.up_proj.weight",
            "dtype I32",
            "F32, F16 and BF16",
        ],
    );
    let f = safetensors_with(|l| {
        let t = l.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        t.1 = Dtype::F64;
        t.2 = vec![t.2[0] / 2];
    });
    expect_err(&f, &["model.norm.weight", "dtype F64"]);
    // a missing tensor
    let f = safetensors_with(|l| l.retain(|t| t.0 != "model.layers.0.mlp.up_proj.weight"));
    expect_err(
        &f,
        &[
            "tensor model.layers.0.mlp.up_proj.weight is missing",
            "model.safetensors",
        ],
    );
    // a tensor of the wrong shape (same bytes, rows and columns swapped)
    let f = safetensors_with(|l| {
        let t = l
            .iter_mut()
            .find(|t| t.0 == "model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        t.2 = vec![t.2[1], t.2[0]];
    });
    expect_err(
        &f,
        &[
            "model.layers.0.self_attn.k_proj.weight",
            "shape [96, 48]",
            "needs [48, 96]",
        ],
    );
    // an output-projection bias the kernels have no place for
    let f = safetensors_with(|l| {
        l.push((
            "model.layers.0.self_attn.o_proj.bias".into(),
            Dtype::F32,
            vec![96],
            vec![0; 384],
        ));
    });
    expect_err(&f, &["o_proj.bias", "only q/k/v"]);
    // untied head declared but missing
    let f = config_with("tie_word_embeddings", Some(json!(false)));
    expect_err(&f, &["lm_head.weight is missing"]);
}

#[test]
fn bad_config_json() {
    let v = valid();
    expect_err(
        &with(&v, "config.json", Some(b"{\"hidden_size\": 96,".to_vec())),
        &["config.json is not valid JSON"],
    );
    expect_err(
        &with(&v, "config.json", Some(b"[1, 2]".to_vec())),
        &["config.json", "expected a JSON object"],
    );
    expect_err(
        &config_with("hidden_size", None),
        &["config.json", "hidden_size is missing"],
    );
    expect_err(
        &config_with("num_hidden_layers", Some(json!("two"))),
        &["num_hidden_layers should be a positive integer"],
    );
    expect_err(
        &config_with("vocab_size", Some(json!(1u64 << 40))),
        &["vocab_size = 1099511627776 is out of range"],
    );
    expect_err(
        &config_with("architectures", Some(json!(["GPT2LMHeadModel"]))),
        &[
            "architecture \"GPT2LMHeadModel\" is not supported",
            "LlamaForCausalLM",
        ],
    );
    expect_err(
        &config_with("num_attention_heads", Some(json!(5))),
        &["hidden_size 96 is not divisible by num_attention_heads 5"],
    );
    expect_err(
        &config_with("num_key_value_heads", Some(json!(3))),
        &["4 query heads is not a multiple of 3 key/value heads"],
    );
    expect_err(
        &config_with("hidden_act", Some(json!("gelu"))),
        &["hidden_act \"gelu\" is not supported"],
    );
    expect_err(
        &config_with(
            "rope_scaling",
            Some(json!({"rope_type": "yarn", "factor": 4.0})),
        ),
        &["rope_scaling type \"yarn\" is not supported"],
    );
    expect_err(
        &config_with(
            "rope_scaling",
            Some(json!({"rope_type": "llama3", "factor": 8.0})),
        ),
        &["rope_scaling.low_freq_factor is missing"],
    );
    // The embedding must match vocab_size.
    expect_err(
        &config_with("vocab_size", Some(json!(102))),
        &["model.embed_tokens.weight", "needs [102, 96]"],
    );
    expect_err(
        &config_with("vocab_size", Some(json!(100))),
        &["the tokenizer has 101 tokens but the embedding has only 100 rows"],
    );
    expect_err(&with(&v, "config.json", None), &["config.json is missing"]);
}

#[test]
fn bad_shards_and_tokenizer_files() {
    let v = valid();
    let st = v
        .iter()
        .find(|(n, _)| n == "model.safetensors")
        .unwrap()
        .1
        .clone();
    let sharded = |index: Value| {
        let mut f = with(&v, "model.safetensors", None);
        f.push(("model-00001-of-00001.safetensors".into(), st.clone()));
        f.push((
            "model.safetensors.index.json".into(),
            index.to_string().into_bytes(),
        ));
        f
    };
    let (_, w) = tiny();
    let all: serde_json::Map<String, Value> = hf_tensors(&w)
        .into_iter()
        .map(|(n, _)| (n, json!("model-00001-of-00001.safetensors")))
        .collect();
    assert!(load(&sharded(json!({ "weight_map": all.clone() }))).is_ok());
    let mut missing_shard = all.clone();
    missing_shard.insert(
        "model.norm.weight".into(),
        json!("model-00002-of-00002.safetensors"),
    );
    expect_err(
        &sharded(json!({ "weight_map": missing_shard })),
        &[
            "model-00002-of-00002.safetensors is missing",
            "index.json lists it",
        ],
    );
    let mut escape = all;
    escape.insert("model.norm.weight".into(), json!("../../etc/passwd"));
    expect_err(
        &sharded(json!({ "weight_map": escape })),
        &["is not a file name"],
    );
    expect_err(
        &sharded(json!({ "weights": {} })),
        &["weight_map is missing"],
    );
    // no weights at all; PyTorch pickles only
    expect_err(
        &with(&v, "model.safetensors", None),
        &["model.safetensors", "is missing"],
    );
    let mut pt = with(&v, "model.safetensors", None);
    pt.push(("pytorch_model.bin".into(), vec![0x80, 2]));
    expect_err(
        &pt,
        &["pytorch_model.bin", "convert the checkpoint to safetensors"],
    );
    // tokenizer files
    expect_err(
        &with(&v, "tokenizer.json", None),
        &["tokenizer.json is missing"],
    );
    expect_err(
        &with(&v, "tokenizer.json", Some(b"{\"model\": 3}".to_vec())),
        &["tokenizer.json"],
    );
    expect_err(
        &with(&v, "tokenizer_config.json", Some(b"not json".to_vec())),
        &["tokenizer_config.json is not valid JSON"],
    );
    expect_err(
        &with(
            &v,
            "tokenizer_config.json",
            Some(br#"{"chat_template": "{% for m in messages %}"}"#.to_vec()),
        ),
        &["chat template"],
    );
    // a tokenizer with more tokens than the embedding has rows
    expect_err(
        &with(
            &v,
            "tokenizer.json",
            Some(tiny_tokenizer_json(140).into_bytes()),
        ),
        &["140 tokens", "101 rows"],
    );
}

#[test]
fn directories() {
    let tmp = TempDir::new("bad-hf-dir");
    let e = Model::load(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("is a directory without config.json") && e.contains("model.safetensors"),
        "{e}"
    );
    for (n, b) in valid() {
        std::fs::write(tmp.path().join(n), b).unwrap();
    }
    assert!(Model::load(tmp.path()).is_ok());
    std::fs::write(tmp.path().join("model.safetensors"), b"").unwrap();
    let e = Model::load(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains(&tmp.path().display().to_string())
            && e.contains("model.safetensors: the file is empty"),
        "{e}"
    );
}
