//! A Hugging Face tokenizer.json (the tokenizer of the safetensors path) on arbitrary bytes: an
//! error or a tokenizer whose every encoded id is inside its vocabulary, never a panic or an
//! allocation sized by an id from the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinkstream::tokenizer::{StreamDecoder, Tokenizer};
use sinkstream_fuzz::on_fresh_thread;

fuzz_target!(|data: &[u8]| {
    let Ok(tok) = Tokenizer::from_json_bytes(data) else {
        return;
    };
    let n = tok.vocab_size();
    assert!(n > 0 && n <= data.len());
    on_fresh_thread(|| encode_decode(&tok));
});

fn encode_decode(tok: &Tokenizer) {
    let n = tok.vocab_size();
    let Ok(ids) = tok.encode("Hello, world! 12 apples<|im_end|>\n\u{e9}t\u{e9} \u{1F600}") else {
        return;
    };
    assert!(
        ids.iter().all(|&id| (id as usize) < n),
        "encode gave an id outside the vocabulary"
    );
    let _ = tok.decode(&ids);
    let mut d = StreamDecoder::new(tok);
    for &id in &ids {
        d.push(id);
    }
    d.flush();
}
