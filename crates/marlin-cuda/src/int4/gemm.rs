//! Device side of the W4A16 GEMM: weights uploaded once, the split-K
//! workspace, and the checked launch.

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use half::f16;
use marlin_quant::QuantTensor;

use super::pack::{pack_int4, Int4Packed, N_TILE};
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};

pub(super) const MODULE: &str = "w4a16_gemm";
pub(super) const SOURCE: &str = include_str!("../kernels/w4a16_gemm.cu");
const THREADS: u32 = 128;
/// Chunks of 64 along K each split must get at least, so that the weight
/// pipeline (8 loads deep) fills before the epilogue.
const MIN_CHUNKS_PER_SPLIT: usize = 4;
/// Preferred chunks of 64 along K per split (see `plan`).
const TARGET_CHUNKS_PER_SPLIT: usize = 16;
/// Decode kernel (`w4a16_dec_*`, M <= 16): cp.async ring depth (keep in sync
/// with W4A16_DEC_ENTRY in the source).
const DEC_STAGES: usize = 8;
/// Decode kernel: most chunks of 64 along K per split, bounding the block's
/// activation tile in shared memory (16 rows x 2048 halves = 64 KiB). Forced
/// split factors with longer splits take the `w4a16_gemm_*` kernels.
const DEC_MAX_CHUNKS_PER_SPLIT: usize = 32;
/// Decode kernel: activation tile budget of the 32-row variant (two blocks
/// per SM), which bounds its chunks per split.
const DEC_TILE_BUDGET: usize = 88 * 1024;
/// Decode kernel: largest M (4 token tiles of 8). A 64-row variant (8
/// tiles, several blocks beyond 64 rows) measured 1.3-1.5x slower than the
/// general kernel at M = 64 (docs/CUDA.md, change 14) and was removed.
const DEC_MAX_M: usize = 32;
/// Decode kernel: default split-K factor (see `decode_plan`).
const DEC_SPLITS: usize = 8;

/// An INT4 weight matrix resident on the device in the kernel's layout.
pub struct Int4Weight {
    pub n: usize,
    pub k: usize,
    pub(super) n_pad: usize,
    pub(super) k_chunks: usize,
    pub(super) group_chunks: usize,
    pub(super) weight_bytes: usize,
    pub(super) words: CudaSlice<u32>,  // (n_pad/16, k_pad/64, 32, 4)
    pub(super) scales: CudaSlice<u32>, // (groups, n_pad/16, 8) f16x2
    pub(super) neg_zero_scales: Option<CudaSlice<u32>>,
}

impl Int4Weight {
    /// Repack on the host and upload.
    pub fn from_quant(dev: &CudaDevice, w: &QuantTensor) -> Result<Self> {
        Self::from_packed(dev, &pack_int4(w)?)
    }

    pub fn from_packed(dev: &CudaDevice, p: &Int4Packed) -> Result<Self> {
        let to_i32 = |v: usize, what: &str| {
            i32::try_from(v).map_err(|_| CudaError::Shape(format!("{what} = {v} exceeds i32")))
        };
        to_i32(p.n_pad, "N")?;
        to_i32(p.k_pad, "K")?;
        Ok(Self {
            n: p.n,
            k: p.k,
            n_pad: p.n_pad,
            k_chunks: p.k_chunks(),
            group_chunks: p.group_chunks,
            weight_bytes: p.weight_bytes(),
            words: dev.upload("INT4 weight codes", &p.words)?,
            scales: dev.upload("INT4 weight scales", &p.scales)?,
            neg_zero_scales: match &p.neg_zero_scales {
                Some(z) => Some(dev.upload("INT4 weight zero points", z)?),
                None => None,
            },
        })
    }

    /// Bytes one GEMM call streams from the weight (codes, scales, zeros).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }
}

