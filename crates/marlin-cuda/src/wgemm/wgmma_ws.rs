//! Hopper (sm_90a) warp-specialised GEMM for the `wgemm` formats FP4
//! (MXFP4 / NVFP4), INT8, FP8 (per channel, K groups, 2-D blocks), INT3 and
//! INT2: the INT4 kernel of [`crate::int4::wgmma_ws`] with the
//! format's dequantisation (`kernels/w4a16_wgmma_ws.cu`, module built with
//! `WS_WX_ENTRIES`; `wx_dequant_step` of `marlin_common.cuh`, shared with
//! the mma.sync kernel). Two launches per call, as INT4's:
//!
//! 1. the staging kernel writes A into the workspace's staged activation
//!    image: the `wgemm` pack has the INT4 pack's K order inside each
//!    64-chunk ([`super::pack`]), so the image is INT4's;
//! 2. `wx_ws_<format>_t<TOK>x<TPW>`: a producer warpgroup bulk-copies per
//!    64-chunk the activation tile and, per 64-column tile, the format's
//!    code block (FP4 2 KiB and 512 B of f16x2 scales, 8-bit 4 KiB) into an
//!    mbarrier ring; two consumer warpgroups dequantise into wgmma's
//!    register A operand and issue `wgmma m64n<TOK>k16`; split-K with the
//!    ticket reduction (bit-deterministic). Scales: one K group of fp32
//!    column scales (FP4's per-tensor factor, 8-bit per channel) multiply
//!    the fp32 accumulators once after the main loop; K groups and 2-D
//!    blocks (8-bit, entries `..g_`) and INT3 / INT2 (scale and zero point
//!    per group) multiply the dequantised f16 fragments by f16 scales (the
//!    8-bit ones times a power of two, [`f16_scale_shift`], undone in fp32
//!    at the end).
//!
//! Plans come from the INT4 kernel's cost model ([`ws_variant_for`], no
//! cluster reduction); the 8-bit rings are shallower (twice the code bytes
//! per stage). f16 or bf16 activations (the bf16 module converts each
//! dequantised f16 fragment register to bf16, as the mma.sync kernel does).

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig};

use crate::act::{Act, ActDtype};

use super::gemm::WxWeight;
use super::pack::WxFormat;
use crate::device::CudaDevice;
use crate::error::{CudaError, Result};
use crate::int4::gemm::{launch_grid, GemmPath, GemmPlan, GemmWorkspace};
use crate::int4::pack::K_CHUNK;
use crate::int4::wgmma_ws::{
    launch_staging, variant_override, ws_variant_for, ClusterFit, OneRoundFit, WsVariant,
};
use crate::ops::launch::KernelLaunch;
use crate::ops::to_i32;

/// The module of the staging kernels and the `wx_ws_*` entries.
pub(crate) const WX_WS_MODULE: &str = "wx_wgmma_ws";
pub(crate) const WX_WS_SOURCE: &str = concat!(
    "#define WS_WX_ENTRIES 1\n",
    include_str!("../kernels/w4a16_wgmma_ws.cu")
);
/// The same entries with bf16 activations (crate::act): the f16
/// dequantisation, then each fragment register converted to bf16.
pub(crate) const WX_WS_BF16_MODULE: &str = "wx_wgmma_ws_bf16";
pub(crate) const WX_WS_BF16_SOURCE: &str = concat!(
    "#define MARLIN_ACT_BF16 1\n#define WS_WX_ENTRIES 1\n",
    include_str!("../kernels/w4a16_wgmma_ws.cu")
);

fn module(act: Act) -> (&'static str, &'static str) {
    match act {
        Act::F16 => (WX_WS_MODULE, WX_WS_SOURCE),
        Act::Bf16 => (WX_WS_BF16_MODULE, WX_WS_BF16_SOURCE),
    }
}

/// Threads of the main kernel: producer + 2 consumer warpgroups.
const THREADS: u32 = 384;
/// Dynamic shared memory the kernel may use (sm_90 opt-in limit, 227 KiB).
const SMEM_LIMIT: usize = 227 * 1024;

