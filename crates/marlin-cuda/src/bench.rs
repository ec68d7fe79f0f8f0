//! GEMM benchmark: the quantized GEMMs (INT4 g128, MXFP4, NVFP4, INT8, FP8)
//! against cuBLAS fp16 on the same shape, and the device's copy bandwidth,
//! all measured in one run. With [`GemmBenchConfig::act`] = bf16 the
//! activations and outputs are bf16 and the peer is cuBLAS bf16 (GemmEx,
//! fp32 compute).
//!
//! Timing: CUDA events around batches of back-to-back launches (after
//! warm-up, so NVRTC compilation and cuBLAS handle setup stay out, and
//! 30 ms of the call itself, so that the clocks have settled to its own
//! load), the fastest batch (the machine's slow spells can cover most of
//! a timing's batches: session 14, docs/CUDA.md change 67). Weights rotate over enough copies (>= 256 MiB in
//! all) that they are read from device memory, not from the 50 MB L2.
//!
//! Decode context (`ctx us`, INT4 at M <= 16, and `cB ctx` for cuBLAS):
//! the decode graph runs each GEMM right after a small latency-bound
//! kernel (norm, RoPE, attention, GLU: ~4 us, a few blocks), both launched
//! with programmatic dependent launch, so a GEMM that streams weights
//! before its `griddepcontrol.wait` overlaps that kernel. `ctx us` times
//! back-to-back pairs (`w4_bench_delay`: one warp spinning
//! [`GemmBenchConfig::delay_cycles`] clocks after its PDL wait, then the
//! GEMM, launched as the decode step launches it) over the same rotated
//! weight copies, and subtracts the time of back-to-back delay kernels
//! alone (`delay us` in the header): the GEMM's exposed time in that
//! context. cuBLAS's launch is plain (no PDL), so `cB ctx` is its full
//! time after the same delay kernel.

use std::fmt;
use std::sync::Arc;

use cudarc::cublas::{CudaBlas, GemmConfig};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;
use half::{bf16, f16};

use crate::act::{Act, ActDtype};

use crate::bench_read::{ReadPeer, RingPeer};
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};
use crate::int4::bulk::{bulk_supported, bulk_weight_ok, BULK_MAX_M};
use crate::int4::gemm::{
    decode_shape, int4_gemm, launch_bench_delay, set_decode_shape_override, stream_k_plan,
    GemmOptions, GemmPath, GemmPlan, GemmWorkspace, Int4Weight, SK_MAX_M,
};
use crate::int4::pack::pack_int4;
use crate::int4::random::{random_activations, random_int4, XorShift};
use crate::int4::wgmma::{wgmma_supported, WGMMA_MIN_M};
use crate::int4::wgmma_ws::ws_supported;
use crate::wgemm::gemm::{wx_gemm, WxWeight};
use crate::wgemm::pack::pack_wx;
use crate::wgemm::random::{random_wx, BenchFormat};
use crate::wgemm::wgmma_ws::wx_ws_applies;

/// A weight format of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmFormat {
    /// INT4 symmetric, f16 scale per 128 along K.
    Int4G128,
    /// INT4 with zero points (AWQ / GPTQ asymmetric), f16 scale and zero
    /// point per 128 along K.
    Int4Zp128,
    /// INT4 symmetric, f16 scale per 32 along K.
    Int4G32,
    /// One of the `wgemm` formats.
    Wx(BenchFormat),
}

