//! GEMM benchmark: the INT4 g128 kernel against cuBLAS fp16 on the same
//! shape, and the device's copy bandwidth, all measured in one run.
//!
//! Timing: CUDA events around batches of back-to-back launches (after
//! warm-up, so NVRTC compilation and cuBLAS handle setup stay out), the
//! median over batches. Weights rotate over enough copies (>= 256 MiB in
//! all) that they are read from device memory, not from the 50 MB L2.

use std::fmt;
use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::sys::CUevent_flags;
use half::f16;

use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};
use crate::int4::gemm::{int4_gemm, GemmOptions, GemmPath, GemmWorkspace, Int4Weight};
use crate::int4::pack::pack_int4;
use crate::int4::random::{random_activations, random_int4, XorShift};

/// What to measure.
#[derive(Clone, Debug)]
pub struct GemmBenchConfig {
    /// (N, K) weight shapes.
    pub shapes: Vec<(usize, usize)>,
    /// Batch sizes M.
    pub ms: Vec<usize>,
    /// Launches per timed batch.
    pub reps: usize,
    /// Timed batches (the median is reported).
    pub batches: usize,
    /// Also time every split-K factor in this list at each shape (tuning).
    pub split_sweep: Vec<usize>,
}

impl Default for GemmBenchConfig {
    fn default() -> Self {
        Self {
            shapes: vec![(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)],
            ms: vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 1024],
            reps: 20,
            batches: 11,
            split_sweep: Vec::new(),
        }
    }
}

/// One (shape, M) measurement.
#[derive(Clone, Debug)]
pub struct GemmBenchRow {
    pub n: usize,
    pub k: usize,
    pub m: usize,
    /// Split-K factor used ("auto" or forced by a sweep).
    pub splits: usize,
    pub forced_splits: bool,
    /// Path `GemmPath::Auto` took (or the forced one in a sweep row).
    pub path: GemmPath,
    /// Time of the path taken (what the other columns derive from).
    pub int4_us: f64,
    /// The fused kernel alone, and dequantize + cuBLAS alone.
    pub fused_us: f64,
    /// The general fused kernel (`GemmPath::FusedGeneral`), timed at M <= 16
    /// only (where the decode kernel replaces it); NaN elsewhere.
    pub general_us: f64,
    pub dequant_cublas_us: f64,
    pub cublas_us: f64,
    /// Weight bytes (codes + scales) per microsecond, in TB/s.
    pub weight_tbps: f64,
    pub tflops: f64,
}

impl GemmBenchRow {
    pub fn speedup(&self) -> f64 {
        self.cublas_us / self.int4_us
    }
}

/// Everything one benchmark run measured.
#[derive(Clone, Debug)]
pub struct GemmBenchReport {
    pub device: String,
    /// Device-to-device copy, (bytes read + bytes written) / time, TB/s.
    pub copy_tbps: f64,
    pub rows: Vec<GemmBenchRow>,
}

impl fmt::Display for GemmBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "device: {}", self.device)?;
        writeln!(
            f,
            "copy bandwidth (D2D, read+write): {:.3} TB/s",
            self.copy_tbps
        )?;
        writeln!(
            f,
            "{:>11} {:>5} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>6} {:>7}",
            "N x K",
            "M",
            "path",
            "splits",
            "int4 us",
            "fused us",
            "gener us",
            "deq+cB us",
            "cuBLAS us",
            "speedup",
            "TB/s",
            "%copy",
            "TFLOP/s"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:>11} {:>5} {:>6} {:>5}{} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7.2}x {:>7.3} {:>5.1}% {:>7.1}",
                format!("{}x{}", r.n, r.k),
                r.m,
                match r.path {
                    GemmPath::DequantCublas => "deq+cB",
                    _ => "fused",
                },
                r.splits,
                if r.forced_splits { "*" } else { " " },
                r.int4_us,
                r.fused_us,
                r.general_us,
                r.dequant_cublas_us,
                r.cublas_us,
                r.speedup(),
                r.weight_tbps,
                100.0 * r.weight_tbps / self.copy_tbps,
                r.tflops
            )?;
        }
        Ok(())
    }
}