/// From how many rows on `GemmPath::Auto` takes this kernel for `format`
/// where it applies ([`wx_ws_applies`]) on any shape; below, the mma.sync
/// kernel, except on the large weights of [`wx_ws_auto`]. H100, session 15
/// (docs/CUDA.md change 68), this kernel against the mma.sync one at M = 8 /
/// 12 / 16 / 17 on 4096x4096, 14336x4096, 4096x14336 and 28672x8192 (f16):
/// - INT8 / FP8 (channel and 128 x 128 blocks): faster from M = 12 on every
///   shape (e.g. 28672x8192 M = 12 85.8-88.3 against 124.2-138.4 us); at
///   M = 8 faster on the three large shapes, slower at 4096x4096 (15.6-16.3
///   against 13.9-15.6): from 9;
/// - FP4: at M = 12 faster on three shapes, 2% slower at 4096x4096: from 12;
/// - INT2: session 16 (change 70, two rounds of M = 1..16): at M = 12
///   faster on three shapes (4096x4096 16.1 against 17.5 us, 14336x4096
///   31.5-31.6 against 33.5-33.7, 28672x8192 92.7-92.9 against 98.1-98.5),
///   3% slower at 4096x14336 (31.6-31.7 against 30.6-30.8): from 12 (was 16);
/// - INT3: slower up to M = 16 on every shape (4096x14336 M = 16 38.0
///   against 34.0), faster from 17 (every shape, 1.2-1.7x): from 17
///   (session 16: at M = 16 still slower on three of the four shapes).
///
/// From M = 17 on it replaced the mma.sync kernel (1.2-2.2x slower there)
/// and, from M = 64, dequantize + cuBLAS (1.1-5x slower).
pub fn wx_ws_auto_min_m(format: WxFormat) -> usize {
    match format {
        WxFormat::Int8 | WxFormat::Fp8 => 9,
        WxFormat::Fp4 | WxFormat::Int2 => 12,
        WxFormat::Int3 => 17,
    }
}

/// 8-bit weights of at least this many elements (N x K) take this kernel
/// at every M ([`wx_ws_auto`]).
const WX_WS_8BIT_ANY_M_ELEMS: usize = 1 << 27;
/// 8-bit weights of at least this many elements take it from M = 8.
const WX_WS_8BIT_M8_ELEMS: usize = 1 << 25;

/// Whether `GemmPath::Auto` takes this kernel for `m` rows of `w` (where it
/// applies): from [`wx_ws_auto_min_m`] rows, and for the 8-bit formats also
/// below it on large weights. Session 16 (docs/CUDA.md change 70, H100, two
/// rounds, M = 1 / 2 / 4 / 8, this kernel against the mma.sync one): its
/// time is flat in M (it streams the weights at a fixed cost per chunk)
/// while the mma.sync kernel's grows, so
/// - 28672x8192 (2^27.8 elements): faster at every M, INT8 M = 1 87.4-87.6
///   against 94.0-94.4 us, M = 8 85.1-85.3 against 108.3-108.7; FP8 M = 1
///   84.4-87.1 against 95.9, M = 8 84.6-84.9 against 109.6-109.8; FP8 128 x
///   128 blocks M = 1 87.4-88.9 against 100.3-101.2, M = 8 87.3-88.9
///   against 117.0-117.6;
/// - 4096x14336 / 14336x4096 (2^25.8): faster at M = 8 (INT8 31.1-32.2
///   against 32.9-33.5, FP8 30.7-32.2 against 33.5-34.6, blocks 33.6-36.4
///   against 36.7-38.1), not below M = 4 (INT8 4096x14336 M = 4 31.4
///   against 29.7-29.9; 14336x4096 M = 1 32.3 against 29.9);
/// - 4096x4096 (2^24): slower at every M <= 8 (M = 8 15.7 against 13.9).
///
/// The thresholds lie between the measured sizes (2^27 between 2^25.8 and
/// 2^27.8). FP4 / INT3 / INT2 stay on the mma.sync kernel at M <= 8 (its
/// 4-bit and smaller code streams are faster there on every shape, e.g.
/// MXFP4 28672x8192 M = 8 71.7 against 80.0).
pub fn wx_ws_auto(m: usize, w: &WxWeight) -> bool {
    wx_ws_auto_for(m, w.format, w.n, w.k)
}

/// [`wx_ws_auto`] for `m` rows of an `n` x `k` weight of `format`.
fn wx_ws_auto_for(m: usize, format: WxFormat, n: usize, k: usize) -> bool {
    let elems = n.saturating_mul(k);
    let eight_bit = matches!(format, WxFormat::Int8 | WxFormat::Fp8);
    m >= wx_ws_auto_min_m(format)
        || (eight_bit
            && (elems >= WX_WS_8BIT_ANY_M_ELEMS || (m >= 8 && elems >= WX_WS_8BIT_M8_ELEMS)))
}

