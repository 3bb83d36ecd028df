//! Tokenizer and chat template against the real SmolLM2 model file and Jane Austen's novels:
//! reference ids from docs/model.md, exact round trips, UTF-8-safe streaming, bad metadata.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use sinkstream::chat::{ChatTemplate, Message};
use sinkstream::gguf::{write, Gguf, Value};
use sinkstream::tokenizer::{StreamDecoder, Tokenizer};
use sinkstream::Error;

const NOVELS: [&str; 6] = [
    "emma",
    "mansfieldpark",
    "northangerabbey",
    "persuasion",
    "prideprejudice",
    "sensesensibility",
];

/// docs/model.md: the first 30 ids of emma.txt, no BOS.
const EMMA_FIRST_30: [u32; 30] = [
    3709, 7227, 198, 198, 3087, 12405, 33015, 22342, 198, 70, 7113, 69, 3945, 339, 16506, 198,
    5229, 41958, 339, 1116, 198, 10809, 2432, 7817, 4404, 28, 35012, 28, 15355, 28,
];

fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The model file is parsed once per test binary; tests share it.
fn model() -> &'static Gguf {
    static G: OnceLock<Gguf> = OnceLock::new();
    G.get_or_init(|| {
        let path = model_path();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the model file {}: {e}; run scripts/fetch-model.sh to download it",
                path.display()
            )
        });
        Gguf::parse(&bytes).expect("the model file parses")
    })
}

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let t0 = Instant::now();
        let t = Tokenizer::from_gguf(model()).expect("tokenizer from the model's GGUF metadata");
        println!("tokenizer built from GGUF in {:?}", t0.elapsed());
        t
    })
}

/// Austen's novels, shipped in data/austen.
fn novel(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/austen")
        .join(format!("{name}.txt"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn emma_encodes_to_the_reference_ids() {
    let t = tokenizer();
    let text = novel("emma");
    let t0 = Instant::now();
    let ids = t.encode(&text).unwrap();
    println!(
        "emma.txt: {} bytes -> {} ids in {:?}",
        text.len(),
        ids.len(),
        t0.elapsed()
    );
    assert_eq!(ids.len(), 221_850);
    assert_eq!(ids[..30], EMMA_FIRST_30);
}

#[test]
fn austen_novels_round_trip_exactly() {
    let t = tokenizer();
    for name in NOVELS {
        let text = novel(name);
        let t0 = Instant::now();
        let ids = t.encode(&text).unwrap();
        let back = t.decode(&ids).unwrap();
        println!(
            "{name}: {} ids, encode+decode {:?}",
            ids.len(),
            t0.elapsed()
        );
        assert!(
            back == text,
            "{name}.txt does not round-trip through encode/decode"
        );
    }
}

/// Feeds ids one at a time and checks every piece extends the expected text exactly.
fn stream_check(t: &Tokenizer, ids: &[u32], expected: &str) -> usize {
    let mut d = StreamDecoder::new(t);
    let mut out = String::new();
    let mut held_back = 0;
    for (i, &id) in ids.iter().enumerate() {
        let piece = d.push(id);
        if piece.is_empty() && !t.token_bytes(id).is_empty() {
            held_back += 1;
        }
        out.push_str(&piece);
        assert!(
            expected.starts_with(&out),
            "after id #{i} ({id}) the stream gave {out:?}, not a prefix of {expected:?}"
        );
    }
    out.push_str(&d.flush());
    assert_eq!(out, expected);
    held_back
}

#[test]
fn stream_decoder_never_splits_a_character() {
    let t = tokenizer();
    let text = "naïve café — 東京 🚀 Ünïcödé: ½ € ✓ 😀👍🏽 and plain ASCII.\n\nΑθήνα, Москва, 서울.";
    let ids = t.encode(text).unwrap();
    assert_eq!(t.decode(&ids).unwrap(), text);
    // The test only means something if some tokens stop inside a character.
    let partial = ids
        .iter()
        .filter(|&&id| std::str::from_utf8(&t.token_bytes(id)).is_err())
        .count();
    assert!(
        partial > 0,
        "no token of the test text ends inside a UTF-8 character"
    );
    let held = stream_check(t, &ids, text);
    assert!(held > 0, "the decoder never had to hold bytes back");

    // A whole novel streams to exactly the text too.
    let emma = novel("emma");
    stream_check(t, &t.encode(&emma).unwrap(), &emma);

    // Arbitrary id sequences (invalid UTF-8 included): stream output == lossy one-shot decode.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let ids: Vec<u32> = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Bias towards the byte-level tokens (the 256 single-byte ids start after the specials).
            if x % 2 == 0 {
                (x >> 8) as u32 % 300
            } else {
                (x >> 8) as u32 % t.vocab_size() as u32
            }
        })
        .collect();
    let mut d = StreamDecoder::new(t);
    let mut out: String = ids.iter().map(|&id| d.push(id)).collect();
    out.push_str(&d.flush());
    assert_eq!(out, t.decode(&ids).unwrap());
}

#[test]
fn special_tokens_and_ids() {
    let t = tokenizer();
    assert_eq!(t.vocab_size(), 49_152);
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.eos_id(), Some(2));
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>").unwrap();
    assert_eq!(ids[0], 1, "{ids:?}");
    assert!(ids.contains(&2), "{ids:?}");
    assert_eq!(t.decode(&ids).unwrap(), "<|im_start|>user\nhi<|im_end|>");
    // No BOS is added to plain text.
    assert_ne!(t.encode("hi").unwrap()[0], 1);
    for id in 0..17 {
        assert!(t.is_special(id), "id {id} should be special");
    }
    assert!(!t.is_special(17) && !t.is_special(198) && !t.is_special(1_000_000));
    assert_eq!(t.token_str(0), "<|endoftext|>");
    assert_eq!(t.token_str(198), "\n");
    assert_eq!(t.token_bytes(198), b"\n");
    assert_eq!(t.token_str(3709), "EM");
    assert_eq!(t.token_id("<|im_end|>"), Some(2));
    assert!(t.token_bytes(49_152).is_empty());
    assert!(matches!(t.decode(&[49_152]), Err(Error::Tokenizer(_))));
}

