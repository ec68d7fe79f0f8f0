//! FP4 (MXFP4, NVFP4), INT8, FP8 (per channel, 128 x 128 blocks), INT3 and
//! INT2 (groups, per channel; symmetric and zero points) GEMMs and INT4
//! act-order on the GPU against `QuantTensor::dequantize` + an f64 matmul,
//! and their capture-safe prepared entry points recorded in a CUDA graph. Need a CUDA GPU
//! (`#[ignore]`d; `scripts/gpu_entry.sh` runs them with `--include-ignored`).
//! Fresh random weights and activations every run (seed printed on
//! failure), outputs poisoned with NaN before every launch.
#![cfg(feature = "cuda")]

mod common;

use common::formats::{act_order_int4, check_format, device, formats, quantized, Tolerance};
use common::fresh_seed;
use half::f16;
use marlin_cuda::int4::act_order::{
    int4_act_order_gemm, int4_act_order_gemm_prepared, prepare_act_order, Int4ActOrderWeight,
};
use marlin_cuda::int4::gemm::{GemmOptions, GemmPath, GemmWorkspace};
use marlin_cuda::int4::random::random_activations;
use marlin_cuda::int4::reference::matmul_ref;
use marlin_cuda::wgemm::gemm::{wx_gemm, wx_gemm_prepared, WxWeight};
use marlin_cuda::CudaError;
use marlin_quant::{QuantScheme, QuantTensor};

/// f16 activations and output, fp32 accumulation; FP4 scales are rounded to
/// f16 (exact for E8M0, E4M3 in range). Measured errors are printed.
const REL_L2_TOL: f64 = 2e-3;
const TOL: Tolerance = Tolerance {
    rel_l2: REL_L2_TOL,
    elementwise_u: None,
};

