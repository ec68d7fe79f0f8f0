//! `marlin bench gemm --device cpu`: quantized matmul throughput against the
//! machine's own limits, measured in the same run.
//!
//! Memory, not cache: the copy arrays are each twice the last-level cache
//! ([`last_level_cache_bytes`]; this VM reports a 504 MiB L3), and the
//! decode rows (M < 8) rotate through copies of their weights that add up
//! to 4x the LLC, used oldest first, so every timed call streams weights
//! that 4x the LLC of other data went through the cache after. Before each
//! such call a copy and a read of the same byte count, over windows of the
//! copy arrays that rotate the same way, sample the bandwidth at the same
//! moment of a shared machine.
//!
//! For each (K, N) shape, format and M the report gives the median and best
//! time of [`GemmBenchConfig::runs`] calls after warm-up (4x as many for
//! M <= 4), the GB/s of weight bytes streamed (codes + scales + zeros as the
//! kernel stores them) and GFLOP/s (2·M·N·K) at the median time, the
//! fraction of the STREAM-like copy bandwidth (best time against best copy,
//! STREAM's convention; meaningful at M = 1, where the product is
//! memory-bound), and the speedup (medians) over the same product with dense
//! f32 weights through `matrixmultiply`'s sgemm (the fastest f32 GEMM
//! measured among the crates.io candidates, see [`crate::dense`]), whose
//! GFLOP/s are printed beside the machine's f32 FMA peak, measured in the
//! same run ([`measure_fma_peak`]).

use crate::dense::DenseWeight;
use crate::quant_gemm::PreparedQuant;
use crate::CpuError;
use marlin_quant::{
    ElementType, Granularity, Layout, QuantScheme, QuantTensor, ScaleDType, ZeroPoint,
};
use std::fmt;
use std::hint::black_box;
use std::time::Instant;

/// A weight format of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchFormat {
    /// INT4 symmetric, f16 scale per 128 columns (GPTQ-like).
    Int4G128,
    /// FP4 E2M1 with an E8M0 scale per 32 (OCP MXFP4).
    Mxfp4,
    /// FP4 E2M1 with an E4M3 scale per 16 and an f32 tensor scale (NVFP4).
    Nvfp4,
    /// INT8 symmetric, one f32 scale per row.
    Int8PerChannel,
    /// FP8 E4M3, one f32 scale per row.
    Fp8PerChannel,
    /// INT3 symmetric, f16 scale per 128 columns.
    Int3G128,
    /// INT2 symmetric, f16 scale per 128 columns.
    Int2G128,
}

