//! `GpuLinear` built from quantized tensors of every Marlin-layout format
//! (INT4, INT4 act-order, MXFP4, INT8, FP8, INT3, INT2) runs its product
//! inside a CUDA graph recorded in global capture mode (any allocation,
//! module load or synchronisation fails the capture), replayed on poisoned
//! outputs and checked against `QuantTensor::dequantize` + an f64 matmul.
//! Skips (passes) without a GPU.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use marlin_cuda::int4::random::XorShift;
use marlin_cuda::int4::reference::matmul_ref;
use marlin_cuda::CudaDevice;
use marlin_io::checkpoint::ActivationRotation;
use marlin_models::gpu::linear::{GpuLinear, LinearScratch};
use marlin_models::layers::hadamard;
use marlin_models::source::TensorData;
use marlin_quant::{quantize_rtn, QuantScheme, QuantTensor, RtnOptions};

/// f32 activations rounded to f16 at the GEMM input, f16 output.
const REL_L2_TOL: f64 = 3e-3;

fn gpu_or_skip() -> Option<Arc<CudaDevice>> {
    match marlin_cuda::device_count() {
        Ok(_) => Some(CudaDevice::new(0).expect("device 0")),
        Err(e) => {
            eprintln!("SKIPPED: no usable GPU ({e})");
            None
        }
    }
}

fn quantized(scheme: QuantScheme, n: usize, k: usize, seed: u64, act_order: bool) -> QuantTensor {
    let mut rng = XorShift::new(seed);
    let w: Vec<f32> = (0..n * k).map(|_| (rng.next_f32() - 0.5) * 0.1).collect();
    let mut q = quantize_rtn(&w, n, k, scheme, &RtnOptions::min_max()).expect("quantize");
    if act_order {
        // GPTQ-style g_idx: a random column order, group = position / 128.
        let mut order: Vec<usize> = (0..k).collect();
        for i in (1..k).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let mut g_idx = vec![0u32; k];
        for (pos, &c) in order.iter().enumerate() {
            g_idx[c] = (pos / 128) as u32;
        }
        q.g_idx = Some(g_idx);
    }
    q
}

#[test]
fn every_quantized_format_decodes_inside_a_cuda_graph() {
    let Some(dev) = gpu_or_skip() else {
        return;
    };
    let (n, k, max_m) = (160, 512, 4);
    let formats = [
        ("int4g128", QuantScheme::int4_sym(128), false),
        ("int4g128z-act", QuantScheme::int4_asym(128), true),
        ("mxfp4", QuantScheme::mxfp4(), false),
        ("int8", QuantScheme::int8_per_channel(), false),
        ("fp8", QuantScheme::fp8_e4m3_per_channel(), false),
        ("int3g128z", QuantScheme::int3_asym(128), false),
        ("int2g64z", QuantScheme::int2_asym(64), false),
    ];
    let mut rng = XorShift::new(17);
    let x_host: Vec<f32> = (0..max_m * k).map(|_| rng.next_f32() - 0.5).collect();
    let x = dev.upload("x", &x_host).expect("x");
    let mut scratch = LinearScratch::new(&dev, max_m, k, n).expect("scratch");
    let mut layers = Vec::new();
    for (i, (name, scheme, act)) in formats.iter().enumerate() {
        let q = quantized(*scheme, n, k, 100 + i as u64, *act);
        let l = GpuLinear::upload(&dev, name, TensorData::Quant(q.clone())).expect("upload");
        assert!(l.uses_f16_scratch());
        l.prepare(&dev, max_m).expect("prepare");
        let y = dev.alloc_zeros::<f32>("y", max_m * n).expect("y");
        layers.push((*name, q, l, y));
    }
    for m in [1usize, max_m] {
        // First (un-captured) call at this m sizes the workspace.
        for (_, _, l, y) in layers.iter_mut() {
            l.forward(&dev, &x, m, y, &mut scratch)
                .expect("warm-up forward");
        }
        dev.synchronize().expect("sync");
        let stream = dev.stream().clone();
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
            .expect("begin capture");
        let mut recorded = Ok(());
        for (_, _, l, y) in layers.iter_mut() {
            if let Err(e) = l.forward(&dev, &x, m, y, &mut scratch) {
                recorded = Err(e);
                break;
            }
        }
        let graph = stream
            .end_capture(CUgraphInstantiate_flags(0))
            .expect("end capture");
        recorded.expect("record every format's forward");
        let graph = graph.expect("a graph");
        for (_, _, _, y) in layers.iter_mut() {
            dev.write(y, &vec![f32::NAN; max_m * n]).expect("poison");
        }
        graph.launch().expect("graph launch");
        let x_ref: Vec<f64> = x_host[..m * k].iter().map(|v| f64::from(*v)).collect();
        for (name, q, _, y) in &layers {
            let w_ref: Vec<f64> = q
                .dequantize()
                .expect("dequantize")
                .iter()
                .map(|v| f64::from(*v))
                .collect();
            let want = matmul_ref(&x_ref, &w_ref, m, n, k);
            let got = dev.download(y).expect("download");
            let (mut e2, mut r2) = (0f64, 0f64);
            for (g, r) in got[..m * n].iter().zip(&want) {
                let g = f64::from(*g);
                assert!(g.is_finite(), "{name} M={m}: non-finite output");
                e2 += (g - r) * (g - r);
                r2 += r * r;
            }
            let rel = (e2 / r2.max(1e-30)).sqrt();
            assert!(rel < REL_L2_TOL, "{name} M={m}: rel L2 {rel:.3e}");
            println!("PASS GpuLinear graph {name} M={m} rel_l2={rel:.2e}");
        }
    }
}

