//! The GGUF reader on arbitrary bytes: never a panic, and whatever it accepts is consistent
//! (tensor data inside the file, no overlaps, every metadata accessor answers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinkstream::gguf::Gguf;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else {
        return;
    };
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for t in &g.tensors {
        let end = t.start.checked_add(t.len).expect("tensor end overflows");
        assert!(end <= data.len(), "tensor {} ends past the file", t.name);
        assert!(t.n_elements() > 0);
        assert!(g.tensor(&t.name).is_some());
        spans.push((t.start, end));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping tensors accepted");
    }
    // The typed accessors must turn any value into a value or an error.
    for key in g.metadata.keys() {
        let _ = g.get_u64(key);
        let _ = g.get_f64(key);
        let _ = g.get_str(key);
        let _ = g.get_str_array(key);
        let _ = g.get_int_array(key);
    }
});