impl BenchFormat {
    pub fn name(self) -> &'static str {
        match self {
            BenchFormat::Int4G128 => "INT4 g128",
            BenchFormat::Mxfp4 => "MXFP4",
            BenchFormat::Nvfp4 => "NVFP4",
            BenchFormat::Int8PerChannel => "INT8 per-ch",
            BenchFormat::Fp8PerChannel => "FP8 E4M3 per-ch",
            BenchFormat::Int3G128 => "INT3 g128",
            BenchFormat::Int2G128 => "INT2 g128",
        }
    }

    /// Every format, with the short name filters use (`int4`, `mxfp4`...).
    pub const ALL: [(&'static str, BenchFormat); 7] = [
        ("int4", BenchFormat::Int4G128),
        ("mxfp4", BenchFormat::Mxfp4),
        ("nvfp4", BenchFormat::Nvfp4),
        ("int8", BenchFormat::Int8PerChannel),
        ("fp8", BenchFormat::Fp8PerChannel),
        ("int3", BenchFormat::Int3G128),
        ("int2", BenchFormat::Int2G128),
    ];

    /// The format of a short name of [`BenchFormat::ALL`] (case-insensitive).
    pub fn from_short_name(name: &str) -> Option<Self> {
        let name = name.trim().to_ascii_lowercase();
        Self::ALL.iter().find(|(n, _)| *n == name).map(|a| a.1)
    }

    pub fn scheme(self) -> QuantScheme {
        let (element, granularity, scale_dtype, global_scale) = match self {
            BenchFormat::Int4G128 => (
                ElementType::Int {
                    bits: 4,
                    signed: true,
                },
                Granularity::PerGroup { group_size: 128 },
                ScaleDType::F16,
                false,
            ),
            BenchFormat::Mxfp4 => (
                ElementType::Fp4E2M1,
                Granularity::PerGroup { group_size: 32 },
                ScaleDType::E8M0,
                false,
            ),
            BenchFormat::Nvfp4 => (
                ElementType::Fp4E2M1,
                Granularity::PerGroup { group_size: 16 },
                ScaleDType::E4M3,
                true,
            ),
            BenchFormat::Int8PerChannel => (
                ElementType::Int {
                    bits: 8,
                    signed: true,
                },
                Granularity::PerChannel,
                ScaleDType::F32,
                false,
            ),
            BenchFormat::Fp8PerChannel => (
                ElementType::Fp8E4M3,
                Granularity::PerChannel,
                ScaleDType::F32,
                false,
            ),
            BenchFormat::Int3G128 | BenchFormat::Int2G128 => (
                ElementType::Int {
                    bits: if self == BenchFormat::Int3G128 { 3 } else { 2 },
                    signed: true,
                },
                Granularity::PerGroup { group_size: 128 },
                ScaleDType::F16,
                false,
            ),
        };
        QuantScheme {
            element,
            granularity,
            scale_dtype,
            zero_point: ZeroPoint::None,
            global_scale,
            layout: Layout::KMajorDense,
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct GemmBenchConfig {
    /// (K, N): input features, output features.
    pub shapes: Vec<(usize, usize)>,
    /// Activation rows.
    pub ms: Vec<usize>,
    pub formats: Vec<BenchFormat>,
    /// Untimed calls before timing.
    pub warmup: usize,
    /// Timed calls; the median is reported.
    pub runs: usize,
    /// Size of each of the two buffers of the copy-bandwidth test.
    pub copy_bytes: usize,
    /// Bytes of weight copies the decode rows (M < 8) rotate through (at
    /// least 2 copies): every timed call reads a copy that this many bytes
    /// of other weights went through the cache after.
    pub rotate_bytes: usize,
    /// The last-level cache the sizes above were chosen for (None:
    /// unknown, [`FALLBACK_LLC_BYTES`] assumed).
    pub llc_bytes: Option<usize>,
    /// Also time the dense f32 product (sgemm) of every shape.
    pub dense_baseline: bool,
}

impl Default for GemmBenchConfig {
    /// The table: 4096x4096 and 4096x14336, M = 1 and 128, INT4
    /// g128, MXFP4, INT8, FP8, INT3 and INT2; memory sizes from the LLC.
    fn default() -> Self {
        let llc_bytes = last_level_cache_bytes();
        let llc = llc_bytes.unwrap_or(FALLBACK_LLC_BYTES);
        GemmBenchConfig {
            shapes: vec![(4096, 4096), (4096, 14336)],
            ms: vec![1, 128],
            formats: vec![
                BenchFormat::Int4G128,
                BenchFormat::Mxfp4,
                BenchFormat::Int8PerChannel,
                BenchFormat::Fp8PerChannel,
                BenchFormat::Int3G128,
                BenchFormat::Int2G128,
            ],
            warmup: 2,
            runs: 7,
            // Each array 2x the LLC: a pass touches 4x the LLC, so a
            // streaming pass cannot be served from it (STREAM asks 4x per
            // array; 2 x 2 GiB would crowd a shared 23 GB machine).
            copy_bytes: llc.saturating_mul(2).max(64 << 20),
            rotate_bytes: llc.saturating_mul(4).max(128 << 20),
            llc_bytes,
            dense_baseline: true,
        }
    }
}

/// One measured product.
#[derive(Clone, Debug)]
pub struct GemmBenchRow {
    pub format: String,
    pub kernel: String,
    pub k: usize,
    pub n: usize,
    pub m: usize,
    /// Median seconds per call.
    pub seconds: f64,
    /// Best seconds per call.
    pub best_seconds: f64,
    /// Weight bytes streamed per call.
    pub weight_bytes: usize,
    /// Copies of the weights the timed calls rotated through (1: the same
    /// weights every call, as M >= 8 rows, which are compute-bound).
    pub weight_copies: usize,
    pub weight_gbs: f64,
    pub gflops: f64,
    /// Weight bytes / best time, over the report's copy bandwidth (the best
    /// of its full passes and of every decode row's same-bytes copies; both
    /// best-of-runs, the STREAM convention).
    pub frac_copy_bw: f64,
    /// The same against the read-only bandwidth.
    pub frac_read_bw: f64,
    /// Decode rows: median over the timed calls of the call's weight GB/s
    /// over the GB/s of the same-bytes copy run just before it (robust on
    /// a loaded machine, where best-of-runs pairs lucky moments).
    pub paired_copy_ratio: Option<f64>,
    /// Median seconds of the dense f32 product of the same shape.
    pub dense_seconds: Option<f64>,
}

impl GemmBenchRow {
    pub fn speedup_vs_dense(&self) -> Option<f64> {
        self.dense_seconds.map(|d| d / self.seconds)
    }
}

/// The benchmark's result; `Display` prints the table.
#[derive(Clone, Debug)]
pub struct GemmBenchReport {
    /// STREAM-like copy bandwidth, read + write bytes, GB/s (1e9).
    pub copy_gbs: f64,
    /// Read-only (sum) bandwidth over the same buffer, GB/s.
    pub read_gbs: f64,
    pub copy_bytes: usize,
    /// See [`GemmBenchConfig::rotate_bytes`] and [`GemmBenchConfig::llc_bytes`].
    pub rotate_bytes: usize,
    pub llc_bytes: Option<usize>,
    pub threads: usize,
    /// Threads of the dense baseline ([`crate::dense::sgemm_threads`]).
    pub dense_threads: usize,
    /// f32 FMA throughput of `threads` threads, GFLOP/s, and the registers
    /// it was measured on.
    pub fma_peak_gflops: f64,
    pub fma_isa: &'static str,
    pub rows: Vec<GemmBenchRow>,
}

/// Target of the issue: M = 1 at >= 80% of copy bandwidth, M >= 16 at least
/// 2x faster than dense f32.
fn target(row: &GemmBenchRow) -> String {
    if row.m == 1 {
        let ok = row.frac_copy_bw >= 0.8;
        format!("bw>=80%: {}", if ok { "yes" } else { "NO" })
    } else {
        match row.speedup_vs_dense() {
            Some(s) => format!("2x dense: {}", if s >= 2.0 { "yes" } else { "NO" }),
            None => "-".to_string(),
        }
    }
}

impl fmt::Display for GemmBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "memory bandwidth: copy of 2 x {} MiB (read + write) {:.1} GB/s, read-only {:.1} GB/s; threads: {}",
            self.copy_bytes >> 20,
            self.copy_gbs,
            self.read_gbs,
            self.threads
        )?;
        let llc = match self.llc_bytes {
            Some(b) => format!("{} MiB (sysfs)", b >> 20),
            None => format!("unknown (assumed {} MiB)", FALLBACK_LLC_BYTES >> 20),
        };
        writeln!(
            f,
            "last-level cache {llc}: copy arrays {:.1}x LLC each; M < 8 rows rotate through {} MiB of weight copies (\"copies\" x \"wt MB\", oldest first), so every timed call streams weights from DRAM",
            self.copy_bytes as f64 / self.llc_bytes.unwrap_or(FALLBACK_LLC_BYTES) as f64,
            self.rotate_bytes >> 20,
        )?;
        writeln!(
            f,
            "%copy / %read: best weight GB/s over the bandwidth above (best of full passes and of the DRAM-cold same-bytes copies (reads) run before each decode call); paired: median over a row's calls of call GB/s / the GB/s of the copy just before it"
        )?;
        writeln!(
            f,
            "f32 FMA peak ({} threads, {}, measured now): {:.0} GFLOP/s; dense f32 baseline: matrixmultiply sgemm on {} threads",
            self.threads, self.fma_isa, self.fma_peak_gflops, self.dense_threads
        )?;
        writeln!(
            f,
            "{:<15} {:>5} {:>6} {:>4} {:<26} {:>7} {:>6} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>9} {:>9} {:>7}  target",
            "format",
            "K",
            "N",
            "M",
            "kernel",
            "wt MB",
            "copies",
            "time ms",
            "best ms",
            "GB/s",
            "GFLOP/s",
            "%copy",
            "%read",
            "paired",
            "f32 ms",
            "f32 GF/s",
            "speedup",
        )?;
        for r in &self.rows {
            let dense = r
                .dense_seconds
                .map_or("-".to_string(), |d| format!("{:.3}", d * 1e3));
            let speed = r
                .speedup_vs_dense()
                .map_or("-".to_string(), |s| format!("{s:.2}x"));
            let paired = r
                .paired_copy_ratio
                .map_or("-".to_string(), |p| format!("{:.0}%", p * 100.0));
            let dense_gflops = r.dense_seconds.map_or("-".to_string(), |d| {
                format!("{:.0}", 2.0 * (r.m * r.n * r.k) as f64 / d / 1e9)
            });
            writeln!(
                f,
                "{:<15} {:>5} {:>6} {:>4} {:<26} {:>7.2} {:>6} {:>9.3} {:>8.3} {:>8.2} {:>8.1} {:>6.0}% {:>6.0}% {:>7} {:>9} {:>9} {:>7}  {}",
                r.format,
                r.k,
                r.n,
                r.m,
                r.kernel,
                r.weight_bytes as f64 / 1e6,
                r.weight_copies,
                r.seconds * 1e3,
                r.best_seconds * 1e3,
                r.weight_gbs,
                r.gflops,
                r.frac_copy_bw * 100.0,
                r.frac_read_bw * 100.0,
                paired,
                dense,
                dense_gflops,
                speed,
                target(r)
            )?;
        }
        Ok(())
    }
}