/// Scratch of the split-K reduction. Reuse one per stream: the tickets
/// return to zero at the end of every launch, so launches on one stream can
/// share it; concurrent streams need their own.
///
/// For CUDA graph capture, call [`GemmWorkspace::prepare`] once per (weight
/// shape, M, options) before capturing, then use [`int4_gemm_prepared`]
/// inside the capture: it never allocates, compiles, loads a module or
/// synchronises, and fails instead of doing so.
pub struct GemmWorkspace {
    pub(crate) partials: CudaSlice<f32>,
    pub(crate) tickets: CudaSlice<u32>,
    /// (N, K) f16 scratch of the large-M path, allocated at first use.
    pub(crate) dense: Option<CudaSlice<f16>>,
    /// Kernels loaded by `prepare` (checked by `int4_gemm_prepared`).
    prepared: Vec<&'static str>,
}

impl GemmWorkspace {
    pub fn new(dev: &CudaDevice) -> Result<Self> {
        Ok(Self {
            partials: dev.alloc_zeros("split-K partials", 1)?,
            tickets: dev.alloc_zeros("split-K tickets", 1)?,
            dense: None,
            prepared: Vec::new(),
        })
    }

    pub(crate) fn reserve(
        &mut self,
        dev: &CudaDevice,
        partials: usize,
        tickets: usize,
    ) -> Result<()> {
        if self.partials.len() < partials {
            self.partials = dev.alloc_zeros("split-K partials", partials)?;
        }
        if self.tickets.len() < tickets {
            self.tickets = dev.alloc_zeros("split-K tickets", tickets)?;
        }
        Ok(())
    }

    /// Make a later [`int4_gemm_prepared`] call of `m` rows with weight `w`
    /// and `opts` allocation- and synchronisation-free: compiles and loads
    /// its kernel, sizes the split-K scratch (and the dense f16 scratch and
    /// cuBLAS handle of the dequantize + cuBLAS path). Returns the plan that
    /// call will use. Call it for every (weight shape, M) to be captured.
    pub fn prepare(
        &mut self,
        dev: &Arc<CudaDevice>,
        w: &Int4Weight,
        m: usize,
        opts: GemmOptions,
    ) -> Result<GemmPlan> {
        match resolve_call(dev, m, w, opts)? {
            Call::Dequant => {
                let elems = w.n * w.k;
                if self.dense.as_ref().is_none_or(|d| d.len() < elems) {
                    self.dense = None;
                    self.dense = Some(dev.alloc_zeros("f16 dequantized weight scratch", elems)?);
                }
                dev.function(MODULE, SOURCE, "w4_dequant_f16", 0)?;
                dev.with_blas(|_| Ok(()))?;
                self.mark_prepared("w4_dequant_f16");
                Ok(dequant_plan())
            }
            Call::Fused(fc) => {
                if fc.plan.splits > 1 {
                    self.reserve(dev, fc.partials, fc.tickets)?;
                }
                dev.function(MODULE, SOURCE, fc.plan.kernel, fc.max_smem)?;
                self.mark_prepared(fc.plan.kernel);
                Ok(fc.plan)
            }
        }
    }

    fn mark_prepared(&mut self, kernel: &'static str) {
        if !self.prepared.contains(&kernel) {
            self.prepared.push(kernel);
        }
    }

    fn check_prepared(&self, kernel: &'static str) -> Result<()> {
        if self.prepared.contains(&kernel) {
            Ok(())
        } else {
            Err(CudaError::Unsupported(format!(
                "int4_gemm_prepared: kernel {kernel} was not loaded by GemmWorkspace::prepare"
            )))
        }
    }
}

/// Which implementation computes the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GemmPath {
    /// The fused kernel or dequantize + cuBLAS, by [`auto_fused`].
    #[default]
    Auto,
    /// The fused dequant-GEMM kernel: `w4a16_dec_*` for M <= 16, else
    /// `w4a16_gemm_*`.
    Fused,
    /// The general fused kernel `w4a16_gemm_*` at every M (the decode
    /// kernel's predecessor, kept for comparison and as the fallback of
    /// forced split factors with long splits).
    FusedGeneral,
    /// Dequantize to an f16 scratch (N x K), then cuBLAS fp16 GEMM.
    DequantCublas,
}

