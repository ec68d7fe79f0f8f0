//! GGUF block types on the GPU (`marlin_cuda::ggml`) against the f64
//! product of the reference dequantization, and against the CPU kernels.
//! Without a CUDA device every test prints why and returns.
//!
//! Fresh random blocks every run (seed from the clock, printed on failure),
//! outputs poisoned with NaN before every launch, output buffers longer than
//! needed (the tail must stay untouched).
//!
//! Tolerances (per output, Σ over the K products):
//! - decode (block types: m <= 8, or m <= 16 on weights of at most 2^21
//!   elements, in launches of 8 rows): activations are rounded to int8 blocks of
//!   32 with d = max|x|/127, so |y - y_exact| <= Σ_i |w_i| d_blk(i)/2, plus
//!   1e-5 Σ|w x| of fp32 rounding. Tighter: against Σ w_i x̂_i with the
//!   rounded activations x̂ replicated on the host, 1e-4 Σ|w x̂|.
//! - prefill (larger m, block types and F16): weight and activation rounded to
//!   f16 (2^-11 relative each): 1.1e-3 Σ|w x| + 3e-8 Σ|x| (f16 subnormals).
//! - F32 / BF16 weights: fp32 throughout: 1e-5 Σ|w x|.
//! - CPU (`CpuWeight`): the GPU bound plus the CPU's own activation bound
//!   (int8 blocks of 32, or 256 for Q4_K/Q6_K; Q5_K and dense run exact).
#![cfg(feature = "cuda")]

mod common;
use common::fresh_seed;

use std::sync::Arc;

use marlin_cpu::CpuWeight;
use marlin_cuda::ggml::random::{random_activations_f32, random_ggml_tensor};
use marlin_cuda::ggml::{
    block_decode_max_rows, GgmlGpuWeight, DECODE_MAX_ROWS, SMALL_DECODE_MAX_ROWS,
};
use marlin_cuda::{CudaDevice, CudaError};
use marlin_quant::GgmlType;

const TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];
/// (rows, cols): rows not a multiple of the 4 rows per block.
const SHAPES: [(usize, usize); 3] = [(1, 256), (33, 4096), (577, 1280)];
/// Decode in one launch; on small weights in two (8 + 1, 8 + 8) and
/// prefill on the others; prefill.
const MS: [usize; 7] = [1, 3, 8, 9, 16, 17, 64];

fn device() -> Option<Arc<CudaDevice>> {
    match CudaDevice::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("SKIP: no usable CUDA device: {e}");
            None
        }
    }
}

fn is_dense(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// The CPU's rounding of one activation block (marlin-cpu ggml::act).
fn quantize_block(x: &[f32]) -> (f32, Vec<f32>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let xq = x
        .iter()
        .map(|&v| d * (v * id).round_ties_even().clamp(-128.0, 127.0))
        .collect();
    (d, xq)
}

/// Per output: (Σ|w| d_blk / 2 with blocks of `len`, the rounded x̂ rows).
fn act_bound(
    w: &[f32],
    x: &[f32],
    rows: usize,
    cols: usize,
    m: usize,
    len: usize,
) -> (Vec<f64>, Vec<f32>) {
    let mut xq = vec![0f32; m * cols];
    let mut d = vec![0f32; m * cols / len];
    for j in 0..m {
        for b in 0..cols / len {
            let range = j * cols + b * len..j * cols + (b + 1) * len;
            let (db, q) = quantize_block(&x[range.clone()]);
            d[j * cols / len + b] = db;
            xq[range].copy_from_slice(&q);
        }
    }
    let mut bound = vec![0f64; m * rows];
    for j in 0..m {
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            bound[j * rows + r] = wr
                .iter()
                .enumerate()
                .map(|(k, v)| f64::from(v.abs()) * f64::from(d[j * cols / len + k / len]) / 2.0)
                .sum();
        }
    }
    (bound, xq)
}

/// (Σ w x, Σ |w x|, Σ |x|) per output in f64.
fn exact(w: &[f32], x: &[f32], rows: usize, cols: usize, m: usize) -> Vec<(f64, f64, f64)> {
    let mut out = Vec::with_capacity(m * rows);
    for j in 0..m {
        let xr = &x[j * cols..(j + 1) * cols];
        let sx: f64 = xr.iter().map(|v| f64::from(v.abs())).sum();
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            let (mut s, mut a) = (0f64, 0f64);
            for (wv, xv) in wr.iter().zip(xr) {
                let p = f64::from(*wv) * f64::from(*xv);
                s += p;
                a += p.abs();
            }
            out.push((s, a, sx));
        }
    }
    out
}