/// Whether `w` has a warp-specialised entry: FP4 (one K group), or a
/// format whose scales the f16 form holds ([`WxWeight`]'s scale shift:
/// always for one K group of fp32 scales, else checked at upload).
pub fn wx_ws_format_ok(w: &WxWeight) -> bool {
    match w.format {
        WxFormat::Fp4 => w.group_chunks >= w.k_chunks,
        _ => w.ws_scale_shift.is_some(),
    }
}

/// Whether `w` takes the f16-scale entries (K groups, 2-D blocks, INT3 /
/// INT2) rather than the fp32 column scales after the main loop.
fn grouped(w: &WxWeight) -> bool {
    w.format.is_low_bit() || w.group_chunks < w.k_chunks
}

/// Largest f16 magnitude (65504) and smallest normal one (2^-14).
const F16_MAX: f64 = 65504.0;
const F16_MIN_NORMAL: f64 = 1.0 / 16384.0;

/// The shift m of the f16 scales s * 2^m that the grouped 8-bit entries
/// multiply their dequantised codes by: the largest m (within -40..=40)
/// with max |s| * 2^m * `max_code` <= 65504 (every weight a finite f16),
/// provided min |s| * 2^m >= 2^-14 over the nonzero scales (every scale a
/// normal f16: rounded once, relative error <= 2^-11). None: not finite or
/// spread too wide. All zero: 0.
pub fn f16_scale_shift(scales: &[f32], max_code: f64) -> Option<i32> {
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for &s in scales {
        if !s.is_finite() {
            return None;
        }
        let a = f64::from(s.abs());
        if a > 0.0 {
            lo = lo.min(a);
            hi = hi.max(a);
        }
    }
    if hi == 0.0 {
        return Some(0);
    }
    let m = (-40..=40)
        .rev()
        .find(|&m| hi * 2f64.powi(m) * max_code <= F16_MAX)?;
    (lo * 2f64.powi(m) >= F16_MIN_NORMAL).then_some(m)
}

/// INT3 / INT2: whether every f16 scale of the (scale | zero << 16) words
/// times the largest |code - zero| (2^bits - 1) is a finite f16.
pub fn low_bit_scales_ok(scale_zero: &[u32], bits: u32) -> bool {
    let most = f64::from((1u32 << bits) - 1);
    scale_zero.iter().all(|&w| {
        let s = f64::from(half::f16::from_bits(w as u16).to_f32());
        s.is_finite() && s.abs() * most <= F16_MAX
    })
}

/// Whether this device runs the kernel on `w` (compute capability 9.0: the
/// module is compiled for sm_90a and empty elsewhere).
pub fn wx_ws_applies(dev: &CudaDevice, w: &WxWeight) -> bool {
    dev.compute_capability() == (9, 0) && wx_ws_format_ok(w)
}

/// Code bytes (and FP4's scales or the K group's column words) of one
/// 64-column tile per 64-chunk.
fn tile_bytes(format: WxFormat, grouped: bool) -> usize {
    let aux = if grouped { 256 } else { 0 };
    match format {
        WxFormat::Fp4 => 2048 + 512,
        WxFormat::Int8 | WxFormat::Fp8 => 4096 + aux,
        WxFormat::Int3 => 1536 + 256,
        WxFormat::Int2 => 1024 + 256,
    }
}

/// Ring depth of the entry of (format, tokens, tiles per warpgroup); keep in
/// sync with `WX_WS_ENTRY` in the source.
fn stages(format: WxFormat, v: WsVariant) -> usize {
    match (format, v.tokens, v.tiles_per_wg) {
        (WxFormat::Fp4 | WxFormat::Int3 | WxFormat::Int2, 64, 1) => 12,
        (WxFormat::Fp4 | WxFormat::Int3 | WxFormat::Int2, 64, _) => 10,
        (WxFormat::Fp4 | WxFormat::Int3 | WxFormat::Int2, _, _) => 8,
        (_, 64, 1) => 12,
        (_, 64, _) => 8,
        (_, _, 1) => 8,
        (_, _, _) => 6,
    }
}

