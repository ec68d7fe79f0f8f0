//! The gate|up INT4 GEMM with the gated activation in its epilogue
//! (`int4_gemm_glu`: out (M, F) = act(A · W_gateᵀ) * (A · W_upᵀ), W the
//! stacked (2F, K) weight) against the f64 CPU reference. These need a CUDA
//! GPU and skip (saying so) without one; `scripts/gpu_entry.sh` runs them.
//! Fresh random inputs every run (seeded from the clock, printed on
//! failure); the output poisoned with NaN before every launch; two launches
//! bit-identical; the prepared call recorded in a CUDA graph.
#![cfg(feature = "cuda")]

mod common;
use common::fresh_seed;

use std::sync::Arc;

use half::f16;
use marlin_cuda::int4::gemm::{
    glu_epilogue_preferred, glu_epilogue_supported, int4_gemm_glu, int4_gemm_glu_prepared,
    GemmWorkspace, GluAct, Int4Weight,
};
use marlin_cuda::int4::random::{random_activations, random_int4};
use marlin_cuda::int4::reference::{dequantize_int4_ref, matmul_ref};
use marlin_cuda::{CudaDevice, CudaError};

/// As the other INT4 paths: f16 output of fp32 sums. The activation is
/// computed once from the f32 sums (the f64 reference from exact sums), so
/// the bound is the plain GEMM's.
const REL_L2_TOL: f64 = 2e-3;

/// Device 0, or None (test skipped, saying so) without a usable GPU.
fn device_or_skip() -> Option<Arc<CudaDevice>> {
    match CudaDevice::new(0) {
        Ok(dev) => Some(dev),
        Err(e) => {
            println!("SKIP int4 glu tests: no CUDA device ({e})");
            None
        }
    }
}

fn act_ref(act: GluAct, g: f64) -> f64 {
    match act {
        GluAct::Silu => g / (1.0 + (-g).exp()),
        GluAct::GeluTanh => {
            let v = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
            0.5 * g * (1.0 + v.tanh())
        }
    }
}

/// Relative L2 error of `got` against `want`; every value must be finite.
fn rel_l2(got: &[f64], want: &[f64], what: &str) -> f64 {
    let (mut err2, mut ref2) = (0f64, 0f64);
    for (i, (g, r)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} = {g} (not written?)");
        err2 += (g - r) * (g - r);
        ref2 += r * r;
    }
    (err2 / ref2.max(1e-30)).sqrt()
}

/// One stacked gate|up weight of 2F x K, checked at every M of `ms` with
/// both activations (fresh activations per M).
fn check_weight(
    dev: &Arc<CudaDevice>,
    ws: &mut GemmWorkspace,
    f: usize,
    k: usize,
    group: usize,
    ms: &[usize],
) {
    let seed = fresh_seed();
    let n = 2 * f;
    let w = random_int4(n, k, group, false, seed);
    let w_ref = dequantize_int4_ref(&w).expect("reference dequant");
    let wd = Int4Weight::from_quant(dev, &w).expect("upload");
    for &m in ms {
        let what = format!("GLU M={m} F={f} K={k} g={group} seed={seed}");
        // M = 9..16 (two token tiles) where the device's shared memory
        // holds the block (sm_90's wider limit); M <= 8 everywhere.
        let wide = dev.compute_capability() == (9, 0);
        if m > 8 && !wide && !glu_epilogue_supported(dev, m, &wd) {
            println!("SKIP int4 glu {what}: two token tiles need sm_90's shared memory here");
            continue;
        }
        assert!(
            glu_epilogue_supported(dev, m, &wd),
            "{what}: must be supported"
        );
        let a16 = random_activations(m, k, seed ^ (0x9E37 + m as u64));
        let a_ref: Vec<f64> = a16.iter().map(|v| f64::from(v.to_f32())).collect();
        let full = matmul_ref(&a_ref, &w_ref, m, n, k);
        let a = dev.upload("A", &a16).expect("A");
        let mut out = dev.alloc_zeros::<f16>("GLU output", m * f).expect("out");
        for act in [GluAct::Silu, GluAct::GeluTanh] {
            let want: Vec<f64> = (0..m * f)
                .map(|i| {
                    let (r, j) = (i / f, i % f);
                    act_ref(act, full[r * n + j]) * full[r * n + f + j]
                })
                .collect();
            let mut first: Option<Vec<f16>> = None;
            for launch in 0..2 {
                dev.write(&mut out, &vec![f16::NAN; m * f]).expect("poison");
                let plan =
                    int4_gemm_glu(dev, &a.as_view(), m, &wd, &mut out.as_view_mut(), act, ws)
                        .expect("launch");
                let got16 = dev.download(&out).expect("download");
                let got: Vec<f64> = got16.iter().map(|v| f64::from(v.to_f32())).collect();
                let rel = rel_l2(&got, &want, &what);
                assert!(
                    rel < REL_L2_TOL,
                    "{what} {act:?} {plan:?} launch {launch}: rel L2 error {rel:.3e}"
                );
                match &first {
                    None => first = Some(got16),
                    Some(f0) => assert!(
                        f0.iter()
                            .zip(&got16)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{what} {act:?}: two launches differ"
                    ),
                }
                if launch == 1 {
                    println!(
                        "PASS int4 glu {what} {act:?} {} column blocks/block={} K slices={} rel_l2={rel:.2e}",
                        plan.kernel,
                        n / 16 / plan.n_tiles,
                        plan.splits
                    );
                }
            }
        }
    }
}

