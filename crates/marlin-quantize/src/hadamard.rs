//! Block-diagonal Hadamard rotation along K, for MR-GPTQ.
//!
//! `R = diag(H_b, ..., H_b)` with `H_b` the Sylvester Hadamard matrix of a
//! power-of-two size b, normalised by 1/√b. `H_b` is symmetric and
//! orthogonal, so R is its own inverse (`R·R = I`). A linear layer
//! `y = x·Wᵀ` is unchanged when both sides are rotated:
//! `y = (x·Rᵀ)·(W·Rᵀ)ᵀ`; with R symmetric, `x·Rᵀ` and `W·Rᵀ` are the same
//! operation on every row: a fast Walsh-Hadamard transform of each
//! b-element block (O(K log b) per row). The weights are rotated offline;
//! inference applies [`Rotation::rotate_rows`] to the activations (or folds
//! R into the previous layer where that layer is linear in them).
//!
//! K that is not a multiple of b: rows are zero-padded to `padded_k`, the
//! next multiple of b. The rotated weights then have `padded_k` columns and
//! the activations must be padded the same way (`rotate_rows` does it).
//! [`Rotation::for_dim`] avoids padding where K has a large enough power of
//! two factor.

use crate::error::{check_finite, check_len, checked_area};
use crate::hessian::Hessian;
use crate::QuantizeError;

/// Smallest block [`Rotation::for_dim`] accepts before it pads instead.
const MIN_UNPADDED_BLOCK: usize = 16;

/// A block-diagonal Hadamard rotation of the K input features. Stored with
/// a quantized tensor so inference can rotate the activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rotation {
    /// Hadamard block size b (a power of two).
    pub block_size: usize,
    /// Input features before padding.
    pub k: usize,
    /// Input features after zero-padding to a multiple of b (= k when b
    /// divides k).
    pub padded_k: usize,
}

impl Rotation {
    /// A rotation of K features with blocks of `block_size` (a power of two
    /// >= 1), zero-padding K up to a multiple of it.
    pub fn new(k: usize, block_size: usize) -> Result<Self, QuantizeError> {
        if k == 0 {
            return Err(QuantizeError::Shape("rotation of K = 0".into()));
        }
        if !block_size.is_power_of_two() {
            return Err(QuantizeError::InvalidOption(format!(
                "Hadamard block size {block_size} is not a power of two"
            )));
        }
        let padded_k = k
            .div_ceil(block_size)
            .checked_mul(block_size)
            .ok_or_else(|| {
                QuantizeError::Shape(format!("K = {k} padded to {block_size} overflows"))
            })?;
        Ok(Self {
            block_size,
            k,
            padded_k,
        })
    }

    /// The largest power-of-two block <= `max_block` that divides K (no
    /// padding), unless that is below 16 (or `max_block`, if smaller), in
    /// which case blocks of the largest power of two <= `max_block` with
    /// padding.
    pub fn for_dim(k: usize, max_block: usize) -> Result<Self, QuantizeError> {
        if max_block == 0 {
            return Err(QuantizeError::InvalidOption("Hadamard block size 0".into()));
        }
        let cap = 1usize << (usize::BITS - 1 - max_block.leading_zeros()); // largest pow2 <= max_block
        let dividing = if k == 0 {
            cap
        } else {
            cap.min(1 << k.trailing_zeros().min(usize::BITS - 1))
        };
        if dividing >= MIN_UNPADDED_BLOCK.min(cap) {
            Self::new(k, dividing)
        } else {
            Self::new(k, cap)
        }
    }

    /// Checks the invariants [`Self::new`] establishes; the fields are
    /// public (a rotation is stored with its tensor), so one built by hand
    /// or loaded from a file is checked before it drives any indexing.
    fn check(&self) -> Result<(), QuantizeError> {
        let expected = Self::new(self.k, self.block_size)?;
        if expected.padded_k != self.padded_k {
            return Err(QuantizeError::Shape(format!(
                "rotation of K = {} with blocks of {} has padded K {}, expected {}",
                self.k, self.block_size, self.padded_k, expected.padded_k
            )));
        }
        Ok(())
    }

    /// Rotates `rows` rows of K values (row-major (rows, K)) into
    /// (rows, padded_k): zero-pad, then the normalised Walsh-Hadamard
    /// transform of each block. Computes `W·Rᵀ` for weights and `x·Rᵀ` for
    /// activations (R is symmetric).
    pub fn rotate_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>, QuantizeError> {
        self.check()?;
        check_len("rows to rotate", x.len(), rows, self.k)?;
        check_finite("rows to rotate", x)?;
        let mut out = vec![0.0f32; checked_area(rows, self.padded_k)?]; // (rows, padded_k)
        let norm = 1.0 / (self.block_size as f32).sqrt();
        for (src, dst) in x
            .chunks_exact(self.k)
            .zip(out.chunks_exact_mut(self.padded_k))
        {
            dst[..self.k].copy_from_slice(src);
            for block in dst.chunks_exact_mut(self.block_size) {
                fwht_pow2(block);
                for v in block.iter_mut() {
                    *v *= norm;
                }
            }
        }
        Ok(out)
    }

    /// The inverse of [`Self::rotate_rows`]: (rows, padded_k) rotated rows
    /// back to (rows, K) (the padding columns are dropped).
    pub fn unrotate_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>, QuantizeError> {
        self.check()?;
        check_len("rows to unrotate", x.len(), rows, self.padded_k)?;
        check_finite("rows to unrotate", x)?;
        let mut out = vec![0.0f32; checked_area(rows, self.k)?]; // (rows, K)
        let mut buf = vec![0.0f32; self.padded_k];
        let norm = 1.0 / (self.block_size as f32).sqrt();
        for (src, dst) in x
            .chunks_exact(self.padded_k)
            .zip(out.chunks_exact_mut(self.k))
        {
            buf.copy_from_slice(src);
            for block in buf.chunks_exact_mut(self.block_size) {
                fwht_pow2(block);
                for v in block.iter_mut() {
                    *v *= norm;
                }
            }
            dst.copy_from_slice(&buf[..self.k]);
        }
        Ok(out)
    }

