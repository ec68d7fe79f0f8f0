//! The Hopper wgmma INT4 GEMM (`GemmPath::Wgmma`) on the GPU against the f64
//! CPU reference. Skips (passes, saying so) without a CUDA device or on a
//! device other than compute capability 9.0. Fresh random inputs every run
//! (seed printed on failure), the output poisoned with NaN before every
//! launch, every output compared.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use common::{fresh_seed, random_problem, Case};
use half::f16;
use marlin_cuda::int4::gemm::{int4_gemm, GemmOptions, GemmPath, GemmWorkspace, Int4Weight};
use marlin_cuda::int4::random::{random_activations, random_int4};
use marlin_cuda::int4::wgmma::{set_wgmma_override, wgmma_supported, WgmmaOverride};
use marlin_cuda::{CudaDevice, CudaError};

/// The device, or None (test skipped) without a GPU or without sm_90.
fn hopper() -> Option<Arc<CudaDevice>> {
    common::hopper(wgmma_supported, "wgmma")
}

/// Runs `case` twice on the wgmma path against the reference, two launches
/// bit-identical (deterministic split-K).
fn check(dev: &Arc<CudaDevice>, ws: &mut GemmWorkspace, case: Case) {
    common::check_forced_path(dev, ws, case, GemmPath::Wgmma, false, "wgmma");
}

#[test]
fn wgmma_gemm_matches_reference() {
    let Some(dev) = hopper() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    // Every token tile (32, 64, 128 and several 128-token blocks), M not a
    // multiple of the tile, default and forced splits.
    // The three split settings share one problem (and its f64 reference,
    // the slow part on the host) per (M, shape).
    for &m in &[17, 32, 40, 64, 100, 128, 200, 256] {
        // g128 symmetric; g128 with zero points, N and K not multiples of 64.
        for (n, k, asym) in [(256, 2048, false), (200, 1000, true)] {
            let p = random_problem(&dev, (m, n, k, 128, asym), fresh_seed(), 0xA5A5);
            for splits in [None, Some(1), Some(3)] {
                let case = (m, n, k, 128, asym, splits);
                common::check_forced_path_on(
                    &dev,
                    &mut ws,
                    &p,
                    case,
                    GemmPath::Wgmma,
                    false,
                    "wgmma",
                );
            }
        }
    }
    for &m in &[24, 64, 130] {
        // Groups of 32 (the scale row depends on the lane), both zero
        // modes; K = 990 ends inside a chunk and a group.
        check(&dev, &mut ws, (m, 256, 2048, 32, false, None));
        check(&dev, &mut ws, (m, 200, 990, 32, true, Some(2)));
        // Per channel; 5 column tiles: the last block has one warpgroup
        // without a tile.
        check(&dev, &mut ws, (m, 320, 1536, 0, false, None));
        check(&dev, &mut ws, (m, 320, 1536, 0, true, Some(4)));
        // Group 192: splits start inside a scale group.
        check(&dev, &mut ws, (m, 128, 1536, 192, false, Some(5)));
    }
}

/// Both ring depths (the deep one-block-per-SM variants and the session-3
/// rings), both prologue orders (codes and scales before the PDL wait,
/// or after it), the session-6 prologue / epilogue entries and session 8's
/// refill code (the lean refills of change 52b are the default), forced per
/// thread, on awkward M (17, 33, 63: partial
/// token tiles), N and K not multiples of 64, groups 32 / 64 / 128 / per
/// channel, zero points, default and forced splits (3: splits start inside
/// a 128-group; 7: an odd number of splits in the paired reduction). Each
/// (M, shape) problem is shared by the settings.
#[test]
fn wgmma_ring_and_prologue_variants_match_reference() {
    let Some(dev) = hopper() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    // (deep ring, weights before the wait, session-6 prologue / epilogue:
    // symmetric weights only, activations 4 chunks ahead, session 8's
    // refill code: symmetric weights only, change 52b).
    let settings = [
        (Some(true), Some(true), None, None, None),
        (Some(false), Some(true), None, None, None),
        (Some(true), Some(false), None, None, None),
        (Some(false), Some(false), None, None, None),
        (Some(true), Some(true), Some(true), None, None),
        (Some(false), Some(true), Some(true), None, None),
        (Some(true), Some(true), None, Some(true), None),
        (Some(false), Some(false), None, Some(true), None),
        (Some(true), Some(true), None, None, Some(true)),
        (Some(false), Some(false), None, Some(true), Some(true)),
    ];
    for &m in &[17, 33, 63, 64, 100] {
        for (n, k, group, asym) in [
            (264, 1000, 128, true),
            (192, 4096, 128, false),
            (328, 1536, 32, true),
            (136, 1216, 64, false),
            (200, 998, 0, false),
        ] {
            let p = random_problem(&dev, (m, n, k, group, asym), fresh_seed(), 0x5A5A);
            for (deep, before_wait, legacy_tail, act_ahead4, s8_loop) in settings {
                set_wgmma_override(WgmmaOverride {
                    deep,
                    weights_before_wait: before_wait,
                    legacy_tail,
                    act_ahead4,
                    s8_loop,
                });
                for splits in [None, Some(3), Some(7)] {
                    let case = (m, n, k, group, asym, splits);
                    common::check_forced_path_on(
                        &dev,
                        &mut ws,
                        &p,
                        case,
                        GemmPath::Wgmma,
                        false,
                        &format!(
                            "wgmma deep={deep:?} weights-before-wait={before_wait:?} legacy-tail={legacy_tail:?} \
                             act-ahead4={act_ahead4:?} s8-loop={s8_loop:?}"
                        ),
                    );
                }
            }
        }
    }
    set_wgmma_override(WgmmaOverride::default());
}