/// From this many rows on, `GemmPath::Auto` dequantizes and calls cuBLAS:
/// the fused kernel's mma.sync main loop (A re-read per warp from L1/L2) is
/// slower than that there (docs/CUDA.md has the measurements).
pub const DEQUANT_MIN_M: usize = 64;

/// Weights of at least this many elements keep the fused kernel up to
/// M = 127 under `GemmPath::Auto`.
pub const LARGE_WEIGHT_ELEMS: usize = 1 << 25;

/// `GemmPath::Auto`'s choice for INT4 and the `wgemm` formats: the fused
/// kernel below [`DEQUANT_MIN_M`] rows, and for M = 64..127 when the weight
/// has >= 2^25 elements; else dequantize + cuBLAS. Measured on an H100
/// (docs/CUDA.md, change 17): at M = 64 the fused kernels beat dequantize +
/// cuBLAS on 14336x4096, 4096x14336 and 28672x8192 (INT4 305.9 vs 424.7 us
/// at 28672x8192) but not on 4096x4096 (50.1 vs 32.9 us); at M = 128
/// dequantize + cuBLAS won on every shape and format.
pub fn auto_fused(m: usize, n: usize, k: usize) -> bool {
    m < DEQUANT_MIN_M || (m < 2 * DEQUANT_MIN_M && n.saturating_mul(k) >= LARGE_WEIGHT_ELEMS)
}

/// Per-call options.
#[derive(Clone, Copy, Debug, Default)]
pub struct GemmOptions {
    pub path: GemmPath,
    /// Split-K factor of the fused kernel; None chooses from the shape.
    pub splits: Option<usize>,
}

/// One compiled variant of the fused kernel (W4A16_ENTRY in the source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelVariant {
    pub name: &'static str,
    /// m16 tiles per warp.
    pub m_tiles: usize,
    /// Row halves (of 8) per m16 tile that are copied: 1 when M <= 8.
    pub row_halves: usize,
    /// cp.async ring depth.
    pub stages: usize,
    /// Resident blocks per SM (bounded by the rings' shared memory).
    pub blocks_per_sm: usize,
}

impl KernelVariant {
    /// Dynamic shared memory of one block: 4 warps x `WarpRing` (per stage
    /// and lane: 16 B codes, m_tiles*row_halves*32 B activations, 4 B scale,
    /// 4 B zero).
    pub fn smem_bytes(&self) -> u32 {
        let per_stage = 32 * (16 + 32 * self.m_tiles * self.row_halves + 4 + 4);
        (4 * self.stages * per_stage) as u32
    }
}

/// The kernel variant for M rows.
pub fn variant(m: usize) -> KernelVariant {
    let (name, m_tiles, row_halves, stages, blocks_per_sm) = match m {
        0..=8 => ("w4a16_gemm_m8", 1, 1, 6, 5),
        9..=16 => ("w4a16_gemm_mt1", 1, 2, 6, 3),
        17..=32 => ("w4a16_gemm_mt2", 2, 2, 4, 2),
        _ => ("w4a16_gemm_mt4", 4, 2, 3, 1),
    };
    KernelVariant {
        name,
        m_tiles,
        row_halves,
        stages,
        blocks_per_sm,
    }
}

/// Token tiles of 8 per block of the decode kernel for M rows.
fn decode_token_tiles(m: usize) -> usize {
    match m {
        0..=8 => 1,
        9..=16 => 2,
        _ => 4,
    }
}

/// Activation rows a decode block allocates: min(M, 8 * tiles), plus a zero
/// row that lanes of tokens >= M read when a block has fewer rows.
fn decode_tile_rows(m: usize) -> usize {
    let per_block = 8 * decode_token_tiles(m);
    m.min(per_block) + usize::from(!m.is_multiple_of(per_block))
}