fn check_matmul_type(dev: &Arc<CudaDevice>, ty: GgmlType, rows: usize, cols: usize, x_scale: f32) {
    let seed = fresh_seed();
    let t = random_ggml_tensor(ty, rows, cols, seed).expect("random tensor");
    let w_ref = t.dequantize().expect("reference dequant");
    let max_m = *MS.iter().max().unwrap_or(&1);
    let mut x: Vec<f32> = random_activations_f32(max_m, cols, seed ^ 0x5EED);
    x.iter_mut().for_each(|v| *v *= x_scale);
    let cpu = CpuWeight::from_ggml(t.clone()).expect("CPU weight");
    let gpu = GgmlGpuWeight::upload(dev, &t).expect("upload");
    assert_eq!((gpu.ty(), gpu.rows(), gpu.cols()), (ty, rows, cols));
    gpu.prepare(dev, max_m).expect("prepare");
    let x_dev = dev.upload("x", &x).expect("upload x");
    let cpu_len = match ty {
        GgmlType::Q4K | GgmlType::Q6K => 256,
        GgmlType::Q5K => 0,
        _ if is_dense(ty) => 0,
        _ => 32,
    };
    for m in MS {
        let xm = &x[..m * cols];
        let want = exact(&w_ref, xm, rows, cols, m);
        let decode_rows = if is_dense(ty) {
            DECODE_MAX_ROWS
        } else {
            block_decode_max_rows(rows, cols)
        };
        let decode_q = m <= decode_rows && !is_dense(ty);
        let (gpu_act, xq) = if decode_q {
            act_bound(&w_ref, xm, rows, cols, m, 32)
        } else {
            (vec![0.0; m * rows], Vec::new())
        };
        let tight = if decode_q {
            exact(&w_ref, &xq, rows, cols, m)
        } else {
            Vec::new()
        };
        let cpu_act = if cpu_len > 0 {
            act_bound(&w_ref, xm, rows, cols, m, cpu_len).0
        } else {
            vec![0.0; m * rows]
        };
        let mut y_cpu = vec![0f32; m * rows];
        cpu.matmul(xm, m, &mut y_cpu).expect("CPU matmul");

        const TAIL: usize = 5;
        let mut y = dev
            .alloc_zeros::<f32>("y", m * rows + TAIL)
            .expect("alloc y");
        let path = if m <= decode_rows {
            "decode"
        } else {
            "prefill"
        };
        for launch in 0..2 {
            dev.write(&mut y, &vec![f32::NAN; m * rows + TAIL])
                .expect("poison");
            gpu.matmul(dev, &x_dev, m, &mut y).expect("matmul");
            let got = dev.download(&y).expect("download");
            assert!(
                got[m * rows..].iter().all(|v| v.is_nan()),
                "{ty:?}: wrote past m*rows"
            );
            let (mut worst, mut worst_tight, mut worst_cpu) = (0f64, 0f64, 0f64);
            let (mut err2, mut ref2) = (0f64, 0f64);
            for i in 0..m * rows {
                let g = f64::from(got[i]);
                let (s, a, sx) = want[i];
                let ctx = || {
                    format!(
                        "{} {rows}x{cols} m={m} {path} x_scale={x_scale} seed={seed} launch {launch}: y[{}, {}]",
                        ty.name(),
                        i / rows,
                        i % rows
                    )
                };
                assert!(g.is_finite(), "{}: {g} (not written, or overflow)", ctx());
                let bound = if is_dense(ty) {
                    if ty == GgmlType::F16 && m > DECODE_MAX_ROWS {
                        1.1e-3 * a + 3e-8 * sx + 1e-6
                    } else {
                        1e-5 * a + 1e-6
                    }
                } else if decode_q {
                    gpu_act[i] + 1e-5 * a + 1e-6
                } else {
                    1.1e-3 * a + 3e-8 * sx + 1e-6
                };
                let err = (g - s).abs();
                assert!(
                    err <= bound,
                    "{}: got {g}, exact {s}, bound {bound:.3e}",
                    ctx()
                );
                worst = worst.max(err / bound);
                if decode_q {
                    let (st, at, _) = tight[i];
                    let tb = 1e-4 * at + 1e-6;
                    let et = (g - st).abs();
                    assert!(
                        et <= tb,
                        "{}: got {g}, with the host-rounded activations {st}, bound {tb:.3e}",
                        ctx()
                    );
                    worst_tight = worst_tight.max(et / tb);
                }
                let cb = bound + cpu_act[i] + 1e-5 * a + 1e-6;
                let ec = (g - f64::from(y_cpu[i])).abs();
                assert!(
                    ec <= cb,
                    "{}: got {g}, CPU {}, bound {cb:.3e}",
                    ctx(),
                    y_cpu[i]
                );
                worst_cpu = worst_cpu.max(ec / cb);
                err2 += (g - s) * (g - s);
                ref2 += s * s;
            }
            if launch == 0 {
                println!(
                    "PASS {:>5} {rows:>3}x{cols:<4} m={m:<2} {path:<7} x*{x_scale:<6} rel_l2={:.2e} err/bound={worst:.3} tight={worst_tight:.3} vs_cpu={worst_cpu:.3}",
                    ty.name(),
                    (err2 / ref2.max(1e-300)).sqrt()
                );
            }
        }
    }
}

