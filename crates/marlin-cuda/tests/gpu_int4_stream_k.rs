//! The stream-K INT4 decode kernel (`GemmPath::StreamK`, M <= 16) on the GPU
//! against the f64 CPU reference. Its own test binary, so that a fault of
//! this (opt-in) kernel cannot take the other INT4 tests' CUDA context with
//! it. Needs a CUDA GPU (`#[ignore]`d; `scripts/gpu_entry.sh` runs it with
//! `--include-ignored`). Fresh random inputs every run (seeded from the
//! clock, printed on failure), the output poisoned with NaN before every
//! launch.
#![cfg(feature = "cuda")]

mod common;
use common::fresh_seed;

use std::sync::Arc;

use half::f16;
use marlin_cuda::int4::gemm::{int4_gemm, GemmOptions, GemmPath, GemmWorkspace, Int4Weight};
use marlin_cuda::int4::random::{random_activations, random_int4};
use marlin_cuda::int4::reference::{dequantize_int4_ref, matmul_ref};
use marlin_cuda::{CudaDevice, CudaError};

/// As `gpu_int4`: f16 weights and output, fp32 accumulation.
const REL_L2_TOL: f64 = 2e-3;

fn device() -> Arc<CudaDevice> {
    CudaDevice::new(0).expect("a CUDA device (these tests run on the GPU machine)")
}

/// The stream-K decode kernel (`GemmPath::StreamK`, M <= 16) against the
/// reference: M = 1, 3, 8, 9, 16; groups of 32 / 128 / 192 / per channel,
/// symmetric and with zero points; N not a multiple of 64 and odd K; warps
/// per SM forced to 1, 3, 8 and 16 so that column blocks are split between
/// 2..16 warps (fixed-order reduction), whole inside one warp (direct
/// write), or both in one warp's share; every result bit-identical over two
/// launches; M = 17 refused.
#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_stream_k_matches_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let mut checks = 0;
    // (N, K, group, zero points, forced warps per SM)
    let cases: [(usize, usize, usize, bool, Option<usize>); 12] = [
        (256, 2048, 128, false, None),
        (200, 1000, 128, true, None),
        (256, 2048, 32, false, None),
        (200, 990, 32, true, None),
        (96, 1001, 0, false, None),
        (128, 1536, 192, false, Some(3)),
        (512, 4096, 128, false, Some(16)),
        (4096, 320, 64, false, Some(16)),
        (8192, 128, 128, false, Some(8)),
        (1000, 640, 128, false, Some(1)),
        (1000, 640, 128, true, Some(1)),
        (1000, 640, 32, false, Some(3)),
    ];
    for &(n, k, group, asym, warps) in &cases {
        for &m in &[1, 3, 8, 9, 16] {
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
                path: GemmPath::StreamK,
                splits: warps,
            };
            let mut first: Option<Vec<f16>> = None;
            for launch in 0..2 {
                dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
                let plan = int4_gemm(&dev, &a, m, &wd, &mut c, &mut ws, opts).expect("launch");
                assert_eq!(plan.path, GemmPath::StreamK);
                let got = dev.download(&c).expect("download");
                let (mut e2, mut r2) = (0f64, 0f64);
                for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                    let g = f64::from(g.to_f32());
                    assert!(
                        g.is_finite(),
                        "stream-K M={m} N={n} K={k} g={group} asym={asym} {plan:?} seed={seed}: C[{}, {}] = {g}",
                        i / n,
                        i % n
                    );
                    e2 += (g - r) * (g - r);
                    r2 += r * r;
                }
                let rel = (e2 / r2.max(1e-30)).sqrt();
                assert!(
                    rel < REL_L2_TOL,
                    "stream-K M={m} N={n} K={k} g={group} asym={asym} {plan:?} seed={seed} launch {launch}: rel L2 {rel:.3e}"
                );
                match &first {
                    None => first = Some(got),
                    Some(f) => assert!(
                        f.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "stream-K M={m} N={n} K={k} {plan:?}: two launches differ"
                    ),
                }
                checks += 1;
                if launch == 1 {
                    println!(
                        "PASS int4 stream-K M={m} N={n} K={k} g={group} asym={asym} blocks={} warps/SM={} rel_l2={rel:.2e}",
                        plan.n_tiles, plan.splits
                    );
                }
            }
        }
    }
    let w = Int4Weight::from_quant(&dev, &random_int4(64, 256, 128, false, 3)).expect("upload");
    let a = dev.upload("A", &random_activations(17, 256, 4)).expect("A");
    let mut c = dev.alloc_zeros::<f16>("C", 17 * 64).expect("C");
    let opts = GemmOptions {
        path: GemmPath::StreamK,
        splits: None,
    };
    assert!(matches!(
        int4_gemm(&dev, &a, 17, &w, &mut c, &mut ws, opts),
        Err(CudaError::Unsupported(_))
    ));
    println!("PASS int4 stream-K: {checks} checks, M = 17 refused");
}

/// Capture safety: the prepared stream-K call (M = 1 and 8, views inside
/// larger buffers) records in a CUDA graph in global capture mode (any
/// allocation or synchronisation fails the capture) and its replays are bit
/// for bit the eager launches.
#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_stream_k_records_in_a_cuda_graph() {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    use marlin_cuda::int4::gemm::int4_gemm_prepared;
    let dev = device();
    let seed = fresh_seed();
    let (n, k) = (1000, 2048);
    let w = Int4Weight::from_quant(&dev, &random_int4(n, k, 128, false, seed)).expect("upload");
    let ms = [1usize, 8];
    let a = dev
        .upload("A", &random_activations(8, k, seed ^ 3))
        .expect("A");
    let c_len = ms.iter().map(|m| m * n).sum::<usize>();
    let mut c = dev.alloc_zeros::<f16>("C", c_len).expect("C");
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let opts = GemmOptions {
        path: GemmPath::StreamK,
        splits: None,
    };
    for &m in &ms {
        ws.prepare(&dev, &w, m, opts).expect("prepare");
    }
    let run_all = |c: &mut cudarc::driver::CudaSlice<f16>, ws: &mut GemmWorkspace| {
        let mut at = 0;
        for &m in &ms {
            let a_view = a.slice(0..m * k);
            let mut c_view = c.slice_mut(at..at + m * n);
            int4_gemm_prepared(&dev, &a_view, m, &w, &mut c_view, ws, opts)?;
            at += m * n;
        }
        Ok::<_, CudaError>(())
    };
    dev.write(&mut c, &vec![f16::NAN; c_len]).expect("poison");
    run_all(&mut c, &mut ws).expect("eager launches");
    let eager = dev.download(&c).expect("download");
    assert!(
        eager.iter().all(|v| v.is_finite()),
        "eager output not written"
    );
    dev.synchronize().expect("sync");
    let stream = dev.stream().clone();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .expect("begin capture");
    let recorded = run_all(&mut c, &mut ws);
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .expect("end capture");
    recorded.expect("record the stream-K GEMMs");
    let graph = graph.expect("a graph");
    for replay in 0..2 {
        dev.write(&mut c, &vec![f16::NAN; c_len]).expect("poison");
        graph.launch().expect("graph launch");
        let got = dev.download(&c).expect("download");
        assert!(
            got.iter()
                .zip(&eager)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "graph replay {replay} differs from the eager launches (seed {seed})"
        );
        println!("PASS int4 stream-K graph replay {replay} bit-identical (M = 1, 8)");
    }
}