/// Most chunks of 64 per split the decode kernel takes at M rows.
fn decode_max_chunks(m: usize) -> usize {
    let rows = decode_tile_rows(m);
    if rows <= 17 {
        DEC_MAX_CHUNKS_PER_SPLIT
    } else {
        ((DEC_TILE_BUDGET / (2 * rows)).saturating_sub(8) / 64).clamp(1, DEC_MAX_CHUNKS_PER_SPLIT)
    }
}

/// Dynamic shared memory attribute of every decode kernel: rings plus the
/// largest tile (`decode_smem_bytes` stays below it, tested).
fn decode_smem_attr() -> usize {
    4 * DEC_STAGES * 32 * (16 + 4 + 4) + DEC_TILE_BUDGET
}

/// Dynamic shared memory of the decode kernel for M rows: 4 warps' rings
/// (per stage and lane 16 B codes, 4 B scale, 4 B zero) and the activation
/// tile (min(M, 16) rows, plus a zero row when M is not 8 or 16;
/// ceil(k_chunks/splits)*64 + 8 halves each).
pub fn decode_smem_bytes(m: usize, k_chunks: usize, splits: usize) -> usize {
    let rings = 4 * DEC_STAGES * 32 * (16 + 4 + 4);
    let a_stride = k_chunks.div_ceil(splits.max(1)) * 64 + 8;
    rings + decode_tile_rows(m) * a_stride * 2
}

/// Launch shape chosen for one call (exposed for benchmarks and notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    pub path: GemmPath,
    /// Kernel launched (`w4a16_dec_*`, `w4a16_gemm_*`, or "dequant+cublas").
    pub kernel: &'static str,
    /// m16 tiles per warp: 1, 2 or 4.
    pub m_tiles: usize,
    pub m_blocks: usize,
    pub n_tiles: usize,
    pub splits: usize,
}

/// Choose the kernel variant and split-K factor (each split with at least
/// `MIN_CHUNKS_PER_SPLIT` chunks of K).
pub fn plan(m: usize, w: &Int4Weight, sm_count: usize, splits: Option<usize>) -> GemmPlan {
    plan_for(m, w, sm_count, splits, true)
}

fn plan_for(
    m: usize,
    w: &Int4Weight,
    sm_count: usize,
    splits: Option<usize>,
    allow_decode: bool,
) -> GemmPlan {
    if allow_decode && m <= DEC_MAX_M {
        if let Some(p) = decode_plan(m, w, sm_count, splits) {
            return p;
        }
    }
    let v = variant(m);
    let m_tiles = v.m_tiles;
    let m_blocks = m.div_ceil(16 * m_tiles).max(1);
    let n_tiles = w.n_pad / N_TILE;
    let max_splits = (w.k_chunks / MIN_CHUNKS_PER_SPLIT).max(1);
    let blocks_per_sm = v.blocks_per_sm;
    // Measured on an H100 (docs/CUDA.md): about 16 chunks (1024 of K) per
    // split is best; beyond ~4 waves of blocks the partial sums cost more
    // than the shorter streams gain; below half a wave SMs idle.
    let slots = sm_count * blocks_per_sm;
    let base = n_tiles * m_blocks;
    let mut want = w.k_chunks.div_ceil(TARGET_CHUNKS_PER_SPLIT);
    if base * want > 4 * slots {
        want = (4 * slots / base).max(1);
    }
    if base * want < slots / 2 {
        want = (slots / 2).div_ceil(base);
    }
    let splits = splits.unwrap_or(want).clamp(1, max_splits);
    GemmPlan {
        path: GemmPath::Fused,
        kernel: v.name,
        m_tiles,
        m_blocks,
        n_tiles,
        splits,
    }
}