#[test]
fn int4_glu_epilogue_matches_reference() {
    let Some(dev) = device_or_skip() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let ws = &mut ws;
    // The Llama-3.1-8B gate|up (F = 14336, K = 4096: 14 column blocks per
    // block on 132 SMs, 16-stage ring at M = 1, 8 stages at M = 3 and 8).
    check_weight(&dev, ws, 14336, 4096, 128, &[1, 3, 8, 9, 16]);
    // The decode step's rule takes the Llama gate|up at M = 8 (not at
    // M = 1 by default: docs/CUDA.md change 41) where its 896 column-block
    // pairs fit one round of blocks: >= 112 SMs (896 / 8 pairs per block).
    let llama_gate_up =
        Int4Weight::from_quant(&dev, &random_int4(28672, 256, 128, false, 5)).expect("upload");
    assert_eq!(
        glu_epilogue_preferred(&dev, 8, &llama_gate_up),
        dev.sm_count() >= 112,
        "{} SMs",
        dev.sm_count()
    );
    // Awkward shapes: F = 7 column blocks (7 column-block pairs: 7 blocks
    // of one gate and one up warp, 1 K slice) with K ending inside a chunk;
    // F = 3 blocks with K % 8 != 0 (scalar A copy) and groups of 64;
    // F = 13 blocks (2 column blocks x 2 K slices: the
    // slice reduction before the hand-off); F = 4096 (4 column blocks x 4
    // K slices); per-channel scales.
    check_weight(&dev, ws, 112, 1000, 128, &[1, 3, 8, 12]);
    check_weight(&dev, ws, 48, 990, 64, &[1, 2, 5, 11]);
    check_weight(&dev, ws, 208, 2048, 128, &[1, 3, 8, 16]);
    check_weight(&dev, ws, 4096, 4096, 128, &[1, 4, 8, 13]);
    check_weight(&dev, ws, 256, 512, 0, &[1, 3, 7, 10]);
}

