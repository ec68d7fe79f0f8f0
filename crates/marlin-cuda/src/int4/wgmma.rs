//! Hopper (sm_90a) path of the INT4 GEMM: `kernels/w4a16_wgmma.cu`, the
//! transposed product D^T = W · A^T on `wgmma.mma_async` with the
//! dequantised weights as the register A operand and the activations as the
//! shared-memory B operand (tokens are wgmma's N dimension). It reads the
//! packed weights of [`super::pack`] as they are (no second layout).
//!
//! Block: NWG warpgroups = NWG x 64 weight columns (one 64-column tile of
//! the packing each) x TOK tokens (32, 64 or 128), split-K over `gridDim.z`
//! with the deterministic last-block reduction of the mma.sync kernels.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig};
use half::f16;

use super::gemm::{arg_operands, launch_grid, GemmPath, GemmPlan, GemmWorkspace, Int4Weight};
use super::pack::N_TILE;
use crate::device::CudaDevice;
use crate::error::{CudaError, Result};
use crate::ops::launch::KernelLaunch;
use crate::ops::to_i32;

pub(super) const MODULE: &str = "w4a16_wgmma";
pub(super) const SOURCE: &str = include_str!("../kernels/w4a16_wgmma.cu");
/// Smallest M that `GemmPath::Auto` sends to this kernel on sm_90.
pub const WGMMA_MIN_M: usize = 17;
/// From this M on `GemmPath::Auto` dequantizes and calls cuBLAS again.
pub const WGMMA_MAX_M: usize = 512;

/// `GemmPath::Auto`'s choice of this kernel on sm_90 (K even): M = 17..127
/// on every weight, M = 128..511 on weights of at least
/// [`super::gemm::LARGE_WEIGHT_ELEMS`] elements. Measured on an H100
/// (docs/CUDA.md, INT4 wgmma): faster than the decode kernel at M = 32 and
/// than dequantize + cuBLAS at M = 64 on all four benchmark shapes; at
/// M = 128 faster than dequantize + cuBLAS on
/// 14336x4096, 4096x14336 and 28672x8192 but not on 4096x4096, the same
/// at M = 256; slower at M = 1024 on every shape. `resolve_call` asks
/// [`super::wgmma_ws::ws_auto`] first: the warp-specialised kernel takes
/// the points of this range where it measured faster (28672x8192 at
/// M = 128 and 256, 14336x4096 at M = 256, 4096x14336 at M = 128 and 256).
pub fn wgmma_auto(m: usize, n: usize, k: usize) -> bool {
    (WGMMA_MIN_M..WGMMA_MAX_M).contains(&m)
        && (m < 128 || n.saturating_mul(k) >= super::gemm::LARGE_WEIGHT_ELEMS)
}

/// Chunks of 64 along K each split gets at least.
const MIN_CHUNKS_PER_SPLIT: usize = 8;
/// Per lane and stage: 16 B codes + 4 B scale (+ 4 B zero point).
const WEIGHT_RING_BYTES_PER_LANE: usize = 16 + 4;
const ZERO_RING_BYTES_PER_LANE: usize = 4;

/// One compiled variant (`W4A16_WGMMA_ENTRY` in the source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgmmaVariant {
    /// Tokens per block (wgmma N).
    pub tokens: usize,
    /// Warpgroups per block, one 64-column tile each.
    pub warpgroups: usize,
    /// cp.async ring depth (chunks in flight = stages - 2).
    pub stages: usize,
    /// Resident blocks per SM the plan assumes (registers: 84 / 106 / 144
    /// per thread at 32 / 64 / 128 tokens, ptxas for sm_90a).
    pub blocks_per_sm: usize,
}

