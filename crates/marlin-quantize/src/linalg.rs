//! Small dense linear algebra for the quantizers: a bounds-checked wrapper
//! around `matrixmultiply`'s GEMM, and an f64 Cholesky factorisation with
//! the inverse-factor GPTQ needs.

use crate::QuantizeError;

/// A strided read-only matrix view: element (i, j) is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> View<'a, T> {
    /// A contiguous row-major (rows, cols) matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

/// A strided mutable matrix view (same indexing as [`View`]).
pub(crate) struct ViewMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// Whether every element of a strided (rows, cols) view lies inside `len`.
fn fits(len: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let last = (rows - 1).checked_mul(row_stride).and_then(|a| {
        (cols - 1)
            .checked_mul(col_stride)
            .and_then(|b| a.checked_add(b))
    });
    matches!(last, Some(l) if l < len)
        && isize::try_from(row_stride).is_ok()
        && isize::try_from(col_stride).is_ok()
}

/// Element types `matrixmultiply` has a GEMM for.
pub(crate) trait GemmScalar: Copy {
    /// # Safety
    /// The pointers and strides must describe valid, non-aliasing (C)
    /// matrices of the given shapes (see `matrixmultiply::sgemm`).
    #[allow(clippy::too_many_arguments)]
    unsafe fn raw_gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

impl GemmScalar for f32 {
    unsafe fn raw_gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        beta: f32,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded contract of `raw_gemm`.
        unsafe {
            matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        }
    }
}

impl GemmScalar for f64 {
    unsafe fn raw_gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded contract of `raw_gemm`.
        unsafe {
            matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        }
    }
}

/// `C = alpha * A · B + beta * C`, with every view checked against its
/// buffer before the unsafe call. With `beta == 0`, C's old contents are
/// ignored (NaN included).
pub(crate) fn gemm<T: GemmScalar>(
    alpha: T,
    a: View<'_, T>,
    b: View<'_, T>,
    beta: T,
    c: ViewMut<'_, T>,
) -> Result<(), QuantizeError> {
    let shapes_ok = a.cols == b.rows && c.rows == a.rows && c.cols == b.cols;
    let bounds_ok = fits(a.data.len(), a.rows, a.cols, a.row_stride, a.col_stride)
        && fits(b.data.len(), b.rows, b.cols, b.row_stride, b.col_stride)
        && fits(c.data.len(), c.rows, c.cols, c.row_stride, c.col_stride);
    if !(shapes_ok && bounds_ok) {
        return Err(QuantizeError::Shape(format!(
            "internal GEMM shape mismatch: ({}, {}) x ({}, {}) -> ({}, {})",
            a.rows, a.cols, b.rows, b.cols, c.rows, c.cols
        )));
    }
    if c.rows == 0 || c.cols == 0 {
        return Ok(());
    }
    // SAFETY: the shapes agree and every element index of A, B and C was
    // checked against its slice above (strides fit in isize); C is a unique
    // borrow, so it aliases neither A nor B.
    unsafe {
        T::raw_gemm(
            a.rows,
            a.cols,
            b.cols,
            alpha,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.data.as_mut_ptr(),
            c.row_stride as isize,
            c.col_stride as isize,
        );
    }
    Ok(())
}

/// Smallest pivot, relative to the diagonal entry it came from, that counts
/// as positive: below it the matrix is singular to working precision.
const PIVOT_RELATIVE_FLOOR: f64 = 1e-12;

/// Cholesky factorisation in place of a symmetric (n, n) row-major matrix:
/// on success the lower triangle holds L with `A = L Lᵀ` and the strict
/// upper triangle is zero. Returns `false` (leaving `a` partly overwritten)
/// when a pivot is not finite and clearly positive (above 1e-12 of its
/// diagonal entry), i.e. `A` is not numerically positive definite.
pub(crate) fn cholesky_lower(a: &mut [f64], n: usize) -> bool {
    debug_assert_eq!(a.len(), n * n);
    for j in 0..n {
        // Rows 0..=j are final after this step; rows below read row j's prefix.
        let (done, below) = a.split_at_mut((j + 1) * n);
        let row_j = &mut done[j * n..];
        let pivot = row_j[j] - dot(&row_j[..j], &row_j[..j]);
        // A pivot that cancelled to rounding noise means a singular matrix.
        if !(pivot > PIVOT_RELATIVE_FLOOR * row_j[j] && pivot > 0.0 && pivot.is_finite()) {
            return false;
        }
        let ljj = pivot.sqrt();
        row_j[j] = ljj;
        row_j[j + 1..].fill(0.0);
        let prefix = &row_j[..j];
        for row_i in below.chunks_exact_mut(n) {
            row_i[j] = (row_i[j] - dot(&row_i[..j], prefix)) / ljj;
        }
    }
    true
}

