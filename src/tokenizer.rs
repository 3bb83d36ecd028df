//! Text <-> token ids: a byte-level BPE tokenizer built from GGUF metadata or a Hugging Face
//! tokenizer.json (one pure-Rust code path for native and wasm32), plus a UTF-8-safe streaming decoder.

use tokenizers::models::bpe::{BpeBuilder, Vocab};
// One ByteLevel type serves as pre-tokenizer, decoder and post-processor in the tokenizers crate.
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// GGUF token types (llama.cpp's llama_token_type).
const TOKEN_TYPE_USER_DEFINED: i64 = 4;
const TOKEN_TYPE_CONTROL: i64 = 3;

/// Llama 3's pre-tokenizer rule (llama.cpp pre names "llama-bpe", "llama3", "llama-v3"):
/// numbers are split into groups of up to three digits, unlike GPT-2.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The bytes each id stands for, precomputed so streaming decode is a table lookup.
    bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    /// True when the decoder is plain ByteLevel: then `decode` is exactly "concatenate token
    /// bytes, convert lossily", which we do ourselves so it always agrees with StreamDecoder.
    byte_level: bool,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.bytes.len())
            .field("byte_level", &self.byte_level)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// GGUF accessors report Error::Format; for tokenizer keys the caller expects Error::Tokenizer.
fn tok_err(e: Error) -> Error {
    match e {
        Error::Format(m) => Error::Tokenizer(m),
        other => other,
    }
}

fn hf_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

/// GPT-2's byte <-> character table. BPE vocabularies store bytes as printable characters:
/// printable Latin-1 bytes stand for themselves, the other 68 bytes map to U+0100.. in byte order.
/// Returns the reverse map indexed by char code (all codes are below 512).
fn char_to_byte_table() -> [Option<u8>; 512] {
    let mut table = [None; 512];
    let mut next = 256usize;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        if printable {
            table[b as usize] = Some(b);
        } else {
            table[next] = Some(b);
            next += 1;
        }
    }
    table
}

/// The bytes of a byte-level token string. Mirrors the tokenizers ByteLevel decoder: if any
/// character is outside the table (e.g. a user-defined token stored as raw text) the token's own
/// UTF-8 is used, so this always agrees with `decode`.
fn byte_level_bytes(token: &str, table: &[Option<u8>; 512]) -> Vec<u8> {
    token
        .chars()
        .map(|c| table.get(c as usize).copied().flatten())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

/// Bytes of a token for non-byte-level (SentencePiece-style) tokenizer.json files: byte-fallback
/// tokens "<0xAB>" are one byte, and "▁" is a space. Approximate (a Metaspace decoder also drops
/// the first leading space), used only by token_bytes/StreamDecoder for such tokenizers.
fn sentencepiece_bytes(token: &str) -> Vec<u8> {
    if token.len() == 6 && token.starts_with("<0x") && token.ends_with('>') {
        if let Ok(b) = u8::from_str_radix(&token[3..5], 16) {
            return vec![b];
        }
    }
    token.replace('\u{2581}', " ").into_bytes()
}

/// The pre-tokenizer for a GGUF tokenizer.ggml.pre name.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    // use_regex=true: ByteLevel applies the GPT-2 split rule (incl. `\s+(?!\S)`) itself.
    let byte_level = ByteLevel::new(false, true, true);
    Ok(match pre {
        // GPT-2 proper keeps digit runs together.
        "gpt-2" => PreTokenizerWrapper::ByteLevel(byte_level),
        "llama-bpe" | "llama3" | "llama-v3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| hf_err("building the llama3 pre-tokenizer", e))?;
            // The split already happened: ByteLevel only maps bytes to characters here.
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ]))
        }
        // "smollm" (and StarCoder-style vocabularies generally) split every digit on its own
        // before the GPT-2 rule; this is also the fallback for names we do not know.
        _ => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level),
        ])),
    })
}

/// An optional token id key; present values must be inside the vocabulary.
fn optional_id(g: &Gguf, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    match g.get_u64(key).map_err(tok_err)? {
        None => Ok(None),
        Some(id) if id < n_tokens as u64 => Ok(Some(id as u32)),
        Some(id) => Err(Error::Tokenizer(format!(
            "{key} is {id}, outside the vocabulary of {n_tokens} tokens"
        ))),
    }
}

