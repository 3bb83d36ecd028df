//! Writes the seed corpus of every fuzz target from the real model: the head of its file, tiny
//! complete models whose vocabulary, merges, pre-tokenizer and chat template come from it, and
//! safetensors files holding some of its weights. Usage: seeds MODEL.gguf OUT_DIR
//! (OUT_DIR/<target>/<seed> files; existing files are overwritten).

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use sinkstream::gguf::{Gguf, Value};
use sinkstream::tensor::DType;
use sinkstream_fuzz::{small_tokenizer, tiny_model, TokenizerInput};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The real vocabulary cut to its first `n` tokens, with the merges that stay inside it.
fn real_tokenizer(g: &Gguf, n: usize, text: &str) -> Res<TokenizerInput> {
    let tokens = g
        .get_str_array("tokenizer.ggml.tokens")?
        .ok_or("no tokens")?;
    let tokens: Vec<String> = tokens.iter().take(n).map(|s| s.to_string()).collect();
    let known: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let merges = g
        .get_str_array("tokenizer.ggml.merges")?
        .ok_or("no merges")?;
    let merges: Vec<String> = merges
        .iter()
        .filter(|m| {
            m.split_once(' ').is_some_and(|(a, b)| {
                known.contains(a) && known.contains(b) && known.contains(format!("{a}{b}").as_str())
            })
        })
        .map(|s| s.to_string())
        .collect();
    let types = g
        .get_int_array("tokenizer.ggml.token_type")?
        .ok_or("no types")?;
    let id = |k: &str| -> Res<Option<u64>> { Ok(g.get_u64(k)?.filter(|&i| (i as usize) < n)) };
    Ok(TokenizerInput {
        model: g.get_str("tokenizer.ggml.model")?.map(String::from),
        pre: g.get_str("tokenizer.ggml.pre")?.map(String::from),
        tokens: Some(tokens),
        merges: Some(merges),
        token_type: Some(types.iter().take(n).map(|&t| t as i8).collect()),
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        text: text.into(),
    })
}

/// A weight of the real model as f32 values (norms are F32 in the file; others dequantised).
fn real_f32(g: &Gguf, file: &[u8], name: &str) -> Res<Vec<f32>> {
    let t = g.tensor(name).ok_or_else(|| format!("no tensor {name}"))?;
    let bytes = &file[t.start..t.start + t.len];
    let n = t.n_elements() as usize;
    let mut out = vec![0.0; n];
    sinkstream::tensor::dequant(t.dtype, bytes, &mut out);
    if t.dtype == DType::F32 || t.dtype == DType::Q8_0 || t.dtype == DType::Q4_1 {
        Ok(out)
    } else {
        Err(format!("{name}: unexpected type {:?}", t.dtype).into())
    }
}

/// Writes a tokenizer seed after checking that the target will read it back as these fields.
fn write_tokenizer(dir: &Path, name: &str, t: &TokenizerInput) -> Res<()> {
    if TokenizerInput::decode(&t.encode()) != *t {
        return Err(format!("tokenizer seed {name} does not round-trip").into());
    }
    write(dir, name, &t.encode())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, out] = args.as_slice() else {
        return Err("usage: seeds MODEL.gguf OUT_DIR".into());
    };
    let file = std::fs::read(model).map_err(|e| format!("{model}: {e}"))?;
    let g = Gguf::parse(&file)?;
    let out = Path::new(out);
    let sample = "Hello, world! 12 apples<|im_end|>\n\u{e9}t\u{e9} \u{1F600}";

    // GGUF parser and model load: the real header (cut where the token list starts and a
    // little later), a tiny model with a toy vocabulary, and one with a slice of the real one.
    let template = g
        .get_str("tokenizer.chat_template")?
        .unwrap_or("")
        .to_string();
    let real = real_tokenizer(&g, 400, sample)?;
    let tiny_real = tiny_model(
        &real,
        vec![("tokenizer.chat_template", Value::Str(template))],
    );
    let tiny_small = tiny_model(&small_tokenizer(), vec![]);
    // Seeds that fail to load would leave the fuzzer only the error paths to explore.
    for (name, m) in [
        ("tiny-real-vocab", &tiny_real),
        ("tiny-toy-vocab", &tiny_small),
    ] {
        sinkstream::Model::from_gguf_bytes(m, name)?;
    }
    eprintln!(
        "real vocabulary slice: {} tokens, {} merges",
        real.tokens.as_ref().map_or(0, Vec::len),
        real.merges.as_ref().map_or(0, Vec::len)
    );
    for target in ["gguf_parse", "model_load"] {
        let dir = out.join(target);
        write(&dir, "real-head-4k", &file[..4096])?;
        write(&dir, "real-head-16k", &file[..16384])?;
        write(&dir, "tiny-real-vocab", &tiny_real)?;
        write(&dir, "tiny-toy-vocab", &tiny_small)?;
    }

    // Tokenizer construction: the toy vocabulary, the real slice with each pre-tokenizer.
    let dir = out.join("tokenizer");
    write_tokenizer(&dir, "toy", &small_tokenizer())?;
    for pre in ["smollm", "gpt-2", "llama-bpe"] {
        let t = TokenizerInput {
            pre: Some(pre.into()),
            ..real_tokenizer(&g, 400, sample)?
        };
        let g = Gguf::parse(&sinkstream::gguf::write::gguf(&t.metadata(), &[]))?;
        sinkstream::tokenizer::Tokenizer::from_gguf(&g)?;
        write_tokenizer(&dir, &format!("real-400-{pre}"), &t)?;
    }

    // tokenizer.json: the same tokenizers as the HF loader will read them.
    let dir = out.join("tokenizer_json");
    for (name, t) in [("toy", small_tokenizer()), ("real-400", real.clone())] {
        let g = Gguf::parse(&sinkstream::gguf::write::gguf(&t.metadata(), &[]))?;
        let json = sinkstream::tokenizer::Tokenizer::from_gguf(&g)?.to_json()?;
        sinkstream::tokenizer::Tokenizer::from_json_bytes(json.as_bytes())?;
        write(&dir, name, json.as_bytes())?;
    }

    // safetensors: some of the real weights in each float type the HF loader will read.
    let dir = out.join("safetensors");
    let norm = real_f32(&g, &file, "output_norm.weight")?;
    let row: Vec<f32> = real_f32(&g, &file, "blk.0.attn_k.weight")?[..64 * 8].to_vec();
    let f32b: Vec<u8> = norm[..64].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16b: Vec<u8> = row
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let bf16b: Vec<u8> = row
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let views = vec![
        (
            "model.norm.weight",
            TensorView::new(Dtype::F32, vec![64], &f32b)?,
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            TensorView::new(Dtype::F16, vec![8, 64], &f16b)?,
        ),
        (
            "model.layers.0.self_attn.v_proj.weight",
            TensorView::new(Dtype::BF16, vec![8, 64], &bf16b)?,
        ),
    ];
    let meta = Some([("format".to_string(), "pt".to_string())].into());
    write(
        &dir,
        "three-tensors",
        &safetensors::serialize(views.clone(), meta)?,
    )?;
    write(
        &dir,
        "one-tensor",
        &safetensors::serialize(views[..1].to_vec(), None)?,
    )?;
    write(
        &dir,
        "empty",
        &safetensors::serialize(Vec::<(&str, TensorView)>::new(), None)?,
    )?;
    eprintln!("seeds written under {}", out.display());
    Ok(())
}