impl GemmFormat {
    pub fn name(self) -> &'static str {
        match self {
            GemmFormat::Int4G128 => "int4g128",
            GemmFormat::Int4Zp128 => "int4zp",
            GemmFormat::Int4G32 => "int4g32",
            GemmFormat::Wx(f) => f.name(),
        }
    }

    /// One of the INT4 formats (the `int4` kernels and paths).
    pub fn is_int4(self) -> bool {
        self.int4_group().is_some()
    }

    /// (group size along K, zero points) of the INT4 formats.
    fn int4_group(self) -> Option<(usize, bool)> {
        match self {
            GemmFormat::Int4G128 => Some((128, false)),
            GemmFormat::Int4Zp128 => Some((128, true)),
            GemmFormat::Int4G32 => Some((32, false)),
            GemmFormat::Wx(_) => None,
        }
    }

    /// `int4` / `int4g128`, `int4zp` (zero points, g128), `int4g32`,
    /// `mxfp4`, `nvfp4`, `int8`, `fp8`, `fp8b128`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "int4" | "int4g128" => Some(GemmFormat::Int4G128),
            "int4zp" => Some(GemmFormat::Int4Zp128),
            "int4g32" => Some(GemmFormat::Int4G32),
            other => BenchFormat::parse(other).map(GemmFormat::Wx),
        }
    }

    /// A comma-separated list, e.g. `int4,mxfp4,int8,fp8`.
    pub fn parse_list(s: &str) -> Option<Vec<Self>> {
        let list: Option<Vec<_>> = s.split(',').map(|f| Self::parse(f.trim())).collect();
        list.filter(|l| !l.is_empty())
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct GemmBenchConfig {
    /// (N, K) weight shapes.
    pub shapes: Vec<(usize, usize)>,
    /// Batch sizes M.
    pub ms: Vec<usize>,
    /// Weight formats.
    pub formats: Vec<GemmFormat>,
    /// Launches per timed batch.
    pub reps: usize,
    /// Timed batches (the fastest is reported).
    pub batches: usize,
    /// Also time every INT4 split-K factor in this list at each shape (tuning).
    pub split_sweep: Vec<usize>,
    /// Time the INT4 stream-K kernel (`sk us`, M <= 16; opt-in while it is
    /// unmeasured: NaN otherwise).
    pub stream_k: bool,
    /// Also time the INT4 stream-K kernel with each number of warps per SM
    /// in this list (rows marked `*`, `splits` = warps per SM).
    pub stream_k_sweep: Vec<usize>,
    /// Time INT4 at M <= 16 (and cuBLAS) after a delay kernel, as the decode
    /// graph runs them (`ctx us`, `cB ctx`; see the module doc).
    pub decode_context: bool,
    /// SM clocks the delay kernel spins (8000: ~4 us at 1.98 GHz, a decode
    /// step's small kernel).
    pub delay_cycles: i64,
    /// Also time the INT4 decode kernel with each block shape (nbpb column
    /// blocks, K slices, splits) in this list at M <= 32 (rows `dec`, the
    /// shape in the last column; shapes the kernel cannot run are skipped).
    pub decode_shapes: Vec<(usize, usize, usize)>,
    /// Time only cuBLAS, Auto and the warp-specialised INT4 path (the other
    /// columns NaN): quick same-run A/Bs of that kernel's knobs.
    pub ws_only: bool,
    /// Time only cuBLAS, Auto and the two Hopper wgmma INT4 paths (the
    /// other columns NaN): quick same-run A/Bs at M = 17..128.
    pub wgmma_only: bool,
    /// Activation (and output) type; the cuBLAS peer uses the same.
    pub act: Act,
    /// One copy of each weight instead of >= 256 MiB of rotated copies, so
    /// that weights that fit the 50 MB L2 are read from it: what a GEMM
    /// costs when an earlier kernel prefetched its weights into L2 (the
    /// copy bandwidth and the peers' columns are then L2 figures too).
    pub l2_warm: bool,
    /// After each INT4 shape's streaming-read peer, also time reading its
    /// codes in the split-K GEMMs' order (tile-major pack and a layout with
    /// each block's chunk contiguous; printed on stderr, change 72).
    pub tile_read: bool,
}

impl Default for GemmBenchConfig {
    fn default() -> Self {
        Self {
            shapes: vec![(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)],
            ms: vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 1024],
            formats: vec![
                GemmFormat::Int4G128,
                GemmFormat::Wx(BenchFormat::Mxfp4),
                GemmFormat::Wx(BenchFormat::Int8),
                GemmFormat::Wx(BenchFormat::Fp8),
            ],
            reps: 20,
            batches: 11,
            split_sweep: Vec::new(),
            stream_k: false,
            stream_k_sweep: Vec::new(),
            decode_context: true,
            delay_cycles: 8000,
            decode_shapes: Vec::new(),
            ws_only: false,
            wgmma_only: false,
            act: Act::F16,
            l2_warm: false,
            tile_read: false,
        }
    }
}

/// One (format, shape, M) measurement.
#[derive(Clone, Debug)]
pub struct GemmBenchRow {
    pub format: GemmFormat,
    pub n: usize,
    pub k: usize,
    pub m: usize,
    /// Split-K factor used ("auto" or forced by a sweep).
    pub splits: usize,
    pub forced_splits: bool,
    /// Path `GemmPath::Auto` took (or the forced one in a sweep row).
    pub path: GemmPath,
    /// Time of the path taken (what the other columns derive from).
    pub us: f64,
    /// The fused kernel alone (NaN where not timed: M > 256 for the
    /// `wgemm` formats), and dequantize + cuBLAS alone.
    pub fused_us: f64,
    /// INT4 only: the general fused kernel (`GemmPath::FusedGeneral`),
    /// timed at M <= 16 only (where the decode kernel replaces it); NaN
    /// elsewhere.
    pub general_us: f64,
    pub dequant_cublas_us: f64,
    /// INT4 only: the Hopper wgmma kernel (`GemmPath::Wgmma`), timed at
    /// M >= 17 on compute capability 9.0; NaN elsewhere.
    pub wgmma_us: f64,
    /// The warp-specialised Hopper wgmma kernel (`GemmPath::WgmmaWs`,
    /// staging launch included), timed on compute capability 9.0 at M >= 17
    /// (INT4) or any M (the `wgemm` formats it runs); NaN elsewhere.
    pub wgmma_ws_us: f64,
    /// INT4 only: the Hopper bulk-copy decode kernel (`GemmPath::Bulk`),
    /// timed at M <= 8 on compute capability 9.0+; NaN elsewhere.
    pub bulk_us: f64,
    /// INT4 only: the stream-K decode kernel (`GemmPath::StreamK`), timed at
    /// M <= 16 where it fits with `GemmBenchConfig::stream_k`; NaN elsewhere.
    pub stream_k_us: f64,
    /// INT4 only: the shared-activation kernel (`GemmPath::SharedA`), timed
    /// at M = 17..64 where K % 8 == 0; NaN elsewhere.
    pub shared_a_us: f64,
    pub cublas_us: f64,
    /// The path's exposed time after a delay kernel (decode context, see
    /// the module doc); NaN where not timed.
    pub ctx_us: f64,
    /// cuBLAS after the same delay kernel; NaN where not timed.
    pub cublas_ctx_us: f64,
    /// INT4: the split-K decode kernel (`GemmPath::Fused`) and the
    /// stream-K kernel (where `sk us` is timed) in the decode context.
    pub fused_ctx_us: f64,
    pub stream_k_ctx_us: f64,
    /// Decode-kernel block shape forced in a `decode_shapes` row.
    pub dec_shape: Option<(usize, usize, usize)>,
    /// Bytes of codes and scales one call streams.
    pub weight_bytes: usize,
    /// The streaming-read peer on the same bytes (`crate::bench_read`):
    /// the bandwidth limit at this size, launch ramp and tail included.
    pub read_us: f64,
    /// Weight bytes per microsecond, in TB/s.
    pub weight_tbps: f64,
    pub tflops: f64,
}

