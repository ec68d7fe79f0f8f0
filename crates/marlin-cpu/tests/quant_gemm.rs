//! Every quantized-matmul path against the f64 product of the dequantized
//! weights, and the AVX2 kernels against the scalar ones, on fresh random
//! inputs at awkward shapes.
//!
//! Tolerances, per output element y[i, j], from the bound of each path:
//! - int-dot paths quantize each activation to int8 with a step of
//!   `max|x_block| / 127`, so the rounding error of one activation is at most
//!   `max|x_row| / 254` and `|y - y_exact| <= max|x_row| / 254 * Σ_k |W[j, k]|`
//!   (plus f32 rounding). That worst case is loose (~0.4 |y| at K = 4096),
//!   so the error norm is also checked against the statistics of rounding:
//!   each activation error is uniform with variance `step^2 / 12`, so
//!   `||y - y_exact|| <= 5 * sqrt(Σ_ij Σ_k W[j, k]^2 step_i^2 / 12)` (about
//!   2% of ||y||; the chance of a correct kernel exceeding it is < 1e-6).
//! - f32 arithmetic (FP8 and generic paths, and AVX2 against scalar on the
//!   same int8 activations): `1e-4 * Σ_k |x[i, k] W[j, k]|`, far above the
//!   random-walk rounding error (~sqrt(K) * 6e-8) and below any real bug.

mod quant_gemm_common;

use marlin_cpu::quant_gemm::{KernelIsa, PreparedQuant};
use marlin_cpu::CpuError;
use marlin_quant::{
    ElementType as E, Granularity as G, QuantScheme, ScaleDType as S, ZeroPoint as Z,
};
use quant_gemm_common::*;

/// Relative f32 rounding allowance (see the module comment).
const F32_TOL: f64 = 1e-4;

/// Checks `got` (m, n) against `want` elementwise: `|got - want| <= bound`,
/// with `bound = act_step * Σ|W[j]| + F32_TOL * Σ|x[i] W[j]|`, where
/// `act_step` is max|x_row| / 254 for int8 activations and 0 otherwise.
#[allow(clippy::too_many_arguments)]
fn assert_close(
    got: &[f32],
    want: &[f64],
    w: &[f64],
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    int8_acts: bool,
    what: &str,
) {
    let (mut err2, mut var) = (0f64, 0f64);
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        let amax = xr.iter().fold(0f64, |a, &v| a.max(f64::from(v).abs()));
        let step = if int8_acts { amax / 127.0 } else { 0.0 };
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let sum_w: f64 = wr.iter().map(|v| v.abs()).sum();
            let sum_w2: f64 = wr.iter().map(|v| v * v).sum();
            let sum_xw: f64 = wr
                .iter()
                .zip(xr)
                .map(|(a, &b)| (a * f64::from(b)).abs())
                .sum();
            let slop = F32_TOL * sum_xw + 1e-30;
            let bound = step / 2.0 * sum_w * 1.001 + slop;
            let err = (f64::from(got[i * n + j]) - want[i * n + j]).abs();
            assert!(
                err <= bound,
                "{what}: y[{i}, {j}] = {} vs {}, error {err:.3e} > bound {bound:.3e}",
                got[i * n + j],
                want[i * n + j]
            );
            err2 += err * err;
            var += sum_w2 * step * step / 12.0 + slop * slop;
        }
    }
    let (norm, limit) = (err2.sqrt(), 5.0 * var.sqrt());
    assert!(
        norm <= limit,
        "{what}: error norm {norm:.3e} > 5 sigma {limit:.3e}"
    );
}

fn int(bits: u8, signed: bool) -> E {
    E::Int { bits, signed }
}