/// The decode kernel's plan, or None when a forced split factor leaves more
/// than [`DEC_MAX_CHUNKS_PER_SPLIT`] chunks per split.
fn decode_plan(
    m: usize,
    w: &Int4Weight,
    sm_count: usize,
    splits: Option<usize>,
) -> Option<GemmPlan> {
    let tiles = decode_token_tiles(m);
    let n_tiles = w.n_pad / N_TILE;
    let m_blocks = m.div_ceil(8 * tiles);
    let max_chunks = decode_max_chunks(m);
    let max_splits = (w.k_chunks / MIN_CHUNKS_PER_SPLIT).max(1);
    // Split sweeps on an H100 (docs/CUDA.md, changes 10-12): 8 splits was
    // best or within 3% of best at M = 1, 8 and 16 on all four benchmark
    // shapes; fewer, longer splits mean a larger activation tile, fewer
    // resident blocks (4096x14336 M=8: 7 splits 30.5 us, 8 splits 21.5 us).
    // The fp32 partials grow with M x splits against weights that grow with
    // K (M=8, 8 splits, K=4096: 12% extra traffic), so M > 4 at K <= 4096
    // takes 4.
    let base = if m > 4 && w.k_chunks <= 64 {
        DEC_SPLITS / 2
    } else {
        DEC_SPLITS
    };
    // Above 16 rows the fp32 partials (splits x M x N) cost as much as the
    // weights: as few splits as the tile allows, at least one wave of blocks.
    let want = if m <= 16 {
        base.max(w.k_chunks.div_ceil(max_chunks))
    } else {
        w.k_chunks
            .div_ceil(max_chunks)
            .max(sm_count.div_ceil(n_tiles * m_blocks))
    };
    let splits = splits.unwrap_or(want).clamp(1, max_splits);
    if w.k_chunks.div_ceil(splits) > max_chunks {
        return None;
    }
    Some(GemmPlan {
        path: GemmPath::Fused,
        kernel: match (tiles, w.neg_zero_scales.is_some()) {
            (1, false) => "w4a16_dec_m8",
            (1, true) => "w4a16_dec_m8z",
            (2, false) => "w4a16_dec_m16",
            (2, true) => "w4a16_dec_m16z",
            (_, false) => "w4a16_dec_m32",
            (_, true) => "w4a16_dec_m32z",
        },
        m_tiles: 1,
        m_blocks,
        n_tiles,
        splits,
    })
}

/// A fused-kernel call, resolved: plan, shared memory and scratch sizes.
struct FusedCall {
    plan: GemmPlan,
    smem: u32,
    /// Dynamic shared memory attribute set once per function.
    max_smem: u32,
    /// fp32 elements of split-K partials and tickets the launch needs.
    partials: usize,
    tickets: usize,
}

enum Call {
    Dequant,
    Fused(FusedCall),
}

/// Path, kernel and launch shape of one call (no device work).
fn resolve_call(dev: &CudaDevice, m: usize, w: &Int4Weight, opts: GemmOptions) -> Result<Call> {
    if m == 0 {
        return Err(CudaError::Shape("GEMM with M = 0 rows".into()));
    }
    let use_dequant = match opts.path {
        GemmPath::Auto => !auto_fused(m, w.n, w.k),
        GemmPath::Fused | GemmPath::FusedGeneral => false,
        GemmPath::DequantCublas => true,
    };
    if use_dequant {
        return Ok(Call::Dequant);
    }
    let p = plan_for(
        m,
        w,
        dev.sm_count(),
        opts.splits,
        opts.path != GemmPath::FusedGeneral,
    );
    let (smem, max_smem) = if p.kernel.starts_with("w4a16_dec") {
        // The attribute is set once per function: allow the largest tile.
        (
            decode_smem_bytes(m, w.k_chunks, p.splits),
            decode_smem_attr(),
        )
    } else {
        let s = variant(m).smem_bytes() as usize;
        (s, s)
    };
    let to_u32 =
        |v: usize| u32::try_from(v).map_err(|_| CudaError::Shape("shared memory size".into()));
    let partials = p
        .splits
        .checked_mul(m)
        .and_then(|v| v.checked_mul(w.n_pad))
        .ok_or_else(|| CudaError::Shape("split-K partials overflow".into()))?;
    Ok(Call::Fused(FusedCall {
        plan: p,
        smem: to_u32(smem)?,
        max_smem: to_u32(max_smem)?,
        partials,
        tickets: p.n_tiles * p.m_blocks,
    }))
}

