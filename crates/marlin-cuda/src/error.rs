//! Errors of the CUDA backend. Every entry point returns these; none panics on
//! a missing GPU, driver or library.

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable GPU: the crate was built without the `cuda` feature, or
    /// libcuda / libnvrtc / a device is missing.
    #[error("CUDA is not available: {0}")]
    NotAvailable(String),
    /// A CUDA driver API call failed.
    #[error("CUDA driver error in {context}: {message}")]
    Driver { context: String, message: String },
    /// A device allocation failed.
    #[error(
        "CUDA out of memory allocating {requested_bytes} bytes for {what} \
         ({free_bytes} of {total_bytes} bytes free on the device)"
    )]
    OutOfMemory {
        what: String,
        requested_bytes: usize,
        free_bytes: usize,
        total_bytes: usize,
    },
    /// NVRTC failed to compile an embedded kernel source.
    #[error("NVRTC failed to compile {kernel} for {arch}: {log}")]
    Compile {
        kernel: String,
        arch: String,
        log: String,
    },
    /// A cuBLAS call failed.
    #[error("cuBLAS error in {context}: {message}")]
    Cublas { context: String, message: String },
    /// A quantization scheme or layout this backend does not implement.
    #[error("unsupported by the CUDA backend: {0}")]
    Unsupported(String),
    /// Inconsistent shapes or buffer lengths.
    #[error("shape error: {0}")]
    Shape(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, CudaError>;
