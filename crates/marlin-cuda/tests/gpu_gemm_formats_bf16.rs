//! FP4 (MXFP4, NVFP4), INT8, FP8 (per channel, 128 x 128 blocks), INT3 and
//! INT2 GEMMs with bf16 activations on the GPU against
//! `QuantTensor::dequantize` + an f64 matmul of the bf16-rounded
//! activations, and the prepared entry point. Need a CUDA GPU (`#[ignore]`d;
//! `scripts/gpu_entry.sh` runs them with `--include-ignored`). Fresh random
//! weights and activations every run (seed printed on failure), outputs
//! poisoned with NaN before every launch.
//!
//! Tolerance (bf16 unit roundoff u = 2^-8): the fused kernels feed exact
//! weight codes to the bf16 mma for INT8, FP8, INT3 and INT2 (scales in
//! fp32), FP4 values scaled in f16 then rounded to bf16 (<= u + 2^-11
//! relative); dequantize + cuBLAS rounds every weight once to bf16 (<= u,
//! FP4 after its f16 scaling); the output is rounded to bf16 (<= u).
//! Relative L2 bound 2u (expected below u: measured 1.4e-3 to 3.0e-3 on an
//! H100); per element u |c| + 1.5u sum_k |a_k w_k| + K 2^-24 sum_k
//! |a_k w_k| (fp32 accumulation's worst case).
#![cfg(feature = "cuda")]

mod common;

use common::formats::{
    act_order_int4, check_format, compare, device, format_problem, formats, Tolerance,
};
use common::fresh_seed;
use half::bf16;
use marlin_cuda::act::Act;
use marlin_cuda::int4::gemm::{GemmOptions, GemmPath, GemmWorkspace};
use marlin_cuda::int4::random::random_activations_bf16;
use marlin_cuda::int4::reference::matmul_ref;
use marlin_cuda::wgemm::gemm::wx_gemm_prepared;
use marlin_quant::QuantScheme;

const U: f64 = 1.0 / 256.0;
const REL_L2_TOL: f64 = 2.0 * U;
const TOL: Tolerance = Tolerance {
    rel_l2: REL_L2_TOL,
    elementwise_u: Some(U),
};

#[test]
#[ignore = "needs a CUDA GPU"]
fn formats_bf16_match_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    for (name, scheme, k) in formats() {
        for &m in &[1, 3, 17, 64, 256] {
            for path in [GemmPath::Auto, GemmPath::Fused, GemmPath::DequantCublas] {
                let opts = GemmOptions { path, splits: None };
                check_format::<bf16>(&dev, &mut ws, "bf16 ", name, scheme, (m, 200, k), opts, TOL);
            }
        }
        for s in [1, 3] {
            let opts = GemmOptions {
                path: GemmPath::Fused,
                splits: Some(s),
            };
            check_format::<bf16>(&dev, &mut ws, "bf16 ", name, scheme, (12, 96, k), opts, TOL);
        }
    }
}

/// The warp-specialised wgmma kernel with bf16 activations (sm_90a; the
/// same f16 dequantisation, each fragment register then rounded to bf16):
/// every format forced at M = 17 / 100 / 300 (automatic and 3 splits, N
/// not a multiple of 64, the formats' K), and through `Auto` on a long K.
#[test]
#[ignore = "needs a CUDA GPU"]
fn formats_bf16_wgmma_ws() {
    let dev = device();
    if dev.compute_capability() != (9, 0) {
        println!("SKIP bf16 wgmma ws: not sm_90");
        return;
    }
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    for (name, scheme, k) in formats() {
        for &(m, n) in &[(17, 200), (100, 320), (300, 520)] {
            for splits in [None, Some(3)] {
                let opts = GemmOptions {
                    path: GemmPath::WgmmaWs,
                    splits,
                };
                check_format::<bf16>(
                    &dev,
                    &mut ws,
                    "bf16 ws ",
                    name,
                    scheme,
                    (m, n, k),
                    opts,
                    TOL,
                );
            }
        }
        let opts = GemmOptions::default();
        check_format::<bf16>(
            &dev,
            &mut ws,
            "bf16 ws ",
            name,
            scheme,
            (128, 256, 4096),
            opts,
            TOL,
        );
    }
}