fn dequant_plan() -> GemmPlan {
    GemmPlan {
        path: GemmPath::DequantCublas,
        kernel: "dequant+cublas",
        m_tiles: 0,
        m_blocks: 0,
        n_tiles: 0,
        splits: 1,
    }
}

fn check_operands(m: usize, w: &Int4Weight, a_len: usize, c_len: usize) -> Result<()> {
    let need_a = m
        .checked_mul(w.k)
        .ok_or_else(|| CudaError::Shape("M*K overflows".into()))?;
    let need_c = m
        .checked_mul(w.n)
        .ok_or_else(|| CudaError::Shape("M*N overflows".into()))?;
    if a_len < need_a || c_len < need_c {
        return Err(CudaError::Shape(format!(
            "INT4 GEMM M={m} N={} K={}: A has {a_len} elements (needs {need_a}), C has {c_len} (needs {need_c})",
            w.n, w.k,
        )));
    }
    Ok(())
}

/// C (M, N) f16 = A (M, K) f16 . W^T, both row-major. Allocates the split-K
/// scratch and loads the kernel at first use (not capture-safe the first
/// time; see [`int4_gemm_prepared`]).
pub fn int4_gemm(
    dev: &Arc<CudaDevice>,
    a: &CudaSlice<f16>,
    m: usize,
    w: &Int4Weight,
    c: &mut CudaSlice<f16>,
    ws: &mut GemmWorkspace,
    opts: GemmOptions,
) -> Result<GemmPlan> {
    check_operands(m, w, a.len(), c.len())?;
    ws.prepare(dev, w, m, opts)?;
    int4_gemm_prepared(dev, &a.as_view(), m, w, &mut c.as_view_mut(), ws, opts)
}

/// The capture-safe entry point: the same product on views of f16 device
/// buffers (A >= M*K, C >= M*N elements, row-major), with a workspace that
/// [`GemmWorkspace::prepare`] made ready for this (weight shape, M, opts).
/// It enqueues kernel launches (and, on the dequantize + cuBLAS path, one
/// cublasGemmEx) on the device's stream and nothing else: no allocation, no
/// module load, no host synchronisation, so it can be recorded in a CUDA
/// graph. An unprepared workspace is an error, not an allocation.
pub fn int4_gemm_prepared(
    dev: &Arc<CudaDevice>,
    a: &CudaView<'_, f16>,
    m: usize,
    w: &Int4Weight,
    c: &mut CudaViewMut<'_, f16>,
    ws: &mut GemmWorkspace,
    opts: GemmOptions,
) -> Result<GemmPlan> {
    check_operands(m, w, a.len(), c.len())?;
    let fc = match resolve_call(dev, m, w, opts)? {
        Call::Dequant => return dequant_cublas(dev, a, m, w, c, ws),
        Call::Fused(fc) => fc,
    };
    let p = fc.plan;
    let m_i32 = i32::try_from(m).map_err(|_| CudaError::Shape(format!("M = {m} exceeds i32")))?;
    let grid = (
        u32::try_from(p.m_blocks).map_err(|_| CudaError::Shape("too many M blocks".into()))?,
        u32::try_from(p.n_tiles).map_err(|_| CudaError::Shape("too many N tiles".into()))?,
        p.splits as u32,
    );
    if grid.1 > 65_535 || grid.2 > 65_535 {
        return Err(CudaError::Shape(format!(
            "grid {grid:?} exceeds CUDA limits"
        )));
    }
    if p.splits > 1 && (ws.partials.len() < fc.partials || ws.tickets.len() < fc.tickets) {
        return Err(CudaError::Shape(format!(
            "split-K workspace too small for M={m} N={} ({} splits): call GemmWorkspace::prepare",
            w.n, p.splits
        )));
    }
    ws.check_prepared(p.kernel)?;
    let func_name = p.kernel;
    let func = dev.function(MODULE, SOURCE, func_name, fc.max_smem)?;
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: fc.smem,
    };
    let stream = dev.stream();
    let null_zeros: u64 = 0;
    let (n_i32, k_i32, n_pad_i32) = (w.n as i32, w.k as i32, w.n_pad as i32);
    let (k_chunks_i32, group_chunks_i32, splits_i32) =
        (w.k_chunks as i32, w.group_chunks as i32, p.splits as i32);
    let mut launch = stream.launch_builder(&func);
    launch.arg(a).arg(&w.words).arg(&w.scales);
    match &w.neg_zero_scales {
        Some(z) => launch.arg(z),
        None => launch.arg(&null_zeros),
    };
    launch
        .arg(c)
        .arg(&mut ws.partials)
        .arg(&mut ws.tickets)
        .arg(&m_i32)
        .arg(&n_i32)
        .arg(&k_i32)
        .arg(&n_pad_i32)
        .arg(&k_chunks_i32)
        .arg(&group_chunks_i32)
        .arg(&splits_i32);
    // SAFETY: argument types and order match w4a16_gemm_* / w4a16_dec_* in
    // kernels/w4a16_gemm.cu; buffer sizes were checked above (A >= M*K,
    // C >= M*N, partials >= splits*M*n_pad, tickets >= n_tiles*m_blocks,
    // weights sized by the repack for n_pad x k_chunks).
    unsafe { launch.launch(cfg) }.map_err(|e| driver_err(&format!("launch {func_name}"), e))?;
    Ok(p)
}

