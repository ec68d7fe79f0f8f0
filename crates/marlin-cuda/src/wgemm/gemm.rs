//! Device side of the FP4 / INT8 / FP8 / INT3 / INT2 GEMMs: weights
//! uploaded once, the checked launch of `kernels/wxa16_gemm.cu` (mma.sync),
//! the warp-specialised wgmma kernel of [`super::wgmma_ws`] (sm_90a, `Auto`
//! where [`wx_ws_auto`] takes it) and the dequantize + cuBLAS path chosen
//! by [`auto_fused`] (M >= 64) elsewhere. Shares [`GemmWorkspace`] with
//! INT4.
//!
//! Capture-safe use (CUDA graphs), as INT4's `int4_gemm_prepared`: call
//! [`GemmWorkspace::prepare_wx`] (f16) or [`GemmWorkspace::prepare_wx_for`]
//! for every (weight, M, options, activation type) before the capture, then
//! [`wx_gemm_prepared`] inside it.
//!
//! Activations f16 or bf16 ([`ActDtype`]): the bf16 kernels are the same
//! source compiled with `MARLIN_ACT_BF16` (module `wxa16_gemm_bf16`; see
//! the kernel file's header for what differs).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::f16;
use marlin_quant::QuantTensor;

use super::pack::{pack_wx, WxFormat, WxPacked};
use super::wgmma_ws::{self, f16_scale_shift, low_bit_scales_ok, wx_ws_applies, wx_ws_auto};
use crate::act::{Act, ActDtype};
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};
use crate::int4::gemm::{
    auto_fused, gemm_dense_weight, launch_grid, GemmOptions, GemmPath, GemmPlan, GemmWorkspace,
};
use crate::int4::pack::N_TILE;
use crate::ops::to_i32;

const MODULE: &str = "wxa16_gemm";
const SOURCE: &str = include_str!("../kernels/wxa16_gemm.cu");
/// The same source with bf16 activations (crate::act).
const BF16_MODULE: &str = "wxa16_gemm_bf16";
const BF16_SOURCE: &str = concat!(
    "#define MARLIN_ACT_BF16 1\n",
    include_str!("../kernels/wxa16_gemm.cu")
);

fn wx_module(act: Act) -> (&'static str, &'static str) {
    match act {
        Act::F16 => (MODULE, SOURCE),
        Act::Bf16 => (BF16_MODULE, BF16_SOURCE),
    }
}
const THREADS: u32 = 128;
/// cp.async ring depth (keep in sync with WX_ENTRY in the source).
const STAGES: usize = 8;
/// Most 64-chunks per split: bounds the activation tile in shared memory.
const MAX_CHUNKS_PER_SPLIT: usize = 32;
/// Fewest 64-chunks per split (the ring must fill).
const MIN_CHUNKS_PER_SPLIT: usize = 4;
/// Default split-K factor (as the INT4 decode kernel, docs/CUDA.md).
const SPLITS: usize = 8;

/// `WxWeight::prepared` bits: which kernels `prepare_wx` loaded (f16; the
/// bf16 module's are these shifted by `BF16_SHIFT`).
const PREPARED_M8: u8 = 1;
const PREPARED_M16: u8 = 2;
const PREPARED_DEQUANT: u8 = 4;
/// The warp-specialised wgmma kernel ([`super::wgmma_ws`]), by activation
/// type (the bits above the shifted ones).
fn prepared_ws_bit(act: Act) -> u8 {
    match act {
        Act::F16 => 1 << 6,
        Act::Bf16 => 1 << 7,
    }
}

/// A `prepared` bit for activation type `act`.
fn prepared_bit(bit: u8, act: Act) -> u8 {
    match act {
        Act::F16 => bit,
        Act::Bf16 => bit << BF16_SHIFT,
    }
}
const BF16_SHIFT: u32 = 3;