#[test]
#[ignore = "needs a CUDA GPU"]
fn formats_match_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    for (name, scheme, k) in formats() {
        for &m in &[1, 3, 17, 64, 256] {
            for path in [GemmPath::Auto, GemmPath::Fused, GemmPath::DequantCublas] {
                let opts = GemmOptions { path, splits: None };
                check_format::<f16>(&dev, &mut ws, "", name, scheme, (m, 200, k), opts, TOL);
            }
        }
        // Aligned shape, several N tiles.
        check_format::<f16>(
            &dev,
            &mut ws,
            "",
            name,
            scheme,
            (8, 320, 2048),
            GemmOptions::default(),
            TOL,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn forced_splits_and_errors() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    for (name, scheme, k) in formats() {
        for s in [1, 3, 5] {
            let opts = GemmOptions {
                path: GemmPath::Fused,
                splits: Some(s),
            };
            check_format::<f16>(&dev, &mut ws, "", name, scheme, (12, 96, k), opts, TOL);
        }
    }
    // One split over K = 4096 (64 chunks) exceeds the activation tile.
    let q = quantized(QuantScheme::int8_per_channel(), 64, 4096, 1);
    let w = WxWeight::from_quant(&dev, &q).expect("upload");
    let a = dev.upload("A", &random_activations(2, 4096, 2)).expect("A");
    let mut c = dev.alloc_zeros::<f16>("C", 2 * 64).expect("C");
    let one_split = GemmOptions {
        path: GemmPath::Fused,
        splits: Some(1),
    };
    let err = wx_gemm(&dev, &a, 2, &w, &mut c, &mut ws, one_split).expect_err("too long");
    assert!(matches!(err, CudaError::Unsupported(_)), "{err}");
    // C too small for M = 3.
    let err =
        wx_gemm(&dev, &a, 3, &w, &mut c, &mut ws, GemmOptions::default()).expect_err("C too small");
    assert!(matches!(err, CudaError::Shape(_)), "{err}");
    println!("PASS wx errors: {err}");
}

/// The warp-specialised wgmma kernel of every `wgemm` format
/// (`GemmPath::WgmmaWs`, sm_90a only): FP4 and per-channel 8-bit with fp32
/// column scales after the main loop; FP8 128 x 128 blocks, INT3 / INT2
/// (groups, per channel, zero points) with f16 scales in registers. Every
/// variant (64 / 128 tokens, one or two tiles per warpgroup, picked by M
/// and N), split-K with the ticket reduction (automatic and forced 1 / 3
/// splits), M from 9 (`Auto` takes it from 9 rows for 8-bit weights) and not
/// a multiple of the token tile, N not a multiple of 64, K
/// not a multiple of 64 (formats' K) and a long K (4096, also through
/// `Auto`). An FP8 block weight whose scales span more than f16 can hold
/// after one power-of-two shift is `Unsupported` when forced (and `Auto`
/// keeps the other paths for it, correctly); so is a device other than
/// sm_90.
#[test]
#[ignore = "needs a CUDA GPU"]
fn wgmma_ws_formats_match_reference() {
    use marlin_cuda::wgemm::wgmma_ws::wx_ws_format_ok;
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let forced = GemmOptions {
        path: GemmPath::WgmmaWs,
        splits: None,
    };
    if dev.compute_capability() != (9, 0) {
        let q = quantized(QuantScheme::int8_per_channel(), 64, 256, 1);
        let w = WxWeight::from_quant(&dev, &q).expect("upload");
        let a = dev.upload("A", &random_activations(64, 256, 2)).expect("A");
        let mut c = dev.alloc_zeros::<f16>("C", 64 * 64).expect("C");
        let err = wx_gemm(&dev, &a, 64, &w, &mut c, &mut ws, forced).expect_err("not sm_90");
        assert!(matches!(err, CudaError::Unsupported(_)), "{err}");
        println!("SKIP wgmma ws formats: not sm_90 ({err})");
        return;
    }
    for (name, scheme, k) in formats() {
        let w = WxWeight::from_quant(&dev, &quantized(scheme, 64, k, 5)).expect("upload");
        assert!(wx_ws_format_ok(&w), "{name}: no warp-specialised entry");
        for &(m, n) in &[
            (1, 200),
            (3, 200),
            (8, 200),
            (9, 200),
            (17, 200),
            (64, 200),
            (100, 320),
            (256, 200),
            (300, 520),
        ] {
            for splits in [None, Some(1), Some(3)] {
                let opts = GemmOptions {
                    path: GemmPath::WgmmaWs,
                    splits,
                };
                check_format::<f16>(&dev, &mut ws, "ws ", name, scheme, (m, n, k), opts, TOL);
            }
        }
        // Auto below 17 rows, where some formats take this kernel (9..16).
        for m in [9, 12, 16] {
            let opts = GemmOptions::default();
            check_format::<f16>(&dev, &mut ws, "auto ", name, scheme, (m, 200, k), opts, TOL);
        }
        // A long K (64 chunks), automatic splits, and Auto from its M on.
        for path in [GemmPath::WgmmaWs, GemmPath::Auto] {
            let opts = GemmOptions { path, splits: None };
            check_format::<f16>(
                &dev,
                &mut ws,
                "ws ",
                name,
                scheme,
                (128, 256, 4096),
                opts,
                TOL,
            );
        }
    }
    // FP8 128 x 128 blocks whose scales span ~2^36: no f16 shift holds both.
    let (n, k) = (256, 1024);
    let spread: Vec<f32> = (0..n * k)
        .map(|i| {
            let mag = if i / k < 128 { 1.0e4 } else { 1.0e-7 };
            mag * (((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        })
        .collect();
    let q = marlin_quant::quantize_rtn(
        &spread,
        n,
        k,
        QuantScheme::fp8_e4m3_block128(),
        &marlin_quant::RtnOptions::min_max(),
    )
    .expect("quantize");
    let w = WxWeight::from_quant(&dev, &q).expect("upload");
    assert!(!wx_ws_format_ok(&w));
    let a = dev.upload("A", &random_activations(64, k, 6)).expect("A");
    let mut c = dev.alloc_zeros::<f16>("C", 64 * n).expect("C");
    let err = wx_gemm(&dev, &a, 64, &w, &mut c, &mut ws, forced).expect_err("scale spread");
    assert!(matches!(err, CudaError::Unsupported(_)), "{err}");
    println!("PASS ws refuses a wide FP8 scale spread: {err}");
    let plan = wx_gemm(&dev, &a, 64, &w, &mut c, &mut ws, GemmOptions::default()).expect("Auto");
    assert_ne!(plan.path, GemmPath::WgmmaWs);
    println!("PASS Auto on it: {:?}", plan.path);
}

fn rel_l2(got: &[f16], want: &[f64]) -> f64 {
    let (mut e2, mut r2) = (0f64, 0f64);
    for (g, r) in got.iter().zip(want) {
        let g = f64::from(g.to_f32());
        if !g.is_finite() {
            return f64::INFINITY;
        }
        e2 += (g - r) * (g - r);
        r2 += r * r;
    }
    (e2 / r2.max(1e-30)).sqrt()
}

fn reference(q: &QuantTensor, a_host: &[f16], m: usize) -> Vec<f64> {
    let w_ref: Vec<f64> = q
        .dequantize()
        .expect("dequantize")
        .iter()
        .map(|v| f64::from(*v))
        .collect();
    let a_ref: Vec<f64> = a_host[..m * q.cols]
        .iter()
        .map(|v| f64::from(v.to_f32()))
        .collect();
    matmul_ref(&a_ref, &w_ref, m, q.rows, q.cols)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_act_order_matches_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let (n, k) = (200, 1024);
    for (name, scheme) in [
        ("int4g128-act", QuantScheme::int4_sym(128)),
        ("int4g128z-act", QuantScheme::int4_asym(128)),
    ] {
        let seed = fresh_seed();
        let q = act_order_int4(scheme, n, k, 128, seed);
        let w = Int4ActOrderWeight::from_quant(&dev, &q).expect("permute + upload");
        for &m in &[1usize, 3, 17, 64] {
            let a_host = random_activations(m, k, seed ^ m as u64);
            let want = reference(&q, &a_host, m);
            let a = dev.upload("A", &a_host).expect("A");
            let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("C");
            let mut gathered = dev
                .alloc_zeros::<f16>("gathered A", m * k)
                .expect("scratch");
            for launch in 0..2 {
                dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
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
                let rel = rel_l2(&dev.download(&c).expect("download"), &want);
                assert!(
                    rel < REL_L2_TOL,
                    "{name} M={m} {plan:?} seed={seed} launch {launch}: rel L2 {rel:.3e}"
                );
                if launch == 0 {
                    println!(
                        "PASS {name} {:?} M={m} N={n} K={k} rel_l2={rel:.2e}",
                        plan.path
                    );
                }
            }
        }
    }
    // Without a g_idx the act-order path is an error, not a wrong answer.
    let plain = quantized(QuantScheme::int4_sym(128), 64, 256, 3);
    assert!(Int4ActOrderWeight::from_quant(&dev, &plain).is_err());
}

/// Every non-INT4 format and INT4 act-order through the prepared entry
/// points, recorded in one CUDA graph in global capture mode (any
/// allocation, module load or synchronisation fails the capture), replayed
/// twice on poisoned outputs.
#[test]
#[ignore = "needs a CUDA GPU"]
fn prepared_formats_record_in_a_cuda_graph() {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let dev = device();
    let seed = fresh_seed();
    let (n, k) = (192, 1024);
    let ms = [1usize, 17, 64];
    let max_m = 64;
    let a_host = random_activations(max_m, k, seed ^ 11);
    let a = dev.upload("A", &a_host).expect("A");
    let schemes = [
        ("mxfp4", QuantScheme::mxfp4()),
        ("int8", QuantScheme::int8_per_channel()),
        ("fp8", QuantScheme::fp8_e4m3_per_channel()),
        ("int3g128z", QuantScheme::int3_asym(128)),
        ("int2g64z", QuantScheme::int2_asym(64)),
    ];
    let tensors: Vec<(&str, QuantTensor)> = schemes
        .iter()
        .enumerate()
        .map(|(i, (name, s))| (*name, quantized(*s, n, k, seed + i as u64)))
        .collect();
    let weights: Vec<WxWeight> = tensors
        .iter()
        .map(|(_, q)| WxWeight::from_quant(&dev, q).expect("upload"))
        .collect();
    let act_q = act_order_int4(QuantScheme::int4_asym(128), n, k, 128, seed ^ 3);
    let act_w = Int4ActOrderWeight::from_quant(&dev, &act_q).expect("act-order upload");
    let calls = (weights.len() + 1) * ms.len();
    let c_len = calls * max_m * n;
    let mut c = dev.alloc_zeros::<f16>("C", c_len).expect("C");
    let mut gathered = dev
        .alloc_zeros::<f16>("gathered A", max_m * k)
        .expect("scratch");
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let opts = GemmOptions::default();
    {
        let mut c_view = c.slice_mut(0..n);
        let err = wx_gemm_prepared(
            &dev,
            &a.as_view(),
            1,
            &weights[0],
            &mut c_view,
            &mut ws,
            opts,
        )
        .expect_err("an unprepared weight must be an error");
        println!("PASS unprepared: {err}");
    }
    for &m in &ms {
        for w in &weights {
            ws.prepare_wx(&dev, w, m, opts).expect("prepare");
        }
        prepare_act_order(&dev, &mut ws, &act_w, m, opts).expect("prepare act-order");
    }
    dev.synchronize().expect("sync");
    let stream = dev.stream().clone();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .expect("begin capture");
    let mut recorded = Ok(());
    'record: for (mi, &m) in ms.iter().enumerate() {
        let a_view = a.slice(0..m * k);
        for (wi, w) in weights.iter().enumerate() {
            let at = (mi * (weights.len() + 1) + wi) * max_m * n;
            let mut c_view = c.slice_mut(at..at + m * n);
            if let Err(e) = wx_gemm_prepared(&dev, &a_view, m, w, &mut c_view, &mut ws, opts) {
                recorded = Err(e);
                break 'record;
            }
        }
        let at = (mi * (weights.len() + 1) + weights.len()) * max_m * n;
        let mut c_view = c.slice_mut(at..at + m * n);
        let mut g_view = gathered.slice_mut(0..m * k);
        if let Err(e) = int4_act_order_gemm_prepared(
            &dev,
            &a_view,
            m,
            &act_w,
            &mut c_view,
            &mut ws,
            &mut g_view,
            opts,
        ) {
            recorded = Err(e);
            break 'record;
        }
    }
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .expect("end capture");
    recorded.expect("record the GEMMs");
    let graph = graph.expect("a graph");
    for replay in 0..2 {
        dev.write(&mut c, &vec![f16::NAN; c_len]).expect("poison");
        graph.launch().expect("graph launch");
        let got = dev.download(&c).expect("download");
        for (mi, &m) in ms.iter().enumerate() {
            let all = tensors
                .iter()
                .map(|(name, q)| (*name, q))
                .chain(std::iter::once(("int4g128z-act", &act_q)));
            for (wi, (name, q)) in all.enumerate() {
                let at = (mi * (weights.len() + 1) + wi) * max_m * n;
                let want = reference(q, &a_host, m);
                let rel = rel_l2(&got[at..at + m * n], &want);
                assert!(
                    rel < REL_L2_TOL,
                    "graph replay {replay} {name} M={m} seed={seed}: rel L2 {rel:.3e}"
                );
                println!("PASS graph replay {replay} {name} M={m} rel_l2={rel:.2e}");
            }
        }
    }
}
