//! FP4 (MXFP4, NVFP4), INT8 and FP8 (per channel, 128 x 128 blocks) GEMMs on
//! the GPU against `QuantTensor::dequantize` + an f64 matmul. Need a CUDA GPU
//! (`#[ignore]`d; `scripts/gpu_entry.sh` runs them with `--include-ignored`).
//! Fresh random weights and activations every run (seed printed on
//! failure), outputs poisoned with NaN before every launch.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use half::f16;
use marlin_cuda::int4::gemm::{GemmOptions, GemmPath, GemmWorkspace};
use marlin_cuda::int4::random::{random_activations, XorShift};
use marlin_cuda::int4::reference::matmul_ref;
use marlin_cuda::wgemm::gemm::{wx_gemm, WxWeight};
use marlin_cuda::{CudaDevice, CudaError};
use marlin_quant::{quantize_rtn, QuantScheme, QuantTensor, RtnOptions};

/// f16 activations and output, fp32 accumulation; FP4 scales are rounded to
/// f16 (exact for E8M0, E4M3 in range). Measured errors are printed.
const REL_L2_TOL: f64 = 2e-3;

fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(4321)
}

fn device() -> Arc<CudaDevice> {
    CudaDevice::new(0).expect("a CUDA device (these tests run on the GPU machine)")
}

fn quantized(scheme: QuantScheme, n: usize, k: usize, seed: u64) -> QuantTensor {
    let mut rng = XorShift::new(seed);
    let w: Vec<f32> = (0..n * k)
        .map(|i| (rng.next_f32() - 0.5) * 0.05 * (1.0 + (i / k % 5) as f32))
        .collect();
    quantize_rtn(&w, n, k, scheme, &RtnOptions::min_max()).expect("quantize")
}

#[allow(clippy::too_many_arguments)]
fn check(
    dev: &Arc<CudaDevice>,
    ws: &mut GemmWorkspace,
    name: &str,
    scheme: QuantScheme,
    m: usize,
    n: usize,
    k: usize,
    opts: GemmOptions,
) {
    let seed = fresh_seed();
    let q = quantized(scheme, n, k, seed);
    let w_ref: Vec<f64> = q
        .dequantize()
        .expect("dequantize")
        .iter()
        .map(|v| f64::from(*v))
        .collect();
    let a_host = random_activations(m, k, seed ^ 0x5A5A);
    let a_ref: Vec<f64> = a_host.iter().map(|v| f64::from(v.to_f32())).collect();
    let want = matmul_ref(&a_ref, &w_ref, m, n, k);
    let w = WxWeight::from_quant(dev, &q).expect("repack + upload");
    let a = dev.upload("A", &a_host).expect("A");
    let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("C");
    for launch in 0..2 {
        dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
        let plan = wx_gemm(dev, &a, m, &w, &mut c, ws, opts).expect("launch");
        let got = dev.download(&c).expect("download");
        let (mut e2, mut r2) = (0f64, 0f64);
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            let g = f64::from(g.to_f32());
            assert!(
                g.is_finite(),
                "{name} M={m} N={n} K={k} {plan:?} seed={seed}: C[{}, {}] = {g}",
                i / n,
                i % n
            );
            e2 += (g - r) * (g - r);
            r2 += r * r;
        }
        let rel = (e2 / r2.max(1e-30)).sqrt();
        assert!(
            rel < REL_L2_TOL,
            "{name} M={m} N={n} K={k} {plan:?} seed={seed} launch {launch}: rel L2 {rel:.3e}"
        );
        if launch == 0 {
            println!(
                "PASS {name} {:?} M={m} N={n} K={k} splits={} rel_l2={rel:.2e}",
                plan.path, plan.splits
            );
        }
    }
}

fn formats() -> Vec<(&'static str, QuantScheme, usize)> {
    // (name, scheme, K): K not a multiple of the 64 tile (FP4 needs whole
    // groups of 32 / 16; the 8-bit formats take any K, also K % 8 != 0).
    vec![
        ("mxfp4", QuantScheme::mxfp4(), 1056),
        ("nvfp4", QuantScheme::nvfp4(), 1040),
        ("int8", QuantScheme::int8_per_channel(), 1001),
        ("fp8", QuantScheme::fp8_e4m3_per_channel(), 1000),
        ("fp8b128", QuantScheme::fp8_e4m3_block128(), 1000),
    ]
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn formats_match_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    for (name, scheme, k) in formats() {
        for &m in &[1, 3, 17, 64, 256] {
            for path in [GemmPath::Auto, GemmPath::Fused, GemmPath::DequantCublas] {
                let opts = GemmOptions { path, splits: None };
                check(&dev, &mut ws, name, scheme, m, 200, k, opts);
            }
        }
        // Aligned shape, several N tiles.
        check(
            &dev,
            &mut ws,
            name,
            scheme,
            8,
            320,
            2048,
            GemmOptions::default(),
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
            check(&dev, &mut ws, name, scheme, 12, 96, k, opts);
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