/// A weight of one of the `wgemm` formats resident on the device in the
/// kernel layout.
pub struct WxWeight {
    pub format: WxFormat,
    pub n: usize,
    pub k: usize,
    pub(crate) n_pad: usize,
    pub(crate) k_chunks: usize,
    pub(crate) group_chunks: usize,
    weight_bytes: usize,
    pub(crate) words: CudaSlice<u32>,      // see WxPacked::words
    pub(crate) scales16: CudaSlice<u32>,   // FP4: (n_pad/64, k_chunks, 4, 32) f16x2; else 1 unused
    pub(crate) scales32: CudaSlice<f32>,   // FP4 / 8-bit: (groups, n_pad); else 1 unused
    pub(crate) scale_zero: CudaSlice<u32>, // INT3 / INT2: (groups, n_pad); else 1 unused
    /// Kernels loaded by `GemmWorkspace::prepare_wx` for this weight.
    prepared: AtomicU8,
    /// The warp-specialised kernel's f16-scale shift
    /// ([`super::wgmma_ws::f16_scale_shift`]): Some(0) where the scales stay
    /// fp32 (one K group of an 8-bit format) or are the packed f16 ones
    /// (INT3 / INT2, checked by `low_bit_scales_ok`); None where that
    /// kernel cannot hold them (or FP4, which has one K group always and
    /// needs no shift: `wx_ws_format_ok` decides FP4 by its groups).
    pub(crate) ws_scale_shift: Option<i32>,
}

impl WxWeight {
    /// Repack on the host ([`pack_wx`]) and upload.
    pub fn from_quant(dev: &CudaDevice, w: &QuantTensor) -> Result<Self> {
        Self::from_packed(dev, &pack_wx(w)?)
    }

    pub fn from_packed(dev: &CudaDevice, p: &WxPacked) -> Result<Self> {
        for (v, what) in [(p.n_pad, "N"), (p.k_pad, "K")] {
            i32::try_from(v).map_err(|_| CudaError::Shape(format!("{what} = {v} exceeds i32")))?;
        }
        let scales16 = if p.scales16.is_empty() {
            dev.alloc_zeros("unused FP4 scales", 1)?
        } else {
            dev.upload("FP4 weight scales", &p.scales16)?
        };
        let scales32 = if p.scales32.is_empty() {
            dev.alloc_zeros("unused column scales", 1)?
        } else {
            dev.upload("weight column scales", &p.scales32)?
        };
        let scale_zero = if p.scale_zero.is_empty() {
            dev.alloc_zeros("unused scales and zeros", 1)?
        } else {
            dev.upload("weight scales and zero points", &p.scale_zero)?
        };
        let ws_scale_shift = match p.format {
            WxFormat::Fp4 => None,
            WxFormat::Int8 | WxFormat::Fp8 if p.groups <= 1 => Some(0),
            WxFormat::Int8 => f16_scale_shift(&p.scales32, 128.0),
            WxFormat::Fp8 => f16_scale_shift(&p.scales32, 448.0),
            WxFormat::Int3 => low_bit_scales_ok(&p.scale_zero, 3).then_some(0),
            WxFormat::Int2 => low_bit_scales_ok(&p.scale_zero, 2).then_some(0),
        };
        Ok(Self {
            ws_scale_shift,
            format: p.format,
            n: p.n,
            k: p.k,
            n_pad: p.n_pad,
            k_chunks: p.k_chunks(),
            group_chunks: p.group_chunks,
            weight_bytes: p.weight_bytes(),
            words: dev.upload("weight codes", &p.words)?,
            scales16,
            scales32,
            scale_zero,
            prepared: AtomicU8::new(0),
        })
    }

    /// Bytes one GEMM call streams from the weight (codes and scales).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }
}

/// Token tiles of 8 per block: 1 for M <= 8, else 2 (grid.x = ceil(M/16)).
fn token_tiles(m: usize) -> usize {
    if m <= 8 {
        1
    } else {
        2
    }
}

/// Dynamic shared memory: 4 warps' rings (per stage and lane: FP4 / 8-bit
/// 16 B code vectors and a 4 B FP4 scale slot; INT3 / INT2 one u32 per code
/// plane) and the activation tile (min(M, 8*RH) rows plus a zero row when a
/// block has fewer; ceil(k_chunks/splits)*64 + 8 halves).
pub fn smem_bytes(format: WxFormat, m: usize, k_chunks: usize, splits: usize) -> usize {
    let per_lane_stage = if format.is_low_bit() {
        4 * format.lane_words()
    } else {
        4 * format.lane_words() + 4
    };
    let rings = 4 * STAGES * 32 * per_lane_stage;
    let a_stride = k_chunks.div_ceil(splits.max(1)) * 64 + 8;
    let rows_per_block = 8 * token_tiles(m);
    let rows = m.min(rows_per_block);
    let zero_row = usize::from(!m.is_multiple_of(rows_per_block));
    rings + (rows + zero_row) * a_stride * 2
}

