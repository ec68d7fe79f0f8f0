//! Vector primitives behind the ops, resolved once per process into a table
//! of function pointers: AVX2+FMA (+F16C) when the CPU has them, scalar
//! otherwise. The scalar versions are the references the SIMD ones are
//! tested against.

use half::f16;
use std::sync::OnceLock;

/// The primitives, each over equal-length slices (callers check lengths).
#[derive(Clone, Copy)]
pub struct Kernels {
    /// `Σ a[i]·b[i]`
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// `y[i] += a·x[i]`
    pub axpy: fn(f32, &[f32], &mut [f32]),
    /// `Σ a[i]·b[i]` with `b` f16 (a KV cache row), widened as it is read.
    pub dot_f16: fn(&[f32], &[f16]) -> f32,
    /// `y[i] += a·x[i]` with `x` f16.
    pub axpy_f16: fn(f32, &[f16], &mut [f32]),
    /// `Σ x[i]²`
    pub sum_sq: fn(&[f32]) -> f32,
    /// `out[i] = x[i]·s·w[i]`
    pub scale_mul: fn(&[f32], f32, &[f32], &mut [f32]),
    /// `x[i] = exp(x[i] - max)`, returns `Σ x[i]` after the update.
    pub exp_sub_sum: fn(&mut [f32], f32) -> f32,
    /// `g[i] = silu(g[i])·u[i]`
    pub silu_mul: fn(&mut [f32], &[f32]),
    /// `g[i] = gelu_tanh(g[i])·u[i]`
    pub gelu_tanh_mul: fn(&mut [f32], &[f32]),
    /// `x[i] *= s`
    pub scale: fn(&mut [f32], f32),
    /// Which implementation this table holds ("avx2" or "scalar").
    pub name: &'static str,
}

/// The best table for this CPU, detected once.
pub fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return x86::KERNELS;
            }
        }
        SCALAR
    })
}

/// The scalar table (also the reference).
pub const SCALAR: Kernels = Kernels {
    dot: dot_ref,
    axpy: axpy_ref,
    dot_f16: dot_f16_ref,
    axpy_f16: axpy_f16_ref,
    sum_sq: sum_sq_ref,
    scale_mul: scale_mul_ref,
    exp_sub_sum: exp_sub_sum_ref,
    silu_mul: silu_mul_ref,
    gelu_tanh_mul: gelu_tanh_mul_ref,
    scale: scale_ref,
    name: "scalar",
};

