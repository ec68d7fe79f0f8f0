//! Host-side checks of the repack: decoding the packed layout with the
//! kernel's index arithmetic must give back the reference dequantization.

use super::pack::pack_int4;
use super::random::{hashed_int4, random_activations, random_activations_bf16, random_int4};
use super::reference::{dequantize_int4_ref, unpack_int4_ref};
use crate::error::CudaError;
use marlin_quant::Granularity;

fn check_roundtrip(n: usize, k: usize, group: usize, asym: bool, seed: u64) {
    check_roundtrip_tensor(&random_int4(n, k, group, asym, seed));
}

fn check_roundtrip_tensor(w: &marlin_quant::QuantTensor) {
    let (n, k) = (w.rows, w.cols);
    let packed = pack_int4(w).expect("supported scheme");
    let want = dequantize_int4_ref(w).expect("reference");
    let got = unpack_int4_ref(&packed);
    let max_abs = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (i, (g, r)) in got.iter().zip(&want).enumerate() {
        // f16 rounding of -zero*scale: at most half an ulp of 15*scale.
        let tol = 1e-3 * max_abs.max(1e-6);
        assert!(
            (f64::from(*g) - r).abs() <= tol,
            "n={n} k={k} {:?}: element ({}, {}) got {g} want {r}",
            w.scheme.granularity,
            i / k,
            i % k
        );
    }
    assert_eq!(packed.n_pad % 64, 0);
    assert_eq!(packed.k_pad % 64, 0);
}

#[test]
fn repack_roundtrips_symmetric_and_asymmetric() {
    for &(n, k) in &[(64, 128), (37, 200), (130, 384), (16, 1000)] {
        for &group in &[128, 64, 0] {
            for asym in [false, true] {
                check_roundtrip(n, k, group, asym, (n * 131 + k) as u64 + group as u64);
            }
        }
    }
}

/// Groups of 32: two scale groups per 64-chunk (a lane's indices lie in
/// group 2c + t/2), including K that ends inside a chunk (packed groups
/// past the tensor's K keep scale 0).
#[test]
fn repack_roundtrips_groups_of_32() {
    for &(n, k) in &[(64, 128), (37, 200), (16, 990), (24, 129)] {
        for asym in [false, true] {
            check_roundtrip(n, k, 32, asym, (n * 7 + k) as u64);
        }
    }
    let p = pack_int4(&random_int4(16, 990, 32, false, 3)).expect("pack");
    assert_eq!((p.group_size, p.groups, p.k_pad), (32, 32, 1024));
}

#[test]
fn repack_handles_odd_k() {
    check_roundtrip(24, 129, 64, false, 7);
    check_roundtrip(24, 129, 128, true, 8);
}

#[test]
fn unsupported_schemes_are_errors() {
    // Groups must be 32 or a multiple of 64.
    for group in [16, 96] {
        let w = random_int4(16, 192, group, false, 1);
        assert!(matches!(pack_int4(&w), Err(CudaError::Unsupported(_))));
    }
    let mut w = random_int4(16, 128, 32, false, 1);
    w.scheme.granularity = Granularity::PerGroup { group_size: 64 };
    w.scales = vec![0.01; 16 * 2];
    w.g_idx = Some(vec![0; 128]);
    assert!(matches!(pack_int4(&w), Err(CudaError::Unsupported(_))));
    w.g_idx = None;
    w.data.pop();
    assert!(matches!(pack_int4(&w), Err(CudaError::Shape(_))));
}

#[test]
fn huge_scale_is_rejected() {
    let mut w = random_int4(16, 128, 128, false, 2);
    w.scales[3] = 1e6;
    assert!(matches!(pack_int4(&w), Err(CudaError::Unsupported(_))));
}

/// The host mirror of the device fill: every code value occurs, scales lie
/// in [2^-9, 2^-6), odd K leaves the unused high nibble zero, and the tensor
/// packs and round-trips like any other symmetric INT4 tensor.
#[test]
fn hashed_int4_is_a_valid_symmetric_tensor() {
    let w = hashed_int4(24, 129, 64, 3);
    let mut seen = [false; 16];
    for (i, byte) in w.data.iter().enumerate() {
        seen[usize::from(byte & 15)] = true;
        if i % 65 == 64 {
            assert_eq!(byte >> 4, 0, "padding nibble of row {}", i / 65);
        } else {
            seen[usize::from(byte >> 4)] = true;
        }
    }
    assert!(seen.iter().all(|s| *s));
    assert!(w
        .scales
        .iter()
        .all(|s| (2f32.powi(-9)..2f32.powi(-6)).contains(s)));
    assert_ne!(hashed_int4(24, 129, 64, 4).data, w.data);
    let packed = pack_int4(&w).expect("pack");
    assert!(packed.neg_zero_scales.is_none());
    check_roundtrip_tensor(&w);
    check_roundtrip_tensor(&hashed_int4(70, 256, 0, 9));
}

/// The bf16 activations of the GPU tests are the same draws as the f16 ones
/// rounded to bf16: in [-1, 1], each within bf16's unit roundoff (2^-8
/// relative) of its f16 sibling's value plus f16's (2^-11, and 2^-25 of
/// absolute error for f16 subnormals).
#[test]
fn bf16_activations_are_the_f16_draws_rounded() {
    let (m, k, seed) = (3, 777, 42);
    let a16 = random_activations(m, k, seed);
    let a = random_activations_bf16(m, k, seed);
    assert_eq!(a.len(), m * k);
    for (b, h) in a.iter().zip(&a16) {
        let (b, h) = (b.to_f64(), h.to_f64());
        assert!((-1.0..=1.0).contains(&b));
        let tol = h.abs() * (2f64.powi(-8) + 2f64.powi(-11)) + 2f64.powi(-25);
        assert!((b - h).abs() <= tol, "{b} vs {h}");
    }
    assert_ne!(random_activations_bf16(m, k, seed + 1), a);
}