/// The fused kernel's launch shape for M rows (an `Unsupported` error when
/// a forced split factor leaves more than 32 chunks of 64 per split).
pub fn plan(m: usize, w: &WxWeight, splits: Option<usize>) -> Result<GemmPlan> {
    let tiles = token_tiles(m);
    let max_splits = (w.k_chunks / MIN_CHUNKS_PER_SPLIT).max(1);
    let base = if m > 4 && w.k_chunks <= 64 {
        SPLITS / 2
    } else {
        SPLITS
    };
    let want = base.max(w.k_chunks.div_ceil(MAX_CHUNKS_PER_SPLIT));
    let splits = splits.unwrap_or(want).clamp(1, max_splits);
    if w.k_chunks.div_ceil(splits) > MAX_CHUNKS_PER_SPLIT {
        return Err(CudaError::Unsupported(format!(
            "{} GEMM: {splits} splits leave more than {MAX_CHUNKS_PER_SPLIT} chunks of 64 per split \
             (K = {})",
            w.format.name(),
            w.k
        )));
    }
    let kernel = match (w.format, tiles) {
        (WxFormat::Fp4, 1) => "wx_fp4_m8",
        (WxFormat::Fp4, _) => "wx_fp4_m16",
        (WxFormat::Int8, 1) => "wx_int8_m8",
        (WxFormat::Int8, _) => "wx_int8_m16",
        (WxFormat::Fp8, 1) => "wx_fp8_m8",
        (WxFormat::Fp8, _) => "wx_fp8_m16",
        (WxFormat::Int3, 1) => "wx_int3_m8",
        (WxFormat::Int3, _) => "wx_int3_m16",
        (WxFormat::Int2, 1) => "wx_int2_m8",
        (WxFormat::Int2, _) => "wx_int2_m16",
    };
    Ok(GemmPlan {
        path: GemmPath::Fused,
        kernel,
        m_tiles: 1,
        m_blocks: m.div_ceil(8 * tiles),
        n_tiles: w.n_pad / N_TILE,
        splits,
    })
}

fn dequant_kernel(format: WxFormat, act: Act) -> &'static str {
    match (format, act) {
        (WxFormat::Fp4, Act::F16) => "wx_fp4_dequant_f16",
        (WxFormat::Int8, Act::F16) => "wx_int8_dequant_f16",
        (WxFormat::Fp8, Act::F16) => "wx_fp8_dequant_f16",
        (WxFormat::Int3, Act::F16) => "wx_int3_dequant_f16",
        (WxFormat::Int2, Act::F16) => "wx_int2_dequant_f16",
        (WxFormat::Fp4, Act::Bf16) => "wx_fp4_dequant_bf16",
        (WxFormat::Int8, Act::Bf16) => "wx_int8_dequant_bf16",
        (WxFormat::Fp8, Act::Bf16) => "wx_fp8_dequant_bf16",
        (WxFormat::Int3, Act::Bf16) => "wx_int3_dequant_bf16",
        (WxFormat::Int2, Act::Bf16) => "wx_int2_dequant_bf16",
    }
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

/// Whether a call of `m` rows with `opts` takes the warp-specialised wgmma
/// kernel ([`super::wgmma_ws`]): forced by `GemmPath::WgmmaWs` (an error
/// where it does not apply), or `Auto` on a device and weight it applies to
/// where [`wx_ws_auto`] takes it.
fn uses_ws(dev: &CudaDevice, m: usize, w: &WxWeight, opts: GemmOptions) -> bool {
    match opts.path {
        GemmPath::WgmmaWs => true,
        GemmPath::Auto => wx_ws_auto(m, w) && wx_ws_applies(dev, w),
        _ => false,
    }
}

/// Whether a call of `m` rows with `opts` that does not take the
/// warp-specialised kernel takes dequantize + cuBLAS.
fn uses_dequant(m: usize, w: &WxWeight, opts: GemmOptions) -> bool {
    match opts.path {
        GemmPath::Auto => !auto_fused(m, w.n, w.k),
        GemmPath::DequantCublas => true,
        // Fused, FusedGeneral and the INT4-only kernel choices (wgmma, bulk,
        // stream-K): the one fused kernel of these formats.
        _ => false,
    }
}