#[test]
fn tokenizer_json_round_trip() {
    let t = tokenizer();
    let json = t.to_json().unwrap();
    let mut h = Tokenizer::from_json_bytes(json.as_bytes()).unwrap();
    h.set_bos_eos(Some(1), Some(2));
    assert_eq!(h.vocab_size(), t.vocab_size());
    let text = format!(
        "<|im_start|>user\nIn 2024, naïve 東京 🚀{}<|im_end|>\n",
        &novel("persuasion")[..20_000]
    );
    let ids = t.encode(&text).unwrap();
    assert_eq!(h.encode(&text).unwrap(), ids);
    assert_eq!(h.decode(&ids).unwrap(), text);
    for id in [0, 1, 2, 16, 17, 198, 3709, 49_151] {
        assert_eq!(h.token_bytes(id), t.token_bytes(id), "id {id}");
        assert_eq!(h.is_special(id), t.is_special(id), "id {id}");
    }
    assert!(matches!(
        Tokenizer::from_json_bytes(b"{not json"),
        Err(Error::Tokenizer(_))
    ));
}

fn gguf_template() -> ChatTemplate {
    let g = model();
    let src = g
        .get_str("tokenizer.chat_template")
        .unwrap()
        .expect("the model has a chat template");
    ChatTemplate::new(src, "<|im_start|>", "<|im_end|>").unwrap()
}

#[test]
fn chat_template_renders_chatml() {
    let t = gguf_template();
    let msgs = [
        Message::new("system", "You are terse."),
        Message::new("user", "What is 2+2?"),
    ];
    let out = t.render(&msgs, true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    // The built-in ChatML fallback gives the same string for this conversation.
    assert_eq!(ChatTemplate::chatml().render(&msgs, true).unwrap(), out);
    // Without a system message SmolLM2's template inserts its default system prompt.
    let out = t.render(&[Message::new("user", "Hi")], false).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
    // The rendered prompt tokenizes with the special tokens as single ids.
    let ids = tokenizer().encode(&out).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 2);
}

// ---- bad metadata: errors, never panics ----

