//! `marlin-ggml-bench [--types q4_0,q4_k] [--shapes 4096x4096] [--ms 1,512]`:
//! GGUF block-type matmul on the GPU (`marlin_cuda::ggml`), per type, shape
//! (rows x cols) and m: median time (CUDA events, warmed up), GB/s of weight
//! bytes, % of the device-to-device copy bandwidth measured in the same run,
//! and for m > 8 the cuBLAS fp16 dense GEMM time of the same shape.
//! Weights rotate over enough copies (>= 256 MiB in all) that they stream
//! from device memory, not from the 50 MB L2. Exit status 1 on any error.

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::sys::CUevent_flags;
use half::f16;
use marlin_cuda::ggml::random::{random_activations_f32, random_ggml_tensor};
use marlin_cuda::ggml::{block_decode_max_rows, GgmlGpuWeight, DECODE_MAX_ROWS};
use marlin_cuda::{CudaDevice, CudaError, Result};
use marlin_quant::GgmlType;

const REPS: usize = 20;
const BATCHES: usize = 11;

fn driver_err(what: &str, e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver {
        context: what.to_string(),
        message: format!("{e:?}"),
    }
}

/// Median microseconds per call of `f` over BATCHES batches of REPS calls.
fn time_us(dev: &CudaDevice, mut f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    for i in 0..3 {
        f(i)?;
    }
    dev.synchronize()?;
    let ctx = dev.context();
    let start = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| driver_err("cuEventCreate", e))?;
    let end = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| driver_err("cuEventCreate", e))?;
    let mut samples = Vec::with_capacity(BATCHES);
    let mut call = 0;
    for _ in 0..BATCHES {
        start
            .record(dev.stream())
            .map_err(|e| driver_err("cuEventRecord", e))?;
        for _ in 0..REPS {
            f(call)?;
            call += 1;
        }
        end.record(dev.stream())
            .map_err(|e| driver_err("cuEventRecord", e))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| driver_err("cuEventElapsedTime", e))?;
        samples.push(f64::from(ms) * 1000.0 / REPS as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples[samples.len() / 2])
}

fn copies_for(bytes: usize) -> usize {
    (256usize << 20).div_ceil(bytes.max(1)).clamp(1, 512)
}

fn parse_type(s: &str) -> Option<GgmlType> {
    (0..64)
        .filter_map(GgmlType::from_id)
        .find(|t| t.name().eq_ignore_ascii_case(s))
}

fn parse_list<T>(s: &str, f: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    s.split(',').map(|v| f(v.trim())).collect()
}

fn parse_shape(s: &str) -> Option<(usize, usize)> {
    let (r, c) = s.split_once('x')?;
    Some((r.parse().ok()?, c.parse().ok()?))
}

struct Config {
    types: Vec<GgmlType>,
    shapes: Vec<(usize, usize)>,
    ms: Vec<usize>,
}

fn cublas_f16_us(
    dev: &Arc<CudaDevice>,
    blas: &CudaBlas,
    rows: usize,
    cols: usize,
    m: usize,
) -> Result<f64> {
    let w: Vec<f16> = random_activations_f32(rows, cols, 3)
        .iter()
        .map(|v| f16::from_f32(0.01 * v))
        .collect();
    let copies = copies_for(rows * cols * 2);
    let ws: Vec<_> = (0..copies)
        .map(|_| dev.upload("cuBLAS fp16 weight", &w))
        .collect::<Result<_>>()?;
    let x: Vec<f16> = random_activations_f32(m, cols, 4)
        .iter()
        .map(|&v| f16::from_f32(v))
        .collect();
    let x = dev.upload("cuBLAS fp16 x", &x)?;
    let mut y = dev.alloc_zeros::<f16>("cuBLAS fp16 y", m * rows)?;
    let cfg = GemmConfig {
        transa: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
        transb: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
        m: rows as i32,
        n: m as i32,
        k: cols as i32,
        alpha: f16::ONE,
        lda: cols as i32,
        ldb: cols as i32,
        beta: f16::ZERO,
        ldc: rows as i32,
    };
    time_us(dev, |i| {
        // SAFETY: W (rows, cols) row-major = cols x rows column-major (op T),
        // x (m, cols) = cols x m, y (m, rows) = rows x m; sizes as allocated.
        unsafe { blas.gemm(cfg, &ws[i % copies], &x, &mut y) }.map_err(|e| CudaError::Cublas {
            context: "GemmEx f16".into(),
            message: format!("{e:?}"),
        })
    })
}