impl WgmmaVariant {
    /// Dynamic shared memory of one block: per stage the activation tile
    /// (4 k16 steps x 2 core matrices x (16*tokens + 16) bytes) and the
    /// lanes' weight ring.
    pub fn smem_bytes(&self, has_zeros: bool) -> usize {
        let act = 8 * (16 * self.tokens + 16);
        let per_lane = WEIGHT_RING_BYTES_PER_LANE
            + if has_zeros {
                ZERO_RING_BYTES_PER_LANE
            } else {
                0
            };
        self.stages * (act + self.threads() * per_lane)
    }

    /// Threads per block (128 per warpgroup).
    pub fn threads(&self) -> usize {
        128 * self.warpgroups
    }

    /// Weight columns per block.
    pub fn n_block(&self) -> usize {
        N_TILE * self.warpgroups
    }

    fn kernel(&self, has_zeros: bool) -> &'static str {
        match (self.tokens, self.warpgroups, has_zeros) {
            (32, _, false) => "w4a16_wgmma_t32w2",
            (32, _, true) => "w4a16_wgmma_t32w2z",
            (64, 4, false) => "w4a16_wgmma_t64w4",
            (64, 4, true) => "w4a16_wgmma_t64w4z",
            (64, _, false) => "w4a16_wgmma_t64w2",
            (64, _, true) => "w4a16_wgmma_t64w2z",
            (_, 3, false) => "w4a16_wgmma_t128w3",
            (_, 3, true) => "w4a16_wgmma_t128w3z",
            (_, _, false) => "w4a16_wgmma_t128w2",
            (_, _, true) => "w4a16_wgmma_t128w2z",
        }
    }
}

/// Test and tuning switch: `MARLIN_WGMMA_WIDE=1` forces the wide blocks
/// (4 warpgroups at 64 tokens, 3 at 128), `=0` the 2-warpgroup blocks, at
/// every shape; unset, [`wgmma_variant`] decides.
fn wide_override() -> Option<bool> {
    match std::env::var("MARLIN_WGMMA_WIDE").as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    }
}

/// The variant for M rows and reduction length K: the smallest token tile
/// that holds M, 128 tokens (several token blocks) beyond that. At 128
/// tokens and K >= 8192, 3 warpgroups share one activation tile (H100:
/// 28672x8192 M = 128 240.8 vs 260.8 us, M = 256 389.1 vs 430.1 us; at
/// K = 4096 the 2-warpgroup block was faster: 14336x4096 M = 128 54.7 vs
/// 68.2 us). 4 warpgroups at 64 tokens were not better (4096x4096 M = 64
/// 28.0 vs 21.6 us).
pub fn wgmma_variant(m: usize, k: usize) -> WgmmaVariant {
    let wide = wide_override().unwrap_or(m > 64 && k >= 8192);
    let (tokens, warpgroups, stages, blocks_per_sm) = match m {
        0..=32 => (32, 2, 8, 2),
        33..=64 if wide => (64, 4, 6, 1),
        33..=64 => (64, 2, 6, 2),
        _ if wide => (128, 3, 6, 1),
        _ => (128, 2, 6, 1),
    };
    WgmmaVariant {
        tokens,
        warpgroups,
        stages,
        blocks_per_sm,
    }
}

/// Whether the device runs the wgmma kernels (compute capability 9.0: the
/// module is compiled for sm_90a; elsewhere it is empty).
pub fn wgmma_supported(dev: &CudaDevice) -> bool {
    dev.compute_capability() == (9, 0)
}

/// Whether a weight can take the wgmma path: K even (the activation pairs
/// are copied as aligned 4-byte words).
pub fn wgmma_shape_ok(w: &Int4Weight) -> bool {
    w.k.is_multiple_of(2)
}