/// Small deterministic generator for benchmark data (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A random (N, K) tensor of `scheme`: random codes (FP8 NaN codes
/// avoided), random non-zero scales representable in the scale dtype.
pub fn random_quant_tensor(
    scheme: QuantScheme,
    n: usize,
    k: usize,
    seed: u64,
) -> Result<QuantTensor, CpuError> {
    let mut rng = Rng(seed | 1);
    let bytes = n
        .checked_mul(scheme.row_bytes(k)?)
        .ok_or_else(|| CpuError::Shape(format!("{n}x{k} overflows")))?;
    let mut data: Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
    if scheme.element == ElementType::Fp8E4M3 {
        for b in &mut data {
            if *b & 0x7F == 0x7F {
                *b ^= 1;
            }
        }
    }
    let n_scales = scheme.num_scales(n, k)?;
    let scales = (0..n_scales)
        .map(|_| {
            let u = rng.unit().abs() * 0.5 + 0.5; // [0.5, 1)
            match scheme.scale_dtype {
                ScaleDType::E8M0 => 2f32.powi(-6 - (rng.next_u64() % 4) as i32),
                ScaleDType::E4M3 => (8 + rng.next_u64() % 8) as f32 * 0.125,
                ScaleDType::F16 => half::f16::from_f32(u * 0.01).to_f32(),
                ScaleDType::BF16 => half::bf16::from_f32(u * 0.01).to_f32(),
                ScaleDType::F32 => u * 0.01,
            }
        })
        .collect();
    Ok(QuantTensor {
        scheme,
        rows: n,
        cols: k,
        data,
        scales,
        zeros: None,
        global_scale: if scheme.global_scale { 0.01 } else { 1.0 },
        g_idx: None,
    })
}