/// Dynamic shared memory of the entry: 1024 bytes of alignment slack, then
/// per stage the activation tile and the block's code (and FP4 scale)
/// blocks.
fn smem_bytes(format: WxFormat, grouped: bool, v: WsVariant) -> usize {
    1024 + stages(format, v) * (128 * v.tokens + v.tiles() * tile_bytes(format, grouped))
}

/// Index of `v` in the per-variant tables below: t64x1, t64x2, t128x1,
/// t128x2 (the order of `VARIANTS`).
fn variant_index(v: WsVariant) -> usize {
    match (v.tokens, v.tiles_per_wg) {
        (64, 1) => 0,
        (64, _) => 1,
        (_, 1) => 2,
        (_, _) => 3,
    }
}

/// The entry of (format, scale form, variant): `wx_ws_<format>[g]_<variant>`.
fn kernel(format: WxFormat, grouped: bool, v: WsVariant) -> Result<&'static str> {
    if v.is_small() {
        // MARLIN_WGMMA_WS_VARIANT may name an INT4-only variant.
        return Err(CudaError::Unsupported(format!(
            "the warp-specialised wgmma GEMM of the wgemm formats has no {} entries",
            v.name()
        )));
    }
    let names: [&'static str; 4] = match (format, grouped) {
        (WxFormat::Fp4, false) => [
            "wx_ws_fp4_t64x1",
            "wx_ws_fp4_t64x2",
            "wx_ws_fp4_t128x1",
            "wx_ws_fp4_t128x2",
        ],
        (WxFormat::Int8, false) => [
            "wx_ws_int8_t64x1",
            "wx_ws_int8_t64x2",
            "wx_ws_int8_t128x1",
            "wx_ws_int8_t128x2",
        ],
        (WxFormat::Fp8, false) => [
            "wx_ws_fp8_t64x1",
            "wx_ws_fp8_t64x2",
            "wx_ws_fp8_t128x1",
            "wx_ws_fp8_t128x2",
        ],
        (WxFormat::Int8, true) => [
            "wx_ws_int8g_t64x1",
            "wx_ws_int8g_t64x2",
            "wx_ws_int8g_t128x1",
            "wx_ws_int8g_t128x2",
        ],
        (WxFormat::Fp8, true) => [
            "wx_ws_fp8g_t64x1",
            "wx_ws_fp8g_t64x2",
            "wx_ws_fp8g_t128x1",
            "wx_ws_fp8g_t128x2",
        ],
        (WxFormat::Int3, true) => [
            "wx_ws_int3_t64x1",
            "wx_ws_int3_t64x2",
            "wx_ws_int3_t128x1",
            "wx_ws_int3_t128x2",
        ],
        (WxFormat::Int2, true) => [
            "wx_ws_int2_t64x1",
            "wx_ws_int2_t64x2",
            "wx_ws_int2_t128x1",
            "wx_ws_int2_t128x2",
        ],
        (WxFormat::Fp4, true) | (WxFormat::Int3 | WxFormat::Int2, false) => {
            return Err(CudaError::Unsupported(format!(
                "the warp-specialised wgmma GEMM has no {} entry {} K groups",
                format.name(),
                if grouped { "with" } else { "without" }
            )))
        }
    };
    Ok(names[variant_index(v)])
}

