//! Kernels for GGUF block formats (owned by the ggml work).

use crate::CpuError;
use marlin_quant::GgmlTensor;

/// A `GgmlTensor` repacked once for the CPU kernels.
pub struct PreparedGgml {
    rows: usize,
    cols: usize,
}

impl PreparedGgml {
    pub fn new(t: GgmlTensor) -> Result<Self, CpuError> {
        Err(CpuError::Unsupported(format!(
            "CPU quantized matmul for {:?} is not built yet",
            t.ty
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
