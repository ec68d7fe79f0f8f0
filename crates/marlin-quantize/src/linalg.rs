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

/// Smallest pivot, relative to the original diagonal entry, that counts as
/// positive: below it the matrix is singular to working precision.
const PIVOT_RELATIVE_FLOOR: f64 = 1e-12;

/// Block size of the blocked factorisations: the O(n³) work runs in GEMMs
/// on panels of this many columns.
const NB: usize = 64;

/// Cholesky factorisation in place of a symmetric (n, n) row-major matrix:
/// on success the lower triangle holds L with `A = L Lᵀ` and the strict
/// upper triangle is zero. Returns `false` (leaving `a` partly overwritten)
/// when a pivot is not finite and clearly positive (above 1e-12 of its
/// original diagonal entry), i.e. `A` is not numerically positive definite.
/// Blocked right-looking: factor a diagonal block, solve the panel below
/// it, update the trailing matrix with one GEMM.
pub(crate) fn cholesky_lower(a: &mut [f64], n: usize) -> Result<bool, QuantizeError> {
    if a.len() != n * n {
        return Err(QuantizeError::Shape(format!(
            "Cholesky of {} values as {n} x {n}",
            a.len()
        )));
    }
    let original_diag: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    let mut panel = Vec::new(); // (n - end, nb) copy of L[end.., kb..end]
    let mut kb = 0;
    while kb < n {
        let end = (kb + NB).min(n);
        // Diagonal block and panel rows: for each row i >= kb, columns
        // kb..end by forward substitution against the block's rows.
        for j in kb..end {
            let (done, below) = a.split_at_mut((j + 1) * n);
            let row_j = &mut done[j * n..];
            let pivot = row_j[j] - dot(&row_j[kb..j], &row_j[kb..j]);
            if !(pivot > PIVOT_RELATIVE_FLOOR * original_diag[j]
                && pivot > 0.0
                && pivot.is_finite())
            {
                return Ok(false);
            }
            let ljj = pivot.sqrt();
            row_j[j] = ljj;
            let prefix = &row_j[kb..j];
            for row_i in below.chunks_exact_mut(n) {
                row_i[j] = (row_i[j] - dot(&row_i[kb..j], prefix)) / ljj;
            }
        }
        if end < n {
            let (rows, nb) = (n - end, end - kb);
            panel.clear();
            for i in end..n {
                panel.extend_from_slice(&a[i * n + kb..i * n + end]);
            }
            let pv = View::row_major(&panel, rows, nb);
            // A[end.., end..] -= P Pᵀ
            gemm(
                -1.0,
                pv,
                pv.t(),
                1.0,
                ViewMut {
                    data: &mut a[end * n + end..],
                    rows,
                    cols: rows,
                    row_stride: n,
                    col_stride: 1,
                },
            )?;
        }
        kb = end;
    }
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(true)
}