/// Per-block times of grids of at most one round (the INT4 model's form,
/// `crate::int4::wgmma_ws`), fitted by least squares to one H100 call
/// (session 15, docs/CUDA.md change 68 (d)) that timed every variant x 1 /
/// 2 / 3 / 4 / 6 / 8 splits of INT8, MXFP4 and INT3 at 4096x4096, 14336x4096
/// and 4096x14336, M = 128 / 256 (rms error 8% / 4% / 4%; the fit picks the
/// fastest point at 17 of the 18 (format, shape, M)): per variant (fixed,
/// per 64-chunk) us, and the ticket reduction's per-MB and fixed terms. The
/// two-tile variants cost 1.4-1.5x the one-tile ones per chunk here (INT4:
/// 1.16x), so these formats run 128 x 128 tiles where one round holds them.
/// At M <= 64 (64-token tiles; a second sweep, M = 17 / 32 / 64 on four
/// shapes) the fits pick what INT4's model picked except 4096x14336 for FP4
/// and INT3 / INT2 (t64x2 with 8 splits: 30.9-31.9 us against 32.0-37.7),
/// the sweep's fastest there; they miss INT8 14336x4096 (t64x2 / 2 splits
/// 32.6-33.2 us against t64x1 unsplit 27.3-27.8), as INT4's model did.
fn fit_8bit(v: WsVariant) -> OneRoundFit {
    fit_of(
        v,
        [(1.56, 0.376), (5.30, 0.429), (3.93, 0.414), (6.66, 0.589)],
        (14.5, 4.18),
    )
}
fn fit_fp4(v: WsVariant) -> OneRoundFit {
    fit_of(
        v,
        [(2.27, 0.450), (4.30, 0.596), (3.87, 0.486), (5.79, 0.748)],
        (12.8, 3.96),
    )
}
fn fit_low_bit(v: WsVariant) -> OneRoundFit {
    fit_of(
        v,
        [(1.86, 0.557), (3.66, 0.722), (3.28, 0.586), (5.69, 0.826)],
        (10.5, 4.51),
    )
}
/// `table`: (fixed, per chunk) us of t64x1, t64x2, t128x1, t128x2;
/// `(reduce, ticket)`: us per MB read back, us per ticket reduction.
fn fit_of(v: WsVariant, table: [(f64, f64); 4], (reduce, ticket): (f64, f64)) -> OneRoundFit {
    let i = variant_index(v);
    OneRoundFit {
        fixed_us: table[i].0,
        chunk_us: table[i].1,
        reduce_us_per_mb: reduce,
        ticket_fixed_us: ticket,
    }
}
fn one_round_fit_of(format: WxFormat) -> fn(WsVariant) -> OneRoundFit {
    match format {
        WxFormat::Int8 | WxFormat::Fp8 => fit_8bit,
        WxFormat::Fp4 => fit_fp4,
        WxFormat::Int3 | WxFormat::Int2 => fit_low_bit,
    }
}

/// A resolved call: plan, variant, shared memory, scratch sizes.
pub(crate) struct WxWsCall {
    pub plan: GemmPlan,
    variant: WsVariant,
    smem: u32,
    /// fp32 partials (one block tile per split and block) and tickets.
    partials: usize,
    tickets: usize,
    /// f16 elements of the staged activation image.
    staged: usize,
    /// The f16-scale entries' power-of-two shift of the 8-bit scales.
    scale_shift: i32,
    /// Activation type (module of both kernels).
    act: Act,
}

/// The plan of a call of `m` rows (`splits`: a forced split-K factor).
/// Errors name what the kernel cannot run: another device, another format,
/// K groups.
pub(crate) fn resolve(
    dev: &CudaDevice,
    m: usize,
    w: &WxWeight,
    splits: Option<usize>,
    act: Act,
) -> Result<WxWsCall> {
    if dev.compute_capability() != (9, 0) {
        let (major, minor) = dev.compute_capability();
        return Err(CudaError::Unsupported(format!(
            "the warp-specialised wgmma {} GEMM needs compute capability 9.0 (sm_90a), device has {major}.{minor}",
            w.format.name()
        )));
    }
    if !wx_ws_format_ok(w) {
        return Err(CudaError::Unsupported(format!(
            "the warp-specialised wgmma GEMM cannot run this {} weight ({} K groups of {}): FP4 needs \
             one K group, the f16 scales of the other formats must hold every scale times the largest \
             code as a finite f16 and the nonzero scales as normal ones after one power-of-two shift",
            w.format.name(),
            w.k_chunks.div_ceil(w.group_chunks.max(1)),
            w.group_chunks * K_CHUNK
        )));
    }
    let grouped = grouped(w);
    let (v, auto_splits, _) = ws_variant_for(
        m,
        w.n_pad,
        w.k_chunks,
        dev.sm_count(),
        &ClusterFit::NONE,
        variant_override(),
        one_round_fit_of(w.format),
        false,
    );
    let kernel = kernel(w.format, grouped, v)?;
    let m_blocks = m.div_ceil(v.tokens).max(1);
    let n_tiles = w.n_pad.div_ceil(v.n_block());
    let splits = splits.map_or(auto_splits, |s| s.clamp(1, w.k_chunks.max(1)));
    let smem_bytes = smem_bytes(w.format, grouped, v);
    if smem_bytes > SMEM_LIMIT {
        return Err(CudaError::Shape(format!(
            "{kernel}: {smem_bytes} bytes of shared memory exceed {SMEM_LIMIT}"
        )));
    }
    let overflow =
        || CudaError::Shape(format!("M = {m}, N = {}, K = {}: sizes overflow", w.n, w.k));
    let partials = if splits > 1 {
        splits
            .checked_mul(m_blocks)
            .and_then(|x| x.checked_mul(n_tiles))
            .and_then(|x| x.checked_mul(v.tokens * v.n_block()))
            .ok_or_else(overflow)?
    } else {
        0
    };
    let staged = m_blocks
        .checked_mul(v.tokens)
        .and_then(|x| x.checked_mul(w.k_chunks))
        .and_then(|x| x.checked_mul(K_CHUNK))
        .ok_or_else(overflow)?;
    let tickets = n_tiles.checked_mul(m_blocks).ok_or_else(overflow)?;
    Ok(WxWsCall {
        plan: GemmPlan {
            path: GemmPath::WgmmaWs,
            kernel,
            m_tiles: v.tokens / 16,
            m_blocks,
            n_tiles,
            splits,
        },
        variant: v,
        smem: u32::try_from(smem_bytes).map_err(|_| CudaError::Shape("shared memory".into()))?,
        partials,
        tickets,
        staged,
        scale_shift: w.ws_scale_shift.unwrap_or(0),
        act,
    })
}