impl GemmBenchRow {
    pub fn speedup(&self) -> f64 {
        self.cublas_us / self.us
    }

    /// Streamed bits per weight (codes and scales).
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.weight_bytes as f64 / (self.n * self.k) as f64
    }
}

/// Everything one benchmark run measured.
#[derive(Clone, Debug)]
pub struct GemmBenchReport {
    pub device: String,
    /// Activation type of every row (and of the cuBLAS peer).
    pub act: Act,
    /// Device-to-device copy, (bytes read + bytes written) / time, TB/s.
    pub copy_tbps: f64,
    /// Back-to-back delay kernels alone, us per launch (NaN when the decode
    /// context was not timed).
    pub delay_us: f64,
    /// Clusters of 2..=8 blocks of the warp-specialised INT4 kernel the
    /// device holds at once (index = cluster size; all zero where its
    /// cluster reduction is off or the kernel does not run).
    pub ws_clusters: [usize; 9],
    pub rows: Vec<GemmBenchRow>,
}

impl fmt::Display for GemmBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "device: {}", self.device)?;
        writeln!(
            f,
            "activations and outputs: {} (cuBLAS peer: {} GemmEx, fp32 compute)",
            self.act.name(),
            self.act.name()
        )?;
        writeln!(
            f,
            "copy bandwidth (D2D, read+write): {:.3} TB/s",
            self.copy_tbps
        )?;
        if self.ws_clusters.iter().any(|&n| n > 0) {
            writeln!(
                f,
                "warp-specialised INT4 split-K: clusters of 2..8 blocks held at once {:?}",
                &self.ws_clusters[2..]
            )?;
        }
        if self.delay_us.is_finite() {
            writeln!(
                f,
                "decode context (ctx us: Auto's path, fu: split-K decode kernel, sk: stream-K, cB: cuBLAS) = time of (delay kernel + GEMM) pairs minus {:.2} us per delay kernel alone (PDL chain, rotated weights)",
                self.delay_us
            )?;
        }
        writeln!(
            f,
            "{:>8} {:>5} {:>11} {:>5} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7}",
            "format",
            "bit/w",
            "N x K",
            "M",
            "path",
            "splits",
            "us",
            "fused us",
            "gener us",
            "deq+cB us",
            "wgmma us",
            "wgws us",
            "bulk us",
            "sk us",
            "sa us",
            "cuBLAS us",
            "speedup",
            "TB/s",
            "%copy",
            "read us",
            "%read",
            "TFLOP/s",
            "ctx us",
            "fu ctx",
            "sk ctx",
            "cB ctx",
            "shape"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:>8} {:>5.2} {:>11} {:>5} {:>6} {:>5}{} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7.2}x {:>7.3} {:>5.1}% {:>8.2} {:>5.1}% {:>7.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7}",
                r.format.name(),
                r.bits_per_weight(),
                format!("{}x{}", r.n, r.k),
                r.m,
                match r.path {
                    GemmPath::DequantCublas => "deq+cB",
                    GemmPath::Wgmma => "wgmma",
                    GemmPath::WgmmaWs => "wgws",
                    GemmPath::Bulk => "bulk",
                    GemmPath::StreamK => "sk",
                    GemmPath::SharedA => "sa",
                    _ if r.dec_shape.is_some() => "dec",
                    _ => "fused",
                },
                r.splits,
                if r.forced_splits { "*" } else { " " },
                r.us,
                r.fused_us,
                r.general_us,
                r.dequant_cublas_us,
                r.wgmma_us,
                r.wgmma_ws_us,
                r.bulk_us,
                r.stream_k_us,
                r.shared_a_us,
                r.cublas_us,
                r.speedup(),
                r.weight_tbps,
                100.0 * r.weight_tbps / self.copy_tbps,
                r.read_us,
                100.0 * r.read_us / r.us,
                r.tflops,
                r.ctx_us,
                r.fused_ctx_us,
                r.stream_k_ctx_us,
                r.cublas_ctx_us,
                r.dec_shape
                    .map_or(String::new(), |(a, b, c)| format!("{a}x{b}x{c}"))
            )?;
        }
        Ok(())
    }
}

