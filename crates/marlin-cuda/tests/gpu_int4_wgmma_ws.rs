//! The warp-specialised Hopper wgmma INT4 GEMM (`GemmPath::WgmmaWs`) on the
//! GPU against the f64 CPU reference. Skips (passes, saying so) without a
//! CUDA device or on a device other than compute capability 9.0. Fresh
//! random inputs every run (seed printed on failure), the output poisoned
//! with NaN before every launch, every output compared, two launches
//! bit-identical.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use half::f16;
use marlin_cuda::int4::gemm::{
    int4_gemm, int4_gemm_prepared, GemmOptions, GemmPath, GemmWorkspace, Int4Weight,
};
use marlin_cuda::int4::random::{random_activations, random_int4};
use marlin_cuda::int4::reference::{dequantize_int4_ref, matmul_ref};
use marlin_cuda::int4::wgmma_ws::ws_supported;
use marlin_cuda::CudaDevice;

/// Same bound as the other INT4 paths (tests/gpu_int4.rs).
const REL_L2_TOL: f64 = 2e-3;

/// Forced-variant switch read by `wgmma_ws::ws_variant`.
const VARIANT_ENV: &str = "MARLIN_WGMMA_WS_VARIANT";
/// Stream-K (1) or split-K (0) form, read by `wgmma_ws::ws_stream_k`.
const STREAM_K_ENV: &str = "MARLIN_WGMMA_WS_STREAMK";
/// Forced number of stream-K blocks.
const SK_BLOCKS_ENV: &str = "MARLIN_WGMMA_WS_SK_BLOCKS";

fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(12345)
}

/// The device, or None (test skipped) without a GPU or without sm_90.
fn hopper() -> Option<Arc<CudaDevice>> {
    match CudaDevice::new(0) {
        Ok(dev) if ws_supported(&dev) => Some(dev),
        Ok(dev) => {
            println!(
                "SKIP wgmma ws tests: {} is not compute capability 9.0",
                dev.name()
            );
            None
        }
        Err(e) => {
            println!("SKIP wgmma ws tests: no CUDA device ({e})");
            None
        }
    }
}

/// One case: (M, N, K, group (0 = per channel), asymmetric, splits).
type Case = (usize, usize, usize, usize, bool, Option<usize>);

/// Runs `case` twice on the forced path; checks both against the reference
/// and that the two outputs are bit-identical (deterministic split-K).
fn check(dev: &Arc<CudaDevice>, ws: &mut GemmWorkspace, case: Case, variant: &str) {
    let (m, n, k, group, asym, splits) = case;
    let seed = fresh_seed();
    let w = random_int4(n, k, group, asym, seed);
    let a_host = random_activations(m, k, seed ^ 0xA5A5);
    let w_ref = dequantize_int4_ref(&w).expect("reference dequant");
    let a_ref: Vec<f64> = a_host.iter().map(|v| f64::from(v.to_f32())).collect();
    let want = matmul_ref(&a_ref, &w_ref, m, n, k);

    let wd = Int4Weight::from_quant(dev, &w).expect("upload");
    let a = dev.upload("A", &a_host).expect("upload A");
    let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("alloc C");
    let opts = GemmOptions {
        path: GemmPath::WgmmaWs,
        splits,
    };
    let mut first: Option<Vec<f16>> = None;
    for launch in 0..2 {
        dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
        let plan = int4_gemm(dev, &a, m, &wd, &mut c, ws, opts).expect("launch");
        assert_eq!(plan.path, GemmPath::WgmmaWs);
        if let Some(s) = splits {
            assert_eq!(plan.splits, s.min(k.div_ceil(64)), "{case:?} {plan:?}");
        }
        let got = dev.download(&c).expect("download");
        let mut err2 = 0f64;
        let mut ref2 = 0f64;
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            let g = f64::from(g.to_f32());
            assert!(
                g.is_finite(),
                "{case:?} {plan:?} seed={seed}: C[{}, {}] = {g} (not written or overflow)",
                i / n,
                i % n
            );
            err2 += (g - r) * (g - r);
            ref2 += r * r;
        }
        let rel = (err2 / ref2.max(1e-30)).sqrt();
        assert!(
            rel < REL_L2_TOL,
            "{case:?} {plan:?} seed={seed} launch {launch}: rel L2 error {rel:.3e}"
        );
        if let Some(prev) = &first {
            assert!(
                prev.iter()
                    .zip(&got)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{case:?} {plan:?} seed={seed}: two launches differ"
            );
        } else {
            println!(
                "PASS int4 wgmma-ws [{variant}] M={m} N={n} K={k} g={group} asym={asym} kernel={} splits={} rel_l2={rel:.2e}",
                plan.kernel, plan.splits
            );
        }
        first = Some(got);
    }
}