/// The largest tile's shared memory (16 rows + the zero row, the longest
/// split): the dynamic shared memory attribute of every fused kernel.
fn max_smem(format: WxFormat) -> Result<u32> {
    u32::try_from(smem_bytes(format, 17, MAX_CHUNKS_PER_SPLIT, 1))
        .map_err(|_| CudaError::Shape("shared memory".into()))
}

fn check_operands(m: usize, w: &WxWeight, a_len: usize, c_len: usize) -> Result<()> {
    if m == 0 {
        return Err(CudaError::Shape("GEMM with M = 0 rows".into()));
    }
    let need_a = m
        .checked_mul(w.k)
        .ok_or_else(|| CudaError::Shape("M*K overflows".into()))?;
    let need_c = m
        .checked_mul(w.n)
        .ok_or_else(|| CudaError::Shape("M*N overflows".into()))?;
    if a_len < need_a || c_len < need_c {
        return Err(CudaError::Shape(format!(
            "{} GEMM M={m} N={} K={}: A has {a_len} elements (needs {need_a}), C has {c_len} (needs {need_c})",
            w.format.name(),
            w.n,
            w.k,
        )));
    }
    Ok(())
}

impl GemmWorkspace {
    /// Make a later [`wx_gemm_prepared`] call of `m` rows with weight `w`
    /// and `opts` allocation- and synchronisation-free (the `wgemm` twin of
    /// [`GemmWorkspace::prepare`]): compiles and loads its kernel, sizes the
    /// split-K scratch (and the dense f16 scratch and cuBLAS handle of the
    /// dequantize + cuBLAS path). Returns the plan that call will use. f16
    /// activations; [`GemmWorkspace::prepare_wx_for`] takes the type.
    pub fn prepare_wx(
        &mut self,
        dev: &Arc<CudaDevice>,
        w: &WxWeight,
        m: usize,
        opts: GemmOptions,
    ) -> Result<GemmPlan> {
        self.prepare_wx_for(dev, w, m, opts, Act::F16)
    }

    /// [`GemmWorkspace::prepare_wx`] for activation type `act`.
    pub fn prepare_wx_for(
        &mut self,
        dev: &Arc<CudaDevice>,
        w: &WxWeight,
        m: usize,
        opts: GemmOptions,
        act: Act,
    ) -> Result<GemmPlan> {
        if m == 0 {
            return Err(CudaError::Shape("GEMM with M = 0 rows".into()));
        }
        let (module, source) = wx_module(act);
        if uses_ws(dev, m, w, opts) {
            let call = wgmma_ws::resolve(dev, m, w, opts.splits, act)?;
            wgmma_ws::prepare(dev, &call, self)?;
            w.prepared.fetch_or(prepared_ws_bit(act), Ordering::Relaxed);
            return Ok(call.plan);
        }
        if uses_dequant(m, w, opts) {
            self.ensure_dense(dev, act, w.n, w.k)?;
            dev.function(module, source, dequant_kernel(w.format, act), 0)?;
            dev.with_blas(|_| Ok(()))?;
            w.prepared
                .fetch_or(prepared_bit(PREPARED_DEQUANT, act), Ordering::Relaxed);
            return Ok(dequant_plan());
        }
        let p = plan(m, w, opts.splits)?;
        if p.splits > 1 {
            let partials = p
                .splits
                .checked_mul(m)
                .and_then(|v| v.checked_mul(w.n_pad))
                .ok_or_else(|| CudaError::Shape("split-K partials overflow".into()))?;
            self.reserve(dev, partials, p.n_tiles * p.m_blocks)?;
        }
        dev.function(module, source, p.kernel, max_smem(w.format)?)?;
        let bit = if token_tiles(m) == 1 {
            PREPARED_M8
        } else {
            PREPARED_M16
        };
        w.prepared
            .fetch_or(prepared_bit(bit, act), Ordering::Relaxed);
        Ok(p)
    }
}

/// Errors unless `prepare_wx` loaded `what`, recorded as `mask` (an
/// activation type's bit: [`prepared_bit`] or [`prepared_ws_bit`]).
fn check_prepared(w: &WxWeight, mask: u8, act: Act, what: &str) -> Result<()> {
    if w.prepared.load(Ordering::Relaxed) & mask == 0 {
        return Err(CudaError::Unsupported(format!(
            "wx_gemm_prepared: {what} ({}) of this {} weight was not loaded by \
             GemmWorkspace::prepare_wx / prepare_wx_for",
            act.name(),
            w.format.name()
        )));
    }
    Ok(())
}