impl Tokenizer {
    /// Builds the byte-level BPE tokenizer from GGUF metadata: tokenizer.ggml.model must be "gpt2";
    /// tokens, merges ("a b" strings), token_type (3 = control/special -> added as special tokens),
    /// tokenizer.ggml.pre ("smollm" and others -> Digits(individual_digits=true) then ByteLevel(add_prefix_space=false, use_regex=true)); ByteLevel decoder.
    /// bos/eos ids from tokenizer.ggml.bos_token_id / eos_token_id (optional).
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let model = g
            .get_str("tokenizer.ggml.model")
            .map_err(tok_err)?
            .ok_or_else(|| {
                Error::Tokenizer("tokenizer.ggml.model is missing from the GGUF metadata".into())
            })?;
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "tokenizer.ggml.model is \"{model}\"; only \"gpt2\" (byte-level BPE) is supported in GGUF files \
                 (for other tokenizers load the Hugging Face checkpoint with its tokenizer.json)"
            )));
        }
        let tokens = g
            .get_str_array("tokenizer.ggml.tokens")
            .map_err(tok_err)?
            .ok_or_else(|| {
                Error::Tokenizer("tokenizer.ggml.tokens is missing from the GGUF metadata".into())
            })?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            return Err(Error::Tokenizer(format!(
                "tokenizer.ggml.tokens has {} entries",
                tokens.len()
            )));
        }
        let n = tokens.len();
        let types = g
            .get_int_array("tokenizer.ggml.token_type")
            .map_err(tok_err)?;
        if let Some(t) = &types {
            if t.len() != n {
                return Err(Error::Tokenizer(format!(
                    "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
                    t.len()
                )));
            }
        }
        let merges = g
            .get_str_array("tokenizer.ggml.merges")
            .map_err(tok_err)?
            .ok_or_else(|| {
                Error::Tokenizer("tokenizer.ggml.merges is missing from the GGUF metadata".into())
            })?;
        let pre = g
            .get_str("tokenizer.ggml.pre")
            .map_err(tok_err)?
            .unwrap_or("default");
        let bos = optional_id(g, "tokenizer.ggml.bos_token_id", n)?;
        let eos = optional_id(g, "tokenizer.ggml.eos_token_id", n)?;

        // If a string appears twice, the first id is the one encoding produces (decoding any id
        // still works: we decode from our own table).
        let mut vocab: Vocab = Vocab::with_capacity(n);
        for (id, t) in tokens.iter().enumerate() {
            vocab.entry(t.to_string()).or_insert(id as u32);
        }
        // Validate merges here: the BPE builder errors on unknown parts but can panic (slice
        // index) when the merged string is longer than every token, so it must only see good data.
        let mut pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                .ok_or_else(|| {
                    Error::Tokenizer(format!(
                        "tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space"
                    ))
                })?;
            for part in [a, b, &format!("{a}{b}")] {
                if !vocab.contains_key(part) {
                    return Err(Error::Tokenizer(format!(
                        "tokenizer.ggml.merges[{i}] = {m:?} refers to {part:?}, which is not in tokenizer.ggml.tokens"
                    )));
                }
            }
            pairs.push((a.to_string(), b.to_string()));
        }
        let bpe = BpeBuilder::new()
            .vocab_and_merges(vocab, pairs)
            .build()
            .map_err(|e| {
                hf_err(
                    "building the BPE model from tokenizer.ggml.tokens/merges",
                    e,
                )
            })?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        inner.with_decoder(Some(ByteLevel::default()));
        // Only affects offsets; kept so to_json() writes what HF's own GPT-2-style files contain.
        inner.with_post_processor(Some(ByteLevel::new(true, false, true)));

        // Control tokens are matched in the text before pre-tokenization and kept whole; user-defined
        // tokens likewise, but are not special (as llama.cpp treats them).
        let mut special = vec![false; n];
        let mut added = Vec::new();
        if let Some(types) = &types {
            for (id, (&ty, t)) in types.iter().zip(&tokens).enumerate() {
                if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                    special[id] = ty == TOKEN_TYPE_CONTROL;
                    if !t.is_empty() {
                        added.push(AddedToken::from(t.to_string(), special[id]));
                    }
                }
            }
        }
        inner
            .add_tokens(added)
            .map_err(|e| hf_err("adding the special tokens", e))?;

        let table = char_to_byte_table();
        let bytes = tokens.iter().map(|t| byte_level_bytes(t, &table)).collect();
        Ok(Tokenizer {
            inner,
            bytes,
            special,
            byte_level: true,
            bos,
            eos,
        })
    }

    /// From a Hugging Face tokenizer.json's bytes (tokenizers::Tokenizer::from_bytes), used later by the HF loader.
    /// BOS/EOS are not in tokenizer.json: set them with `set_bos_eos` (from tokenizer_config.json).
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Tokenizer> {
        // tokenizers 0.23 panics (an `expect` in its decoder deserializer) on some syntax errors,
        // which aborts a wasm32 build and prints a panic message natively even when caught. On
        // valid JSON that deserializer cannot fail, so the syntax is checked first (found by
        // fuzzing, tests/fuzz tokenizer_json).
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| hf_err("tokenizer.json is not valid JSON", e))?;
        // Any other panic would be the tokenizers crate's bug, but we still catch one so a bad
        // file cannot take down the caller (native targets only unwind).
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|_| {
                Error::Tokenizer("tokenizer.json could not be parsed (the parser panicked)".into())
            })?
            .map_err(|e| hf_err("tokenizer.json", e))?;
        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let table = char_to_byte_table();
        // Ids may have gaps (added tokens past the model vocabulary, or a sparse vocabulary):
        // the table goes up to the largest id, so every id that encoding can produce has an
        // entry. That id comes from the file, so it is checked before it sizes anything: each
        // id takes a few bytes of JSON, so no real file has more ids than bytes.
        let added = inner.get_added_tokens_decoder();
        let n = inner
            .get_vocab(true)
            .into_values()
            .chain(added.keys().copied())
            .map(|id| id as usize + 1)
            .max()
            .unwrap_or(0);
        if n == 0 {
            return Err(Error::Tokenizer("tokenizer.json has no tokens".into()));
        }
        if n > bytes.len() {
            return Err(Error::Tokenizer(format!(
                "tokenizer.json has a token id of {}, more than a file of {} bytes can hold a vocabulary up to (corrupt file)",
                n - 1,
                bytes.len()
            )));
        }
        let mut bytes = Vec::with_capacity(n);
        let mut special = vec![false; n];
        for id in 0..n as u32 {
            let t = inner.id_to_token(id).unwrap_or_default();
            bytes.push(if byte_level {
                byte_level_bytes(&t, &table)
            } else {
                sentencepiece_bytes(&t)
            });
        }
        for (id, tok) in &added {
            special[*id as usize] = tok.special;
        }
        Ok(Tokenizer {
            inner,
            bytes,
            special,
            byte_level,
            bos: None,
            eos: None,
        })
    }

    /// Sets the BOS/EOS ids (for tokenizers loaded from tokenizer.json, whose ids live elsewhere).
    pub fn set_bos_eos(&mut self, bos: Option<u32>, eos: Option<u32>) {
        self.bos = bos;
        self.eos = eos;
    }

    /// No BOS is added; special tokens written in the text (e.g. `<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // encode_fast skips offset tracking, which we never use.
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| hf_err("encoding failed", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Special tokens are kept in the output text (skip_special_tokens = false).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.bytes.len()) {
            return Err(Error::Tokenizer(format!(
                "cannot decode token id {bad}: the vocabulary has {} tokens",
                self.bytes.len()
            )));
        }
        if self.byte_level {
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|&id| self.bytes[id as usize].iter().copied())
                .collect();
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| hf_err("decoding failed", e))
    }

    /// Number of token ids (the model's embedding rows should match).
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The id of an exact token string (e.g. "<|im_end|>"), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary string of an id as tokenizer.json stores it ("<|im_start|>", "Ġthe").
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Human readable text of one token (decoded bytes, lossy), for visualisations.
    pub fn token_str(&self, id: u32) -> String {
        String::from_utf8_lossy(&self.token_bytes(id)).into_owned()
    }

    /// The raw bytes one token stands for (byte-level BPE: the token's chars mapped back through
    /// the GPT-2 byte table); empty for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.bytes.get(id as usize).cloned().unwrap_or_default()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Writes tokenizer.json (for a later GGUF -> HF conversion).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| hf_err("writing tokenizer.json", e))
    }
}

