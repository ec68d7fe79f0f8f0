//! Every quantized-matmul path against the f64 product of the dequantized
//! weights, and the AVX2 kernels against the scalar ones, on fresh random
//! inputs at awkward shapes.
//!
//! Tolerances, relative to ||y||:
//! - int-dot paths (activations quantized to int8 per 32): 2e-2 against the
//!   exact f64 product (typical error ~5e-3), 1e-4 between AVX2 and scalar
//!   (same int8 activations, f32 rounding order differs);
//! - FP8 and generic paths (f32 arithmetic): 1e-4.

mod quant_gemm_common;

use marlin_cpu::quant_gemm::{KernelIsa, PreparedQuant};
use marlin_cpu::CpuError;
use marlin_quant::{ElementType as E, Granularity as G, QuantScheme, ScaleDType as S, ZeroPoint as Z};
use quant_gemm_common::*;

const INT_DOT_TOL: f64 = 2e-2;
const F32_TOL: f64 = 1e-4;

fn int(bits: u8, signed: bool) -> E {
    E::Int { bits, signed }
}

/// Checks one scheme at (n, k) for each m: expected kernel family, error
/// against f64, and AVX2 against scalar.
fn check(s: QuantScheme, n: usize, k: usize, ms: &[usize], g_idx: Option<bool>, family: &str) {
    let (mut rng, seed) = rng();
    let case = random_tensor(&mut rng, s, n, k, g_idx);
    let w64 = dequant_f64(&case);
    let scalar = PreparedQuant::with_isa(&case.t, KernelIsa::Scalar).expect("prepare scalar");
    assert!(
        scalar.kernel_name().starts_with(family),
        "{s:?}: path {} (want {family})",
        scalar.kernel_name()
    );
    let simd = (KernelIsa::detect() == KernelIsa::Avx2)
        .then(|| PreparedQuant::with_isa(&case.t, KernelIsa::Avx2).expect("prepare avx2"));
    let tol = if family == "int-dot" { INT_DOT_TOL } else { F32_TOL };
    for &m in ms {
        let x = random_x(&mut rng, m * k);
        let want = matmul_f64(&w64, &x, m, n, k);
        let mut y = vec![0f32; m * n];
        scalar.matmul(&x, m, &mut y).expect("scalar matmul");
        let e = rel_err(&y, &want);
        let ctx = format!("{s:?} g_idx {g_idx:?} n {n} k {k} m {m} seed {seed}");
        assert!(e < tol, "scalar error {e:.3e} > {tol:.0e}: {ctx}");
        if let Some(p) = &simd {
            let mut ys = vec![0f32; m * n];
            p.matmul(&x, m, &mut ys).expect("avx2 matmul");
            let e = rel_err(&ys, &want);
            assert!(e < tol, "avx2 error {e:.3e} > {tol:.0e}: {ctx}");
            let y64: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
            let d = rel_err(&ys, &y64);
            assert!(d < 1e-4, "avx2 vs scalar {d:.3e}: {ctx}");
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
    let s = scheme(int(4, true), G::PerGroup { group_size: 128 }, S::F32, Z::None);
    check(s, 1, 384, &[1, 3, 17, 128], None, "int-dot");
}

#[test]
fn int4_asymmetric_groups() {
    for (k, g, zp) in [(96, 32, Z::Int), (160, 32, Z::Float), (384, 128, Z::Int), (4160, 64, Z::Int)] {
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
        let s = scheme(int(bits, true), G::PerGroup { group_size: 32 }, S::F16, Z::None);
        check(s, 3, 96, MS, None, "int-dot");
    }
}

#[test]
fn int3_and_int2() {
    for (bits, zp, signed) in [(3, Z::None, true), (3, Z::Int, false), (2, Z::None, true), (2, Z::Int, false)] {
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

#[test]
fn fp8_per_channel_and_blocks() {
    let s = scheme(E::Fp8E4M3, G::PerChannel, S::F32, Z::None);
    check(s, 5, 160, &[1, 3, 17], None, "fp8");
    let s = scheme(E::Fp8E5M2, G::PerChannel, S::BF16, Z::None);
    check(s, 5, 96, &[1, 3, 17], None, "fp8");
    let s = scheme(E::Fp8E4M3, G::Block2d { rows: 128, cols: 128 }, S::F32, Z::None);
    check(s, 130, 300, &[1, 3, 17], None, "fp8");
}

#[test]
fn act_order_regular_groups_use_the_fast_path() {
    let s = scheme(int(4, true), G::PerGroup { group_size: 32 }, S::F16, Z::None);
    check(s, 5, 160, MS, Some(true), "int-dot");
    let s = scheme(int(4, false), G::PerGroup { group_size: 128 }, S::F16, Z::Int);
    check(s, 5, 384, MS, Some(true), "int-dot");
}

#[test]
fn generic_path() {
    let s = scheme(E::Nf4, G::PerGroup { group_size: 32 }, S::F32, Z::None);
    check(s, 5, 160, &[1, 3, 17], None, "generic");
    let s = scheme(int(4, true), G::PerGroup { group_size: 32 }, S::F16, Z::None);
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
    let s = scheme(int(4, true), G::PerGroup { group_size: 32 }, S::F16, Z::None);
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