/// The prepared entry with bf16 views, after `prepare_wx_for`; an f16-only
/// preparation does not make a bf16 call ready (an error, not a load).
#[test]
#[ignore = "needs a CUDA GPU"]
fn formats_bf16_prepared() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    for (name, scheme, k) in formats().into_iter().take(4) {
        for (m, path) in [(5, GemmPath::Fused), (128, GemmPath::DequantCublas)] {
            let n = 128;
            let p = format_problem::<bf16>(&dev, scheme, (m, n, k), TOL);
            let opts = GemmOptions { path, splits: None };
            let a = dev.upload("A", &p.a_host).expect("A");
            let mut c = dev.alloc_zeros::<bf16>("C", m * n).expect("C");
            ws.prepare_wx(&dev, &p.weight, m, opts)
                .expect("prepare f16");
            let unprepared = wx_gemm_prepared(
                &dev,
                &a.as_view(),
                m,
                &p.weight,
                &mut c.as_view_mut(),
                &mut ws,
                opts,
            );
            assert!(
                unprepared.is_err(),
                "{name}: bf16 call after an f16 prepare"
            );
            ws.prepare_wx_for(&dev, &p.weight, m, opts, Act::Bf16)
                .expect("prepare bf16");
            dev.write(&mut c, &vec![bf16::NAN; m * n]).expect("poison");
            let plan = wx_gemm_prepared(
                &dev,
                &a.as_view(),
                m,
                &p.weight,
                &mut c.as_view_mut(),
                &mut ws,
                opts,
            )
            .expect("prepared launch");
            let got = dev.download(&c).expect("download");
            let what = format!("prepared bf16 {name} M={m} {plan:?}");
            let rel = compare(&p, &got, n, &what, TOL);
            println!(
                "PASS bf16 prepared {name} M={m} {:?} rel_l2={rel:.2e}",
                plan.path
            );
        }
    }
}

/// INT4 act-order with bf16 activations: the gather moves 16-bit words,
/// then the bf16 INT4 GEMM of the permuted weight (symmetric and zero
/// points, M = 1..64, Auto's paths). Same tolerances (the INT4 weight
/// rounding of tests/gpu_int4_bf16.rs: 3u per weight term with zero
/// points).
#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_act_order_bf16_matches_reference() {
    use marlin_cuda::int4::act_order::{int4_act_order_gemm, Int4ActOrderWeight};
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let (n, k, g) = (200, 1024, 128);
    for (name, scheme) in [
        ("int4g128-act", QuantScheme::int4_sym(g)),
        ("int4g128z-act", QuantScheme::int4_asym(g)),
    ] {
        let seed = fresh_seed();
        let q = act_order_int4(scheme, n, k, g, seed);
        let w = Int4ActOrderWeight::from_quant(&dev, &q).expect("permute + upload");
        let w_ref: Vec<f64> = q
            .dequantize()
            .expect("dequantize")
            .iter()
            .map(|v| f64::from(*v))
            .collect();
        for &m in &[1usize, 3, 17, 64] {
            let a_host = random_activations_bf16(m, k, seed ^ m as u64);
            let a_ref: Vec<f64> = a_host.iter().map(|v| v.to_f64()).collect();
            let want = matmul_ref(&a_ref, &w_ref, m, n, k);
            let a = dev.upload("A", &a_host).expect("A");
            let mut c = dev.alloc_zeros::<bf16>("C", m * n).expect("C");
            let mut gathered = dev
                .alloc_zeros::<bf16>("gathered A", m * k)
                .expect("scratch");
            dev.write(&mut c, &vec![bf16::NAN; m * n]).expect("poison");
            let plan = int4_act_order_gemm(
                &dev,
                &a,
                m,
                &w,
                &mut c,
                &mut ws,
                &mut gathered,
                GemmOptions::default(),
            )
            .expect("launch");
            let got = dev.download(&c).expect("download");
            let (mut e2, mut r2) = (0f64, 0f64);
            for (i, (gv, r)) in got.iter().zip(&want).enumerate() {
                let gv = gv.to_f64();
                assert!(
                    gv.is_finite(),
                    "{name} M={m} seed={seed}: C[{}, {}] = {gv}",
                    i / n,
                    i % n
                );
                e2 += (gv - r) * (gv - r);
                r2 += r * r;
            }
            let rel = (e2 / r2.max(1e-30)).sqrt();
            assert!(
                rel < REL_L2_TOL,
                "{name} M={m} {plan:?} seed={seed}: rel L2 {rel:.3e}"
            );
            println!(
                "PASS bf16 {name} {:?} M={m} N={n} K={k} rel_l2={rel:.2e}",
                plan.path
            );
        }
    }
}