/// An MR-GPTQ (Hadamard-rotated) linear on the GPU: the input rows are
/// rotated on the device, then multiplied by the rotated weight; checked
/// against the CPU rotation (`layers::hadamard::rotate_rows`) + the
/// dequantized weight in f64, at K not a multiple of the block (padding),
/// for INT4 and INT8 inner weights. A rotated weight whose columns do not
/// match the rotation's padded K is refused at upload.
#[test]
fn rotated_linear_matches_cpu_rotation() {
    let Some(dev) = gpu_or_skip() else {
        return;
    };
    let (n, k, block, max_m) = (96, 200, 64, 3);
    let rot = ActivationRotation::new(k, block).expect("rotation");
    assert_eq!(rot.padded_k, 256);
    let mut rng = XorShift::new(23);
    let x_host: Vec<f32> = (0..max_m * k).map(|_| rng.next_f32() - 0.5).collect();
    let x = dev.upload("x", &x_host).expect("x");
    let mut scratch = LinearScratch::new(&dev, max_m, rot.padded_k, n).expect("scratch");
    for (i, (name, scheme)) in [
        ("int4g64", QuantScheme::int4_sym(64)),
        ("int8", QuantScheme::int8_per_channel()),
    ]
    .into_iter()
    .enumerate()
    {
        let q = quantized(scheme, n, rot.padded_k, 300 + i as u64, false);
        let l = GpuLinear::upload(
            &dev,
            name,
            TensorData::RotatedQuant {
                tensor: q.clone(),
                rotation: rot,
            },
        )
        .expect("upload");
        assert_eq!((l.rows(), l.cols(), l.kernel_cols()), (n, k, rot.padded_k));
        l.prepare(&dev, max_m).expect("prepare");
        let w_ref: Vec<f64> = q
            .dequantize()
            .expect("dequantize")
            .iter()
            .map(|v| f64::from(*v))
            .collect();
        let mut y = dev.alloc_zeros::<f32>("y", max_m * n).expect("y");
        for m in [1usize, max_m] {
            dev.write(&mut y, &vec![f32::NAN; max_m * n])
                .expect("poison");
            l.forward(&dev, &x, m, &mut y, &mut scratch)
                .expect("forward");
            let mut xr = Vec::new();
            hadamard::rotate_rows(&rot, &x_host[..m * k], m, &mut xr);
            let xr: Vec<f64> = xr.iter().map(|v| f64::from(*v)).collect();
            let want = matmul_ref(&xr, &w_ref, m, n, rot.padded_k);
            let got = dev.download(&y).expect("download");
            let (mut e2, mut r2) = (0f64, 0f64);
            for (g, r) in got[..m * n].iter().zip(&want) {
                let g = f64::from(*g);
                assert!(g.is_finite(), "{name} M={m}: non-finite output");
                e2 += (g - r) * (g - r);
                r2 += r * r;
            }
            let rel = (e2 / r2.max(1e-30)).sqrt();
            assert!(rel < REL_L2_TOL, "{name} M={m}: rel L2 {rel:.3e}");
            assert!(
                got[m * n..].iter().all(|v| v.is_nan()),
                "{name} M={m}: wrote past its rows"
            );
            println!("PASS GpuLinear rotated {name} M={m} rel_l2={rel:.2e}");
        }
    }
    // Columns that do not match the rotation's padded K.
    let q = quantized(QuantScheme::int4_sym(64), n, 192, 9, false);
    let err = GpuLinear::upload(
        &dev,
        "bad",
        TensorData::RotatedQuant {
            tensor: q,
            rotation: rot,
        },
    )
    .err()
    .expect("mismatched columns must be refused");
    assert!(err.to_string().contains("pads K to 256"), "{err}");
}