/// Load both kernels of `call` and size the workspace's scratch.
pub(crate) fn prepare(dev: &CudaDevice, call: &WxWsCall, ws: &mut GemmWorkspace) -> Result<()> {
    if call.plan.splits > 1 {
        ws.reserve(dev, call.partials, call.tickets)?;
    }
    ws.reserve_staged_act(dev, call.staged)?;
    let (module, source) = module(call.act);
    dev.function(module, source, call.variant.stage_kernel(), 0)?;
    dev.function(module, source, call.plan.kernel, call.smem)?;
    Ok(())
}

/// Enqueue the staging and the main kernel (A >= M*K and C >= M*N checked
/// by the caller; `prepare` loaded both kernels and sized the scratch,
/// which is checked again here).
pub(crate) fn launch<T: ActDtype>(
    dev: &CudaDevice,
    a: &CudaView<'_, T>,
    m: usize,
    w: &WxWeight,
    c: &mut CudaViewMut<'_, T>,
    ws: &mut GemmWorkspace,
    call: &WxWsCall,
) -> Result<()> {
    if T::ACT != call.act {
        return Err(CudaError::Unsupported(format!(
            "warp-specialised {} call resolved for {} activations, launched with {}",
            w.format.name(),
            call.act.name(),
            T::ACT.name()
        )));
    }
    let p = call.plan;
    ws.check_split_k(
        p.splits,
        call.partials,
        call.tickets,
        (m, w.n),
        "prepare_wx",
    )?;
    let grid = launch_grid(p.m_blocks, p.n_tiles, p.splits)?;
    let stage_name = call.variant.stage_kernel();
    let (module, source) = module(call.act);
    let stage_fn = dev.function(module, source, stage_name, 0)?;
    let func = dev.function(module, source, p.kernel, call.smem)?;
    let staged = ws.staged_act.as_ref().ok_or_else(|| {
        CudaError::Shape("staged activation scratch missing: call GemmWorkspace::prepare_wx".into())
    })?;
    launch_staging(
        dev,
        (&stage_fn, stage_name),
        a,
        staged,
        call.staged,
        (m, w.k, w.k_chunks),
    )?;
    let (m_i32, n_i32) = (to_i32("M", m)?, to_i32("N", w.n)?);
    let (n_pad_i32, k_chunks_i32, group_chunks_i32, splits_i32) = (
        to_i32("n_pad", w.n_pad)?,
        to_i32("k_chunks", w.k_chunks)?,
        to_i32("group", w.group_chunks.max(1))?,
        to_i32("splits", p.splits)?,
    );
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: call.smem,
    };
    let mut launch = KernelLaunch::new(dev, &func, p.kernel);
    launch
        .arg(staged)
        .arg(&w.words)
        .arg(&w.scales16)
        .arg(&w.scales32);
    // The K group's column words: the fp32 scales (8-bit, read as their
    // bits) or the (scale | zero << 16) words (INT3 / INT2).
    if w.format.is_low_bit() {
        launch.arg(&w.scale_zero);
    } else {
        launch.arg(&w.scales32);
    }
    launch
        .arg(c)
        .arg(&ws.partials)
        .arg(&ws.tickets)
        .arg(&m_i32)
        .arg(&n_i32)
        .arg(&n_pad_i32)
        .arg(&k_chunks_i32)
        .arg(&group_chunks_i32)
        .arg(&splits_i32)
        .arg(&call.scale_shift);
    // SAFETY: argument types and order match WX_WS_ENTRY (the group words
    // are 32-bit: f32 scales read as u32 bits); the staged image covers
    // m_blocks x k_chunks tiles of the variant's tokens (written by the
    // staging launch above, sized by `resolve`); the packed codes cover
    // n_pad/64 x k_chunks blocks of the format's bytes, scales16 (FP4) the
    // same blocks of 512 bytes, scales32 / scale_zero ceil(k_chunks /
    // group_chunks) rows of n_pad (the repack); the entry (`resolve`) reads
    // only its format's buffers; partials >= splits x blocks x tile and
    // tickets >= blocks were checked above; C >= M*N by the caller. PDL:
    // the producer reads the staged image only after its pdl_wait; before
    // it, only the read-only weights.
    unsafe { launch.launch_pdl(cfg) }
}

