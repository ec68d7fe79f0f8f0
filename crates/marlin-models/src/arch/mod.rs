//! One file per architecture; this table maps architecture names (GGUF
//! `general.architecture`, Hugging Face `model_type`) to their loaders.
//!
//! Adding an architecture:
//! 1. New file `arch/<name>.rs`: a `load(src, opts)` that reads
//!    hyper-parameters through [`crate::config::base_config`] /
//!    [`crate::config::Params`] (add any new key to
//!    [`crate::config::HParam`] with its GGUF key and `config.json` paths),
//!    loads weights by GGUF tensor names through the shared layers, and
//!    implements [`Model`] (call `begin_forward` first, `cache.advance` last,
//!    `ctx.dump` each named activation).
//! 2. If Hugging Face names differ from the Llama ones, extend the mapping
//!    in `source/hf.rs`.
//! 3. One line in [`REGISTRY`].
//! 4. A reference fixture in `scripts/fixtures/make_model_fixtures.py` and a
//!    test next to `tests/reference_gguf.rs` or `tests/tiny_qwen3.rs`.

pub mod gemma3;
pub mod llama;
pub mod qwen3;

use crate::error::{ModelError, Result};
use crate::model::{LoadOptions, Model};
use crate::source::WeightSource;

/// A registry entry.
pub struct ArchEntry {
    /// Names this loader accepts (GGUF architecture and HF `model_type`).
    pub names: &'static [&'static str],
    pub load: fn(&dyn WeightSource, &LoadOptions) -> Result<Box<dyn Model>>,
}

/// Every supported architecture, one line each.
pub const REGISTRY: &[ArchEntry] = &[
    ArchEntry {
        names: &["llama", "mistral"],
        load: llama::load,
    },
    ArchEntry {
        names: &["gemma3", "gemma3_text"],
        load: gemma3::load,
    },
    ArchEntry {
        names: &["qwen3"],
        load: qwen3::load,
    },
];

/// The names of every supported architecture, for messages.
pub fn supported_names() -> String {
    REGISTRY
        .iter()
        .flat_map(|e| e.names.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the model `src` describes.
pub fn load_from_source(src: &dyn WeightSource, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    let arch = src.architecture();
    let entry = REGISTRY
        .iter()
        .find(|e| e.names.contains(&arch))
        .ok_or_else(|| ModelError::UnsupportedArch(arch.to_string(), supported_names()))?;
    (entry.load)(src, opts)
}