pub fn dot_ref(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn axpy_ref(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

pub fn dot_f16_ref(a: &[f32], b: &[f16]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
}

pub fn axpy_f16_ref(a: f32, x: &[f16], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi.to_f32();
    }
}

pub fn sum_sq_ref(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum()
}

pub fn scale_mul_ref(x: &[f32], s: f32, w: &[f32], out: &mut [f32]) {
    for ((o, xi), wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * s * wi;
    }
}

pub fn exp_sub_sum_ref(x: &mut [f32], max: f32) -> f32 {
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    sum
}

pub fn silu_ref(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (PyTorch `approximate="tanh"`, Gemma's
/// `gelu_pytorch_tanh`).
pub fn gelu_tanh_ref(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

pub fn silu_mul_ref(g: &mut [f32], u: &[f32]) {
    for (gi, ui) in g.iter_mut().zip(u) {
        *gi = silu_ref(*gi) * ui;
    }
}

pub fn gelu_tanh_mul_ref(g: &mut [f32], u: &[f32]) {
    for (gi, ui) in g.iter_mut().zip(u) {
        *gi = gelu_tanh_ref(*gi) * ui;
    }
}

pub fn scale_ref(x: &mut [f32], s: f32) {
    for v in x.iter_mut() {
        *v *= s;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Kernels;
    use half::f16;
    use std::arch::x86_64::*;

    pub const KERNELS: Kernels = Kernels {
        dot,
        axpy,
        dot_f16,
        axpy_f16,
        sum_sq,
        scale_mul,
        exp_sub_sum,
        silu_mul,
        gelu_tanh_mul,
        scale,
        name: "avx2",
    };

    // The safe wrappers below are only installed in `KERNELS`, which
    // `kernels()` hands out only after detecting AVX2, FMA and F16C.

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: AVX2+FMA detected before this table is used.
        unsafe { dot_avx2(a, b) }
    }
    fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        // SAFETY: as above.
        unsafe { axpy_avx2(a, x, y) }
    }
    fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
        // SAFETY: as above.
        unsafe { dot_f16_avx2(a, b) }
    }
    fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
        // SAFETY: as above.
        unsafe { axpy_f16_avx2(a, x, y) }
    }
    fn sum_sq(x: &[f32]) -> f32 {
        // SAFETY: as above.
        unsafe { dot_avx2(x, x) }
    }
    fn scale_mul(x: &[f32], s: f32, w: &[f32], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { scale_mul_avx2(x, s, w, out) }
    }
    fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
        // SAFETY: as above.
        unsafe { exp_sub_sum_avx2(x, max) }
    }
    fn silu_mul(g: &mut [f32], u: &[f32]) {
        // SAFETY: as above.
        unsafe { silu_mul_avx2(g, u) }
    }
    fn gelu_tanh_mul(g: &mut [f32], u: &[f32]) {
        // SAFETY: as above.
        unsafe { gelu_tanh_mul_avx2(g, u) }
    }
    fn scale(x: &mut [f32], s: f32) {
        // SAFETY: as above.
        unsafe { scale_avx2(x, s) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), r);
            i += 8;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }

    /// 8 f16 at `p` widened to f32 (exact).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// [`dot_avx2`] with `b` widened from f16 as it is loaded: the same
    /// accumulation order, so the same sum as widening `b` first.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f16_avx2(a: &[f32], b: &[f16]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), load_f16(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                load_f16(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), load_f16(pb.add(i)), acc0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += *pa.add(i) * (*pb.add(i)).to_f32();
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn axpy_f16_avx2(a: f32, x: &[f16], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_fmadd_ps(va, load_f16(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), r);
            i += 8;
        }
        while i < n {
            *py.add(i) += a * (*px.add(i)).to_f32();
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn scale_mul_avx2(x: &[f32], s: f32, w: &[f32], out: &mut [f32]) {
        let n = x.len().min(w.len()).min(out.len());
        let (px, pw, po) = (x.as_ptr(), w.as_ptr(), out.as_mut_ptr());
        let vs = _mm256_set1_ps(s);
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_mul_ps(
                _mm256_mul_ps(_mm256_loadu_ps(px.add(i)), vs),
                _mm256_loadu_ps(pw.add(i)),
            );
            _mm256_storeu_ps(po.add(i), r);
            i += 8;
        }
        while i < n {
            *po.add(i) = *px.add(i) * s * *pw.add(i);
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn scale_avx2(x: &mut [f32], s: f32) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let vs = _mm256_set1_ps(s);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), vs));
            i += 8;
        }
        while i < n {
            *p.add(i) *= s;
            i += 1;
        }
    }

    /// exp(x) for 8 lanes: Cephes' range reduction x = n·ln2 + r and a
    /// degree-5 polynomial for exp(r); relative error ~2e-7 in
    /// [-87, 88]; inputs are clamped to that range (exp(-87) ≈ 1.6e-38).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
            _mm256_set1_ps(88.0),
        );
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // r = x - n·ln2, with ln2 split in two for precision.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        // 2^n through the exponent bits; n is in [-126, 127] after the clamp.
        let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        ));
        _mm256_mul_ps(y, pow2n)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp_sub_sum_avx2(x: &mut [f32], max: f32) -> f32 {
        let n = x.len();
        let p = x.as_mut_ptr();
        let vm = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vm));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut s = hsum(acc);
        while i < n {
            let e = (*p.add(i) - max).exp();
            *p.add(i) = e;
            s += e;
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn silu8(x: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_div_ps(x, _mm256_add_ps(one, e))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn gelu_tanh8(x: __m256) -> __m256 {
        // tanh(u) = 1 - 2 / (exp(2u) + 1); saturates correctly at both ends
        // because exp8 clamps its input.
        let one = _mm256_set1_ps(1.0);
        let half = _mm256_set1_ps(0.5);
        let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
        let inner = _mm256_fmadd_ps(_mm256_set1_ps(0.044_715), x3, x);
        let two_u = _mm256_mul_ps(inner, _mm256_set1_ps(2.0 * 0.797_884_6));
        let e = exp8(two_u);
        let t = _mm256_sub_ps(
            one,
            _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)),
        );
        _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, t))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn silu_mul_avx2(g: &mut [f32], u: &[f32]) {
        let n = g.len().min(u.len());
        let (pg, pu) = (g.as_mut_ptr(), u.as_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_mul_ps(
                silu8(_mm256_loadu_ps(pg.add(i))),
                _mm256_loadu_ps(pu.add(i)),
            );
            _mm256_storeu_ps(pg.add(i), r);
            i += 8;
        }
        while i < n {
            *pg.add(i) = super::silu_ref(*pg.add(i)) * *pu.add(i);
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn gelu_tanh_mul_avx2(g: &mut [f32], u: &[f32]) {
        let n = g.len().min(u.len());
        let (pg, pu) = (g.as_mut_ptr(), u.as_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_mul_ps(
                gelu_tanh8(_mm256_loadu_ps(pg.add(i))),
                _mm256_loadu_ps(pu.add(i)),
            );
            _mm256_storeu_ps(pg.add(i), r);
            i += 8;
        }
        while i < n {
            *pg.add(i) = super::gelu_tanh_ref(*pg.add(i)) * *pu.add(i);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(rng: &mut rand::rngs::StdRng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
    }

    fn close(a: f32, b: f32, rel: f32, abs: f32) -> bool {
        (a - b).abs() <= abs + rel * a.abs().max(b.abs())
    }

    #[test]
    fn simd_table_matches_scalar() {
        let k = kernels();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for n in [1usize, 3, 7, 8, 17, 64, 100, 257] {
            let a = rand_vec(&mut rng, n, 2.0);
            let b = rand_vec(&mut rng, n, 2.0);
            assert!(
                close((k.dot)(&a, &b), dot_ref(&a, &b), 1e-5, 1e-4),
                "dot n={n}"
            );
            assert!(
                close((k.sum_sq)(&a), sum_sq_ref(&a), 1e-5, 1e-4),
                "sum_sq n={n}"
            );

            let (mut y1, mut y2) = (b.clone(), b.clone());
            (k.axpy)(0.37, &a, &mut y1);
            axpy_ref(0.37, &a, &mut y2);
            for (x, y) in y1.iter().zip(&y2) {
                // FMA rounds once, the scalar mul+add twice.
                assert!(close(*x, *y, 1e-6, 1e-6), "axpy n={n}");
            }

            // f16 rows: the same as the f32 kernel on the widened row.
            let b16: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
            let b_wide: Vec<f32> = b16.iter().map(|v| v.to_f32()).collect();
            assert_eq!((k.dot_f16)(&a, &b16), (k.dot)(&a, &b_wide), "dot_f16 n={n}");
            assert!(
                close(dot_f16_ref(&a, &b16), (k.dot)(&a, &b_wide), 1e-5, 1e-4),
                "dot_f16_ref n={n}"
            );
            let (mut y1, mut y2) = (a.clone(), a.clone());
            (k.axpy_f16)(0.37, &b16, &mut y1);
            (k.axpy)(0.37, &b_wide, &mut y2);
            assert_eq!(y1, y2, "axpy_f16 n={n}");
            let mut y3 = a.clone();
            axpy_f16_ref(0.37, &b16, &mut y3);
            for (x, y) in y1.iter().zip(&y3) {
                assert!(close(*x, *y, 1e-6, 1e-6), "axpy_f16_ref n={n}");
            }

            let (mut o1, mut o2) = (vec![0.0; n], vec![0.0; n]);
            (k.scale_mul)(&a, 1.7, &b, &mut o1);
            scale_mul_ref(&a, 1.7, &b, &mut o2);
            assert_eq!(o1, o2, "scale_mul n={n}");

            // exp over a wide range, including values far below the max.
            let wide = rand_vec(&mut rng, n, 60.0);
            let max = wide.iter().cloned().fold(f32::MIN, f32::max);
            let (mut e1, mut e2) = (wide.clone(), wide.clone());
            let s1 = (k.exp_sub_sum)(&mut e1, max);
            let s2 = exp_sub_sum_ref(&mut e2, max);
            assert!(close(s1, s2, 1e-5, 0.0), "exp sum n={n}: {s1} vs {s2}");
            for (x, y) in e1.iter().zip(&e2) {
                assert!(close(*x, *y, 1e-6, 1e-37), "exp n={n}: {x} vs {y}");
            }

            let g = rand_vec(&mut rng, n, 12.0);
            let (mut g1, mut g2) = (g.clone(), g.clone());
            (k.silu_mul)(&mut g1, &b);
            silu_mul_ref(&mut g2, &b);
            for (x, y) in g1.iter().zip(&g2) {
                assert!(close(*x, *y, 1e-5, 1e-6), "silu n={n}: {x} vs {y}");
            }
            let (mut g1, mut g2) = (g.clone(), g.clone());
            (k.gelu_tanh_mul)(&mut g1, &b);
            gelu_tanh_mul_ref(&mut g2, &b);
            for (x, y) in g1.iter().zip(&g2) {
                assert!(close(*x, *y, 1e-5, 1e-6), "gelu n={n}: {x} vs {y}");
            }

            let (mut s1, mut s2) = (a.clone(), a.clone());
            (k.scale)(&mut s1, -0.3);
            scale_ref(&mut s2, -0.3);
            assert_eq!(s1, s2);
        }
    }

    #[test]
    fn gelu_reference_values() {
        // torch.nn.functional.gelu(x, approximate="tanh")
        assert!((gelu_tanh_ref(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_tanh_ref(-2.0) - -0.045_402_3).abs() < 1e-5);
        assert!((silu_ref(1.0) - 0.731_058_6).abs() < 1e-6);
    }
}
