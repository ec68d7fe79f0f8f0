//! CPU kernels.
//!
//! - [`CpuWeight`]: a weight matrix prepared once for the CPU kernels, from
//!   dense f32, a [`QuantTensor`] or a ggml block tensor. `matmul` computes
//!   `y = x · Wᵀ` for M rows of activations.
//! - [`quant_gemm`]: kernels for dense-packed [`QuantTensor`] schemes.
//! - [`ggml`]: kernels for GGUF block formats (activations quantized to
//!   8 bits on the fly, integer dot products).
//! - [`ops`]: elementwise and attention ops used by the models.
//!
//! SIMD variants are chosen at run time (`is_x86_feature_detected!`), never by
//! compiling with `target-cpu=native`.

pub mod bench;
pub mod dense;
pub mod error;
pub mod ggml;
pub mod ops;
pub mod pool;
pub mod quant_gemm;

pub use error::CpuError;
use marlin_quant::{GgmlTensor, QuantTensor};

/// A (N, K) weight matrix prepared for CPU matmul.
pub enum CpuWeight {
    Dense(dense::DenseWeight),
    Quant(quant_gemm::PreparedQuant),
    Ggml(ggml::PreparedGgml),
}

impl CpuWeight {
    /// Dense f32 weights, row-major (N, K).
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, CpuError> {
        Ok(CpuWeight::Dense(dense::DenseWeight::new(rows, cols, data)?))
    }

    pub fn from_quant(t: &QuantTensor) -> Result<Self, CpuError> {
        Ok(CpuWeight::Quant(quant_gemm::PreparedQuant::new(t)?))
    }

    pub fn from_ggml(t: GgmlTensor) -> Result<Self, CpuError> {
        Ok(CpuWeight::Ggml(ggml::PreparedGgml::new(t)?))
    }

    /// N: output features.
    pub fn rows(&self) -> usize {
        match self {
            CpuWeight::Dense(w) => w.rows(),
            CpuWeight::Quant(w) => w.rows(),
            CpuWeight::Ggml(w) => w.rows(),
        }
    }

    /// K: input features.
    pub fn cols(&self) -> usize {
        match self {
            CpuWeight::Dense(w) => w.cols(),
            CpuWeight::Quant(w) => w.cols(),
            CpuWeight::Ggml(w) => w.cols(),
        }
    }

    /// `y (m, N) = x (m, K) · Wᵀ`, multi-threaded on the rayon pool.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), CpuError> {
        let (n, k) = (self.rows(), self.cols());
        check_matmul_shapes(x.len(), y.len(), m, n, k)?;
        match self {
            CpuWeight::Dense(w) => w.matmul(x, m, y),
            CpuWeight::Quant(w) => w.matmul(x, m, y),
            CpuWeight::Ggml(w) => w.matmul(x, m, y),
        }
    }
}

/// Shape check shared by every matmul entry point.
pub fn check_matmul_shapes(
    x_len: usize,
    y_len: usize,
    m: usize,
    n: usize,
    k: usize,
) -> Result<(), CpuError> {
    let want_x = m
        .checked_mul(k)
        .ok_or(CpuError::Shape("m*k overflows".into()))?;
    let want_y = m
        .checked_mul(n)
        .ok_or(CpuError::Shape("m*n overflows".into()))?;
    if x_len != want_x || y_len != want_y {
        return Err(CpuError::Shape(format!(
            "matmul: x has {x_len} elements (want m*k = {m}*{k}), y has {y_len} (want m*n = {m}*{n})"
        )));
    }
    Ok(())
}