/// Checks one scheme at (n, k) for each m: expected kernel family, error
/// against f64, and AVX2 against scalar.
fn check(s: QuantScheme, n: usize, k: usize, ms: &[usize], g_idx: Option<bool>, family: &str) {
    let (mut rng, seed) = rng();
    let case = random_tensor(&mut rng, s, n, k, g_idx);
    // The reference dequantizer is the truth; the helper's independent
    // decoding must agree with it.
    let reference = case.t.dequantize().expect("reference dequantize");
    let w64: Vec<f64> = reference.iter().map(|&v| f64::from(v)).collect();
    let own = dequant_f64(&case);
    let d = own
        .iter()
        .zip(&w64)
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    let scale = w64.iter().fold(0f64, |a, b| a.max(b.abs()));
    assert!(
        d <= 1e-6 * scale,
        "reference and helper disagree by {d:e}: {s:?}"
    );
    let scalar = PreparedQuant::with_isa(&case.t, KernelIsa::Scalar).expect("prepare scalar");
    assert!(
        scalar.kernel_name().starts_with(family),
        "{s:?}: path {} (want {family})",
        scalar.kernel_name()
    );
    // Every SIMD instruction set this CPU runs (AVX2, AVX-512 VNNI).
    let simd: Vec<(KernelIsa, PreparedQuant)> = KernelIsa::available()
        .into_iter()
        .filter(|&isa| isa != KernelIsa::Scalar)
        .map(|isa| {
            (
                isa,
                PreparedQuant::with_isa(&case.t, isa).expect("prepare simd"),
            )
        })
        .collect();
    let int8_acts = family == "int-dot";
    for &m in ms {
        let x = random_x(&mut rng, m * k);
        let want = matmul_f64(&w64, &x, m, n, k);
        let mut y = vec![0f32; m * n];
        scalar.matmul(&x, m, &mut y).expect("scalar matmul");
        let ctx = format!("{s:?} g_idx {g_idx:?} n {n} k {k} m {m} seed {seed}");
        assert_close(
            &y,
            &want,
            &w64,
            &x,
            m,
            n,
            k,
            int8_acts,
            &format!("scalar {ctx}"),
        );
        let mut avx2_out: Option<Vec<f32>> = None;
        for (isa, p) in &simd {
            let name = isa.name();
            let mut ys = vec![f32::NAN; m * n];
            p.matmul(&x, m, &mut ys).expect("simd matmul");
            assert_close(
                &ys,
                &want,
                &w64,
                &x,
                m,
                n,
                k,
                int8_acts,
                &format!("{name} {ctx}"),
            );
            // Same int8 activations: only f32 rounding differs.
            let y64: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
            assert_close(
                &ys,
                &y64,
                &w64,
                &x,
                m,
                n,
                k,
                false,
                &format!("{name} vs scalar {ctx}"),
            );
            // The VNNI kernels do the AVX2 kernels' f32 operations on the
            // same exact integer dots: bit for bit the same outputs.
            match &avx2_out {
                None => avx2_out = Some(ys),
                Some(a) => {
                    for (j, (u, v)) in ys.iter().zip(a).enumerate() {
                        assert_eq!(
                            u.to_bits(),
                            v.to_bits(),
                            "{name} vs avx2 element {j}: {u} vs {v} ({ctx})"
                        );
                    }
                }
            }
        }
    }
}

const MS: &[usize] = &[1, 3, 17];

#[test]
fn int4_symmetric_groups() {
    for (k, g) in [(96, 32), (160, 32), (4160, 32), (384, 128), (640, 128)] {
        let s = scheme(int(4, true), G::PerGroup { group_size: g }, S::F16, Z::None);
        check(s, 5, k, MS, None, "int-dot");
    }
    let s = scheme(
        int(4, true),
        G::PerGroup { group_size: 128 },
        S::F32,
        Z::None,
    );
    check(s, 1, 384, &[1, 3, 17, 128], None, "int-dot");
}

#[test]
fn int4_asymmetric_groups() {
    for (k, g, zp) in [
        (96, 32, Z::Int),
        (160, 32, Z::Float),
        (384, 128, Z::Int),
        (4160, 64, Z::Int),
    ] {
        let s = scheme(int(4, false), G::PerGroup { group_size: g }, S::F16, zp);
        check(s, 7, k, MS, None, "int-dot");
    }
}

#[test]
fn int4_odd_group_sizes() {
    // 48 and 160: expanded per-lane scales; 16: half-lane scales; 512: one
    // scale over two superblocks.
    for (k, g) in [(96, 48), (160, 160), (160, 16), (1024, 512)] {
        let s = scheme(int(4, false), G::PerGroup { group_size: g }, S::F32, Z::Int);
        check(s, 3, k, MS, None, "int-dot");
    }
}

#[test]
fn int8_per_channel() {
    let s = scheme(int(8, true), G::PerChannel, S::F32, Z::None);
    check(s, 9, 160, MS, None, "int-dot");
    let s = scheme(int(8, false), G::PerChannel, S::BF16, Z::Int);
    check(s, 4, 4160, MS, None, "int-dot");
}

#[test]
fn int5_to_7_use_bytes() {
    for bits in [5, 6, 7] {
        let s = scheme(
            int(bits, true),
            G::PerGroup { group_size: 32 },
            S::F16,
            Z::None,
        );
        check(s, 3, 96, MS, None, "int-dot");
    }
}