/// Timings of [`time_calls`].
struct CallTimes {
    median: f64,
    best: f64,
    /// Seconds of each timed call, in call order.
    each: Vec<f64>,
}

/// `runs` calls of `f` after `warmup` calls; `between` runs, untimed,
/// before each timed call.
fn time_calls(
    warmup: usize,
    runs: usize,
    mut between: impl FnMut(),
    mut f: impl FnMut() -> Result<(), CpuError>,
) -> Result<CallTimes, CpuError> {
    for _ in 0..warmup {
        f()?;
    }
    let mut each = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        between();
        let start = Instant::now();
        f()?;
        each.push(start.elapsed().as_secs_f64());
    }
    let mut t = each.clone();
    t.sort_by(f64::total_cmp);
    Ok(CallTimes {
        median: t[t.len() / 2],
        best: t[0],
        each,
    })
}

/// Median of `v` (0 when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// LLC assumed when sysfs does not say.
pub const FALLBACK_LLC_BYTES: usize = 64 << 20;

/// Size of the largest data or unified cache of CPU 0, from Linux sysfs
/// (`/sys/devices/system/cpu/cpu0/cache/index*/size`); `None` elsewhere.
pub fn last_level_cache_bytes() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    let mut best: Option<(u32, usize)> = None;
    for entry in dir.flatten() {
        let path = entry.path();
        let read = |name: &str| std::fs::read_to_string(path.join(name)).ok();
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            continue;
        };
        if kind.trim() == "Instruction" {
            continue;
        }
        let (Ok(level), Some(bytes)) = (level.trim().parse::<u32>(), parse_cache_size(&size))
        else {
            continue;
        };
        if best.is_none_or(|(l, _)| level > l) {
            best = Some((level, bytes));
        }
    }
    best.map(|b| b.1)
}