/// Streams text out of generated ids without ever splitting a multi-byte UTF-8 character:
/// push(id) returns the text that became complete (possibly empty); flush() returns the rest (lossy).
/// The concatenated output equals `Tokenizer::decode` of all pushed ids (for byte-level tokenizers).
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    /// Bytes not yet returned: at most the start of one incomplete UTF-8 character.
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(t: &'a Tokenizer) -> Self {
        StreamDecoder {
            tokenizer: t,
            pending: Vec::new(),
        }
    }

    /// Adds one generated id; ids outside the vocabulary contribute nothing.
    pub fn push(&mut self, id: u32) -> String {
        if let Some(b) = self.tokenizer.bytes.get(id as usize) {
            self.pending.extend_from_slice(b);
        }
        self.take(false)
    }

    /// Returns whatever is left; an unfinished character becomes U+FFFD.
    pub fn flush(&mut self) -> String {
        self.take(true)
    }

    /// Emits the longest decodable prefix. Invalid bytes become U+FFFD exactly as
    /// String::from_utf8_lossy would, so the stream matches a one-shot lossy decode; an
    /// incomplete character at the end waits for the next token unless this is the end.
    fn take(&mut self, at_end: bool) -> String {
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                }
                Err(e) => {
                    let good = start + e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..good]));
                    match e.error_len() {
                        Some(len) => {
                            out.push('\u{FFFD}');
                            start = good + len;
                        }
                        None if at_end => {
                            out.push('\u{FFFD}');
                            start = self.pending.len();
                        }
                        None => {
                            start = good;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn splits(pre: &str, text: &str) -> Vec<String> {
        let mut s = PreTokenizedString::from(text);
        pre_tokenizer(pre).unwrap().pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| s.to_string())
            .collect()
    }

    #[test]
    fn byte_table_is_gpt2() {
        let t = char_to_byte_table();
        assert_eq!(t['Ġ' as usize], Some(b' '));
        assert_eq!(t['Ċ' as usize], Some(b'\n'));
        assert_eq!(t['A' as usize], Some(b'A'));
        assert_eq!(t[0x100], Some(0));
        assert_eq!(t.iter().flatten().count(), 256);
    }

    #[test]
    fn pre_tokenizers_split_digits_as_named() {
        assert_eq!(splits("smollm", "ab 2024"), ["ab", "Ġ", "2", "0", "2", "4"]);
        assert_eq!(splits("gpt-2", "ab 2024"), ["ab", "Ġ2024"]);
        assert_eq!(splits("llama-bpe", "ab 12345"), ["ab", "Ġ", "123", "45"]);
    }

    #[test]
    fn stream_matches_lossy_on_invalid_bytes() {
        // A tokenizer is not needed to test the UTF-8 logic: feed bytes directly.
        let t = Tokenizer {
            inner: tokenizers::Tokenizer::new(BpeBuilder::new().build().unwrap()),
            bytes: vec![
                vec![0xE6],
                vec![0x9D],
                vec![0xB1],
                vec![b'a'],
                vec![0xFF],
                vec![0xF0, 0x9F],
            ],
            special: vec![false; 6],
            byte_level: true,
            bos: None,
            eos: None,
        };
        for ids in [
            vec![0u32, 1, 2, 3],
            vec![0, 3, 4, 1],
            vec![5, 3, 0, 1],
            vec![3, 5],
            vec![0, 1],
        ] {
            let mut d = StreamDecoder::new(&t);
            let mut s: String = ids.iter().map(|&i| d.push(i)).collect();
            s.push_str(&d.flush());
            assert_eq!(s, t.decode(&ids).unwrap(), "ids {ids:?}");
        }
    }
}