    /// The Hessian of the rotated inputs `x·Rᵀ`: `R·H·Rᵀ` (padded_k x
    /// padded_k, zero rows and columns for the padding before rotating).
    pub fn rotate_hessian(&self, h: &Hessian) -> Result<Hessian, QuantizeError> {
        self.check()?;
        if h.k() != self.k {
            return Err(QuantizeError::HessianSize {
                got: h.k(),
                k: self.k,
            });
        }
        let kp = self.padded_k;
        let k = self.k;
        let mut m = vec![0.0f64; checked_area(kp, kp)?]; // (Kp, Kp)
        for (i, row) in h.as_slice().chunks_exact(k).enumerate() {
            m[i * kp..i * kp + k].copy_from_slice(row);
        }
        // A = H·R (rows), then Aᵀ·R = R·H·R (H symmetric), which is symmetric.
        self.transform_rows_f64(&mut m);
        transpose_square(&mut m, kp);
        self.transform_rows_f64(&mut m);
        for i in 0..kp {
            for j in 0..i {
                let v = 0.5 * (m[i * kp + j] + m[j * kp + i]);
                m[i * kp + j] = v;
                m[j * kp + i] = v;
            }
        }
        Hessian::from_matrix(m, kp, h.n_samples())
    }

    fn transform_rows_f64(&self, m: &mut [f64]) {
        let norm = 1.0 / (self.block_size as f64).sqrt();
        for row in m.chunks_exact_mut(self.padded_k) {
            for block in row.chunks_exact_mut(self.block_size) {
                fwht_pow2(block);
                for v in block.iter_mut() {
                    *v *= norm;
                }
            }
        }
    }
}

/// Unnormalised in-place fast Walsh-Hadamard transform (Sylvester order)
/// of a power-of-two-length slice: `x ← H_n x` with `H_n H_n = n I`.
/// Errors on any other length (an empty slice is left as is).
pub fn fwht<T>(x: &mut [T]) -> Result<(), QuantizeError>
where
    T: Copy + std::ops::Add<Output = T> + std::ops::Sub<Output = T>,
{
    if !(x.is_empty() || x.len().is_power_of_two()) {
        return Err(QuantizeError::Shape(format!(
            "Walsh-Hadamard transform of {} values (needs a power of two)",
            x.len()
        )));
    }
    fwht_pow2(x);
    Ok(())
}

/// [`fwht`] of a slice whose length is known to be a power of two (a
/// checked rotation's block).
fn fwht_pow2<T>(x: &mut [T])
where
    T: Copy + std::ops::Add<Output = T> + std::ops::Sub<Output = T>,
{
    let n = x.len();
    let mut h = 1;
    while h < n {
        for start in (0..n).step_by(2 * h) {
            for i in start..start + h {
                let (a, b) = (x[i], x[i + h]);
                x[i] = a + b;
                x[i + h] = a - b;
            }
        }
        h *= 2;
    }
}

fn transpose_square(m: &mut [f64], n: usize) {
    for i in 0..n {
        for j in 0..i {
            m.swap(i * n + j, j * n + i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_dim_choices() {
        assert_eq!(
            Rotation::for_dim(576, 128).unwrap(),
            Rotation {
                block_size: 64,
                k: 576,
                padded_k: 576
            }
        );
        assert_eq!(Rotation::for_dim(512, 128).unwrap().block_size, 128);
        assert_eq!(
            Rotation::for_dim(100, 128).unwrap(),
            Rotation {
                block_size: 128,
                k: 100,
                padded_k: 128
            }
        );
        assert_eq!(
            Rotation::for_dim(24, 32).unwrap(),
            Rotation {
                block_size: 32,
                k: 24,
                padded_k: 32
            }
        );
        assert!(Rotation::new(64, 48).is_err());
        assert!(Rotation::new(0, 16).is_err());
    }

    #[test]
    fn fwht_is_sylvester_matrix() {
        // Column j of H_8 is the transform of e_j; entry (i, j) = (-1)^popcount(i & j).
        for j in 0..8 {
            let mut e = [0.0f64; 8];
            e[j] = 1.0;
            fwht(&mut e).unwrap();
            for (i, v) in e.iter().enumerate() {
                let expected = if (i & j).count_ones() % 2 == 0 {
                    1.0
                } else {
                    -1.0
                };
                assert_eq!(*v, expected);
            }
        }
    }

    #[test]
    fn fwht_of_a_non_power_of_two_length_is_an_error() {
        assert!(fwht(&mut [1.0f32; 3]).is_err());
        fwht::<f32>(&mut []).unwrap();
    }

    #[test]
    fn hand_built_rotation_is_checked_before_use() {
        let zero_block = Rotation {
            block_size: 0,
            k: 4,
            padded_k: 4,
        };
        assert!(zero_block.rotate_rows(&[1.0; 4], 1).is_err());
        let short_padding = Rotation {
            block_size: 4,
            k: 6,
            padded_k: 4,
        };
        assert!(short_padding.rotate_rows(&[1.0; 6], 1).is_err());
        assert!(short_padding.unrotate_rows(&[1.0; 4], 1).is_err());
        let h = Hessian::from_matrix(vec![1.0; 36], 6, 1).unwrap();
        assert!(short_padding.rotate_hessian(&h).is_err());
    }
}
