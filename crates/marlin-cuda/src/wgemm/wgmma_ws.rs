//! Hopper (sm_90a) warp-specialised GEMM for the `wgemm` formats FP4
//! (MXFP4 / NVFP4), INT8 and FP8 whose fp32 column scales form one K group
//! (per channel or per tensor; FP4's block scales are its f16 scales of
//! each 16-run): the INT4 kernel of [`crate::int4::wgmma_ws`] with the
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
//!    register A operand and issue `wgmma m64n<TOK>k16`; the column scales
//!    multiply the fp32 accumulators once after the main loop; split-K
//!    with the ticket reduction (bit-deterministic).
//!
//! Plans come from the INT4 kernel's cost model ([`ws_variant_for`], no
//! cluster reduction); the 8-bit rings are shallower (twice the code bytes
//! per stage). f16 activations only; bf16 calls keep the other paths.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig};

use super::gemm::WxWeight;
use super::pack::WxFormat;
use crate::device::CudaDevice;
use crate::error::{CudaError, Result};
use crate::int4::gemm::{launch_grid, GemmPath, GemmPlan, GemmWorkspace};
use crate::int4::pack::K_CHUNK;
use crate::int4::wgmma_ws::{launch_staging, ws_variant_for, ClusterFit, WsVariant};
use crate::ops::launch::KernelLaunch;
use crate::ops::to_i32;

/// The module of the staging kernels and the `wx_ws_*` entries.
pub(crate) const WX_WS_MODULE: &str = "wx_wgmma_ws";
pub(crate) const WX_WS_SOURCE: &str = concat!(
    "#define WS_WX_ENTRIES 1\n",
    include_str!("../kernels/w4a16_wgmma_ws.cu")
);

/// Threads of the main kernel: producer + 2 consumer warpgroups.
const THREADS: u32 = 384;
/// Dynamic shared memory the kernel may use (sm_90 opt-in limit, 227 KiB).
const SMEM_LIMIT: usize = 227 * 1024;

/// From this many rows on, `GemmPath::Auto` takes this kernel where it
/// applies ([`wx_ws_applies`]); below, the mma.sync kernel. First H100
/// call (session 15, docs/CUDA.md change 68): at M = 32 this kernel took
/// 15.2-15.7 / 29.8-32.9 / 30.6-31.8 / 80.0-89.2 us on 4096x4096 /
/// 14336x4096 / 4096x14336 / 28672x8192 against the mma.sync kernel's
/// 19.6-25.9 / 51.2-65.7 / 58.3-59.7 / 175.8-223.5 (FP4, INT8, FP8); from
/// M = 64 on it replaced dequantize + cuBLAS (3-5x faster there).
pub const WX_WS_AUTO_MIN_M: usize = 17;

/// Whether `w` has a warp-specialised entry: FP4, INT8 or FP8 with one K
/// group of fp32 column scales (the kernel folds them in after its main
/// loop).
pub fn wx_ws_format_ok(w: &WxWeight) -> bool {
    matches!(w.format, WxFormat::Fp4 | WxFormat::Int8 | WxFormat::Fp8)
        && w.group_chunks >= w.k_chunks
}

/// Whether this device runs the kernel on `w` (compute capability 9.0: the
/// module is compiled for sm_90a and empty elsewhere).
pub fn wx_ws_applies(dev: &CudaDevice, w: &WxWeight) -> bool {
    dev.compute_capability() == (9, 0) && wx_ws_format_ok(w)
}

/// Code bytes (and FP4's scale bytes) of one 64-column tile per 64-chunk.
fn tile_bytes(format: WxFormat) -> usize {
    match format {
        WxFormat::Fp4 => 2048 + 512,
        _ => 4096,
    }
}

/// Ring depth of the entry of (format, tokens, tiles per warpgroup); keep in
/// sync with `WX_WS_ENTRY` in the source.
fn stages(format: WxFormat, v: WsVariant) -> usize {
    match (format, v.tokens, v.tiles_per_wg) {
        (WxFormat::Fp4, 64, 1) => 12,
        (WxFormat::Fp4, 64, _) => 10,
        (WxFormat::Fp4, _, _) => 8,
        (_, 64, 1) => 12,
        (_, 64, _) => 8,
        (_, _, 1) => 8,
        (_, _, _) => 6,
    }
}

/// Dynamic shared memory of the entry: 1024 bytes of alignment slack, then
/// per stage the activation tile and the block's code (and FP4 scale)
/// blocks.
fn smem_bytes(format: WxFormat, v: WsVariant) -> usize {
    1024 + stages(format, v) * (128 * v.tokens + v.tiles() * tile_bytes(format))
}

fn kernel(format: WxFormat, v: WsVariant) -> Result<&'static str> {
    Ok(match (format, v.tokens, v.tiles_per_wg) {
        (WxFormat::Fp4, 64, 1) => "wx_ws_fp4_t64x1",
        (WxFormat::Fp4, 64, _) => "wx_ws_fp4_t64x2",
        (WxFormat::Fp4, _, 1) => "wx_ws_fp4_t128x1",
        (WxFormat::Fp4, _, _) => "wx_ws_fp4_t128x2",
        (WxFormat::Int8, 64, 1) => "wx_ws_int8_t64x1",
        (WxFormat::Int8, 64, _) => "wx_ws_int8_t64x2",
        (WxFormat::Int8, _, 1) => "wx_ws_int8_t128x1",
        (WxFormat::Int8, _, _) => "wx_ws_int8_t128x2",
        (WxFormat::Fp8, 64, 1) => "wx_ws_fp8_t64x1",
        (WxFormat::Fp8, 64, _) => "wx_ws_fp8_t64x2",
        (WxFormat::Fp8, _, 1) => "wx_ws_fp8_t128x1",
        (WxFormat::Fp8, _, _) => "wx_ws_fp8_t128x2",
        (f @ (WxFormat::Int3 | WxFormat::Int2), ..) => {
            return Err(CudaError::Unsupported(format!(
                "the warp-specialised wgmma GEMM has no {} entry (FP4, INT8 and FP8 only)",
                f.name()
            )))
        }
    })
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
}