/// Dequantize W into the workspace's f16 (N, K) scratch.
pub fn dequantize_to_f16(
    dev: &Arc<CudaDevice>,
    w: &Int4Weight,
    dense: &mut CudaSlice<f16>,
) -> Result<()> {
    if dense.len() < w.n * w.k {
        return Err(CudaError::Shape(format!(
            "dense scratch of {} elements for a {}x{} weight",
            dense.len(),
            w.n,
            w.k
        )));
    }
    let func = dev.function(MODULE, SOURCE, "w4_dequant_f16", 0)?;
    let threads_total = (w.n_pad / 16) * w.k_chunks * 32;
    let blocks = u32::try_from(threads_total.div_ceil(256))
        .map_err(|_| CudaError::Shape("dequant grid too large".into()))?;
    let null_zeros: u64 = 0;
    let (n_i32, k_i32, n_pad_i32, k_chunks_i32, group_chunks_i32) = (
        w.n as i32,
        w.k as i32,
        w.n_pad as i32,
        w.k_chunks as i32,
        w.group_chunks as i32,
    );
    let stream = dev.stream();
    let mut launch = stream.launch_builder(&func);
    launch.arg(&w.words).arg(&w.scales);
    match &w.neg_zero_scales {
        Some(z) => launch.arg(z),
        None => launch.arg(&null_zeros),
    };
    launch
        .arg(dense)
        .arg(&n_i32)
        .arg(&k_i32)
        .arg(&n_pad_i32)
        .arg(&k_chunks_i32)
        .arg(&group_chunks_i32);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match w4_dequant_f16; dense holds >= N*K elements;
    // the packed buffers cover n_pad/16 * k_chunks * 32 lanes.
    unsafe { launch.launch(cfg) }.map_err(|e| driver_err("launch w4_dequant_f16", e))?;
    Ok(())
}