/// sysfs cache sizes: `48K`, `2048K`, `516096K`, `32M`, or bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1usize << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

/// STREAM-like copy bandwidth in GB/s: `dst = src` over two buffers of
/// `bytes` each (much larger than the caches), split over [`crate::pool`];
/// counts read + write bytes. Best of `runs` after one warm-up, as STREAM
/// reports.
pub fn measure_copy_bandwidth(bytes: usize, runs: usize) -> f64 {
    let mut copy = CopyBench::new(bytes);
    (0..runs.max(1) + 1)
        .map(|_| copy.run_once())
        .fold(0.0, f64::max)
}

/// Two buffers for the copy test, allocated once, and the rotating windows
/// of the per-call samples.
struct CopyBench {
    src: Vec<f32>,
    dst: Vec<f32>,
    /// Next window of the copy (floats into both arrays).
    copy_pos: usize,
    /// Next window of the read; half an array ahead of `copy_pos`, so a
    /// window is read long after the copy went through it.
    read_pos: usize,
}

impl CopyBench {
    fn new(bytes: usize) -> Self {
        let len = (bytes / 4).max(1 << 20);
        CopyBench {
            src: (0..len).map(|i| i as f32).collect(),
            dst: vec![0f32; len],
            copy_pos: 0,
            read_pos: len / 2,
        }
    }

    /// Floats per task for a window of `len` floats: about 16 tasks per
    /// thread (like the decode kernels), at least 64 KiB.
    fn task_len(len: usize) -> usize {
        let threads = crate::pool::current().threads().max(1);
        len.div_ceil(threads * 16).max(1 << 14).next_multiple_of(16)
    }

    /// Start of the next window of `len` floats at `*pos` (wrapping).
    fn next_window(pos: &mut usize, len: usize, total: usize) -> usize {
        if *pos + len > total {
            *pos = 0;
        }
        let start = *pos;
        *pos += len;
        start
    }

