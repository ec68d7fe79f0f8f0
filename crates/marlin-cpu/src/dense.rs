//! Dense f32 weights through `matrixmultiply` (a well-tuned sgemm).
//!
//! `matrixmultiply` 0.3.11 picks its AVX-512 kernel at run time (crate
//! feature `avx512`, on by default) and threads over its own pool of
//! [`sgemm_threads`] threads, not over [`crate::pool`]. Measured against
//! the other crates.io sgemms on the development machine (single thread,
//! CPU time, M = 128, K = 4096, N = 4096 / 14336): matrixmultiply 123-128
//! GFLOP/s, faer 0.24 (its AVX-512 `private-gemm-x86`) 112-123, gemm 0.18
//! (AVX2 only without its nightly feature) 92-95; see docs/CPU_KERNELS.md.

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

    /// `y (m, N) = x (m, K) · Wᵀ`, on [`sgemm_threads`] threads.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), CpuError> {
        let (n, k) = (self.rows, self.cols);
        // This method is public: the raw-pointer sgemm below must not trust
        // its caller to have checked the shapes.
        crate::check_matmul_shapes(x.len(), y.len(), m, n, k)?;
        // SAFETY: x.len() == m*k and y.len() == m*n were just checked and
        // `new` checked data.len() == n*k; the strides below address exactly
        // those buffers.
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

/// Threads `matrixmultiply`'s sgemm runs on: `MATMUL_NUM_THREADS` if set
/// (read once, at its first call), else the number of physical cores; it
/// ignores `--threads` and [`crate::pool`].
pub fn sgemm_threads() -> usize {
    match std::env::var("MATMUL_NUM_THREADS") {
        Ok(s) if !s.is_empty() => s.parse::<usize>().unwrap_or(1).clamp(1, 4),
        _ => num_cpus::get_physical().clamp(1, 4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_with_wrong_buffer_lengths_is_an_error() {
        let w = DenseWeight::new(2, 3, vec![1.0; 6]).unwrap();
        let mut y = vec![0.0; 2];
        // x shorter than m * K: sgemm would read past it.
        assert!(w.matmul(&[1.0; 2], 1, &mut y).is_err());
        // y shorter than m * N: sgemm would write past it.
        assert!(w.matmul(&[1.0; 6], 2, &mut y).is_err());
        w.matmul(&[1.0; 3], 1, &mut y).unwrap();
        assert_eq!(y, [3.0, 3.0]);
    }
}
