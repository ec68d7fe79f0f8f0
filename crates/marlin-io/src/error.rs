//! The error type of marlin-io.

use std::path::PathBuf;

/// Errors of reading model files (GGUF, safetensors, Hugging Face dirs).
///
/// Every variant renders as one line that names the problem; file-level
/// context is added by [`IoError::File`].
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// An operating-system error on a path (missing file, permission, ...).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Another error, with the file it came from.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<IoError>,
    },

    /// A GGUF file whose bytes break the format; `offset` is where the
    /// problem was found.
    #[error("malformed GGUF at byte {offset}: {reason}")]
    MalformedGguf { offset: u64, reason: String },

    /// A safetensors file or index whose bytes break the format.
    #[error("malformed safetensors: {0}")]
    MalformedSafetensors(String),

    /// A JSON file (config.json, index) that does not parse.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// A metadata key the caller needs is absent.
    #[error("missing metadata key `{0}`")]
    MissingKey(String),

    /// A metadata key holds a value of another type, or one out of range.
    #[error("metadata key `{key}`: expected {expected}, found {found}")]
    KeyType {
        key: String,
        expected: &'static str,
        found: String,
    },

    /// No tensor of that name.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),

    /// A tensor whose element type marlin cannot read.
    #[error("tensor `{name}`: unsupported type {type_name} (id {type_id})")]
    UnsupportedTensorType {
        name: String,
        type_id: u32,
        type_name: String,
    },

    /// A tensor whose shape does not fit the requested view.
    #[error("tensor `{name}`: {reason}")]
    TensorShape { name: String, reason: String },

    /// A Hugging Face model directory lacking a required file, or with
    /// contents that do not fit together.
    #[error("model directory: {0}")]
    ModelDir(String),

    #[error(transparent)]
    Quant(#[from] marlin_quant::QuantError),
}

impl IoError {
    /// Wraps `self` with the path of the file it concerns.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        IoError::File {
            path: path.into(),
            source: Box::new(self),
        }
    }
}

pub type Result<T, E = IoError> = std::result::Result<T, E>;