#[cfg(test)]
mod tests {
    use super::{f16_scale_shift, kernel, low_bit_scales_ok, smem_bytes, SMEM_LIMIT, WX_WS_SOURCE};
    use crate::int4::wgmma_ws::VARIANTS;
    use crate::wgemm::pack::WxFormat;

    /// `Auto`'s choice at the points session 16 measured (change 70): the
    /// 8-bit formats on 28672x8192 at every M, at M = 8 from 4096x14336 /
    /// 14336x4096 on, never at M <= 8 on 4096x4096; FP4 / INT3 / INT2 from
    /// their `wx_ws_auto_min_m` only (INT2 from 12).
    #[test]
    fn auto_follows_the_small_m_measurements() {
        use super::wx_ws_auto_for;
        for f in [WxFormat::Int8, WxFormat::Fp8] {
            for m in [1, 2, 4, 8] {
                assert!(wx_ws_auto_for(m, f, 28672, 8192), "{f:?} M={m}");
                assert!(!wx_ws_auto_for(m, f, 4096, 4096), "{f:?} M={m}");
            }
            for (n, k) in [(4096, 14336), (14336, 4096)] {
                assert!(wx_ws_auto_for(8, f, n, k));
                assert!(!wx_ws_auto_for(4, f, n, k));
            }
            assert!(wx_ws_auto_for(9, f, 4096, 4096));
        }
        for f in [WxFormat::Fp4, WxFormat::Int3, WxFormat::Int2] {
            assert!(!wx_ws_auto_for(8, f, 28672, 8192), "{f:?}");
        }
        assert!(wx_ws_auto_for(12, WxFormat::Int2, 4096, 4096));
        assert!(!wx_ws_auto_for(11, WxFormat::Int2, 28672, 8192));
        assert!(wx_ws_auto_for(12, WxFormat::Fp4, 4096, 4096));
        assert!(!wx_ws_auto_for(16, WxFormat::Int3, 28672, 8192));
        assert!(wx_ws_auto_for(17, WxFormat::Int3, 4096, 4096));
    }

    /// Every (format, K groups, variant) with an entry has it in the source
    /// with the stage count the host assumes, and its ring fits the shared
    /// memory limit; the others are errors.
    #[test]
    fn entries_match_the_source_and_fit() {
        let all = [
            (WxFormat::Fp4, false, "FMT_FP4"),
            (WxFormat::Int8, false, "FMT_INT8"),
            (WxFormat::Fp8, false, "FMT_FP8"),
            (WxFormat::Int8, true, "FMT_INT8"),
            (WxFormat::Fp8, true, "FMT_FP8"),
            (WxFormat::Int3, true, "FMT_INT3"),
            (WxFormat::Int2, true, "FMT_INT2"),
        ];
        for (format, grouped, fmt) in all {
            for v in VARIANTS {
                let name = kernel(format, grouped, v).expect("entry");
                let line = format!(
                    "WX_WS_ENTRY({name}, {fmt}, {grouped}, {}, {}, {})",
                    v.tokens,
                    v.tiles_per_wg,
                    super::stages(format, v)
                );
                assert!(WX_WS_SOURCE.contains(&line), "missing {line}");
                assert!(smem_bytes(format, grouped, v) <= SMEM_LIMIT, "{name}");
            }
        }
        for (format, grouped) in [
            (WxFormat::Fp4, true),
            (WxFormat::Int3, false),
            (WxFormat::Int2, false),
        ] {
            assert!(kernel(format, grouped, VARIANTS[0]).is_err());
        }
    }