/// Split-K factor: the one that minimises rounds-of-resident-blocks /
/// splits (the time of the slowest SM in units of one unsplit block),
/// preferring fewer splits on ties, among those with >= 8 chunks per split
/// and fp32 partials (written and read: 8 * splits * M bytes per column)
/// of at most the weight's K / 2 bytes per column (first H100 run: 5-17
/// splits at M = 1024 spent more time on partials than on the product).
fn choose_splits(base_blocks: usize, slots: usize, k_chunks: usize, m: usize) -> usize {
    let by_partials = (64 * k_chunks / 2) / (8 * m.max(1));
    let max_splits = (k_chunks / MIN_CHUNKS_PER_SPLIT).min(by_partials).max(1);
    let mut best = (f64::INFINITY, 1);
    for s in 1..=max_splits {
        let rounds = (base_blocks * s).div_ceil(slots.max(1));
        let cost = rounds as f64 / s as f64;
        if cost < best.0 - 1e-9 {
            best = (cost, s);
        }
    }
    best.1
}

/// Launch shape of the wgmma path for M rows. `GemmPlan::m_tiles` holds
/// tokens / 16 and `n_tiles` the column blocks (64 x warpgroups wide).
pub fn wgmma_plan(m: usize, w: &Int4Weight, sm_count: usize, splits: Option<usize>) -> GemmPlan {
    let v = wgmma_variant(m, w.k);
    let m_blocks = m.div_ceil(v.tokens).max(1);
    let n_blocks = w.n_pad.div_ceil(v.n_block());
    let max_splits = w.k_chunks.max(1);
    let splits = splits
        .unwrap_or_else(|| {
            choose_splits(
                n_blocks * m_blocks,
                sm_count * v.blocks_per_sm,
                w.k_chunks,
                m,
            )
        })
        .clamp(1, max_splits);
    GemmPlan {
        path: GemmPath::Wgmma,
        kernel: v.kernel(w.neg_zero_scales.is_some()),
        m_tiles: v.tokens / 16,
        m_blocks,
        n_tiles: n_blocks,
        splits,
    }
}

/// A resolved wgmma call: plan, shared memory, scratch sizes.
pub(super) struct WgmmaCall {
    pub plan: GemmPlan,
    pub variant: WgmmaVariant,
    pub smem: u32,
    /// fp32 partials (splits x M x n_pad) and tickets (blocks) it needs.
    pub partials: usize,
    pub tickets: usize,
}

pub(super) fn resolve(
    dev: &CudaDevice,
    m: usize,
    w: &Int4Weight,
    splits: Option<usize>,
) -> Result<WgmmaCall> {
    if !wgmma_supported(dev) {
        let (major, minor) = dev.compute_capability();
        return Err(CudaError::Unsupported(format!(
            "the wgmma INT4 GEMM needs compute capability 9.0 (sm_90a), device has {major}.{minor}"
        )));
    }
    if !wgmma_shape_ok(w) {
        return Err(CudaError::Unsupported(format!(
            "the wgmma INT4 GEMM needs an even K, got K = {}",
            w.k
        )));
    }
    let plan = wgmma_plan(m, w, dev.sm_count(), splits);
    let v = wgmma_variant(m, w.k);
    let smem = u32::try_from(v.smem_bytes(w.neg_zero_scales.is_some()))
        .map_err(|_| CudaError::Shape("shared memory size".into()))?;
    let partials = plan
        .splits
        .checked_mul(m)
        .and_then(|x| x.checked_mul(w.n_pad))
        .ok_or_else(|| CudaError::Shape("split-K partials overflow".into()))?;
    Ok(WgmmaCall {
        plan,
        variant: v,
        smem,
        partials,
        tickets: plan.n_tiles * plan.m_blocks,
    })
}

/// Load the kernel of `call` and size the workspace's split-K scratch.
pub(super) fn prepare(dev: &CudaDevice, call: &WgmmaCall, ws: &mut GemmWorkspace) -> Result<()> {
    if call.plan.splits > 1 {
        ws.reserve(dev, call.partials, call.tickets)?;
    }
    dev.function(MODULE, SOURCE, call.plan.kernel, call.smem)?;
    Ok(())
}

