//! The GPTQ proxy Hessian `H = 2/n · Σ x xᵀ` of a linear layer's inputs,
//! accumulated in f64 from calibration activations batch by batch.

use crate::error::{check_finite, check_len, checked_area};
use crate::linalg::{gemm, View, ViewMut};
use crate::QuantizeError;

/// Rows converted to f64 per GEMM call: bounds the temporary to
/// `CHUNK_ROWS x K` f64 values whatever the batch size.
const CHUNK_ROWS: usize = 256;

/// A finished (K, K) Hessian `H = 2/n · Σ x xᵀ` over `n_samples` input rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Hessian {
    k: usize,
    /// (K, K) row-major, symmetric.
    data: Vec<f64>,
    n_samples: usize,
}

impl Hessian {
    /// Wraps an existing (K, K) row-major matrix (e.g. one loaded from disk
    /// or built elsewhere). Errors: wrong length, K = 0, non-finite entries,
    /// a matrix that is not symmetric (relative tolerance 1e-6), or
    /// `n_samples == 0`.
    pub fn from_matrix(data: Vec<f64>, k: usize, n_samples: usize) -> Result<Self, QuantizeError> {
        if k == 0 {
            return Err(QuantizeError::Shape("Hessian of K = 0".into()));
        }
        if n_samples == 0 {
            return Err(QuantizeError::EmptyCalibration(
                "Hessian built from 0 samples".into(),
            ));
        }
        let expected = checked_area(k, k)?;
        if data.len() != expected {
            return Err(QuantizeError::Shape(format!(
                "Hessian has {} values, expected {k} x {k}",
                data.len()
            )));
        }
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(QuantizeError::NonFinite {
                what: "Hessian",
                index,
                value: data[index] as f32,
            });
        }
        for i in 0..k {
            for j in 0..i {
                let (a, b) = (data[i * k + j], data[j * k + i]);
                if (a - b).abs() > 1e-6 * (a.abs().max(b.abs()) + f64::MIN_POSITIVE) {
                    return Err(QuantizeError::InvalidOption(format!(
                        "Hessian is not symmetric at ({i}, {j}): {a} vs {b}"
                    )));
                }
            }
        }
        Ok(Self { k, data, n_samples })
    }

    /// Input features K (the Hessian is K x K).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of activation rows it was built from.
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }

    /// The (K, K) row-major matrix.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// The diagonal (K): 2/n · Σ x_j², the per-input-channel energy.
    pub fn diag(&self) -> Vec<f64> {
        (0..self.k).map(|i| self.data[i * self.k + i]).collect()
    }

    /// Built by this crate from already-checked parts.
    pub(crate) fn from_parts(data: Vec<f64>, k: usize, n_samples: usize) -> Self {
        debug_assert_eq!(data.len(), k * k);
        Self { k, data, n_samples }
    }
}

/// Accumulates `Σ x xᵀ` over calibration batches in f64.
#[derive(Clone, Debug)]
pub struct HessianAccumulator {
    k: usize,
    /// (K, K) row-major running Σ x xᵀ.
    sum: Vec<f64>,
    n_samples: usize,
}

impl HessianAccumulator {
    /// An empty accumulator for K input features. Errors on K = 0 or a
    /// K x K size that overflows.
    pub fn new(k: usize) -> Result<Self, QuantizeError> {
        if k == 0 {
            return Err(QuantizeError::Shape("Hessian of K = 0".into()));
        }
        let len = checked_area(k, k)?;
        Ok(Self {
            k,
            sum: vec![0.0; len],
            n_samples: 0,
        })
    }

    /// Adds `rows` activation rows `x` (rows, K), row-major. Errors on a
    /// length mismatch or a non-finite value (nothing is added then).
    pub fn add_batch(&mut self, x: &[f32], rows: usize) -> Result<(), QuantizeError> {
        check_len("activation batch", x.len(), rows, self.k)?;
        check_finite("activations", x)?;
        let k = self.k;
        let mut chunk64 = vec![0.0f64; CHUNK_ROWS.min(rows) * k]; // (chunk, K)
        for chunk in x.chunks(CHUNK_ROWS * k) {
            let chunk_rows = chunk.len() / k;
            let buf = &mut chunk64[..chunk.len()];
            for (d, &s) in buf.iter_mut().zip(chunk) {
                *d = f64::from(s);
            }
            let xv = View::row_major(&*buf, chunk_rows, k);
            // sum += Xᵀ X
            gemm(
                1.0,
                xv.t(),
                xv,
                1.0,
                ViewMut {
                    data: &mut self.sum,
                    rows: k,
                    cols: k,
                    row_stride: k,
                    col_stride: 1,
                },
            )?;
        }
        self.n_samples += rows;
        Ok(())
    }

    /// Rows added so far.
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }

    /// `H = 2/n · Σ x xᵀ`. Errors when no rows were added.
    pub fn finish(self) -> Result<Hessian, QuantizeError> {
        if self.n_samples == 0 {
            return Err(QuantizeError::EmptyCalibration(
                "no activation rows were added to the Hessian".into(),
            ));
        }
        let factor = 2.0 / self.n_samples as f64;
        let mut data = self.sum;
        for v in &mut data {
            *v *= factor;
        }
        // GEMM rounding can differ between (i, j) and (j, i): make it exact.
        let k = self.k;
        for i in 0..k {
            for j in 0..i {
                let m = 0.5 * (data[i * k + j] + data[j * k + i]);
                data[i * k + j] = m;
                data[j * k + i] = m;
            }
        }
        Ok(Hessian::from_parts(data, k, self.n_samples))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_direct_sum_across_batches() {
        let k = 5;
        let x: Vec<f32> = (0..7 * k)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let mut acc = HessianAccumulator::new(k).unwrap();
        acc.add_batch(&x[..3 * k], 3).unwrap();
        acc.add_batch(&x[3 * k..], 4).unwrap();
        let h = acc.finish().unwrap();
        assert_eq!(h.n_samples(), 7);
        for i in 0..k {
            for j in 0..k {
                let direct: f64 = (0..7)
                    .map(|r| f64::from(x[r * k + i]) * f64::from(x[r * k + j]))
                    .sum::<f64>()
                    * 2.0
                    / 7.0;
                assert!((h.as_slice()[i * k + j] - direct).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn rejects_bad_batches() {
        let mut acc = HessianAccumulator::new(4).unwrap();
        assert!(matches!(
            acc.add_batch(&[0.0; 7], 2),
            Err(QuantizeError::Shape(_))
        ));
        assert!(matches!(
            acc.add_batch(&[0.0, f32::NAN, 0.0, 0.0], 1),
            Err(QuantizeError::NonFinite { index: 1, .. })
        ));
        assert_eq!(acc.n_samples(), 0);
        assert!(matches!(
            acc.finish(),
            Err(QuantizeError::EmptyCalibration(_))
        ));
        assert!(HessianAccumulator::new(0).is_err());
    }

    #[test]
    fn from_matrix_checks() {
        assert!(Hessian::from_matrix(vec![1.0, 0.0, 0.0, 1.0], 2, 1).is_ok());
        assert!(Hessian::from_matrix(vec![1.0, 0.5, 0.0, 1.0], 2, 1).is_err());
        assert!(Hessian::from_matrix(vec![1.0; 3], 2, 1).is_err());
        assert!(Hessian::from_matrix(vec![f64::NAN], 1, 1).is_err());
        assert!(Hessian::from_matrix(vec![1.0], 1, 0).is_err());
    }
}