fn run(cfg: &Config) -> Result<()> {
    let dev = CudaDevice::new(0)?;
    let blas = CudaBlas::new(dev.stream().clone()).map_err(|e| CudaError::Cublas {
        context: "cublasCreate".into(),
        message: format!("{e:?}"),
    })?;
    let copy_tbps = marlin_cuda::bench::copy_bandwidth_tbps(&dev)?;
    println!(
        "device: {} ({} SMs); copy bandwidth (D2D, read+write): {:.0} GB/s",
        dev.name(),
        dev.sm_count(),
        copy_tbps * 1000.0
    );
    println!(
        "{:>6} {:>11} {:>4} {:>7} {:>10} {:>9} {:>8} {:>6} {:>10} {:>7}",
        "type", "rows x cols", "m", "path", "MB", "us", "GB/s", "%copy", "cuBLAS us", "vs cB"
    );
    let max_m = cfg.ms.iter().copied().max().unwrap_or(1);
    for &(rows, cols) in &cfg.shapes {
        let cublas: Vec<(usize, f64)> = cfg
            .ms
            .iter()
            .filter(|&&m| m > DECODE_MAX_ROWS)
            .map(|&m| Ok((m, cublas_f16_us(&dev, &blas, rows, cols, m)?)))
            .collect::<Result<_>>()?;
        let x = dev.upload("x", &random_activations_f32(max_m, cols, 7))?;
        let mut y = dev.alloc_zeros::<f32>("y", max_m * rows)?;
        for &ty in &cfg.types {
            let t = match random_ggml_tensor(ty, rows, cols, (rows * cols) as u64 + ty.id() as u64)
            {
                Ok(t) => t,
                Err(e) => {
                    println!("{:>6} {rows:>5}x{cols:<5} skipped: {e}", ty.name());
                    continue;
                }
            };
            let first = GgmlGpuWeight::upload(&dev, &t)?;
            let bytes = first.device_bytes();
            let copies = copies_for(bytes);
            let mut weights = vec![first];
            for _ in 1..copies {
                weights.push(GgmlGpuWeight::upload(&dev, &t)?);
            }
            drop(t);
            for w in &weights {
                w.prepare(&dev, max_m)?;
            }
            // The rows up to which this weight takes the decode kernels.
            let decode_rows = if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                DECODE_MAX_ROWS
            } else {
                block_decode_max_rows(rows, cols)
            };
            for &m in &cfg.ms {
                let us = time_us(&dev, |i| weights[i % copies].matmul(&dev, &x, m, &mut y))?;
                let gbps = bytes as f64 / (us * 1e-6) / 1e9;
                let peer = cublas.iter().find(|(pm, _)| *pm == m).map(|p| p.1);
                println!(
                    "{:>6} {:>11} {m:>4} {:>7} {:>10.2} {us:>9.2} {gbps:>8.0} {:>5.1}% {:>10} {:>7}",
                    ty.name(),
                    format!("{rows}x{cols}"),
                    if m <= decode_rows { "decode" } else { "prefill" },
                    bytes as f64 / 1e6,
                    100.0 * gbps / (copy_tbps * 1000.0),
                    peer.map_or("-".to_string(), |p| format!("{p:.2}")),
                    peer.map_or("-".to_string(), |p| format!("{:.2}x", p / us)),
                );
            }
        }
    }
    dev.synchronize()
}

fn main() {
    let mut cfg = Config {
        types: vec![
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
            GgmlType::F16,
        ],
        shapes: vec![(576, 1536), (4096, 4096), (14336, 4096)],
        ms: vec![1, 8, 512],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        let ok = match arg.as_str() {
            "--types" => parse_list(&value, parse_type).map(|v| cfg.types = v),
            "--shapes" => parse_list(&value, parse_shape).map(|v| cfg.shapes = v),
            "--ms" => parse_list(&value, |s| s.parse().ok().filter(|&m| m > 0)).map(|v| cfg.ms = v),
            _ => None,
        };
        if ok.is_none() {
            eprintln!(
                "usage: marlin-ggml-bench [--types q4_0,q4_K,..] [--shapes ROWSxCOLS,..] [--ms 1,512]"
            );
            std::process::exit(2);
        }
    }
    if let Err(e) = run(&cfg) {
        eprintln!("marlin-ggml-bench: {e}");
        std::process::exit(1);
    }
}
