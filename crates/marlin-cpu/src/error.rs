/// Errors of CPU kernels.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Quant(#[from] marlin_quant::QuantError),
}