/// Enqueue the kernel (no allocation, no module load: `prepare` did both).
pub(super) fn launch(
    dev: &CudaDevice,
    a: &CudaView<'_, f16>,
    m: usize,
    w: &Int4Weight,
    c: &mut CudaViewMut<'_, f16>,
    ws: &mut GemmWorkspace,
    call: &WgmmaCall,
) -> Result<()> {
    let p = call.plan;
    let grid = launch_grid(p.m_blocks, p.n_tiles, p.splits)?;
    ws.check_split_k(p.splits, call.partials, call.tickets, (m, w.n), "prepare")?;
    let func = dev.function(MODULE, SOURCE, p.kernel, call.smem)?;
    let (m_i32, n_i32, k_i32) = (to_i32("M", m)?, to_i32("N", w.n)?, to_i32("K", w.k)?);
    let (n_pad_i32, k_chunks_i32, group_k32_i32, splits_i32) = (
        to_i32("n_pad", w.n_pad)?,
        to_i32("k_chunks", w.k_chunks)?,
        to_i32("group_k32", w.group_k32)?,
        to_i32("splits", p.splits)?,
    );
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (call.variant.threads() as u32, 1, 1),
        shared_mem_bytes: call.smem,
    };
    // Programmatic dependent launch (ops::launch, decode step): every
    // W4A16_WGMMA_ENTRY begins with w4g_pdl_enter.
    let mut launch = KernelLaunch::new(dev, &func, p.kernel);
    arg_operands(&mut launch, a, w, c, (&ws.partials, &ws.tickets))
        .arg(&m_i32)
        .arg(&n_i32)
        .arg(&k_i32)
        .arg(&n_pad_i32)
        .arg(&k_chunks_i32)
        .arg(&group_k32_i32)
        .arg(&splits_i32);
    // SAFETY: argument types and order match W4A16_WGMMA_ENTRY in
    // kernels/w4a16_wgmma.cu; the caller checked A >= M*K and C >= M*N;
    // partials >= splits*M*n_pad and tickets >= blocks were checked above;
    // the packed buffers cover n_pad x k_chunks (the repack); the kernel
    // waits on its predecessor first (w4g_pdl_enter).
    unsafe { launch.launch_pdl(cfg) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{choose_splits, wgmma_variant};

    /// Every variant fits the sm_90 opt-in limit (227 KiB per block) and
    /// its promised resident blocks fit 228 KiB per SM (1 KiB reserved per
    /// block, plus the kernel's static 128 bytes).
    #[test]
    fn variants_fit_shared_memory() {
        for (m, k) in [17, 32, 33, 64, 65, 128, 1024]
            .into_iter()
            .flat_map(|m| [(m, 4096), (m, 8192)])
        {
            let v = wgmma_variant(m, k);
            assert!(v.tokens >= m.min(128), "{v:?}");
            for z in [false, true] {
                let per_block = v.smem_bytes(z) + 1024 + 128;
                assert!(v.smem_bytes(z) <= 227 * 1024, "{v:?}");
                assert!(v.blocks_per_sm * per_block <= 228 * 1024, "{v:?} z={z}");
            }
        }
    }

    /// Few blocks (4096x4096 at M = 64: 32 blocks) split up to one round
    /// of resident blocks; a full machine is not split.
    #[test]
    fn splits_fill_the_machine() {
        // M = 32 at K = 4096: partials allow 8 splits.
        assert_eq!(choose_splits(32, 264, 64, 32), 8);
        // M = 64: at most 4 (partials); 2 fill the slots for 112 blocks.
        assert_eq!(choose_splits(32, 264, 64, 64), 4);
        assert_eq!(choose_splits(112, 264, 64, 64), 2);
        assert_eq!(choose_splits(256, 132, 64, 128), 1);
        assert_eq!(choose_splits(32, 264, 4, 32), 1);
        // Large M does not split (the partials would outweigh the weights).
        assert_eq!(choose_splits(32, 132, 224, 1024), 1);
    }
}
