//! Dense f32 weights through `matrixmultiply` (a well-tuned sgemm).

use crate::CpuError;

/// Row-major (N, K) f32 weights.
pub struct DenseWeight {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl DenseWeight {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, CpuError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(CpuError::Shape(format!(
                "dense weight: {} values for a {rows}x{cols} matrix",
                data.len()
            )));
        }
        Ok(Self { rows, cols, data })
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// `y (m, N) = x (m, K) · Wᵀ`. Shapes are checked by the caller.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), CpuError> {
        let (n, k) = (self.rows, self.cols);
        // SAFETY: the caller checked x.len() == m*k, y.len() == m*n and
        // data.len() == n*k; the strides below address exactly those buffers.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                x.as_ptr(),
                k as isize,
                1,
                self.data.as_ptr(),
                1,
                k as isize,
                0.0,
                y.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        Ok(())
    }
}