fn strs(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::Str(s.to_string())).collect())
}

/// A tiny valid gpt2 tokenizer's metadata; tests replace or drop one key.
fn tiny_metadata() -> Vec<(&'static str, Value)> {
    vec![
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
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ]
}

fn build(md: &[(&str, Value)]) -> sinkstream::Result<Tokenizer> {
    let bytes = write::gguf(md, &[]);
    Tokenizer::from_gguf(&Gguf::parse(&bytes).expect("test GGUF parses"))
}

fn with(key: &str, v: Option<Value>) -> Vec<(&'static str, Value)> {
    let mut md = tiny_metadata();
    md.retain(|(k, _)| *k != key);
    if let Some(v) = v {
        let key: &'static str = Box::leak(key.to_string().into_boxed_str());
        md.push((key, v));
    }
    md
}

fn expect_err(md: &[(&str, Value)], needles: &[&str]) {
    match build(md) {
        Ok(_) => panic!("expected an error mentioning {needles:?}"),
        Err(e @ Error::Tokenizer(_)) => {
            let msg = e.to_string();
            for n in needles {
                assert!(msg.contains(n), "error {msg:?} should mention {n:?}");
            }
        }
        Err(e) => panic!("expected Error::Tokenizer, got {e:?}"),
    }
}

#[test]
fn tiny_tokenizer_works() {
    let t = build(&tiny_metadata()).unwrap();
    assert_eq!(t.encode("ab ab<|endoftext|>").unwrap(), [3, 5, 0]);
    assert_eq!(t.decode(&[3, 5, 0]).unwrap(), "ab ab<|endoftext|>");
    assert!(t.is_special(0) && !t.is_special(3));
}

#[test]
fn bad_metadata_is_an_error() {
    // Merges naming unknown tokens (as a part, or as the merged result).
    expect_err(
        &with("tokenizer.ggml.merges", Some(strs(&["a c"]))),
        &["tokenizer.ggml.merges", "\"c\""],
    );
    expect_err(
        &with("tokenizer.ggml.merges", Some(strs(&["b a"]))),
        &["tokenizer.ggml.merges", "\"ba\""],
    );
    // A merged string longer than every token would make the tokenizers BPE builder panic.
    expect_err(
        &with("tokenizer.ggml.merges", Some(strs(&["Ġab Ġab"]))),
        &["tokenizer.ggml.merges"],
    );
    expect_err(
        &with("tokenizer.ggml.merges", Some(strs(&["ab"]))),
        &["tokenizer.ggml.merges[0]"],
    );
    // Unsupported model type.
    expect_err(
        &with("tokenizer.ggml.model", Some(Value::Str("llama".into()))),
        &["tokenizer.ggml.model", "llama"],
    );
    // Missing or wrongly typed keys.
    expect_err(
        &with("tokenizer.ggml.tokens", None),
        &["tokenizer.ggml.tokens", "missing"],
    );
    expect_err(
        &with("tokenizer.ggml.model", None),
        &["tokenizer.ggml.model", "missing"],
    );
    expect_err(
        &with("tokenizer.ggml.merges", None),
        &["tokenizer.ggml.merges", "missing"],
    );
    expect_err(
        &with("tokenizer.ggml.tokens", Some(Value::U32(3))),
        &["tokenizer.ggml.tokens"],
    );
    expect_err(
        &with("tokenizer.ggml.tokens", Some(strs(&[]))),
        &["tokenizer.ggml.tokens"],
    );
    expect_err(
        &with("tokenizer.ggml.model", Some(Value::U32(2))),
        &["tokenizer.ggml.model"],
    );
    expect_err(
        &with(
            "tokenizer.ggml.token_type",
            Some(Value::Array(vec![Value::I32(1)])),
        ),
        &["tokenizer.ggml.token_type"],
    );
    expect_err(
        &with("tokenizer.ggml.bos_token_id", Some(Value::U32(6))),
        &["tokenizer.ggml.bos_token_id"],
    );
    expect_err(
        &with("tokenizer.ggml.eos_token_id", Some(Value::Str("x".into()))),
        &["tokenizer.ggml.eos_token_id"],
    );
}