/// Inverse of a lower-triangular (n, n) row-major matrix with a positive
/// diagonal; the result is lower-triangular.
pub(crate) fn invert_lower(l: &[f64], n: usize) -> Vec<f64> {
    let mut x = vec![0.0f64; n * n]; // (n, n) lower
    for i in 0..n {
        // Row i of X = (e_i - sum_{p<i} L[i,p] X[p,:]) / L[i,i].
        let (done, rest) = x.split_at_mut(i * n);
        let row_i = &mut rest[..n];
        row_i[i] = 1.0;
        for p in 0..i {
            let lip = l[i * n + p];
            if lip != 0.0 {
                let row_p = &done[p * n..p * n + p + 1];
                for (xi, xp) in row_i[..=p].iter_mut().zip(row_p) {
                    *xi -= lip * xp;
                }
            }
        }
        let inv_diag = 1.0 / l[i * n + i];
        for v in &mut row_i[..=i] {
            *v *= inv_diag;
        }
    }
    x
}

/// The upper Cholesky factor U of `A⁻¹` (`A⁻¹ = Uᵀ U`) of a symmetric
/// (n, n) matrix, row-major, all in f64: GPTQ's `Hinv`. `None` when `A` or
/// its inverse is not numerically positive definite.
pub(crate) fn inverse_upper_cholesky(
    a: &[f64],
    n: usize,
) -> Result<Option<Vec<f64>>, QuantizeError> {
    let mut l = a.to_vec();
    if !cholesky_lower(&mut l, n) {
        return Ok(None);
    }
    let l_inv = invert_lower(&l, n);
    // A⁻¹ = L⁻ᵀ L⁻¹.
    let mut inv = vec![0.0f64; n * n];
    let l_inv_view = View::row_major(&l_inv, n, n);
    gemm(
        1.0,
        l_inv_view.t(),
        l_inv_view,
        0.0,
        ViewMut {
            data: &mut inv,
            rows: n,
            cols: n,
            row_stride: n,
            col_stride: 1,
        },
    )?;
    // Symmetrise away the rounding asymmetry before factorising again.
    for i in 0..n {
        for j in 0..i {
            let m = 0.5 * (inv[i * n + j] + inv[j * n + i]);
            inv[i * n + j] = m;
            inv[j * n + i] = m;
        }
    }
    if !cholesky_lower(&mut inv, n) {
        return Ok(None);
    }
    // U = Mᵀ where A⁻¹ = M Mᵀ.
    let mut upper = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            upper[j * n + i] = inv[i * n + j];
        }
    }
    Ok(Some(upper))
}

#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize, seed: u64) -> Vec<f64> {
        // B Bᵀ + n I with a deterministic pseudo-random B.
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        let b: Vec<f64> = (0..n * n).map(|_| next()).collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|p| b[i * n + p] * b[j * n + p]).sum::<f64>();
            }
            a[i * n + i] += n as f64 * 0.1;
        }
        a
    }

    #[test]
    fn cholesky_reconstructs() {
        for n in [1, 2, 7, 33] {
            let a = spd(n, n as u64);
            let mut l = a.clone();
            assert!(cholesky_lower(&mut l, n));
            for i in 0..n {
                for j in 0..n {
                    let v: f64 = (0..n).map(|p| l[i * n + p] * l[j * n + p]).sum();
                    assert!(
                        (v - a[i * n + j]).abs() < 1e-9 * (1.0 + a[i * n + j].abs()),
                        "n={n} ({i},{j})"
                    );
                }
            }
        }
    }

    #[test]
    fn cholesky_rejects_indefinite() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky_lower(&mut a, 2));
        let mut nan = vec![f64::NAN];
        assert!(!cholesky_lower(&mut nan, 1));
    }

    #[test]
    fn inverse_upper_cholesky_gives_inverse() {
        for n in [1, 5, 40] {
            let a = spd(n, 7 + n as u64);
            let u = inverse_upper_cholesky(&a, n).unwrap().unwrap();
            // Uᵀ U A = I.
            for i in 0..n {
                for j in 0..i {
                    assert_eq!(u[i * n + j], 0.0, "U must be upper");
                }
            }
            let mut inv = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    inv[i * n + j] = (0..n).map(|p| u[p * n + i] * u[p * n + j]).sum();
                }
            }
            for i in 0..n {
                for j in 0..n {
                    let v: f64 = (0..n).map(|p| inv[i * n + p] * a[p * n + j]).sum();
                    let expected = if i == j { 1.0 } else { 0.0 };
                    assert!((v - expected).abs() < 1e-8, "n={n} ({i},{j}) = {v}");
                }
            }
        }
    }

    #[test]
    fn gemm_checks_bounds() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let mut c = [0.0f32; 4];
        let ok = gemm(
            1.0,
            View::row_major(&a, 2, 2),
            View::row_major(&a, 2, 2).t(),
            0.0,
            ViewMut {
                data: &mut c,
                rows: 2,
                cols: 2,
                row_stride: 2,
                col_stride: 1,
            },
        );
        assert!(ok.is_ok());
        assert_eq!(c, [5.0, 11.0, 11.0, 25.0]);
        let bad = gemm(
            1.0,
            View::row_major(&a, 2, 3),
            View::row_major(&a, 3, 1),
            0.0,
            ViewMut {
                data: &mut c,
                rows: 2,
                cols: 1,
                row_stride: 1,
                col_stride: 1,
            },
        );
        assert!(bad.is_err());
    }
}
