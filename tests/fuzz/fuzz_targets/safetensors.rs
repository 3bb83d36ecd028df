//! The safetensors container as the Hugging Face loader will read it: the header parser and the
//! library's own validation on arbitrary bytes. What it accepts must be self-consistent (every
//! tensor's bytes match its dtype and shape) and survive a write and read back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

fuzz_target!(|data: &[u8]| {
    let header = SafeTensors::read_metadata(data);
    let Ok(st) = SafeTensors::deserialize(data) else {
        assert!(header.is_err(), "the header reads but the file does not");
        return;
    };
    let (_, meta) = header.expect("the file reads, so its header does");
    assert_eq!(meta.tensors().len(), st.len());
    let mut views = Vec::new();
    for (name, view) in st.tensors() {
        let elems = view
            .shape()
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .expect("an accepted shape does not overflow");
        let bits = elems
            .checked_mul(view.dtype().bitsize())
            .expect("an accepted size does not overflow");
        assert_eq!(
            view.data().len() * 8,
            bits,
            "tensor {name}: bytes do not match the shape"
        );
        let again = TensorView::new(view.dtype(), view.shape().to_vec(), view.data())
            .expect("an accepted tensor is a valid view");
        assert_eq!(
            st.tensor(&name).map(|t| t.data().as_ptr()).ok(),
            Some(view.data().as_ptr())
        );
        views.push((name, again));
    }
    let written = safetensors::serialize(views.clone(), meta.metadata().clone())
        .expect("accepted tensors serialize");
    let back = SafeTensors::deserialize(&written).expect("what we wrote reads back");
    assert_eq!(back.len(), views.len());
    for (name, v) in &views {
        let b = back.tensor(name).expect("every tensor is still there");
        assert_eq!(
            (b.dtype(), b.shape(), b.data()),
            (v.dtype(), v.shape(), v.data())
        );
    }
});
