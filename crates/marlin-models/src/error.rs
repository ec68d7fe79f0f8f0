//! The error type of marlin-models.

/// Errors of loading and running a model. Each renders as one line naming
/// the problem (which file, which tensor, which key).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The checkpoint names an architecture marlin does not implement.
    #[error("unsupported model architecture `{0}` (supported: {1})")]
    UnsupportedArch(String, String),

    /// A hyper-parameter is missing, has the wrong type, or is out of range.
    #[error("model config: {0}")]
    Config(String),

    /// A weight has the wrong shape or type for where the model uses it.
    #[error("tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },

    /// More tokens than the KV cache was created for.
    #[error(
        "context overflow: {used} cached + {new} new tokens exceed the cache capacity {capacity}"
    )]
    ContextOverflow {
        used: usize,
        new: usize,
        capacity: usize,
    },

    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },

    /// A bad argument from the caller (empty prompt, cache of another model).
    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Io(#[from] marlin_io::IoError),

    #[error(transparent)]
    Cpu(#[from] marlin_cpu::CpuError),

    #[error(transparent)]
    Quant(#[from] marlin_quant::QuantError),
}

impl ModelError {
    pub(crate) fn tensor(name: &str, reason: impl Into<String>) -> Self {
        ModelError::Tensor {
            name: name.to_string(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