#[test]
fn int3_and_int2() {
    for (bits, zp, signed) in [
        (3, Z::None, true),
        (3, Z::Int, false),
        (2, Z::None, true),
        (2, Z::Int, false),
    ] {
        for (k, g) in [(96, 32), (384, 128), (4160, 64)] {
            let s = scheme(int(bits, signed), G::PerGroup { group_size: g }, S::F16, zp);
            check(s, 5, k, MS, None, "int-dot");
        }
    }
}

#[test]
fn mxfp4_and_nvfp4() {
    for k in [96, 160, 4160] {
        let s = scheme(E::Fp4E2M1, G::PerGroup { group_size: 32 }, S::E8M0, Z::None);
        check(s, 6, k, MS, None, "int-dot");
        let mut s = scheme(E::Fp4E2M1, G::PerGroup { group_size: 16 }, S::E4M3, Z::None);
        s.global_scale = true;
        check(s, 6, k, MS, None, "int-dot");
    }
}

/// The batched kernels' K chunks (4 superblocks on AVX-512) with a partial
/// last chunk (K = 2304: 9 superblocks), odd tiles (N = 19: a 16-row tile
/// and a 3-row one, so an odd row pair) and activation-row tails (m = 9, 22,
/// 131), for every integer-dot code format, with and without zero points
/// and half-block scales.
#[test]
fn batched_int_dot_chunk_and_tail_shapes() {
    let mut nvfp4 = scheme(E::Fp4E2M1, G::PerGroup { group_size: 16 }, S::E4M3, Z::None);
    nvfp4.global_scale = true;
    let schemes = [
        scheme(
            int(4, true),
            G::PerGroup { group_size: 128 },
            S::F16,
            Z::None,
        ),
        scheme(
            int(4, false),
            G::PerGroup { group_size: 64 },
            S::F16,
            Z::Float,
        ),
        scheme(E::Fp4E2M1, G::PerGroup { group_size: 32 }, S::E8M0, Z::None),
        nvfp4,
        scheme(int(8, true), G::PerChannel, S::F32, Z::None),
        scheme(
            int(8, false),
            G::PerGroup { group_size: 16 },
            S::F32,
            Z::Int,
        ),
        scheme(
            int(3, true),
            G::PerGroup { group_size: 32 },
            S::F16,
            Z::None,
        ),
        scheme(
            int(2, false),
            G::PerGroup { group_size: 128 },
            S::F16,
            Z::Int,
        ),
    ];
    for s in schemes {
        check(s, 19, 2304, &[9, 22, 131], None, "int-dot");
    }
}

#[test]
fn fp8_per_channel_and_blocks() {
    let s = scheme(E::Fp8E4M3, G::PerChannel, S::F32, Z::None);
    check(s, 5, 160, &[1, 3, 17], None, "fp8");
    let s = scheme(E::Fp8E5M2, G::PerChannel, S::BF16, Z::None);
    check(s, 5, 96, &[1, 3, 17], None, "fp8");
    let s = scheme(
        E::Fp8E4M3,
        G::Block2d {
            rows: 128,
            cols: 128,
        },
        S::F32,
        Z::None,
    );
    check(s, 130, 300, &[1, 3, 17], None, "fp8");
    // The batched kernels' K chunks (256 columns on AVX-512) with scale
    // blocks ending inside and across chunks, odd tiles (N = 19) and
    // activation-row tails (m = 9, 22).
    let s = scheme(E::Fp8E4M3, G::PerChannel, S::F32, Z::None);
    check(s, 19, 1040, &[9, 22], None, "fp8");
    let s = scheme(
        E::Fp8E5M2,
        G::Block2d { rows: 8, cols: 96 },
        S::F32,
        Z::None,
    );
    check(s, 19, 1056, &[9, 22], None, "fp8");
    // The AVX-512 decode kernel (m < 8): 32-column steps with a 16-column
    // tail in K (kp = 1040) and in 48-column scale blocks, rows in groups
    // of 4 / 2 with single-row tails (N = 19), every activation grouping.
    let s = scheme(E::Fp8E4M3, G::PerChannel, S::F32, Z::None);
    check(s, 19, 1040, &[1, 2, 5, 6, 7], None, "fp8");
    let s = scheme(
        E::Fp8E4M3,
        G::Block2d { rows: 8, cols: 48 },
        S::F32,
        Z::None,
    );
    check(s, 19, 1056, &[1, 2, 3, 7], None, "fp8");
    let s = scheme(E::Fp8E5M2, G::PerGroup { group_size: 48 }, S::F16, Z::None);
    check(s, 23, 1056, &[1, 3, 6], None, "fp8");
}

