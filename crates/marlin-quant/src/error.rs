/// Errors of quantization, packing and format conversion.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("invalid shape: {0}")]
    Shape(String),
    #[error("group size {group} does not divide K = {k}")]
    GroupSize { group: usize, k: usize },
    #[error("unsupported scheme: {0}")]
    Unsupported(String),
    #[error("non-finite value {value} at index {index}")]
    NonFinite { index: usize, value: f32 },
    #[error("invalid data: {0}")]
    InvalidData(String),
}
