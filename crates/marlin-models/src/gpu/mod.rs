//! The whole decode path on a CUDA GPU (feature `cuda`).
//!
//! ```no_run
//! # fn main() -> Result<(), marlin_models::gpu::GpuError> {
//! use marlin_models::gpu::{GpuLoadOptions, GpuModel};
//! let model = GpuModel::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &GpuLoadOptions::default())?;
//! let mut seq = model.new_sequence(512)?;
//! let logits = seq.forward(&[1, 2, 3])?; // (vocab) of the last token, on the host
//! let next = seq.greedy(&[42])?;         // argmax kept on the device
//! # let _ = (logits, next); Ok(()) }
//! ```
//!
//! - [`spec`]: what distinguishes Llama / Qwen3 / Gemma 3, as data.
//! - [`decoder`]: the one generic decoder over `marlin_cuda::ops` and the
//!   GPU weights; a forward pass of `m` rows allocates nothing and never
//!   synchronises, so the decode step is captured in a CUDA graph.
//! - [`sequence`]: [`GpuSequence`], one sequence's KV cache and its captured
//!   decode step; implements `marlin_engine::SequenceModel`.
//! - [`paged`]: [`GpuBatchModel`], the model with a paged KV pool that the
//!   serving engine drives (`marlin serve --device cuda`).
//! - [`bench`]: `marlin bench decode`, a Llama-3.1-8B-shaped INT4 model.

pub mod bench;
pub mod decoder;
mod graph;
pub mod linear;
mod load;
pub mod paged;
pub mod sequence;
pub mod spec;
pub mod stages;

pub use decoder::{
    GateUpWeights, GpuDecoder, LogitRows, QkvWeights, Scratch, Select, SkipForDiagnosis,
};
pub use paged::{GpuBatchModel, PagedOptions};
pub use sequence::GpuSequence;

use std::path::Path;
use std::sync::Arc;

use marlin_cuda::{CudaDevice, CudaError};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::source::{GgufSource, HfDirSource, WeightSource};

/// Errors of the GPU decoder: the model's, the device's, or a bad argument.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Cuda(#[from] CudaError),
    /// A weight the GPU path cannot use, with the reason.
    #[error("tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },
    /// A bad argument from the caller (empty prompt, overflowing context).
    #[error("{0}")]
    Invalid(String),
}

impl From<marlin_cpu::CpuError> for GpuError {
    fn from(e: marlin_cpu::CpuError) -> Self {
        GpuError::Model(ModelError::Cpu(e))
    }
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

pub(crate) fn driver_err(context: &str, e: cudarc::driver::DriverError) -> GpuError {
    GpuError::Cuda(CudaError::Driver {
        context: context.to_string(),
        message: e.to_string(),
    })
}

/// Options of [`GpuModel::load`].
#[derive(Clone, Debug)]
pub struct GpuLoadOptions {
    /// CUDA device ordinal (`--device cuda:N`).
    pub ordinal: usize,
    /// Most rows one forward pass runs (prompt chunk length); bounds the
    /// activation scratch of every sequence.
    pub max_batch_rows: usize,
    /// Capture the m = 1 decode step in a CUDA graph (default: on unless
    /// the environment sets `MARLIN_CUDA_GRAPH=0`).
    pub cuda_graph: bool,
}

impl Default for GpuLoadOptions {
    fn default() -> Self {
        Self {
            ordinal: 0,
            max_batch_rows: 512,
            cuda_graph: cuda_graph_from_env(),
        }
    }
}

/// `MARLIN_CUDA_GRAPH=0` switches graph capture off (to compare).
pub fn cuda_graph_from_env() -> bool {
    std::env::var("MARLIN_CUDA_GRAPH").map_or(true, |v| v.trim() != "0")
}

/// A model resident on one GPU.
pub struct GpuModel {
    dev: Arc<CudaDevice>,
    decoder: GpuDecoder,
    opts: GpuLoadOptions,
}

impl GpuModel {
    /// Loads a GGUF file or a Hugging Face directory onto device
    /// `opts.ordinal` (the same sources and config as the CPU path).
    pub fn load(path: &Path, opts: &GpuLoadOptions) -> Result<Self> {
        if opts.max_batch_rows == 0 {
            return Err(GpuError::Invalid(
                "max_batch_rows must be at least 1".into(),
            ));
        }
        let dev = CudaDevice::new(opts.ordinal)?;
        let decoder = if path.is_dir() {
            load::load_decoder(&dev, &HfDirSource::open(path)?)?
        } else {
            load::load_decoder(&dev, &GgufSource::open(path)?)?
        };
        Ok(Self::from_decoder(dev, decoder, opts.clone()))
    }

    /// Loads every weight of an opened checkpoint (any [`WeightSource`],
    /// e.g. one that quantizes on the fly) onto device `opts.ordinal`.
    pub fn from_source(src: &dyn WeightSource, opts: &GpuLoadOptions) -> Result<Self> {
        if opts.max_batch_rows == 0 {
            return Err(GpuError::Invalid(
                "max_batch_rows must be at least 1".into(),
            ));
        }
        let dev = CudaDevice::new(opts.ordinal)?;
        let decoder = load::load_decoder(&dev, src)?;
        Ok(Self::from_decoder(dev, decoder, opts.clone()))
    }

    /// Wraps a decoder built elsewhere (the synthetic benchmark model).
    pub fn from_decoder(dev: Arc<CudaDevice>, decoder: GpuDecoder, opts: GpuLoadOptions) -> Self {
        Self { dev, decoder, opts }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.decoder.spec.cfg
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    pub fn decoder(&self) -> &GpuDecoder {
        &self.decoder
    }

    pub fn options(&self) -> &GpuLoadOptions {
        &self.opts
    }

    /// An empty sequence of up to `capacity` positions.
    pub fn new_sequence(&self, capacity: usize) -> Result<GpuSequence<'_>> {
        GpuSequence::new(self, capacity)
    }
}