    /// The plans of the fitted model against the fastest point of the sweep
    /// it was fitted to (every variant x 1..8 splits, INT8 / MXFP4 / INT3,
    /// H100): 128-token tiles of one 64-column tile per warpgroup where one
    /// round holds them, two tiles where it does not; one miss of 4%.
    #[test]
    fn plans_follow_the_sweep() {
        use crate::int4::wgmma_ws::{ws_variant_for, ClusterFit};
        let fastest = [
            (128, 4096, 4096, "t128x1", 4),
            (256, 4096, 4096, "t128x1", 2),
            (128, 14336, 4096, "t128x1", 1),
            (256, 14336, 4096, "t128x2", 1),
            (128, 4096, 14336, "t128x1", 4),
            (256, 4096, 14336, "t128x2", 4),
            (32, 4096, 4096, "t64x1", 4),
            (32, 28672, 8192, "t64x2", 1),
        ];
        // M <= 64: 4096x14336 takes 64-token tiles of two 64-column tiles
        // with 8 splits for FP4 and INT3 / INT2 (the second sweep's fastest).
        for format in [WxFormat::Fp4, WxFormat::Int3, WxFormat::Int2] {
            let fit = super::one_round_fit_of(format);
            for m in [17, 32, 64] {
                let (v, s, _) = ws_variant_for(
                    m,
                    4096,
                    14336 / 64,
                    132,
                    &ClusterFit::NONE,
                    None,
                    fit,
                    false,
                );
                assert_eq!(
                    (v.name().as_str(), s),
                    ("t64x2", 8),
                    "{} M={m}",
                    format.name()
                );
            }
        }
        for format in [WxFormat::Int8, WxFormat::Fp4, WxFormat::Int3] {
            for (m, n, k, variant, splits) in fastest {
                let fit = super::one_round_fit_of(format);
                let (v, s, c) =
                    ws_variant_for(m, n, k / 64, 132, &ClusterFit::NONE, None, fit, false);
                let want = match (format, m, n, k) {
                    // The misses: t128x2 / 2 splits, 43.5 us against 41.6;
                    // INT8's t64x1 / 3 splits 15.3 us is within 4%.
                    (WxFormat::Int3, 128, 14336, _) => ("t128x2", 2, false),
                    _ => (variant, splits, false),
                };
                assert_eq!(
                    (v.name().as_str(), s, c),
                    want,
                    "{} M={m} {n}x{k}",
                    format.name()
                );
            }
        }
    }

    /// The grouped 8-bit scales' shift: the largest one that keeps every
    /// weight a finite f16, refused where the smallest scale would then be
    /// subnormal; zeros are skipped, non-finite scales refused.
    #[test]
    fn f16_scale_shift_bounds() {
        // FP8 block scales ~ 1e-4: 448 * 1e-4 * 2^m <= 65504 -> m = 20.
        let m = f16_scale_shift(&[1e-4, 3e-5, 0.0], 448.0).expect("shift");
        assert_eq!(m, 20);
        assert!(1e-4 * 2f64.powi(m) * 448.0 <= 65504.0);
        assert!(1e-4 * 2f64.powi(m + 1) * 448.0 > 65504.0);
        assert!(3e-5 * 2f64.powi(m) >= 1.0 / 16384.0);
        // A spread of 2^30 cannot hold both ends.
        assert_eq!(f16_scale_shift(&[1.0, 2f32.powi(-30)], 128.0), None);
        assert_eq!(f16_scale_shift(&[0.0, 0.0], 128.0), Some(0));
        assert_eq!(f16_scale_shift(&[1.0, f32::NAN], 128.0), None);
        assert_eq!(f16_scale_shift(&[f32::INFINITY], 128.0), None);
        // INT3 / INT2: |code - zero| <= 2^bits - 1 times the f16 scale.
        let word = |s: f32, z: u32| u32::from(half::f16::from_f32(s).to_bits()) | (z << 16);
        assert!(low_bit_scales_ok(&[word(0.01, 4), word(-2.0, 0)], 3));
        assert!(!low_bit_scales_ok(&[word(10000.0, 4)], 3));
        assert!(low_bit_scales_ok(&[word(10000.0, 1)], 2));
    }
}