#[test]
fn matmul_every_type_against_reference_and_cpu() {
    let Some(dev) = device() else { return };
    for ty in TYPES {
        for (rows, cols) in SHAPES {
            check_matmul_type(&dev, ty, rows, cols, 1.0);
        }
    }
}

/// Activations far beyond the f16 range (Gemma's can be large): the
/// prefill's per-row power-of-two scaling keeps them finite and accurate.
/// A decode call of many rows (launches of 8 rows and the rest) gives every
/// row the bits a call of that row alone gives: the batch does not change
/// a row's result.
#[test]
fn decode_rows_do_not_depend_on_the_batch() {
    let Some(dev) = device() else { return };
    let (rows, cols, m) = (37, 1024, SMALL_DECODE_MAX_ROWS);
    assert_eq!(block_decode_max_rows(rows, cols), m);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ] {
        let seed = fresh_seed();
        let t = random_ggml_tensor(ty, rows, cols, seed).expect("random tensor");
        let gpu = GgmlGpuWeight::upload(&dev, &t).expect("upload");
        gpu.prepare(&dev, m).expect("prepare");
        let x = random_activations_f32(m, cols, seed ^ 0x5EED);
        let x_dev = dev.upload("x", &x).expect("upload x");
        let mut y = dev.alloc_zeros::<f32>("y", m * rows).expect("alloc y");
        gpu.matmul(&dev, &x_dev, m, &mut y).expect("matmul");
        let all = dev.download(&y).expect("download");
        for r in [0, 7, 8, 9, m - 1] {
            let x1 = dev
                .upload("x row", &x[r * cols..(r + 1) * cols])
                .expect("upload row");
            let mut y1 = dev.alloc_zeros::<f32>("y row", rows).expect("alloc");
            gpu.matmul(&dev, &x1, 1, &mut y1).expect("matmul row");
            let one = dev.download(&y1).expect("download");
            for (c, (a, b)) in all[r * rows..(r + 1) * rows].iter().zip(&one).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{} seed={seed}: row {r} of {m} column {c}: {a} in the batch, {b} alone",
                    ty.name()
                );
            }
        }
    }
    println!("PASS decode rows bit-equal alone and in a batch of {m}");
}

/// A small weight prepared for many rows keeps an f16 copy and skips the
/// per-call dequantization; an unprepared twin dequantizes per call into
/// the scratch: the same bits.
#[test]
fn small_weight_f16_copy_matches_per_call_dequantization() {
    let Some(dev) = device() else { return };
    let (rows, cols, m) = (37, 1024, 64);
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4K] {
        let seed = fresh_seed();
        let t = random_ggml_tensor(ty, rows, cols, seed).expect("random tensor");
        let copied = GgmlGpuWeight::upload(&dev, &t).expect("upload");
        copied.prepare(&dev, m).expect("prepare");
        // Prepared for few rows only: no copy; its scratch grows at the call.
        let per_call = GgmlGpuWeight::upload(&dev, &t).expect("upload");
        per_call.prepare(&dev, 1).expect("prepare");
        let x = dev
            .upload("x", &random_activations_f32(m, cols, seed ^ 0x5EED))
            .expect("upload x");
        let mut outs = Vec::new();
        for w in [&copied, &per_call] {
            let mut y = dev.alloc_zeros::<f32>("y", m * rows).expect("alloc y");
            w.matmul(&dev, &x, m, &mut y).expect("matmul");
            outs.push(dev.download(&y).expect("download"));
        }
        if let Some(i) = (0..m * rows).find(|&i| outs[0][i].to_bits() != outs[1][i].to_bits()) {
            panic!(
                "{} seed={seed}: y[{i}] {} with the f16 copy, {} dequantized per call",
                ty.name(),
                outs[0][i],
                outs[1][i]
            );
        }
    }
    println!("PASS small weights' f16 copy equals per-call dequantization");
}