/// Inverse of a lower-triangular (n, n) row-major matrix with a positive
/// diagonal; the result is lower-triangular. Blocked by rows:
/// `X[I, :I] = -X[I, I] · (L[I, :I] · X[:I, :I])`.
pub(crate) fn invert_lower(l: &[f64], n: usize) -> Result<Vec<f64>, QuantizeError> {
    if l.len() != n * n {
        return Err(QuantizeError::Shape(format!(
            "triangular inverse of {} values as {n} x {n}",
            l.len()
        )));
    }
    let mut x = vec![0.0f64; n * n]; // (n, n) lower
    let mut tmp = Vec::new(); // (nb, ib)
    let mut ib = 0;
    while ib < n {
        let ie = (ib + NB).min(n);
        let nb = ie - ib;
        // Diagonal block inverse, row by row:
        // X[i, ib..=i] = (e_i - sum_{ib<=p<i} L[i,p] X[p, ib..=p]) / L[i,i].
        let mut dinv = vec![0.0f64; nb * nb]; // (nb, nb) lower
        for i in 0..nb {
            let (done, rest) = dinv.split_at_mut(i * nb);
            let row_i = &mut rest[..nb];
            row_i[i] = 1.0;
            for p in 0..i {
                let lip = l[(ib + i) * n + ib + p];
                if lip != 0.0 {
                    for (xi, xp) in row_i[..=p].iter_mut().zip(&done[p * nb..p * nb + p + 1]) {
                        *xi -= lip * xp;
                    }
                }
            }
            let inv_diag = 1.0 / l[(ib + i) * n + ib + i];
            for v in &mut row_i[..=i] {
                *v *= inv_diag;
            }
        }
        if ib > 0 {
            let (top, bottom) = x.split_at_mut(ib * n);
            // tmp = L[I, :ib] · X[:ib, :ib]
            tmp.clear();
            tmp.resize(nb * ib, 0.0);
            gemm(
                1.0,
                View {
                    data: &l[ib * n..],
                    rows: nb,
                    cols: ib,
                    row_stride: n,
                    col_stride: 1,
                },
                View {
                    data: top,
                    rows: ib,
                    cols: ib,
                    row_stride: n,
                    col_stride: 1,
                },
                0.0,
                ViewMut {
                    data: &mut tmp,
                    rows: nb,
                    cols: ib,
                    row_stride: ib,
                    col_stride: 1,
                },
            )?;
            // X[I, :ib] = -Dinv · tmp
            gemm(
                -1.0,
                View::row_major(&dinv, nb, nb),
                View::row_major(&tmp, nb, ib),
                0.0,
                ViewMut {
                    data: bottom,
                    rows: nb,
                    cols: ib,
                    row_stride: n,
                    col_stride: 1,
                },
            )?;
        }
        for i in 0..nb {
            x[(ib + i) * n + ib..(ib + i) * n + ie].copy_from_slice(&dinv[i * nb..(i + 1) * nb]);
        }
        ib = ie;
    }
    Ok(x)
}

/// The upper Cholesky factor U of `A⁻¹` (`A⁻¹ = Uᵀ U`) of a symmetric
/// (n, n) matrix, row-major, all in f64: GPTQ's `Hinv`. `None` when `A` is
/// not numerically positive definite.
///
/// Without forming A⁻¹: with J the reversal permutation and
/// `J A J = L' L'ᵀ`, `A = U' U'ᵀ` for the upper `U' = J L' J`, so
/// `A⁻¹ = U'⁻ᵀ U'⁻¹` and `U = U'⁻¹ = J L'⁻¹ J`: one Cholesky and one
/// triangular inverse.
pub(crate) fn inverse_upper_cholesky(
    a: &[f64],
    n: usize,
) -> Result<Option<Vec<f64>>, QuantizeError> {
    if a.len() != n * n {
        return Err(QuantizeError::Shape(format!(
            "matrix of {} values as {n} x {n}",
            a.len()
        )));
    }
    let mut reversed = vec![0.0f64; n * n]; // J A J
    for i in 0..n {
        for j in 0..n {
            reversed[i * n + j] = a[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    if !cholesky_lower(&mut reversed, n)? {
        return Ok(None);
    }
    let l_inv = invert_lower(&reversed, n)?;
    let mut upper = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i..n {
            upper[i * n + j] = l_inv[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    if upper.iter().any(|v| !v.is_finite()) {
        return Ok(None);
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
        for n in [1, 2, 7, 33, 130] {
            let a = spd(n, n as u64);
            let mut l = a.clone();
            assert!(cholesky_lower(&mut l, n).unwrap());
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
        assert!(!cholesky_lower(&mut a, 2).unwrap());
        let mut nan = vec![f64::NAN];
        assert!(!cholesky_lower(&mut nan, 1).unwrap());
    }

    #[test]
    fn inverse_upper_cholesky_gives_inverse() {
        for n in [1, 5, 40, 150] {
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