/// The plan of a call of `m` rows (`splits`: a forced split-K factor).
/// Errors name what the kernel cannot run: another device, another format,
/// K groups.
pub(crate) fn resolve(
    dev: &CudaDevice,
    m: usize,
    w: &WxWeight,
    splits: Option<usize>,
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
            "the warp-specialised wgmma GEMM runs FP4, INT8 and FP8 weights with one K group of \
             column scales; this {} weight has {} groups of {} columns",
            w.format.name(),
            w.k_chunks.div_ceil(w.group_chunks.max(1)),
            w.group_chunks * K_CHUNK
        )));
    }
    let (v, auto_splits, _) = ws_variant_for(
        m,
        w.n_pad,
        w.k_chunks,
        dev.sm_count(),
        &ClusterFit::NONE,
        None,
    );
    let kernel = kernel(w.format, v)?;
    let m_blocks = m.div_ceil(v.tokens).max(1);
    let n_tiles = w.n_pad.div_ceil(v.n_block());
    let splits = splits.map_or(auto_splits, |s| s.clamp(1, w.k_chunks.max(1)));
    let smem_bytes = smem_bytes(w.format, v);
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
    })
}

/// Load both kernels of `call` and size the workspace's scratch.
pub(crate) fn prepare(dev: &CudaDevice, call: &WxWsCall, ws: &mut GemmWorkspace) -> Result<()> {
    if call.plan.splits > 1 {
        ws.reserve(dev, call.partials, call.tickets)?;
    }
    if ws.staged_act.as_ref().is_none_or(|s| s.len() < call.staged) {
        ws.staged_act = None;
        ws.staged_act = Some(dev.alloc_zeros("staged activations (wgmma ws)", call.staged)?);
    }
    dev.function(WX_WS_MODULE, WX_WS_SOURCE, call.variant.stage_kernel(), 0)?;
    dev.function(WX_WS_MODULE, WX_WS_SOURCE, call.plan.kernel, call.smem)?;
    Ok(())
}

/// Enqueue the staging and the main kernel (f16 activations; A >= M*K and
/// C >= M*N checked by the caller; `prepare` loaded both kernels and sized
/// the scratch, which is checked again here).
pub(crate) fn launch(
    dev: &CudaDevice,
    a: &CudaView<'_, half::f16>,
    m: usize,
    w: &WxWeight,
    c: &mut CudaViewMut<'_, half::f16>,
    ws: &mut GemmWorkspace,
    call: &WxWsCall,
) -> Result<()> {
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
    let stage_fn = dev.function(WX_WS_MODULE, WX_WS_SOURCE, stage_name, 0)?;
    let func = dev.function(WX_WS_MODULE, WX_WS_SOURCE, p.kernel, call.smem)?;
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
    let (n_pad_i32, k_chunks_i32, splits_i32) = (
        to_i32("n_pad", w.n_pad)?,
        to_i32("k_chunks", w.k_chunks)?,
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
        .arg(&w.scales32)
        .arg(c)
        .arg(&ws.partials)
        .arg(&ws.tickets)
        .arg(&m_i32)
        .arg(&n_i32)
        .arg(&n_pad_i32)
        .arg(&k_chunks_i32)
        .arg(&splits_i32);
    // SAFETY: argument types and order match WX_WS_ENTRY; the staged image
    // covers m_blocks x k_chunks tiles of the variant's tokens (written by
    // the staging launch above, sized by `resolve`); the packed codes cover
    // n_pad/64 x k_chunks blocks of the format's bytes, scales16 (FP4) the
    // same blocks of 512 bytes and scales32 one row of n_pad (one K group,
    // checked by `resolve`); partials >= splits x blocks x tile and tickets
    // >= blocks were checked above; C >= M*N by the caller. PDL: the
    // producer reads the staged image only after its pdl_wait; before it,
    // only the read-only weights.
    unsafe { launch.launch_pdl(cfg) }
}

#[cfg(test)]
mod tests {
    use super::{kernel, smem_bytes, SMEM_LIMIT, WX_WS_SOURCE};
    use crate::int4::wgmma_ws::VARIANTS;
    use crate::wgemm::pack::WxFormat;

    /// Every (format, variant) has an entry in the source whose ring fits
    /// the shared memory limit, with the stage count the host assumes.
    #[test]
    fn entries_match_the_source_and_fit() {
        for format in [WxFormat::Fp4, WxFormat::Int8, WxFormat::Fp8] {
            for v in VARIANTS {
                let name = kernel(format, v).expect("entry");
                let fmt = match format {
                    WxFormat::Fp4 => "FMT_FP4",
                    WxFormat::Int8 => "FMT_INT8",
                    _ => "FMT_FP8",
                };
                let line = format!(
                    "WX_WS_ENTRY({name}, {fmt}, {}, {}, {})",
                    v.tokens,
                    v.tiles_per_wg,
                    super::stages(format, v)
                );
                assert!(WX_WS_SOURCE.contains(&line), "missing {line}");
                assert!(smem_bytes(format, v) <= SMEM_LIMIT, "{name}");
            }
        }
        assert!(kernel(WxFormat::Int3, VARIANTS[0]).is_err());
        assert!(kernel(WxFormat::Int2, VARIANTS[0]).is_err());
    }
}
