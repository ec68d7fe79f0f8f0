//! Kernels for dense-packed `QuantTensor` schemes (owned by the quant-gemm work).

use crate::CpuError;
use marlin_quant::QuantTensor;

/// A `QuantTensor` repacked once for the CPU kernels.
pub struct PreparedQuant {
    rows: usize,
    cols: usize,
}

impl PreparedQuant {
    pub fn new(t: &QuantTensor) -> Result<Self, CpuError> {
        Err(CpuError::Unsupported(format!(
            "CPU quantized matmul for {:?} is not built yet",
            t.scheme
        )))
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn matmul(&self, _x: &[f32], _m: usize, _y: &mut [f32]) -> Result<(), CpuError> {
        Err(CpuError::Unsupported("quantized matmul".into()))
    }
}