/// C (M, N) = A (M, K) . W^T, both row-major, A and C f16 or bf16
/// ([`ActDtype`]). `GemmPath::Auto`: the
/// fused kernel or dequantize + cuBLAS by [`auto_fused`]
/// (`FusedGeneral` means `Fused` here). Allocates the split-K / dense
/// scratch at first use (prepare + [`wx_gemm_prepared`]).
pub fn wx_gemm<T: ActDtype>(
    dev: &Arc<CudaDevice>,
    a: &CudaSlice<T>,
    m: usize,
    w: &WxWeight,
    c: &mut CudaSlice<T>,
    ws: &mut GemmWorkspace,
    opts: GemmOptions,
) -> Result<GemmPlan> {
    check_operands(m, w, a.len(), c.len())?;
    ws.prepare_wx_for(dev, w, m, opts, T::ACT)?;
    wx_gemm_prepared(dev, &a.as_view(), m, w, &mut c.as_view_mut(), ws, opts)
}

/// The dense scratch of activation type `T` in `ws`.
fn dense_scratch<T: ActDtype>(ws: &mut GemmWorkspace) -> Option<&mut CudaSlice<T>> {
    // Two typed buffers: the one of T::ACT, as CudaSlice<T> (the downcast
    // cannot fail, it only spares a transmute).
    let any: &mut dyn std::any::Any = match T::ACT {
        Act::F16 => ws.dense.as_mut()?,
        Act::Bf16 => ws.dense_bf16.as_mut()?,
    };
    any.downcast_mut::<CudaSlice<T>>()
}

/// The capture-safe entry point: the same product on views of f16 or bf16
/// device buffers (A >= M*K, C >= M*N elements, row-major), with a
/// workspace that [`GemmWorkspace::prepare_wx`] / `prepare_wx_for` made
/// ready for this (weight, M, opts, activation type). It
/// enqueues one kernel launch (dequantize + cuBLAS path: the dequant kernel
/// and one cublasGemmEx) on the device's stream and nothing else: no
/// allocation, no module load, no host synchronisation. An unprepared
/// workspace or weight is an error, not an allocation.
pub fn wx_gemm_prepared<T: ActDtype>(
    dev: &Arc<CudaDevice>,
    a: &CudaView<'_, T>,
    m: usize,
    w: &WxWeight,
    c: &mut CudaViewMut<'_, T>,
    ws: &mut GemmWorkspace,
    opts: GemmOptions,
) -> Result<GemmPlan> {
    check_operands(m, w, a.len(), c.len())?;
    let act = T::ACT;
    if uses_ws(dev, m, w, opts) {
        check_prepared(
            w,
            prepared_ws_bit(act),
            act,
            "the warp-specialised wgmma kernel",
        )?;
        let call = wgmma_ws::resolve(dev, m, w, opts.splits, act)?;
        wgmma_ws::launch(dev, a, m, w, c, ws, &call)?;
        return Ok(call.plan);
    }
    if uses_dequant(m, w, opts) {
        check_prepared(
            w,
            prepared_bit(PREPARED_DEQUANT, act),
            act,
            "the dequantize kernel",
        )?;
        let elems = w.n * w.k;
        let dense = match dense_scratch::<T>(ws) {
            Some(d) if d.len() >= elems => d,
            _ => {
                return Err(CudaError::Shape(format!(
                    "dense {} scratch for a {}x{} weight missing: call GemmWorkspace::prepare_wx",
                    act.name(),
                    w.n,
                    w.k
                )))
            }
        };
        wx_dequantize_to(dev, w, dense)?;
        gemm_dense_weight(dev, dense, a, c, (m, w.n, w.k))?;
        return Ok(dequant_plan());
    }
    let p = plan(m, w, opts.splits)?;
    let bit = if token_tiles(m) == 1 {
        PREPARED_M8
    } else {
        PREPARED_M16
    };
    check_prepared(w, prepared_bit(bit, act), act, p.kernel)?;
    let grid = launch_grid(p.m_blocks, p.n_tiles, p.splits)?;
    ws.check_split_k(
        p.splits,
        p.splits * m * w.n_pad,
        p.n_tiles * p.m_blocks,
        (m, w.n),
        "prepare_wx",
    )?;
    let smem = smem_bytes(w.format, m, w.k_chunks, p.splits);
    let (module, source) = wx_module(act);
    let func = dev.function(module, source, p.kernel, max_smem(w.format)?)?;
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: u32::try_from(smem)
            .map_err(|_| CudaError::Shape("shared memory".into()))?,
    };
    let (m_i32, n_i32, k_i32) = (to_i32("M", m)?, to_i32("N", w.n)?, to_i32("K", w.k)?);
    let (n_pad_i32, k_chunks_i32) = (to_i32("N", w.n_pad)?, to_i32("K chunks", w.k_chunks)?);
    let (group_chunks_i32, splits_i32) = (
        to_i32("group", w.group_chunks)?,
        to_i32("splits", p.splits)?,
    );
    let stream = dev.stream();
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(a)
        .arg(&w.words)
        .arg(&w.scales16)
        .arg(&w.scales32)
        .arg(&w.scale_zero)
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
    // SAFETY: argument types and order match WX_ENTRY in
    // kernels/wxa16_gemm.cu; A >= M*K and C >= M*N were checked, partials >=
    // splits*M*n_pad and tickets >= n_tiles*m_blocks were checked, the
    // weight buffers were sized by the repack for n_pad x k_chunks (the
    // format's unused buffers are never read).
    unsafe { launch.launch(cfg) }.map_err(|e| driver_err(&format!("launch {}", p.kernel), e))?;
    Ok(p)
}