/// Median time per call in microseconds of `f`, over `batches` batches of
/// `reps` back-to-back calls between two CUDA events.
fn time_us(
    dev: &CudaDevice,
    reps: usize,
    batches: usize,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<f64> {
    let ctx = dev.context();
    let stream = dev.stream();
    for i in 0..3 {
        f(i)?;
    }
    dev.synchronize()?;
    let start = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| driver_err("cuEventCreate", e))?;
    let end = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| driver_err("cuEventCreate", e))?;
    let mut samples = Vec::with_capacity(batches);
    let mut call = 0usize;
    for _ in 0..batches.max(1) {
        start
            .record(stream)
            .map_err(|e| driver_err("cuEventRecord", e))?;
        for _ in 0..reps.max(1) {
            f(call)?;
            call += 1;
        }
        end.record(stream)
            .map_err(|e| driver_err("cuEventRecord", e))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| driver_err("cuEventElapsedTime", e))?;
        samples.push(f64::from(ms) * 1000.0 / reps.max(1) as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples[samples.len() / 2])
}

/// Copy bandwidth: a 1 GiB device-to-device copy, (read + write) bytes / s.
pub fn copy_bandwidth_tbps(dev: &CudaDevice) -> Result<f64> {
    const BYTES: usize = 1 << 30;
    let src = dev.alloc_zeros::<u8>("copy benchmark source", BYTES)?;
    let mut dst = dev.alloc_zeros::<u8>("copy benchmark destination", BYTES)?;
    let stream = dev.stream().clone();
    let us = time_us(dev, 5, 7, |_| {
        stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| driver_err("cuMemcpyDtoD", e))
    })?;
    Ok(2.0 * BYTES as f64 / (us * 1e-6) / 1e12)
}

fn copies_for(bytes: usize) -> usize {
    (256usize << 20).div_ceil(bytes.max(1)).clamp(1, 32)
}

/// Run the benchmark on device `ordinal`.
pub fn bench_gemm(ordinal: usize, cfg: &GemmBenchConfig) -> Result<GemmBenchReport> {
    let dev = CudaDevice::new(ordinal)?;
    // SAFETY: dlopen check only.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(CudaError::NotAvailable("libcublas.so was not found".into()));
    }
    let blas = CudaBlas::new(dev.stream().clone()).map_err(|e| CudaError::Cublas {
        context: "cublasCreate".into(),
        message: format!("{e:?}"),
    })?;
    let copy_tbps = copy_bandwidth_tbps(&dev)?;
    let mut rows = Vec::new();
    let max_m = cfg.ms.iter().copied().max().unwrap_or(1);
    for &(n, k) in &cfg.shapes {
        rows.extend(bench_shape(&dev, &blas, n, k, max_m, cfg)?);
    }
    Ok(GemmBenchReport {
        device: format!(
            "{} (sm_{}{}, {} SMs)",
            dev.name(),
            dev.compute_capability().0,
            dev.compute_capability().1,
            dev.sm_count()
        ),
        copy_tbps,
        rows,
    })
}

