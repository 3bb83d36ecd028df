//! Tokenizer construction from GGUF metadata, structure-aware: the input is the values of the
//! tokenizer.ggml.* keys (see `TokenizerInput`), written as a GGUF and read back, so mutations land
//! on the values rather than breaking the container. A tokenizer that builds must then encode,
//! decode and stream-decode without panicking, with ids inside its vocabulary.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinkstream::gguf::{write, Gguf};
use sinkstream::tokenizer::{StreamDecoder, Tokenizer};
use sinkstream_fuzz::{on_fresh_thread, TokenizerInput};

fuzz_target!(|data: &[u8]| {
    let input = TokenizerInput::decode(data);
    let md = input.metadata();
    let bytes = write::gguf(&md, &[]);
    let g = Gguf::parse(&bytes).expect("the writer's output parses");
    // The reader gives back exactly what the writer wrote.
    for (k, v) in &md {
        assert_eq!(
            g.get(k),
            Some(v),
            "metadata {k} changed on the way through the file"
        );
    }
    let Ok(tok) = Tokenizer::from_gguf(&g) else {
        return;
    };
    let n = tok.vocab_size();
    assert!(n > 0);
    on_fresh_thread(|| encode_decode(&tok, &input.text));
    assert!(tok.decode(&[n as u32]).is_err());
    for id in tok.bos_id().into_iter().chain(tok.eos_id()) {
        assert!((id as usize) < n);
        let _ = tok.token_str(id);
    }
});

fn encode_decode(tok: &Tokenizer, text: &str) {
    let n = tok.vocab_size();
    let Ok(ids) = tok.encode(text) else {
        return;
    };
    assert!(
        ids.iter().all(|&id| (id as usize) < n),
        "encode gave an id outside the vocabulary"
    );
    let text = tok.decode(&ids).expect("ids from encode decode");
    // Streaming decode agrees with the one-shot decode (byte-level tokenizers).
    let mut d = StreamDecoder::new(tok);
    let mut streamed: String = ids.iter().map(|&id| d.push(id)).collect();
    streamed.push_str(&d.flush());
    assert_eq!(streamed, text);
}