#[test]
fn act_order_regular_groups_use_the_fast_path() {
    let s = scheme(
        int(4, true),
        G::PerGroup { group_size: 32 },
        S::F16,
        Z::None,
    );
    check(s, 5, 160, MS, Some(true), "int-dot");
    let s = scheme(
        int(4, false),
        G::PerGroup { group_size: 128 },
        S::F16,
        Z::Int,
    );
    check(s, 5, 384, MS, Some(true), "int-dot");
}

#[test]
fn generic_path() {
    let s = scheme(E::Nf4, G::PerGroup { group_size: 32 }, S::F32, Z::None);
    check(s, 5, 160, &[1, 3, 17], None, "generic");
    let s = scheme(
        int(4, true),
        G::PerGroup { group_size: 32 },
        S::F16,
        Z::None,
    );
    check(s, 5, 160, &[1, 17], Some(false), "generic");
    // A group of 8 columns is too narrow for the integer path.
    let s = scheme(int(4, true), G::PerGroup { group_size: 8 }, S::F16, Z::None);
    check(s, 3, 96, &[1, 3], None, "generic");
}

#[test]
fn n1_m128_and_per_tensor() {
    let s = scheme(E::Fp4E2M1, G::PerGroup { group_size: 32 }, S::E8M0, Z::None);
    check(s, 1, 96, &[1, 128], None, "int-dot");
    let s = scheme(int(4, true), G::PerTensor, S::F32, Z::None);
    check(s, 17, 160, &[1, 3, 17], None, "int-dot");
}

fn expect_err(r: Result<PreparedQuant, CpuError>, what: &str) {
    match r {
        Err(e) => assert!(!e.to_string().is_empty(), "{what}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

#[test]
fn bad_input_is_an_error() {
    let (mut rng, _) = rng();
    let s = scheme(
        int(4, true),
        G::PerGroup { group_size: 32 },
        S::F16,
        Z::None,
    );
    let good = random_tensor(&mut rng, s, 4, 96, None).t;

    let mut t = good.clone();
    t.scheme.granularity = G::PerGroup { group_size: 40 };
    expect_err(PreparedQuant::new(&t), "group size not dividing K");
    let mut t = good.clone();
    t.data.pop();
    expect_err(PreparedQuant::new(&t), "short data");
    let mut t = good.clone();
    t.scales[2] = f32::NAN;
    expect_err(PreparedQuant::new(&t), "NaN scale");
    let mut t = good.clone();
    t.scales.push(1.0);
    expect_err(PreparedQuant::new(&t), "extra scale");
    let mut t = good.clone();
    t.g_idx = Some(vec![3; 96]);
    expect_err(PreparedQuant::new(&t), "g_idx out of range");
    let mut t = good.clone();
    t.scheme.zero_point = Z::Int;
    expect_err(PreparedQuant::new(&t), "missing zeros");
    let mut t = good.clone();
    t.global_scale = f32::INFINITY;
    expect_err(PreparedQuant::new(&t), "infinite global scale");

    let s = scheme(E::Fp8E4M3, G::PerChannel, S::F32, Z::None);
    let mut t = random_tensor(&mut rng, s, 2, 32, None).t;
    t.data[7] = 0x7F;
    expect_err(PreparedQuant::new(&t), "FP8 NaN code");

    let p = PreparedQuant::new(&good).expect("good tensor");
    let mut y = vec![0f32; 4];
    assert!(p.matmul(&[0.0; 95], 1, &mut y).is_err(), "short x");
    assert!(p.matmul(&[0.0; 96], 1, &mut y[..3]).is_err(), "short y");
}

#[test]
fn non_finite_activations_reach_the_output() {
    let (mut rng, _) = rng();
    for s in [
        scheme(
            int(4, true),
            G::PerGroup { group_size: 32 },
            S::F16,
            Z::None,
        ),
        scheme(E::Fp8E4M3, G::PerChannel, S::F32, Z::None),
        scheme(E::Nf4, G::PerGroup { group_size: 32 }, S::F32, Z::None),
    ] {
        let t = random_tensor(&mut rng, s, 3, 96, None).t;
        let p = PreparedQuant::new(&t).expect("prepare");
        for m in [1, 17] {
            let mut x = random_x(&mut rng, m * 96);
            x[5] = f32::NAN;
            let mut y = vec![0f32; m * 3];
            p.matmul(&x, m, &mut y).expect("matmul");
            assert!(y[..3].iter().all(|v| v.is_nan()), "{s:?} m {m}: {y:?}");
            assert!(y[3..].iter().all(|v| v.is_finite()), "{s:?} m {m}");
        }
    }
}