#[test]
fn wgmma_ws_gemm_matches_reference() {
    let Some(dev) = hopper() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    // The split-K form (the stream-K one: the test below).
    std::env::set_var(STREAM_K_ENV, "0");
    // Every variant forced, then the automatic choice. N = 328 pads to 6
    // tiles: blocks of 4 tiles leave one consumer warpgroup without a tile.
    for variant in ["t64x1", "t64x2", "t128x1", "t128x2", "auto"] {
        if variant == "auto" {
            std::env::remove_var(VARIANT_ENV);
        } else {
            std::env::set_var(VARIANT_ENV, variant);
        }
        for &m in &[17, 64, 255, 256, 1000] {
            // g128 symmetric, K a multiple of the chunk; forced 3 splits.
            check(&dev, &mut ws, (m, 328, 2048, 128, false, None), variant);
            check(&dev, &mut ws, (m, 328, 2048, 128, false, Some(3)), variant);
            // g128 with zero points; K = 1000 ends inside a chunk.
            check(&dev, &mut ws, (m, 200, 1000, 128, true, None), variant);
        }
        for &m in &[24, 130] {
            // Odd K (staged element by element), per channel.
            check(&dev, &mut ws, (m, 256, 999, 0, false, Some(2)), variant);
            // Groups of 32 (two scale rows per chunk), zero points.
            check(&dev, &mut ws, (m, 200, 990, 32, true, Some(2)), variant);
            // Group 192: splits start inside a scale group.
            check(&dev, &mut ws, (m, 128, 1536, 192, false, Some(5)), variant);
        }
    }
    std::env::remove_var(VARIANT_ENV);
    std::env::remove_var(STREAM_K_ENV);
}

/// The stream-K form (`w4a16_wsk_*`): every variant forced and the
/// automatic choice, with one block per SM and with 3 and 7 blocks (tiles
/// owned whole by one block, tiles shared by 2..n blocks, blocks whose
/// range lies inside one tile), against the f64 reference; two launches
/// bit-identical (the reduction order does not depend on arrival order).
#[test]
fn wgmma_ws_stream_k_matches_reference() {
    let Some(dev) = hopper() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    std::env::set_var(STREAM_K_ENV, "1");
    let cases: [(usize, usize, usize, usize, bool); 10] = [
        (17, 328, 2048, 128, false),
        (64, 328, 2048, 128, false),
        (255, 328, 2048, 128, false),
        (256, 200, 1000, 128, true),
        (1000, 328, 2048, 128, false),
        (64, 4096, 1024, 128, false),
        (24, 256, 999, 0, false),
        (130, 200, 990, 32, true),
        (130, 128, 1536, 192, false),
        (64, 200, 1000, 128, true),
    ];
    let mut checks = 0;
    for (m, n, k, group, asym) in cases {
        let seed = fresh_seed();
        let w = random_int4(n, k, group, asym, seed);
        let a_host = random_activations(m, k, seed ^ 0x5A5A);
        let w_ref = dequantize_int4_ref(&w).expect("reference dequant");
        let a_ref: Vec<f64> = a_host.iter().map(|v| f64::from(v.to_f32())).collect();
        let want = matmul_ref(&a_ref, &w_ref, m, n, k);
        let wd = Int4Weight::from_quant(&dev, &w).expect("upload");
        let a = dev.upload("A", &a_host).expect("upload A");
        let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("alloc C");
        let opts = GemmOptions {
            path: GemmPath::WgmmaWs,
            splits: None,
        };
        for variant in ["t64x1", "t64x2", "t128x1", "t128x2", "auto"] {
            if variant == "auto" {
                std::env::remove_var(VARIANT_ENV);
            } else {
                std::env::set_var(VARIANT_ENV, variant);
            }
            for blocks in ["sm", "3", "7"] {
                if blocks == "sm" {
                    std::env::remove_var(SK_BLOCKS_ENV);
                } else {
                    std::env::set_var(SK_BLOCKS_ENV, blocks);
                }
                let mut first: Option<Vec<f16>> = None;
                for launch in 0..2 {
                    dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
                    let plan = int4_gemm(&dev, &a, m, &wd, &mut c, &mut ws, opts).expect("launch");
                    assert!(plan.kernel.starts_with("w4a16_wsk_"), "{plan:?}");
                    let got = dev.download(&c).expect("download");
                    let (mut err2, mut ref2) = (0f64, 0f64);
                    for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                        let g = f64::from(g.to_f32());
                        assert!(
                            g.is_finite(),
                            "M={m} N={n} K={k} g={group} [{variant}, {blocks} blocks] seed={seed}: C[{}, {}] = {g}",
                            i / n,
                            i % n
                        );
                        err2 += (g - r) * (g - r);
                        ref2 += r * r;
                    }
                    let rel = (err2 / ref2.max(1e-30)).sqrt();
                    assert!(
                        rel < REL_L2_TOL,
                        "M={m} N={n} K={k} g={group} asym={asym} [{variant}, {blocks} blocks] seed={seed} launch {launch}: rel L2 error {rel:.3e}"
                    );
                    if let Some(prev) = &first {
                        assert!(
                            prev.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits()),
                            "M={m} N={n} K={k} [{variant}, {blocks} blocks] seed={seed}: two launches differ"
                        );
                    } else {
                        println!(
                            "PASS int4 wgmma-ws stream-K [{variant}, {blocks} blocks] M={m} N={n} K={k} g={group} asym={asym} kernel={} rel_l2={rel:.2e}",
                            plan.kernel
                        );
                        checks += 1;
                    }
                    first = Some(got);
                }
            }
        }
    }
    std::env::remove_var(VARIANT_ENV);
    std::env::remove_var(SK_BLOCKS_ENV);
    std::env::remove_var(STREAM_K_ENV);
    println!("PASS stream-K: {checks} checks");
}