/// Dequantize W into a dense f16 (N, K) row-major matrix.
pub fn wx_dequantize_to_f16(
    dev: &Arc<CudaDevice>,
    w: &WxWeight,
    dense: &mut CudaSlice<f16>,
) -> Result<()> {
    wx_dequantize_to(dev, w, dense)
}

/// Dequantize W into a dense (N, K) row-major matrix of the activation
/// type (bf16: each value rounded once from fp32).
pub fn wx_dequantize_to<T: ActDtype>(
    dev: &Arc<CudaDevice>,
    w: &WxWeight,
    dense: &mut CudaSlice<T>,
) -> Result<()> {
    let elems =
        w.n.checked_mul(w.k)
            .ok_or_else(|| CudaError::Shape("N*K overflows".into()))?;
    if dense.len() < elems {
        return Err(CudaError::Shape(format!(
            "dense scratch of {} elements for a {}x{} weight",
            dense.len(),
            w.n,
            w.k
        )));
    }
    let name = dequant_kernel(w.format, T::ACT);
    let (module, source) = wx_module(T::ACT);
    let func = dev.function(module, source, name, 0)?;
    let threads_total = (w.n_pad / 16) * w.k_chunks * 32;
    let blocks = u32::try_from(threads_total.div_ceil(256))
        .map_err(|_| CudaError::Shape("dequant grid too large".into()))?;
    let (n_i32, k_i32, n_pad_i32, k_chunks_i32, group_chunks_i32) = (
        w.n as i32,
        w.k as i32,
        w.n_pad as i32,
        w.k_chunks as i32,
        w.group_chunks as i32,
    );
    let stream = dev.stream();
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(&w.words)
        .arg(&w.scales16)
        .arg(&w.scales32)
        .arg(&w.scale_zero)
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
    // SAFETY: arguments match WX_DEQUANT_ENTRY, whose output type is the
    // module's activation type, T; dense holds >= N*K elements;
    // the packed buffers cover n_pad/16 * k_chunks * 32 lanes.
    unsafe { launch.launch(cfg) }.map_err(|e| driver_err(&format!("launch {name}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{smem_bytes, MAX_CHUNKS_PER_SPLIT};
    use crate::wgemm::pack::WxFormat;

    /// The largest tile (16 rows + the zero row, the longest split) fits an
    /// sm_80 / sm_90 block's opt-in shared memory (163 / 227 KiB).
    #[test]
    fn largest_tile_fits_shared_memory() {
        for f in [
            WxFormat::Fp4,
            WxFormat::Int8,
            WxFormat::Fp8,
            WxFormat::Int3,
            WxFormat::Int2,
        ] {
            let largest = smem_bytes(f, 17, MAX_CHUNKS_PER_SPLIT, 1);
            assert!(largest <= 163 * 1024);
            for m in [1, 7, 8, 15, 16, 31, 33, 63] {
                assert!(
                    smem_bytes(f, m, MAX_CHUNKS_PER_SPLIT, 1) <= largest,
                    "M = {m}"
                );
            }
        }
    }
}
