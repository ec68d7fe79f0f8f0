//! Model architectures over shared layers, on the CPU kernels.
//!
//! ```no_run
//! # fn main() -> Result<(), marlin_models::ModelError> {
//! use marlin_models::{load_model, LoadOptions};
//! let model = load_model("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &LoadOptions::default())?;
//! let mut cache = model.new_cache(512)?;
//! let logits = model.forward(&[1, 2, 3], &mut cache)?; // (vocab) of the last token
//! # Ok(()) }
//! ```
//!
//! - [`layers`]: `Linear` (one factory for every weight format), RMSNorm,
//!   attention over [`KvCache`], gated MLPs, embeddings, output head.
//! - [`arch`]: one file per architecture and the [`arch::REGISTRY`] table.
//! - [`source`]: GGUF files and Hugging Face directories behind one
//!   [`source::WeightSource`] trait.

pub mod arch;
pub mod config;
pub mod error;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod layers;
pub mod model;
pub mod source;

pub use config::ModelConfig;
pub use error::ModelError;
pub use layers::{ActivationHook, KvCache, KvPool, KvType, LogitsWanted, SeqChunk};
pub use model::{BatchedModel, LoadOptions, Model, MICRO_BATCH};

use std::path::Path;

/// Loads a model from a GGUF file or a Hugging Face directory
/// (`config.json` + `*.safetensors`).
pub fn load_model(path: &Path, opts: &LoadOptions) -> Result<Box<dyn Model>, ModelError> {
    if path.is_dir() {
        let src = source::HfDirSource::open(path)?;
        arch::load_from_source(&src, opts)
    } else {
        let src = source::GgufSource::open(path)?;
        arch::load_from_source(&src, opts)
    }
}

/// Loads a model from an opened GGUF file (whose tokenizer the caller may already have built
/// from the same parse). The file is closed when the model is loaded.
pub fn load_gguf(
    file: marlin_io::gguf::GgufFile,
    opts: &LoadOptions,
) -> Result<Box<dyn Model>, ModelError> {
    let src = source::GgufSource::new(file)?;
    arch::load_from_source(&src, opts)
}
