//! sinkstream: Llama-family language models on WebGPU (wgpu), streaming without end in constant
//! memory through an attention-sink + ring KV cache (StreamingLLM).

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod cache;
pub mod chat;
pub mod convert;
pub mod cpu;
pub mod engine;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod hf;
#[cfg(not(target_arch = "wasm32"))]
pub mod hub;
pub mod model;
#[cfg(feature = "cli")]
pub mod plot;
pub mod sampler;
pub mod tensor;
pub mod tokenizer;

pub use cache::{CacheRule, Policy};
pub use engine::{GpuModel, Logits, Session, Stats};
pub use error::{Error, Result};
pub use gpu::Gpu;
pub use model::{Config, Model, RopeLayout};
#[cfg(target_arch = "wasm32")]
pub mod wasm;
