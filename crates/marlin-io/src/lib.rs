//! Everything that reads bytes from disk: model files (GGUF, safetensors,
//! Hugging Face directories), tokenizers and chat templates.

pub mod gguf;
pub mod safetensors;
pub mod tokenizer;