/// `GemmPath::Auto` at M = 65..128 on sm_90 takes the warp-specialised
/// kernel on weights of >= 2^24 elements (`wgmma::mid_m_takes_ws`), with a
/// correct result; on a small weight at M = 33..127 the wgmma kernel, and
/// on a narrow weight with K >= 8192 (`wgmma::wgmma_over_ws`) the wgmma
/// kernel up to M = 128.
#[test]
fn wgmma_range_auto_paths_match_reference() {
    let Some(dev) = hopper() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    for (m, n, k, want_path) in [
        (65, 8192, 2048, GemmPath::WgmmaWs),
        (65, 264, 1000, GemmPath::Wgmma),
        (100, 264, 1000, GemmPath::Wgmma),
        (48, 264, 1000, GemmPath::Wgmma),
        (64, 136, 8192, GemmPath::Wgmma),
        (100, 136, 8200, GemmPath::Wgmma),
    ] {
        let p = random_problem(&dev, (m, n, k, 128, false), fresh_seed(), 0x3C3C);
        let what = format!("auto M={m}");
        let (plan, rel) = common::run_auto_checked(&dev, &mut ws, &p, m, &what);
        assert_eq!(plan.path, want_path, "M={m}");
        println!(
            "PASS {what}: {:?} {} rel_l2={rel:.2e}",
            plan.path, plan.kernel
        );
    }
}

/// Odd K is refused by the forced path (the activation pairs are 4-byte
/// words) and routed to the mma.sync kernels by `Auto`.
#[test]
fn wgmma_odd_k_is_refused_and_auto_falls_back() {
    let Some(dev) = hopper() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let (m, n, k) = (64, 128, 1001);
    let w = Int4Weight::from_quant(&dev, &random_int4(n, k, 0, false, 7)).expect("upload");
    let a = dev.upload("A", &random_activations(m, k, 8)).expect("A");
    let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("C");
    let forced = GemmOptions {
        path: GemmPath::Wgmma,
        splits: None,
    };
    assert!(matches!(
        int4_gemm(&dev, &a, m, &w, &mut c, &mut ws, forced),
        Err(CudaError::Unsupported(_))
    ));
    let plan = int4_gemm(&dev, &a, m, &w, &mut c, &mut ws, GemmOptions::default()).expect("auto");
    assert_ne!(plan.path, GemmPath::Wgmma);
    println!("PASS wgmma refuses K = {k}; Auto took {:?}", plan.path);
}

/// The prepared entry point on the wgmma path records into a CUDA graph in
/// global capture mode (no allocation, module load or synchronisation
/// inside) and the replay matches an eager launch bit for bit.
#[test]
fn wgmma_prepared_gemm_records_in_a_cuda_graph() {
    let Some(dev) = hopper() else { return };
    let ms = [17usize, 64, 200];
    let opts = GemmOptions {
        path: GemmPath::Wgmma,
        splits: Some(2),
    };
    let cases: Vec<(usize, GemmOptions)> = ms.iter().map(|&m| (m, opts)).collect();
    common::check_prepared_in_cuda_graph(&dev, 384, 2048, &cases);
    println!("PASS wgmma prepared GEMM M={ms:?} recorded in a CUDA graph, replayed twice");
}
