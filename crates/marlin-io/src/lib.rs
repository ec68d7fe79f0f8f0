//! Everything that reads bytes from disk: model files (GGUF, safetensors,
//! Hugging Face directories), tokenizers and chat templates.

pub mod checkpoint;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod interop;
mod mapped;
pub mod safetensors;
pub mod tokenizer;

pub use error::IoError;