/// GPU time each timing warms up for before its batches (milliseconds):
/// `MARLIN_BENCH_WARMUP_MS` (read once), else 30.
fn warmup_ms() -> f64 {
    static KNOB: crate::knobs::Count =
        crate::knobs::Count::new("MARLIN_BENCH_WARMUP_MS", 0..=60_000);
    KNOB.get().unwrap_or(30) as f64
}
/// At most this many warm-up calls beyond the first three.
const WARMUP_MAX_CALLS: usize = 1_000_000;

/// Time per call in microseconds of `f`: the fastest of `batches` batches
/// of `reps` back-to-back calls between two CUDA events, after a warm-up
/// of [`warmup_ms`].
fn time_us(
    dev: &CudaDevice,
    reps: usize,
    batches: usize,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<f64> {
    let ctx = dev.context();
    let stream = dev.stream();
    let start = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| driver_err("cuEventCreate", e))?;
    let end = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| driver_err("cuEventCreate", e))?;
    // Warm-up: 3 calls, then more until warmup_ms() of GPU time have run, so
    // that the clocks have settled to this call's own load (the path timed
    // before may have left them low: session 14 timed one kernel and plan
    // 12% apart, two paths apart, within one call; docs/CUDA.md change 67).
    start
        .record(stream)
        .map_err(|e| driver_err("cuEventRecord", e))?;
    for i in 0..3 {
        f(i)?;
    }
    end.record(stream)
        .map_err(|e| driver_err("cuEventRecord", e))?;
    let first_ms = f64::from(
        start
            .elapsed_ms(&end)
            .map_err(|e| driver_err("cuEventElapsedTime", e))?,
    );
    let more = ((warmup_ms() - first_ms).max(0.0) / (first_ms / 3.0).max(1e-3)).ceil();
    for i in 0..(more as usize).min(WARMUP_MAX_CALLS) {
        f(3 + i)?;
    }
    dev.synchronize()?;
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
    // The fastest batch: the machine has slow spells (session 14: clocks
    // near half for tens of milliseconds, twice the time of every batch
    // they cover, sometimes more than half of a timing's batches) and
    // nothing makes a batch of 20 calls faster than the kernels are.
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples[0])
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

/// Copies of a weight of `bytes` to rotate over: enough (>= 256 MiB) that
/// each launch reads from device memory, or one with `l2_warm`.
fn copies_for(bytes: usize, l2_warm: bool) -> usize {
    if l2_warm {
        return 1;
    }
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
    let delay_us = if cfg.decode_context {
        time_us(&dev, cfg.reps, cfg.batches, |_| {
            launch_bench_delay(&dev, cfg.delay_cycles)
        })?
    } else {
        f64::NAN
    };
    let mut rows = Vec::new();
    for &(n, k) in &cfg.shapes {
        rows.extend(match cfg.act {
            Act::F16 => bench_shape::<f16>(&dev, &blas, n, k, cfg, delay_us)?,
            Act::Bf16 => bench_shape::<bf16>(&dev, &blas, n, k, cfg, delay_us)?,
        });
    }
    Ok(GemmBenchReport {
        act: cfg.act,
        device: format!(
            "{} (sm_{}{}, {} SMs)",
            dev.name(),
            dev.compute_capability().0,
            dev.compute_capability().1,
            dev.sm_count()
        ),
        copy_tbps,
        delay_us,
        ws_clusters: crate::int4::wgmma_ws::ws_cluster_fit(&dev, cfg.act)?.0,
        rows,
    })
}

/// Copies of one format's weight (rotated over so that they come from HBM).
enum Weights {
    Int4(Vec<Int4Weight>),
    Wx(Vec<WxWeight>),
}

