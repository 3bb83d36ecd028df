//! The whole model load from bytes (GGUF, config, weights, tokenizer, chat template) and what the
//! CLI does right after it (the stop tokens): an error or a model, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinkstream::Model;
use sinkstream_fuzz::on_fresh_thread;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Model::from_gguf_bytes(data, "fuzz.gguf") else {
        return;
    };
    assert_eq!(m.tokenizer.vocab_size(), m.config.vocab);
    if let Err(e) = m
        .config
        .validate()
        .and_then(|()| m.weights.validate(&m.config))
    {
        panic!("a loaded model fails its own validation: {e}");
    }
    on_fresh_thread(|| {
        for id in m.stop_tokens() {
            assert!((id as usize) < m.config.vocab);
        }
    });
});