/// C (M, N) f16 = A (M, K) f16 · Wᵀ with W a dequantized (N, K) row-major f16
/// weight, through cuBLAS GemmEx: the large-M path of every weight format.
pub(crate) fn gemm_dense_f16_weight<A: DevicePtr<f16>, C: DevicePtrMut<f16>>(
    dev: &CudaDevice,
    dense: &CudaSlice<f16>,
    a: &A,
    c: &mut C,
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    let to_i32 =
        |v: usize| i32::try_from(v).map_err(|_| CudaError::Shape(format!("{v} exceeds i32")));
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: to_i32(n)?,
        n: to_i32(m)?,
        k: to_i32(k)?,
        alpha: f16::ONE,
        lda: to_i32(k)?,
        ldb: to_i32(k)?,
        beta: f16::ZERO,
        ldc: to_i32(n)?,
    };
    dev.with_blas(|blas| {
        // SAFETY: dense is (N, K) row-major = K x N column-major (op T); A is
        // (M, K) row-major = K x M column-major; C is (M, N) row-major = N x M
        // column-major; sizes were checked by the caller.
        unsafe { blas.gemm(cfg, dense, a, c) }.map_err(|e| CudaError::Cublas {
            context: format!("GemmEx M={m} N={n} K={k}"),
            message: format!("{e:?}"),
        })
    })
}

fn dequant_cublas(
    dev: &Arc<CudaDevice>,
    a: &CudaView<'_, f16>,
    m: usize,
    w: &Int4Weight,
    c: &mut CudaViewMut<'_, f16>,
    ws: &mut GemmWorkspace,
) -> Result<GemmPlan> {
    ws.check_prepared("w4_dequant_f16")?;
    let elems = w.n * w.k;
    let dense = match ws.dense.as_mut() {
        Some(d) if d.len() >= elems => d,
        _ => {
            return Err(CudaError::Shape(format!(
                "dense scratch for a {}x{} weight missing: call GemmWorkspace::prepare",
                w.n, w.k
            )))
        }
    };
    dequantize_to_f16(dev, w, dense)?;
    gemm_dense_f16_weight(dev, dense, a, c, (m, w.n, w.k))?;
    Ok(dequant_plan())
}

#[cfg(test)]
mod tests {
    use super::{
        decode_max_chunks, decode_smem_attr, decode_smem_bytes, variant, DEC_MAX_CHUNKS_PER_SPLIT,
        DEC_MAX_M,
    };

    /// The decode kernel's largest tile (16 rows, the longest split) fits
    /// the opt-in shared memory of an sm_90 block (227 KiB), and M = 1 at
    /// 16 chunks per split leaves room for 6 blocks per SM.
    #[test]
    fn decode_tile_fits_shared_memory() {
        assert!(decode_smem_bytes(16, DEC_MAX_CHUNKS_PER_SPLIT, 1) <= 227 * 1024);
        assert!(6 * (decode_smem_bytes(1, 128, 8) + 1024) <= 228 * 1024);
        // Every M at its longest split stays within the function attribute,
        // which fits an sm_90 block (227 KiB); 32/64-row tiles leave room
        // for two blocks per SM.
        assert!(decode_smem_attr() <= 227 * 1024);
        for m in 1..=DEC_MAX_M {
            let chunks = decode_max_chunks(m);
            assert!(chunks >= 4, "M = {m}: {chunks} chunks per split");
            let smem = decode_smem_bytes(m, chunks, 1);
            assert!(smem <= decode_smem_attr(), "M = {m}: {smem} bytes");
            if m > 16 {
                assert!(2 * (smem + 1024) <= 228 * 1024, "M = {m}: {smem} bytes");
            }
        }
    }

    /// Resident blocks per SM promised by each variant fit in an sm_90 SM's
    /// 228 KiB of shared memory (1 KiB per block is reserved by the driver).
    #[test]
    fn variants_fit_shared_memory() {
        for m in [1, 8, 9, 16, 17, 32, 33, 1024] {
            let v = variant(m);
            let per_block = v.smem_bytes() as usize + 1024;
            assert!(v.blocks_per_sm * per_block <= 228 * 1024, "{v:?}");
            assert!(m <= 16 * v.m_tiles || v.m_tiles == 4, "{v:?}");
        }
    }
}