#[test]
fn int4_glu_epilogue_refuses_what_it_cannot_run() {
    let Some(dev) = device_or_skip() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let up = |n: usize, k: usize, g: usize, zp: bool| {
        Int4Weight::from_quant(&dev, &random_int4(n, k, g, zp, 3)).expect("upload")
    };
    let sym = up(64, 256, 128, false);
    let refused = [
        (up(64, 256, 128, true), 1, "zero points"),
        (up(64, 256, 32, false), 1, "groups of 32"),
        (
            up(48, 256, 128, false),
            1,
            "F = 24, not whole column blocks",
        ),
        (up(64, 4160, 128, false), 1, "K > 4096"),
        (up(64, 256, 128, false), 17, "M > 16"),
    ];
    let a = dev
        .upload("A", &random_activations(17, 4160, 4))
        .expect("A");
    let mut out = dev.alloc_zeros::<f16>("out", 17 * 64).expect("out");
    for (w, m, why) in &refused {
        assert!(!glu_epilogue_supported(&dev, *m, w), "{why}");
        let r = int4_gemm_glu(
            &dev,
            &a.as_view(),
            *m,
            w,
            &mut out.as_view_mut(),
            GluAct::Silu,
            &mut ws,
        );
        assert!(matches!(r, Err(CudaError::Unsupported(_))), "{why}: {r:?}");
    }
    // Short operands: A of M = 1 one element short, out of M = 2 one short.
    for (a_len, m, out_len) in [(255, 1, 17 * 64), (17 * 4160, 2, 63)] {
        let r = int4_gemm_glu(
            &dev,
            &a.slice(0..a_len),
            m,
            &sym,
            &mut out.slice_mut(0..out_len),
            GluAct::Silu,
            &mut ws,
        );
        assert!(
            matches!(r, Err(CudaError::Shape(_))),
            "A {a_len} out {out_len}: {r:?}"
        );
    }
    // The prepared call on a workspace that did not prepare it: an error,
    // not a module load (which would break a graph capture).
    let r = int4_gemm_glu_prepared(
        &dev,
        &a.as_view(),
        1,
        &sym,
        &mut out.as_view_mut(),
        GluAct::Silu,
        &GemmWorkspace::new(&dev).expect("workspace"),
    );
    assert!(
        matches!(r, Err(CudaError::Unsupported(_))),
        "unprepared: {r:?}"
    );
    // Small weights are supported but not preferred by the decode step.
    assert!(glu_epilogue_supported(&dev, 1, &sym) && !glu_epilogue_preferred(&dev, 1, &sym));
    println!("PASS int4 glu: unsupported weights, M and short operands refused");
}

/// Recorded in a CUDA graph (global capture mode: an allocation, module
/// load or synchronisation inside fails the capture) through
/// `int4_gemm_glu_prepared` after one eager call (which prepares the
/// workspace), replayed twice on poisoned outputs: bit-identical to the eager result.
#[test]
fn int4_glu_epilogue_records_in_a_cuda_graph() {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let Some(dev) = device_or_skip() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let seed = fresh_seed();
    let (f, k) = (14336, 1024);
    let wd =
        Int4Weight::from_quant(&dev, &random_int4(2 * f, k, 128, false, seed)).expect("upload");
    let ms = [1usize, 8, 16];
    let a = dev
        .upload("A", &random_activations(16, k, seed ^ 1))
        .expect("A");
    let mut outs: Vec<_> = ms
        .iter()
        .map(|&m| dev.alloc_zeros::<f16>("out", m * f).expect("out"))
        .collect();
    let mut eager = Vec::new();
    for (&m, out) in ms.iter().zip(outs.iter_mut()) {
        int4_gemm_glu(
            &dev,
            &a.slice(0..m * k),
            m,
            &wd,
            &mut out.as_view_mut(),
            GluAct::Silu,
            &mut ws,
        )
        .expect("eager");
        eager.push(dev.download(out).expect("download"));
    }
    dev.synchronize().expect("sync");
    let stream = dev.stream().clone();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .expect("begin capture");
    let mut recorded = Ok(());
    for (&m, out) in ms.iter().zip(outs.iter_mut()) {
        if let Err(e) = int4_gemm_glu_prepared(
            &dev,
            &a.slice(0..m * k),
            m,
            &wd,
            &mut out.as_view_mut(),
            GluAct::Silu,
            &ws,
        ) {
            recorded = Err(e);
            break;
        }
    }
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .expect("end capture");
    recorded.expect("record the GEMMs");
    let graph = graph.expect("a graph");
    for replay in 0..2 {
        for (&m, out) in ms.iter().zip(outs.iter_mut()) {
            dev.write(out, &vec![f16::NAN; m * f]).expect("poison");
        }
        graph.launch().expect("graph launch");
        for ((&m, out), want) in ms.iter().zip(&outs).zip(&eager) {
            let got = dev.download(out).expect("download");
            assert!(
                got.iter()
                    .zip(want)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "graph replay {replay} M={m} seed={seed}: differs from the eager launch"
            );
        }
        println!("PASS int4 glu graph replay {replay} (M = 1, 8)");
    }
}