/// The prepared entry point records both launches (staging + main kernel)
/// into a CUDA graph in global capture mode (no allocation, module load or
/// synchronisation inside) and the replay matches an eager launch bit for
/// bit.
#[test]
fn wgmma_ws_prepared_gemm_records_in_a_cuda_graph() {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let Some(dev) = hopper() else { return };
    let (n, k) = (384, 2048);
    let w =
        Int4Weight::from_quant(&dev, &random_int4(n, k, 128, true, fresh_seed())).expect("upload");
    // Split-K form (2 splits forced) at 17, 64, 300; the stream-K form
    // (no forced splits) at 64 and 300.
    std::env::set_var(STREAM_K_ENV, "1");
    let ms = [17usize, 64, 300, 64, 300];
    let mut cases = Vec::new();
    for (idx, &m) in ms.iter().enumerate() {
        let a = dev
            .upload("A", &random_activations(m, k, fresh_seed()))
            .expect("A");
        let mut want = dev.alloc_zeros::<f16>("C eager", m * n).expect("C");
        let mut ws = GemmWorkspace::new(&dev).expect("workspace");
        let opts = GemmOptions {
            path: GemmPath::WgmmaWs,
            splits: if idx < 3 { Some(2) } else { None },
        };
        int4_gemm(&dev, &a, m, &w, &mut want, &mut ws, opts).expect("eager");
        let want = dev.download(&want).expect("download");
        let c = dev.alloc_zeros::<f16>("C graph", m * n).expect("C");
        cases.push((m, a, c, ws, opts, want));
    }
    dev.synchronize().expect("sync");
    let stream = dev.stream().clone();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .expect("begin capture");
    for (m, a, c, ws, opts, _) in cases.iter_mut() {
        int4_gemm_prepared(&dev, &a.as_view(), *m, &w, &mut c.as_view_mut(), ws, *opts)
            .expect("prepared launch inside capture");
    }
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .expect("end capture")
        .expect("a graph");
    for replay in 0..2 {
        for (m, _, c, _, _, _) in cases.iter_mut() {
            dev.write(c, &vec![f16::NAN; *m * n]).expect("poison");
        }
        graph.launch().expect("graph launch");
        dev.synchronize().expect("sync");
        for (m, _, c, _, _, want) in &cases {
            let got = dev.download(c).expect("download");
            assert!(
                got.iter()
                    .zip(want)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "M={m} replay {replay}: graph output differs from the eager launch"
            );
        }
    }
    std::env::remove_var(STREAM_K_ENV);
    println!("PASS wgmma-ws prepared GEMM M={ms:?} (split-K, then stream-K) recorded in a CUDA graph, replayed twice");
}