fn bench_shape(
    dev: &Arc<CudaDevice>,
    blas: &CudaBlas,
    n: usize,
    k: usize,
    max_m: usize,
    cfg: &GemmBenchConfig,
) -> Result<Vec<GemmBenchRow>> {
    let q = random_int4(n, k, 128, false, (n * 31 + k) as u64);
    let packed = pack_int4(&q)?;
    let n_int4 = copies_for(packed.weight_bytes());
    let weights: Vec<Int4Weight> = (0..n_int4)
        .map(|_| Int4Weight::from_packed(dev, &packed))
        .collect::<Result<_>>()?;
    drop(q);
    // fp16 peer: random values of the same magnitude (cuBLAS time does not
    // depend on the values, but zeros are avoided on principle).
    let mut rng = XorShift::new(99);
    let w16: Vec<f16> = (0..n * k)
        .map(|_| f16::from_f32(0.02 * rng.next_f32() - 0.01))
        .collect();
    let n_f16 = copies_for(n * k * 2);
    let weights16: Vec<_> = (0..n_f16)
        .map(|_| dev.upload("cuBLAS fp16 weights", &w16))
        .collect::<Result<_>>()?;
    drop(w16);
    let a_host = random_activations(max_m, k, 5);
    let a = dev.upload("activations", &a_host)?;
    let mut c = dev.alloc_zeros::<f16>("output", max_m * n)?;
    let mut ws = GemmWorkspace::new(dev)?;
    let weight_bytes = packed.weight_bytes() as f64;

    let mut rows = Vec::new();
    for &m in &cfg.ms {
        let mut time_path = |path: GemmPath, splits: Option<usize>| {
            let mut plan = None;
            let us = time_us(dev, cfg.reps, cfg.batches, |i| {
                let opts = GemmOptions { path, splits };
                plan = Some(int4_gemm(
                    dev,
                    &a,
                    m,
                    &weights[i % n_int4],
                    &mut c,
                    &mut ws,
                    opts,
                )?);
                Ok(())
            })?;
            Ok::<_, CudaError>((us, plan))
        };
        let (fused_us, fused_plan) = time_path(GemmPath::Fused, None)?;
        let general_us = if m <= 16 {
            time_path(GemmPath::FusedGeneral, None)?.0
        } else {
            f64::NAN
        };
        let (dequant_cublas_us, _) = time_path(GemmPath::DequantCublas, None)?;
        let (int4_us, auto_plan) = time_path(GemmPath::Auto, None)?;
        let mut sweep = Vec::new();
        for &s in &cfg.split_sweep {
            let (us, plan) = time_path(GemmPath::Fused, Some(s))?;
            if plan.is_some_and(|p| p.splits == s) {
                sweep.push((s, us));
            }
        }
        let cublas_us = time_us(dev, cfg.reps, cfg.batches, |i| {
            let gemm_cfg = GemmConfig {
                transa: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
                transb: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
                m: n as i32,
                n: m as i32,
                k: k as i32,
                alpha: f16::ONE,
                lda: k as i32,
                ldb: k as i32,
                beta: f16::ZERO,
                ldc: n as i32,
            };
            // SAFETY: W16 is (N, K) row-major = K x N column-major (op T),
            // A is (M, K) row-major = K x M column-major, C is (M, N)
            // row-major = N x M column-major; all buffers hold >= those sizes.
            unsafe { blas.gemm(gemm_cfg, &weights16[i % n_f16], &a, &mut c) }.map_err(|e| {
                CudaError::Cublas {
                    context: format!("GemmEx M={m} N={n} K={k}"),
                    message: format!("{e:?}"),
                }
            })
        })?;
        let row = |splits: usize, forced: bool, path: GemmPath, us: f64| GemmBenchRow {
            n,
            k,
            m,
            splits,
            forced_splits: forced,
            path,
            int4_us: us,
            fused_us,
            general_us,
            dequant_cublas_us,
            cublas_us,
            weight_tbps: weight_bytes / (us * 1e-6) / 1e12,
            tflops: 2.0 * (m * n * k) as f64 / (us * 1e-6) / 1e12,
        };
        let auto_path = auto_plan.map_or(GemmPath::Auto, |p| p.path);
        let splits_used = match auto_path {
            GemmPath::DequantCublas => 1,
            _ => fused_plan.map_or(0, |p| p.splits),
        };
        rows.push(row(splits_used, false, auto_path, int4_us));
        for (s, us) in sweep {
            rows.push(row(s, true, GemmPath::Fused, us));
        }
    }
    dev.synchronize()?;
    Ok(rows)
}