    /// Sums `src[start..start + len]` over all threads (a read-only stream,
    /// like the m = 1 kernels); GB/s of bytes read. On [`crate::pool`], the
    /// threads the kernels run on.
    fn read_range(&self, start: usize, len: usize) -> f64 {
        let chunk = Self::task_len(len);
        let src = &self.src[start..start + len];
        let mut partial = vec![0f32; src.len().div_ceil(chunk)];
        let t = Instant::now();
        // Infallible: the closure returns Ok.
        let _ = crate::pool::current().try_for_each_chunk_mut(&mut partial, 1, |c, out| {
            let part = &src[c * chunk..((c + 1) * chunk).min(src.len())];
            // A wrapping integer sum of the bits: associative, so the
            // compiler vectorizes and unrolls it into independent chains
            // (an f32 sum keeps one chain per lane and is bound by the add
            // latency, below what the kernels stream).
            let words: &[u32] = bytemuck::cast_slice(part);
            out[0] = words.iter().fold(0u32, |a, &w| a.wrapping_add(w)) as f32;
            Ok(())
        });
        black_box(partial.iter().sum::<f32>());
        (len * 4) as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    /// `dst = src` over `start..start + len` on all threads (on
    /// [`crate::pool`]); GB/s of read + write bytes.
    fn copy_range(&mut self, start: usize, len: usize) -> f64 {
        let chunk = Self::task_len(len);
        let src = &self.src[start..start + len];
        let t = Instant::now();
        // Infallible: the closure returns Ok.
        let _ = crate::pool::current().try_for_each_chunk_mut(
            &mut self.dst[start..start + len],
            chunk,
            |c, d| {
                d.copy_from_slice(black_box(&src[c * chunk..c * chunk + d.len()]));
                Ok(())
            },
        );
        black_box(&mut self.dst);
        2.0 * (len * 4) as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    /// One pass reading all of `src`.
    fn read_once(&mut self) -> f64 {
        self.read_range(0, self.src.len())
    }

    /// One copy of all of `src` into `dst`.
    fn run_once(&mut self) -> f64 {
        self.copy_range(0, self.src.len())
    }

    /// A copy of the next window of `bytes` (read + write counted: 2x
    /// `bytes`), DRAM-cold while the arrays are larger than the LLC.
    fn copy_window(&mut self, bytes: usize) -> f64 {
        let len = (bytes / 4).clamp(16, self.src.len());
        let start = Self::next_window(&mut self.copy_pos, len, self.src.len());
        self.copy_range(start, len)
    }

    /// A read of the next window of `bytes`.
    fn read_window(&mut self, bytes: usize) -> f64 {
        let len = (bytes / 4).clamp(16, self.src.len());
        let start = Self::next_window(&mut self.read_pos, len, self.src.len());
        self.read_range(start, len)
    }
}

/// f32 FMA throughput of this machine now, GFLOP/s, with every thread of
/// [`crate::pool`] running 12 independent FMA chains on the widest
/// registers the CPU has (2 FLOP per lane per FMA); best of 5 passes of
/// about 1.5 GFLOP per thread. The ceiling any f32 GEMM (the dense
/// baseline) can reach on these threads.
pub fn measure_fma_peak() -> (f64, &'static str) {
    const ITERS: usize = 1 << 22;
    let threads = crate::pool::current().threads().max(1);
    let (chains, flops_per_fma, isa): (fn(usize) -> f32, f64, &'static str) = fma_kernel();
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        // Infallible: the closure returns Ok.
        let _ = crate::pool::current().try_for_each(threads, |_| {
            black_box(chains(ITERS));
            Ok(())
        });
        let flops = (threads * ITERS * 12) as f64 * flops_per_fma;
        best = best.max(flops / start.elapsed().as_secs_f64() / 1e9);
    }
    (best, isa)
}

/// The widest FMA loop of this CPU: (loop, FLOP per FMA instruction, name).
fn fma_kernel() -> (fn(usize) -> f32, f64, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512 F detected just above.
            return (|n| unsafe { fma_chains_avx512(n) }, 32.0, "512-bit FMA");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA detected just above.
            return (|n| unsafe { fma_chains_avx2(n) }, 16.0, "256-bit FMA");
        }
    }
    (fma_chains_scalar, 2.0, "scalar mul_add")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut a = [_mm512_set1_ps(1.0); 12];
    let c = _mm512_set1_ps(1e-3);
    for _ in 0..iters {
        // black_box: the multiplier is unknown to the compiler, so the
        // chains cannot be folded.
        let b = black_box(_mm512_set1_ps(0.999));
        for x in a.iter_mut() {
            *x = _mm512_fmadd_ps(*x, b, c);
        }
    }
    let s = a
        .iter()
        .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
    _mm512_reduce_add_ps(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut a = [_mm256_set1_ps(1.0); 12];
    let c = _mm256_set1_ps(1e-3);
    for _ in 0..iters {
        let b = black_box(_mm256_set1_ps(0.999));
        for x in a.iter_mut() {
            *x = _mm256_fmadd_ps(*x, b, c);
        }
    }
    let mut out = [0f32; 8];
    let s = a
        .iter()
        .fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out.iter().sum()
}

fn fma_chains_scalar(iters: usize) -> f32 {
    let mut a = [1f32; 12];
    for _ in 0..iters {
        let b = black_box(0.999f32);
        for x in a.iter_mut() {
            *x = x.mul_add(b, 1e-3);
        }
    }
    a.iter().sum()
}

/// Timed calls for `m`: small products are cheap, so they get 4x the runs.
fn runs_for(cfg: &GemmBenchConfig, m: usize) -> usize {
    if m <= 4 {
        cfg.runs.saturating_mul(4)
    } else {
        cfg.runs
    }
}

impl GemmBenchConfig {
    /// Every size non-zero and every buffer the run allocates addressable,
    /// so that a hand-written config fails before any work.
    fn check(&self) -> Result<(), CpuError> {
        let max_m = self.ms.iter().copied().max().unwrap_or(1);
        if self.ms.contains(&0) {
            return Err(CpuError::Shape("benchmark M of 0".into()));
        }
        if self.copy_bytes > isize::MAX as usize / 2 || self.rotate_bytes > isize::MAX as usize / 2
        {
            return Err(CpuError::Shape(format!(
                "benchmark copy arrays of {} bytes, weight rotation of {} bytes",
                self.copy_bytes, self.rotate_bytes
            )));
        }
        for &(k, n) in &self.shapes {
            let fits = k > 0
                && n > 0
                && [max_m.checked_mul(k), max_m.checked_mul(n), n.checked_mul(k)]
                    .iter()
                    .all(|len| len.is_some_and(|l| l <= isize::MAX as usize / 4));
            if !fits {
                return Err(CpuError::Shape(format!(
                    "benchmark shape K = {k}, N = {n} with M up to {max_m}"
                )));
            }
        }
        Ok(())
    }
}

/// Copies of weights of `bytes` that add up to at least `rotate_bytes`
/// (at least 2; 1 when nothing is rotated).
fn rotation_copies(rotate_bytes: usize, bytes: usize) -> usize {
    rotate_bytes.div_ceil(bytes.max(1)).max(2)
}

/// Runs the benchmark of `cfg`.
pub fn run_gemm_bench(cfg: &GemmBenchConfig) -> Result<GemmBenchReport, CpuError> {
    cfg.check()?;
    let mut copy = CopyBench::new(cfg.copy_bytes);
    let mut copy_gbs = (0..5).map(|_| copy.run_once()).fold(0.0, f64::max);
    let mut read_gbs = (0..5).map(|_| copy.read_once()).fold(0.0, f64::max);
    let (fma_peak_gflops, fma_isa) = measure_fma_peak();
    let mut rows = Vec::new();
    let max_m = cfg.ms.iter().copied().max().unwrap_or(1);
    for &(k, n) in &cfg.shapes {
        let mut rng =
            Rng(0x9E37_79B9_7F4A_7C15 ^ (k as u64).wrapping_mul(31).wrapping_add(n as u64));
        let x: Vec<f32> = (0..max_m * k).map(|_| rng.unit()).collect();
        let mut y = vec![0f32; max_m * n];
        // Dense f32 baseline, timed once per (shape, m).
        let mut dense_secs = Vec::new();
        if cfg.dense_baseline {
            let w: Vec<f32> = (0..n * k).map(|_| rng.unit() * 0.05).collect();
            let dense = DenseWeight::new(n, k, w)?;
            for &m in &cfg.ms {
                let (xs, ys) = (&x[..m * k], &mut y[..m * n]);
                let t = time_calls(
                    cfg.warmup,
                    runs_for(cfg, m),
                    || {},
                    || dense.matmul(black_box(xs), m, black_box(&mut *ys)),
                )?;
                dense_secs.push((m, t.median));
            }
        }
        for (fi, &fmt) in cfg.formats.iter().enumerate() {
            let t = random_quant_tensor(fmt.scheme(), n, k, 0x5EED + fi as u64)?;
            let p = PreparedQuant::new(&t)?;
            drop(t);
            let weight_bytes = p.stream_bytes();
            for &m in &cfg.ms {
                let (xs, ys) = (&x[..m * k], &mut y[..m * n]);
                let decode = m < crate::quant_gemm::BATCHED_MIN_M;
                // Decode rows: copies used oldest first, each after the
                // rest of the rotation went through the cache.
                let copies: Vec<PreparedQuant> = if decode {
                    (0..rotation_copies(cfg.rotate_bytes, weight_bytes))
                        .map(|_| p.clone())
                        .collect()
                } else {
                    Vec::new()
                };
                let mut next = 0usize;
                // Before each timed decode call, a copy and a read of the
                // same bytes (DRAM-cold windows), so that the kernel and
                // the bandwidth it is compared with see the same moment of
                // a shared machine.
                let (mut row_copy_gbs, mut row_read_gbs) = (0f64, 0f64);
                let mut copy_samples = Vec::new();
                let times = time_calls(
                    cfg.warmup,
                    runs_for(cfg, m),
                    || {
                        if decode {
                            let c = copy.copy_window(weight_bytes);
                            copy_samples.push(c);
                            row_copy_gbs = row_copy_gbs.max(c);
                            row_read_gbs = row_read_gbs.max(copy.read_window(weight_bytes));
                        }
                    },
                    || {
                        let w = if copies.is_empty() {
                            &p
                        } else {
                            next += 1;
                            &copies[(next - 1) % copies.len()]
                        };
                        w.matmul(black_box(xs), m, black_box(&mut *ys))
                    },
                )?;
                drop(copies);
                let (s, best) = (times.median, times.best);
                // Each call against the copy just before it.
                let paired_copy_ratio = decode.then(|| {
                    median(
                        times
                            .each
                            .iter()
                            .zip(&copy_samples)
                            .map(|(&t, &c)| weight_bytes as f64 / t / 1e9 / c)
                            .collect(),
                    )
                });
                copy_gbs = copy_gbs.max(row_copy_gbs);
                read_gbs = read_gbs.max(row_read_gbs);
                let weight_gbs = weight_bytes as f64 / s / 1e9;
                rows.push(GemmBenchRow {
                    format: fmt.name().to_string(),
                    kernel: p.kernel_name(),
                    k,
                    n,
                    m,
                    seconds: s,
                    best_seconds: best,
                    weight_bytes,
                    weight_copies: if decode {
                        rotation_copies(cfg.rotate_bytes, weight_bytes)
                    } else {
                        1
                    },
                    weight_gbs,
                    gflops: 2.0 * (m * n * k) as f64 / s / 1e9,
                    // Set below, against the run's best bandwidth.
                    frac_copy_bw: 0.0,
                    frac_read_bw: 0.0,
                    paired_copy_ratio,
                    dense_seconds: dense_secs.iter().find(|d| d.0 == m).map(|d| d.1),
                });
            }
        }
    }
    // Every row against the one bandwidth the header prints: the best of
    // the full passes and of every row's same-bytes windows (the strict
    // STREAM reading; `paired` is the same-moment one).
    for r in rows.iter_mut() {
        r.frac_copy_bw = r.weight_bytes as f64 / r.best_seconds / 1e9 / copy_gbs;
        r.frac_read_bw = r.weight_bytes as f64 / r.best_seconds / 1e9 / read_gbs;
    }
    Ok(GemmBenchReport {
        copy_gbs,
        read_gbs,
        copy_bytes: cfg.copy_bytes,
        rotate_bytes: cfg.rotate_bytes,
        llc_bytes: cfg.llc_bytes,
        threads: crate::pool::current().threads(),
        dense_threads: crate::dense::sgemm_threads(),
        fma_peak_gflops,
        fma_isa,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_configs_are_errors_before_any_work() {
        let with = |shapes: Vec<(usize, usize)>, ms: Vec<usize>| GemmBenchConfig {
            shapes,
            ms,
            ..GemmBenchConfig::default()
        };
        assert!(with(vec![(0, 64)], vec![1]).check().is_err());
        assert!(with(vec![(64, 64)], vec![0]).check().is_err());
        assert!(with(vec![(usize::MAX / 2, 64)], vec![4]).check().is_err());
        assert!(with(vec![(64, 64)], vec![1, 3]).check().is_ok());
        let huge_copy = GemmBenchConfig {
            copy_bytes: usize::MAX,
            ..GemmBenchConfig::default()
        };
        assert!(huge_copy.check().is_err());
    }

    #[test]
    fn sysfs_cache_sizes_parse() {
        assert_eq!(parse_cache_size("48K\n"), Some(48 << 10));
        assert_eq!(parse_cache_size("516096K"), Some(504 << 20));
        assert_eq!(parse_cache_size("32M"), Some(32 << 20));
        assert_eq!(parse_cache_size("4096"), Some(4096));
        assert_eq!(parse_cache_size(""), None);
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size("99999999999999999999G"), None);
    }

    #[test]
    fn rotation_covers_the_requested_bytes() {
        // 4x a 504 MiB LLC over 8.65 MB of INT4 4096x4096 weights.
        let n = rotation_copies(2016 << 20, 8_650_752);
        assert_eq!(n, 245);
        assert!(n * 8_650_752 >= 2016 << 20);
        assert_eq!(rotation_copies(1 << 20, 1 << 30), 2);
        assert_eq!(rotation_copies(0, 0), 2);
    }

    #[test]
    fn copy_windows_rotate_inside_the_arrays() {
        let mut c = CopyBench::new(4 << 20);
        let total = c.src.len();
        // Windows of a quarter: after four copies every float was copied
        // once; the fifth wraps to the start.
        for _ in 0..5 {
            assert!(c.copy_window(1 << 20) > 0.0);
            assert!(c.read_window(1 << 20) > 0.0);
            assert!(c.copy_pos <= total && c.read_pos <= total);
        }
        assert_eq!(c.copy_pos, total / 4);
        assert!(c.dst == c.src);
    }
}
