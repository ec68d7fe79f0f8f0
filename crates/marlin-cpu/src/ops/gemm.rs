//! A small f32 GEMM for attention blocks: `c (r, n) = a (r, k) · b (k, n)`,
//! all row-major with explicit row strides. Sizes are those of one
//! attention tile (r ≤ a few dozen query rows, k and n ≤ context or
//! head_dim), so no packing: a 4x16 register tile streams `b` rows.

use std::sync::OnceLock;

/// Operands of [`gemm`]. `a[i*lda + p]`, `b[p*ldb + j]`, `c[i*ldc + j]`.
pub struct Gemm<'a> {
    pub a: &'a [f32],
    pub lda: usize,
    pub b: &'a [f32],
    pub ldb: usize,
    pub r: usize,
    pub k: usize,
    pub n: usize,
}

impl Gemm<'_> {
    /// True when every index the product touches is inside the slices.
    fn fits(&self, c: &[f32], ldc: usize) -> bool {
        let need = |rows: usize, ld: usize, cols: usize| {
            if rows == 0 || cols == 0 {
                Some(0)
            } else {
                (rows - 1).checked_mul(ld)?.checked_add(cols)
            }
        };
        need(self.r, self.lda, self.k).is_some_and(|x| x <= self.a.len())
            && need(self.k, self.ldb, self.n).is_some_and(|x| x <= self.b.len())
            && need(self.r, ldc, self.n).is_some_and(|x| x <= c.len())
            && self.lda >= self.k
            && self.ldb >= self.n
            && ldc >= self.n
    }
}

/// `c = a · b` (overwrites the r x n block of c). Returns false, touching
/// nothing, when the strides or slices do not fit.
pub fn gemm(g: &Gemm, c: &mut [f32], ldc: usize) -> bool {
    if !g.fits(c, ldc) {
        return false;
    }
    static F: OnceLock<fn(&Gemm, &mut [f32], usize)> = OnceLock::new();
    let f = F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return x86::gemm;
            }
        }
        gemm_ref
    });
    f(g, c, ldc);
    true
}

/// Scalar reference (callers checked the bounds).
pub fn gemm_ref(g: &Gemm, c: &mut [f32], ldc: usize) {
    for i in 0..g.r {
        for j in 0..g.n {
            let mut s = 0.0f32;
            for p in 0..g.k {
                s += g.a[i * g.lda + p] * g.b[p * g.ldb + j];
            }
            c[i * ldc + j] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Gemm;
    use std::arch::x86_64::*;

    /// Installed only after AVX2+FMA detection; bounds checked by `gemm`.
    pub fn gemm(g: &Gemm, c: &mut [f32], ldc: usize) {
        // SAFETY: AVX2+FMA are present (see `super::gemm`), and `Gemm::fits`
        // checked that every index below is in bounds.
        unsafe { gemm_avx2(g, c, ldc) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn gemm_avx2(g: &Gemm, c: &mut [f32], ldc: usize) {
        let (pa, pb, pc) = (g.a.as_ptr(), g.b.as_ptr(), c.as_mut_ptr());
        let mut i = 0;
        while i + 4 <= g.r {
            rows4(
                pa.add(i * g.lda),
                g.lda,
                pb,
                g.ldb,
                pc.add(i * ldc),
                ldc,
                g.k,
                g.n,
            );
            i += 4;
        }
        while i < g.r {
            row1(pa.add(i * g.lda), pb, g.ldb, pc.add(i * ldc), g.k, g.n);
            i += 1;
        }
    }

    /// Four rows of c.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows4(
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        k: usize,
        n: usize,
    ) {
        let mut j = 0;
        while j + 16 <= n {
            let mut acc = [_mm256_setzero_ps(); 8];
            for p in 0..k {
                let b0 = _mm256_loadu_ps(b.add(p * ldb + j));
                let b1 = _mm256_loadu_ps(b.add(p * ldb + j + 8));
                for ii in 0..4 {
                    let av = _mm256_set1_ps(*a.add(ii * lda + p));
                    acc[2 * ii] = _mm256_fmadd_ps(av, b0, acc[2 * ii]);
                    acc[2 * ii + 1] = _mm256_fmadd_ps(av, b1, acc[2 * ii + 1]);
                }
            }
            for ii in 0..4 {
                _mm256_storeu_ps(c.add(ii * ldc + j), acc[2 * ii]);
                _mm256_storeu_ps(c.add(ii * ldc + j + 8), acc[2 * ii + 1]);
            }
            j += 16;
        }
        while j + 8 <= n {
            let mut acc = [_mm256_setzero_ps(); 4];
            for p in 0..k {
                let b0 = _mm256_loadu_ps(b.add(p * ldb + j));
                for (ii, acc_i) in acc.iter_mut().enumerate() {
                    *acc_i = _mm256_fmadd_ps(_mm256_set1_ps(*a.add(ii * lda + p)), b0, *acc_i);
                }
            }
            for (ii, acc_i) in acc.iter().enumerate() {
                _mm256_storeu_ps(c.add(ii * ldc + j), *acc_i);
            }
            j += 8;
        }
        while j < n {
            for ii in 0..4 {
                let mut s = 0.0f32;
                for p in 0..k {
                    s += *a.add(ii * lda + p) * *b.add(p * ldb + j);
                }
                *c.add(ii * ldc + j) = s;
            }
            j += 1;
        }
    }

    /// One row of c.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn row1(a: *const f32, b: *const f32, ldb: usize, c: *mut f32, k: usize, n: usize) {
        let mut j = 0;
        while j + 8 <= n {
            let mut acc = _mm256_setzero_ps();
            for p in 0..k {
                acc = _mm256_fmadd_ps(
                    _mm256_set1_ps(*a.add(p)),
                    _mm256_loadu_ps(b.add(p * ldb + j)),
                    acc,
                );
            }
            _mm256_storeu_ps(c.add(j), acc);
            j += 8;
        }
        while j < n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += *a.add(p) * *b.add(p * ldb + j);
            }
            *c.add(j) = s;
            j += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_reference_at_awkward_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (r, k, n) in [
            (1, 1, 1),
            (3, 7, 5),
            (4, 64, 16),
            (17, 64, 33),
            (5, 3, 100),
            (32, 65, 24),
        ] {
            let (lda, ldb, ldc) = (k + 3, n + 1, n + 2);
            let a: Vec<f32> = (0..r * lda).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..k * ldb).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let g = Gemm {
                a: &a,
                lda,
                b: &b,
                ldb,
                r,
                k,
                n,
            };
            let mut got = vec![7.0; r * ldc];
            let mut want = got.clone();
            assert!(gemm(&g, &mut got, ldc));
            gemm_ref(&g, &mut want, ldc);
            for (x, y) in got.iter().zip(&want) {
                assert!((x - y).abs() < 1e-5, "r{r} k{k} n{n}: {x} vs {y}");
            }
        }
        let g = Gemm {
            a: &[0.0; 4],
            lda: 2,
            b: &[0.0; 4],
            ldb: 2,
            r: 2,
            k: 2,
            n: 2,
        };
        assert!(!gemm(&g, &mut [0.0; 3], 2), "c too short");
    }
}