impl Weights {
    fn build(
        dev: &CudaDevice,
        format: GemmFormat,
        n: usize,
        k: usize,
        l2_warm: bool,
    ) -> Result<(Self, usize)> {
        let seed = (n * 31 + k) as u64;
        match format {
            GemmFormat::Int4G128 | GemmFormat::Int4Zp128 | GemmFormat::Int4G32 => {
                let (group, zero_points) = format.int4_group().ok_or_else(|| {
                    CudaError::Unsupported(format!("{} is not an INT4 format", format.name()))
                })?;
                let packed = pack_int4(&random_int4(n, k, group, zero_points, seed))?;
                let bytes = packed.weight_bytes();
                let copies = (0..copies_for(bytes, l2_warm))
                    .map(|_| Int4Weight::from_packed(dev, &packed))
                    .collect::<Result<_>>()?;
                Ok((Weights::Int4(copies), bytes))
            }
            GemmFormat::Wx(f) => {
                let packed = pack_wx(&random_wx(f, n, k, seed))?;
                let bytes = packed.weight_bytes();
                let copies = (0..copies_for(bytes, l2_warm))
                    .map(|_| WxWeight::from_packed(dev, &packed))
                    .collect::<Result<_>>()?;
                Ok((Weights::Wx(copies), bytes))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn call<T: ActDtype>(
        &self,
        dev: &Arc<CudaDevice>,
        i: usize,
        a: &CudaSlice<T>,
        m: usize,
        c: &mut CudaSlice<T>,
        ws: &mut GemmWorkspace,
        opts: GemmOptions,
    ) -> Result<GemmPlan> {
        match self {
            Weights::Int4(w) => int4_gemm(dev, a, m, &w[i % w.len()], c, ws, opts),
            Weights::Wx(w) => wx_gemm(dev, a, m, &w[i % w.len()], c, ws, opts),
        }
    }
}

/// `--tile-read` (change 72): the codes of an N x K INT4 weight read in
/// the split-K GEMMs' order, blocks of G = 2 / 4 / 8 tiles and the splits
/// that fill the SMs once, in the pack's tile-major layout and with each
/// block's chunk contiguous, beside the linear read peer `read_us` (lines
/// on stderr; a configuration that cannot run is skipped).
fn tile_read_table(
    dev: &Arc<CudaDevice>,
    peer: &ReadPeer,
    (n, k): (usize, usize),
    read_us: f64,
    cfg: &GemmBenchConfig,
) {
    let n_tiles = n.div_ceil(64);
    let k_chunks = k.div_ceil(64);
    for g in [2, 4, 8] {
        if !n_tiles.is_multiple_of(g) {
            continue;
        }
        let blocks = n_tiles / g;
        let splits = (dev.sm_count() / blocks).clamp(1, (k_chunks / 8).max(1));
        let mut line = format!(
            "tile-read {n}x{k} G={g} splits={splits} blocks={} linear {read_us:.2} us",
            blocks * splits
        );
        for grouped in [false, true] {
            let us = peer.time_tiles_us(dev, (n_tiles, k_chunks), (g, splits, grouped), |f| {
                time_us(dev, cfg.reps, cfg.batches, f)
            });
            let label = if grouped { "grouped" } else { "tile-major" };
            match us {
                Ok(us) => line += &format!(" {label} {us:.2} us ({:.0}%)", 100.0 * read_us / us),
                Err(e) => line += &format!(" {label} failed: {e}"),
            }
        }
        eprintln!("{line}");
    }
    // The decode kernel's delivery without its arithmetic (session 19):
    // one block per tile and split, per-lane rings in shared memory or in
    // registers, over the splits that give up to 16 blocks per SM.
    for splits in [1, 2, 4, 8] {
        if splits > k_chunks || n_tiles * splits > 16 * dev.sm_count() {
            continue;
        }
        let mut line = format!(
            "ring-read {n}x{k} splits={splits} blocks={} linear {read_us:.2} us",
            n_tiles * splits
        );
        for ring in RingPeer::ALL {
            let us = peer.time_ring_us(dev, (n_tiles, k_chunks), (ring, splits), |f| {
                time_us(dev, cfg.reps, cfg.batches, f)
            });
            let label = ring.label();
            match us {
                Ok(us) => line += &format!(" | {label} {us:.2} us ({:.0}%)", 100.0 * read_us / us),
                Err(e) => line += &format!(" | {label} failed: {e}"),
            }
        }
        eprintln!("{line}");
    }
}

/// Random activations in [-1, 1) of type T (for f16 the values of
/// [`random_activations`]).
fn random_act<T: ActDtype>(m: usize, k: usize, seed: u64) -> Vec<T> {
    let mut rng = XorShift::new(seed);
    (0..m * k)
        .map(|_| T::from_f32(2.0 * rng.next_f32() - 1.0))
        .collect()
}

fn bench_shape<T: ActDtype>(
    dev: &Arc<CudaDevice>,
    blas: &CudaBlas,
    n: usize,
    k: usize,
    cfg: &GemmBenchConfig,
    delay_us: f64,
) -> Result<Vec<GemmBenchRow>> {
    let max_m = cfg.ms.iter().copied().max().unwrap_or(1);
    let mut formats = Vec::new();
    for &format in &cfg.formats {
        let (weights, bytes) = Weights::build(dev, format, n, k, cfg.l2_warm)?;
        // The same bytes, rotated over as many copies, only read. A peer
        // that cannot run is reported (NaN) rather than ending the table.
        let failed = |e: CudaError| {
            eprintln!("streaming-read peer of {n}x{k} ({bytes} bytes) failed: {e}");
            f64::NAN
        };
        let read_us = match ReadPeer::new(dev, bytes, copies_for(bytes, cfg.l2_warm)) {
            Ok(peer) => {
                let read_us = peer
                    .time_us(dev, |f| time_us(dev, cfg.reps, cfg.batches, f))
                    .unwrap_or_else(failed);
                if cfg.tile_read && format.is_int4() {
                    tile_read_table(dev, &peer, (n, k), read_us, cfg);
                }
                read_us
            }
            Err(e) => failed(e),
        };
        formats.push((format, weights, bytes, read_us));
    }
    // fp16 (bf16) peer: random values of the same magnitude (cuBLAS time
    // does not depend on the values, but zeros are avoided on principle).
    let mut rng = XorShift::new(99);
    let w16: Vec<T> = (0..n * k)
        .map(|_| T::from_f32(0.02 * rng.next_f32() - 0.01))
        .collect();
    let n_f16 = copies_for(n * k * 2, cfg.l2_warm);
    let weights16: Vec<_> = (0..n_f16)
        .map(|_| dev.upload("cuBLAS dense weights", &w16))
        .collect::<Result<_>>()?;
    drop(w16);
    let a_host = random_act::<T>(max_m, k, 5);
    let a = dev.upload("activations", &a_host)?;
    let mut c = dev.alloc_zeros::<T>("output", max_m * n)?;
    let mut ws = GemmWorkspace::new(dev)?;

    let mut rows = Vec::new();
    for &m in &cfg.ms {
        let cublas_call = |i: usize, c: &mut CudaSlice<T>| {
            let gemm_cfg = GemmConfig {
                transa: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
                transb: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
                m: n as i32,
                n: m as i32,
                k: k as i32,
                alpha: T::ONE,
                lda: k as i32,
                ldb: k as i32,
                beta: T::ZERO,
                ldc: n as i32,
            };
            // SAFETY: W16 is (N, K) row-major = K x N column-major (op T),
            // A is (M, K) row-major = K x M column-major, C is (M, N)
            // row-major = N x M column-major; all buffers hold >= those sizes.
            unsafe { T::blas_gemm(blas, gemm_cfg, &weights16[i % n_f16], &a, c) }.map_err(|e| {
                CudaError::Cublas {
                    context: format!("GemmEx M={m} N={n} K={k}"),
                    message: format!("{e:?}"),
                }
            })
        };
        let cublas_us = time_us(dev, cfg.reps, cfg.batches, |i| cublas_call(i, &mut c))?;
        let in_context = cfg.decode_context && m <= SK_MAX_M && delay_us.is_finite();
        let cublas_ctx_us = if in_context {
            time_us(dev, cfg.reps, cfg.batches, |i| {
                launch_bench_delay(dev, cfg.delay_cycles)?;
                cublas_call(i, &mut c)
            })? - delay_us
        } else {
            f64::NAN
        };
        for (format, weights, weight_bytes, read_us) in &formats {
            // after_delay: each call after a delay kernel, the delay kernels'
            // own time subtracted (decode context, module doc).
            let mut time_path = |path: GemmPath, splits: Option<usize>, after_delay: bool| {
                let mut plan = None;
                let us = time_us(dev, cfg.reps, cfg.batches, |i| {
                    if after_delay {
                        launch_bench_delay(dev, cfg.delay_cycles)?;
                    }
                    let opts = GemmOptions { path, splits };
                    plan = Some(weights.call(dev, i, &a, m, &mut c, &mut ws, opts)?);
                    Ok(())
                })?;
                let us = if after_delay { us - delay_us } else { us };
                Ok::<_, CudaError>((us, plan))
            };
            let is_int4 = format.is_int4();
            let others = !cfg.ws_only && !cfg.wgmma_only;
            let (fused_us, fused_plan) = if others && (is_int4 || m <= 256) {
                time_path(GemmPath::Fused, None, false)?
            } else {
                (f64::NAN, None)
            };
            let general_us = if others && is_int4 && m <= 16 {
                time_path(GemmPath::FusedGeneral, None, false)?.0
            } else {
                f64::NAN
            };
            let dequant_cublas_us = if others {
                time_path(GemmPath::DequantCublas, None, false)?.0
            } else {
                f64::NAN
            };
            let has_wgmma =
                (others || cfg.wgmma_only) && is_int4 && m >= WGMMA_MIN_M && wgmma_supported(dev);
            let wgmma_us = if has_wgmma {
                time_path(GemmPath::Wgmma, None, false)?.0
            } else {
                f64::NAN
            };
            // Timed at every M (INT4 and the wgemm formats' entries,
            // crate::wgemm::wgmma_ws) to show where it overtakes the
            // mma.sync decode kernels (Auto: `ws_auto`, `wx_ws_auto`).
            let wx_ws = matches!(weights, Weights::Wx(w) if wx_ws_applies(dev, &w[0]));
            let has_wgmma_ws = (is_int4 && ws_supported(dev)) || wx_ws;
            let wgmma_ws_us = if has_wgmma_ws {
                time_path(GemmPath::WgmmaWs, None, false)?.0
            } else {
                f64::NAN
            };
            // The bulk-copy kernel has f16 activations only (NaN for bf16).
            let has_bulk = others
                && T::ACT == Act::F16
                && m <= BULK_MAX_M
                && bulk_supported(dev)
                && matches!(weights, Weights::Int4(w) if bulk_weight_ok(&w[0]));
            let bulk_us = if has_bulk {
                time_path(GemmPath::Bulk, None, false)?.0
            } else {
                f64::NAN
            };
            let has_sk = match (others && is_int4 && cfg.stream_k, weights) {
                (true, Weights::Int4(w)) => {
                    m <= SK_MAX_M && stream_k_plan(dev, m, &w[0], None).is_some()
                }
                _ => false,
            };
            let stream_k_us = if has_sk {
                time_path(GemmPath::StreamK, None, false)?.0
            } else {
                f64::NAN
            };
            let has_shared_a = others
                && (17..=64).contains(&m)
                && matches!(weights, Weights::Int4(w) if w[0].k.is_multiple_of(8));
            let shared_a_us = if has_shared_a {
                time_path(GemmPath::SharedA, None, false)?.0
            } else {
                f64::NAN
            };
            let (fused_ctx_us, stream_k_ctx_us) = if others && is_int4 && in_context {
                (
                    time_path(GemmPath::Fused, None, true)?.0,
                    if has_sk {
                        time_path(GemmPath::StreamK, None, true)?.0
                    } else {
                        f64::NAN
                    },
                )
            } else {
                (f64::NAN, f64::NAN)
            };
            let (us, auto_plan) = time_path(GemmPath::Auto, None, false)?;
            let ctx_us = if is_int4 && in_context {
                time_path(GemmPath::Auto, None, true)?.0
            } else {
                f64::NAN
            };
            let path = auto_plan.map_or(GemmPath::Auto, |p| p.path);
            let mut sweep = Vec::new();
            for &s in &cfg.split_sweep {
                // The wgemm formats: only the warp-specialised kernel's splits.
                if is_int4 {
                    let (us, plan) = time_path(GemmPath::Fused, Some(s), false)?;
                    if plan.is_some_and(|p| p.splits == s) {
                        sweep.push((s, GemmPath::Fused, us));
                    }
                    if has_bulk {
                        let (us, plan) = time_path(GemmPath::Bulk, Some(s), false)?;
                        if plan.is_some_and(|p| p.splits == s) {
                            sweep.push((s, GemmPath::Bulk, us));
                        }
                    }
                    if has_wgmma {
                        let (us, plan) = time_path(GemmPath::Wgmma, Some(s), false)?;
                        if plan.is_some_and(|p| p.splits == s) {
                            sweep.push((s, GemmPath::Wgmma, us));
                        }
                    }
                    if has_shared_a {
                        let (us, plan) = time_path(GemmPath::SharedA, Some(s), false)?;
                        if plan.is_some_and(|p| p.splits == s) {
                            sweep.push((s, GemmPath::SharedA, us));
                        }
                    }
                }
                if has_wgmma_ws {
                    let (us, plan) = time_path(GemmPath::WgmmaWs, Some(s), false)?;
                    if plan.is_some_and(|p| p.splits == s) {
                        sweep.push((s, GemmPath::WgmmaWs, us));
                    }
                }
            }
            if has_sk {
                for &s in &cfg.stream_k_sweep {
                    let (us, plan) = time_path(GemmPath::StreamK, Some(s), false)?;
                    if plan.is_some_and(|p| p.splits == s) {
                        sweep.push((s, GemmPath::StreamK, us));
                    }
                }
            }
            // Forced decode block shapes: (nbpb, k_slices, splits, us, ctx us).
            let mut shape_rows = Vec::new();
            if is_int4 && m <= 32 {
                for &(nbpb, ks, sp) in &cfg.decode_shapes {
                    set_decode_shape_override(Some((nbpb, ks, sp)));
                    let timed = time_path(GemmPath::Fused, None, false).and_then(|(us, plan)| {
                        let ctx = if in_context {
                            time_path(GemmPath::Fused, None, true)?.0
                        } else {
                            f64::NAN
                        };
                        Ok((us, ctx, plan))
                    });
                    set_decode_shape_override(None);
                    let (us, ctx, plan) = timed?;
                    // Reported only where the decode kernel ran that shape
                    // (else the rule's shape ran).
                    set_decode_shape_override(Some((nbpb, ks, sp)));
                    let shape = match weights {
                        Weights::Int4(w) => decode_shape(m, &w[0], dev),
                        Weights::Wx(_) => None,
                    };
                    set_decode_shape_override(None);
                    let taken = shape == Some((nbpb, ks, sp))
                        && plan.is_some_and(|p| p.kernel.starts_with("w4a16_dec_"));
                    if taken {
                        shape_rows.push(((nbpb, ks, sp), us, ctx));
                    }
                }
            }
            let row = |splits: usize, forced: bool, path: GemmPath, us: f64| GemmBenchRow {
                format: *format,
                n,
                k,
                m,
                splits,
                forced_splits: forced,
                path,
                us,
                fused_us,
                general_us,
                dequant_cublas_us,
                wgmma_us,
                wgmma_ws_us,
                bulk_us,
                stream_k_us,
                shared_a_us,
                cublas_us,
                ctx_us: f64::NAN,
                cublas_ctx_us,
                fused_ctx_us,
                stream_k_ctx_us,
                dec_shape: None,
                weight_bytes: *weight_bytes,
                read_us: *read_us,
                weight_tbps: *weight_bytes as f64 / (us * 1e-6) / 1e12,
                tflops: 2.0 * (m * n * k) as f64 / (us * 1e-6) / 1e12,
            };
            let splits_used = match path {
                GemmPath::DequantCublas => 1,
                GemmPath::Wgmma
                | GemmPath::WgmmaWs
                | GemmPath::Bulk
                | GemmPath::StreamK
                | GemmPath::SharedA => auto_plan.map_or(0, |p| p.splits),
                _ => fused_plan.map_or(0, |p| p.splits),
            };
            rows.push(GemmBenchRow {
                ctx_us,
                ..row(splits_used, false, path, us)
            });
            for (s, path, us) in sweep {
                rows.push(row(s, true, path, us));
            }
            for ((nbpb, ks, sp), us, ctx) in shape_rows {
                rows.push(GemmBenchRow {
                    ctx_us: ctx,
                    dec_shape: Some((nbpb, ks, sp)),
                    ..row(sp * ks, true, GemmPath::Fused, us)
                });
            }
        }
    }
    dev.synchronize()?;
    Ok(rows)
}

/// One row of [`bench_glu`]: the gate|up GEMM of a stacked (2F, K) weight
/// followed by the `glu` launch, against the GEMM with the GLU in its
/// epilogue (`int4_gemm_glu`), both in the decode context (after the PDL
/// delay kernel, its time subtracted) and back to back.
#[derive(Clone, Debug)]
pub struct GluBenchRow {
    pub n: usize,
    pub k: usize,
    pub m: usize,
    /// Auto GEMM + `glu` launch.
    pub pair_us: f64,
    pub pair_ctx_us: f64,
    /// `int4_gemm_glu` (NaN where it does not run).
    pub epilogue_us: f64,
    pub epilogue_ctx_us: f64,
    /// Kernel of the epilogue call.
    pub kernel: &'static str,
}

/// `marlin-cuda-bench --glu`: the gate|up GEMM + `glu` pair against the
/// GEMM with the GLU in its epilogue, for each stacked (N = 2F, K) shape of
/// `cfg.shapes` and M of `cfg.ms` (M <= 8), SiLU. Returns the delay
/// kernel's own time and the rows.
pub fn bench_glu(ordinal: usize, cfg: &GemmBenchConfig) -> Result<(f64, Vec<GluBenchRow>)> {
    use crate::int4::gemm::{glu_epilogue_supported, int4_gemm_glu, GluAct};
    let dev = CudaDevice::new(ordinal)?;
    let delay_us = time_us(&dev, cfg.reps, cfg.batches, |_| {
        launch_bench_delay(&dev, cfg.delay_cycles)
    })?;
    let mut rows = Vec::new();
    for &(n, k) in &cfg.shapes {
        if n % 2 != 0 {
            continue;
        }
        let f = n / 2;
        let (weights, _) = Weights::build(&dev, GemmFormat::Int4G128, n, k, cfg.l2_warm)?;
        let Weights::Int4(w) = weights else {
            continue;
        };
        let max_m = cfg.ms.iter().copied().max().unwrap_or(1);
        let a = dev.upload("activations", &random_activations(max_m, k, 7))?;
        let mut c = dev.alloc_zeros::<f16>("gate|up output", max_m * n)?;
        let mut out = dev.alloc_zeros::<f16>("GLU output", max_m * f)?;
        let mut ws = GemmWorkspace::new(&dev)?;
        for &m in cfg.ms.iter().filter(|&&m| m <= 8) {
            let mut pair = |i: usize, after_delay: bool| -> Result<()> {
                if after_delay {
                    launch_bench_delay(&dev, cfg.delay_cycles)?;
                }
                int4_gemm(
                    &dev,
                    &a,
                    m,
                    &w[i % w.len()],
                    &mut c,
                    &mut ws,
                    GemmOptions::default(),
                )?;
                crate::ops::glu(&dev, &c.slice(0..), &c.slice(f..), n, m, f, false, &mut out)
            };
            let pair_us = time_us(&dev, cfg.reps, cfg.batches, |i| pair(i, false))?;
            let pair_ctx_us = time_us(&dev, cfg.reps, cfg.batches, |i| pair(i, true))? - delay_us;
            let (mut epilogue_us, mut epilogue_ctx_us, mut kernel) = (f64::NAN, f64::NAN, "-");
            if glu_epilogue_supported(&dev, m, &w[0]) {
                let mut fused = |i: usize, after_delay: bool| -> Result<()> {
                    if after_delay {
                        launch_bench_delay(&dev, cfg.delay_cycles)?;
                    }
                    let wi = &w[i % w.len()];
                    kernel = int4_gemm_glu(
                        &dev,
                        &a.as_view(),
                        m,
                        wi,
                        &mut out.as_view_mut(),
                        GluAct::Silu,
                        &mut ws,
                    )?
                    .kernel;
                    Ok(())
                };
                epilogue_us = time_us(&dev, cfg.reps, cfg.batches, |i| fused(i, false))?;
                epilogue_ctx_us =
                    time_us(&dev, cfg.reps, cfg.batches, |i| fused(i, true))? - delay_us;
            }
            rows.push(GluBenchRow {
                n,
                k,
                m,
                pair_us,
                pair_ctx_us,
                epilogue_us,
                epilogue_ctx_us,
                kernel,
            });
        }
    }
    Ok((delay_us, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_format_names_round_trip() {
        for (name, format, group) in [
            ("int4g128", GemmFormat::Int4G128, (128, false)),
            ("int4zp", GemmFormat::Int4Zp128, (128, true)),
            ("int4g32", GemmFormat::Int4G32, (32, false)),
        ] {
            assert_eq!(GemmFormat::parse(name), Some(format));
            assert_eq!(format.name(), name);
            assert!(format.is_int4());
            assert_eq!(format.int4_group(), Some(group));
        }
        assert_eq!(GemmFormat::parse("int4"), Some(GemmFormat::Int4G128));
        let mxfp4 = GemmFormat::parse("mxfp4").expect("mxfp4");
        assert!(!mxfp4.is_int4());
        assert_eq!(
            GemmFormat::parse_list("int4zp, int4g32"),
            Some(vec![GemmFormat::Int4Zp128, GemmFormat::Int4G32])
        );
        assert_eq!(GemmFormat::parse("int4zp128"), None);
    }
}