#[test]
fn matmul_large_activations() {
    let Some(dev) = device() else { return };
    for ty in [GgmlType::Q4K, GgmlType::Q8_0, GgmlType::F16] {
        check_matmul_type(&dev, ty, 33, 1024, 3.0e5);
        check_matmul_type(&dev, ty, 33, 1024, 1.0e-4);
    }
}

#[test]
fn get_rows_bit_exact() {
    let Some(dev) = device() else { return };
    for ty in TYPES {
        for (rows, cols) in [(1, 256), (577, 1280), (40, 4096)] {
            let seed = fresh_seed();
            let t = random_ggml_tensor(ty, rows, cols, seed).expect("random tensor");
            let w_ref = t.dequantize().expect("reference dequant");
            let gpu = GgmlGpuWeight::upload(&dev, &t).expect("upload");
            let ids: Vec<u32> = vec![
                0,
                (rows - 1) as u32,
                rows as u32,
                u32::MAX,
                (rows / 2) as u32,
                0,
                (seed % rows as u64) as u32,
            ];
            let n = ids.len();
            let ids_dev = dev.upload("ids", &ids).expect("upload ids");
            let mut out = dev.alloc_zeros::<f32>("rows", n * cols + 3).expect("alloc");
            for scale in [1.0f32, 0.377, 25.3] {
                dev.write(&mut out, &vec![f32::NAN; n * cols + 3])
                    .expect("poison");
                gpu.get_rows(&dev, &ids_dev, n, scale, &mut out)
                    .expect("get_rows");
                let got = dev.download(&out).expect("download");
                assert!(
                    got[n * cols..].iter().all(|v| v.is_nan()),
                    "wrote past n*cols"
                );
                for (i, &id) in ids.iter().enumerate() {
                    for k in 0..cols {
                        let want = if (id as usize) < rows {
                            w_ref[id as usize * cols + k] * scale
                        } else {
                            0.0
                        };
                        let g = got[i * cols + k];
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "{} {rows}x{cols} seed={seed} id={id} k={k} scale={scale}: got {g}, want {want}",
                            ty.name()
                        );
                    }
                }
            }
            println!("PASS get_rows {:>5} {rows}x{cols} bit-exact", ty.name());
        }
    }
}

#[test]
fn bad_calls_are_errors() {
    let Some(dev) = device() else { return };
    let t = random_ggml_tensor(GgmlType::Q2K, 4, 256, 1).expect("random");
    assert!(matches!(
        GgmlGpuWeight::upload(&dev, &t),
        Err(CudaError::Unsupported(_))
    ));
    let t = random_ggml_tensor(GgmlType::Q4_0, 4, 64, 1).expect("random");
    let w = GgmlGpuWeight::upload(&dev, &t).expect("upload");
    let x = dev.alloc_zeros::<f32>("x", 2 * 64 - 1).expect("alloc");
    let mut y = dev.alloc_zeros::<f32>("y", 8).expect("alloc");
    assert!(matches!(
        w.matmul(&dev, &x, 2, &mut y),
        Err(CudaError::Shape(_))
    ));
    let ids = dev.upload("ids", &[0u32, 1]).expect("upload");
    let mut out = dev.alloc_zeros::<f32>("out", 64).expect("alloc");
    assert!(matches!(
        w.get_rows(&dev, &ids, 2, 1.0, &mut out),
        Err(CudaError::Shape(_))
    ));
    assert!(w.matmul(&dev, &x, 0, &mut y).is_ok());
    println!("PASS bad calls");
}
