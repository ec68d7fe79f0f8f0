//! Hopper bulk-copy decode path of the INT4 GEMM (M <= 8):
//! `kernels/w4a16_bulk.cu`. One block per (64-column tile, K split); a
//! producer thread streams the tile's contiguous K run of packed codes with
//! TMA 1-D bulk copies (`cp.async.bulk` + mbarrier byte counts) into a ring
//! of [`BULK_STAGES`] x [`BULK_CHUNKS_PER_STAGE`] x 2 KiB, so that a block
//! keeps up to 64 KiB in flight (the cp.async decode kernel: 16 B per lane
//! and stage). Consumers dequantise and multiply as `w4a16_dec_m8`
//! (symmetric weights, groups >= 64, scales applied to fp32 group sums).
//!
//! Opt-in only (`GemmPath::Bulk`): on an H100 it measured 1.1-1.6x slower
//! than the cp.async decode kernel at M = 1..8 on the benchmark shapes (at
//! best equal: 28672x8192, M = 1, one split; docs/CUDA.md, change 24), so
//! `GemmPath::Auto` never takes it.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::f16;

use super::gemm::{launch_grid, GemmPath, GemmPlan, GemmWorkspace, Int4Weight};
use super::pack::N_TILE;
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};
use crate::ops::to_i32;

pub(super) const MODULE: &str = "w4a16_bulk";
pub(super) const SOURCE: &str = include_str!("../kernels/w4a16_bulk.cu");
const KERNEL: &str = "w4a16_bulk_m8";
/// Largest M of the bulk kernel (one token tile of 8).
pub const BULK_MAX_M: usize = 8;
/// Ring depth and chunks of 64 (2 KiB per 64-column tile) per stage; keep
/// in sync with BULK_STAGES / BULK_CPS in the source.
pub const BULK_STAGES: usize = 8;
pub const BULK_CHUNKS_PER_STAGE: usize = 4;
/// Consumer warps per column block (BULK_KW) plus the producer warp.
const BULK_THREADS: u32 = 32 * (4 * 2 + 1);
/// Chunks of 64 along K each split gets at least.
const MIN_CHUNKS_PER_SPLIT: usize = 8;
/// Shared memory budget of automatic plans: K is split further until a
/// block's ring, scale rows and activation tile fit, so that two blocks
/// stay resident per SM (2 x (108 KiB + 3 KiB static and reserved)).
const BULK_AUTO_SMEM: usize = 108 * 1024;
/// Dynamic shared memory attribute of the kernel (sm_90 allows 227 KiB);
/// forced split factors needing more are refused.
const BULK_SMEM_LIMIT: usize = 200 * 1024;
const _: () = assert!(BULK_SMEM_LIMIT <= 227 * 1024);

/// Bytes of the bulk-copy ring.
fn ring_bytes() -> usize {
    BULK_STAGES * BULK_CHUNKS_PER_STAGE * 2048
}

/// Dynamic shared memory of one block for M rows (keep in sync with the
/// kernel): the ring, the split's scale rows (32 u32 each), the activation
/// tile (min(M, 8) rows of ceil(k_chunks / splits) * 64 + 8 halves) and 64
/// zero halves.
pub fn bulk_smem_bytes(m: usize, k_chunks: usize, splits: usize, group_k32: usize) -> usize {
    let cps = k_chunks.div_ceil(splits.max(1));
    let scale_rows = (2 * cps.max(1) - 1) / group_k32.max(1) + 2;
    ring_bytes() + scale_rows * 128 + m.min(BULK_MAX_M) * (cps * 64 + 8) * 2 + 128
}

/// Whether the device runs the bulk kernel (cp.async.bulk and mbarrier
/// transaction counts: compute capability 9.0 and up).
pub fn bulk_supported(dev: &CudaDevice) -> bool {
    dev.compute_capability().0 >= 9
}

/// Whether a weight can take the bulk path: symmetric codes with groups of
/// >= 64 (scales folded into the fp32 group sums).
pub fn bulk_weight_ok(w: &Int4Weight) -> bool {
    w.neg_zero_scales.is_none() && w.group_k32 >= 2
}

/// Split-K factor, from the H100 sweep at M = 1 (docs/CUDA.md, change
/// 24): one split per tile as soon as the tiles give half a block per SM
/// (6144x4096: 13.1 us at 1 split, 13.5 at 4; 14336x4096: 18.9 at 1, 24.1
/// at 4; 28672x8192: 54.4 at 1, 60.6 at 2: every extra split costs a
/// block's prologue and the partials more than its balance gains); fewer
/// tiles take about two blocks per SM, a power of two of splits (4096x4096:
/// 11.1 us at 4, 12.0 at 2, 13.7 at 8), each >= 8 chunks.
fn choose_splits(tiles: usize, k_chunks: usize, sm_count: usize) -> usize {
    let max_splits = (k_chunks / MIN_CHUNKS_PER_SPLIT).max(1);
    if 2 * tiles >= sm_count {
        return 1;
    }
    ((2 * sm_count) / tiles.max(1))
        .max(1)
        .next_power_of_two()
        .min(max_splits)
}

/// [`choose_splits`], raised until a block fits [`BULK_AUTO_SMEM`].
fn auto_splits(
    m: usize,
    n_tiles: usize,
    k_chunks: usize,
    group_k32: usize,
    sm_count: usize,
) -> usize {
    let mut splits = choose_splits(n_tiles, k_chunks, sm_count);
    while splits < k_chunks && bulk_smem_bytes(m, k_chunks, splits, group_k32) > BULK_AUTO_SMEM {
        splits += 1;
    }
    splits
}

/// Launch shape of the bulk path for M rows: `n_tiles` 64-column tiles x
/// `splits` (automatic: each block within [`BULK_AUTO_SMEM`]).
pub fn bulk_plan(m: usize, w: &Int4Weight, sm_count: usize, splits: Option<usize>) -> GemmPlan {
    let n_tiles = w.n_pad / N_TILE;
    let max_splits = w.k_chunks.max(1);
    let splits = splits
        .unwrap_or_else(|| auto_splits(m, n_tiles, w.k_chunks, w.group_k32, sm_count))
        .clamp(1, max_splits);
    GemmPlan {
        path: GemmPath::Bulk,
        kernel: KERNEL,
        m_tiles: 1,
        m_blocks: 1,
        n_tiles,
        splits,
    }
}

/// A resolved bulk call: plan and scratch sizes.
pub(super) struct BulkCall {
    pub plan: GemmPlan,
    /// Dynamic shared memory of the launch.
    pub smem: u32,
    /// fp32 partials (splits x M x n_pad) and tickets (tiles) it needs.
    pub partials: usize,
    pub tickets: usize,
}

pub(super) fn resolve(
    dev: &CudaDevice,
    m: usize,
    w: &Int4Weight,
    splits: Option<usize>,
) -> Result<BulkCall> {
    if !bulk_supported(dev) {
        let (major, minor) = dev.compute_capability();
        return Err(CudaError::Unsupported(format!(
            "the bulk-copy INT4 GEMM needs compute capability 9.0+ (TMA bulk copies), device has {major}.{minor}"
        )));
    }
    if m > BULK_MAX_M {
        return Err(CudaError::Unsupported(format!(
            "the bulk-copy INT4 GEMM takes M <= {BULK_MAX_M}, got M = {m}"
        )));
    }
    if !bulk_weight_ok(w) {
        return Err(CudaError::Unsupported(format!(
            "the bulk-copy INT4 GEMM needs symmetric codes with groups >= 64, got group size {}{}",
            32 * w.group_k32,
            if w.neg_zero_scales.is_some() {
                " with zero points"
            } else {
                ""
            }
        )));
    }
    let plan = bulk_plan(m, w, dev.sm_count(), splits);
    let smem = bulk_smem_bytes(m, w.k_chunks, plan.splits, w.group_k32);
    if smem > BULK_SMEM_LIMIT {
        return Err(CudaError::Unsupported(format!(
            "the bulk-copy INT4 GEMM with {} splits of K = {} at M = {m} needs {smem} bytes of shared memory (limit {BULK_SMEM_LIMIT})",
            plan.splits, w.k
        )));
    }
    let partials = plan
        .splits
        .checked_mul(m)
        .and_then(|x| x.checked_mul(w.n_pad))
        .ok_or_else(|| CudaError::Shape("split-K partials overflow".into()))?;
    Ok(BulkCall {
        plan,
        smem: smem as u32,
        partials,
        tickets: plan.n_tiles,
    })
}

/// Load the kernel and size the workspace's split-K scratch.
pub(super) fn prepare(dev: &CudaDevice, call: &BulkCall, ws: &mut GemmWorkspace) -> Result<()> {
    if call.plan.splits > 1 {
        ws.reserve(dev, call.partials, call.tickets)?;
    }
    // The attribute is set once per function: the limit every launch
    // stays below.
    dev.function(MODULE, SOURCE, KERNEL, BULK_SMEM_LIMIT as u32)?;
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
    call: &BulkCall,
) -> Result<()> {
    let p = call.plan;
    let grid = launch_grid(p.n_tiles, p.splits, 1)?;
    ws.check_split_k(p.splits, call.partials, call.tickets, (m, w.n), "prepare")?;
    let smem = call.smem;
    let func = dev.function(MODULE, SOURCE, KERNEL, BULK_SMEM_LIMIT as u32)?;
    let (m_i32, n_i32, k_i32) = (to_i32("M", m)?, to_i32("N", w.n)?, to_i32("K", w.k)?);
    let (n_pad_i32, k_chunks_i32, group_k32_i32, splits_i32) = (
        to_i32("n_pad", w.n_pad)?,
        to_i32("k_chunks", w.k_chunks)?,
        to_i32("group_k32", w.group_k32)?,
        to_i32("splits", p.splits)?,
    );
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (BULK_THREADS, 1, 1),
        shared_mem_bytes: smem,
    };
    let stream = dev.stream();
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(a)
        .arg(&w.words)
        .arg(&w.scales)
        .arg(c)
        .arg(&mut ws.partials)
        .arg(&mut ws.tickets)
        .arg(&m_i32)
        .arg(&n_i32)
        .arg(&k_i32)
        .arg(&n_pad_i32)
        .arg(&k_chunks_i32)
        .arg(&group_k32_i32)
        .arg(&splits_i32);
    // SAFETY: argument types and order match w4a16_bulk_m8 in
    // kernels/w4a16_bulk.cu; the caller checked A >= M*K and C >= M*N;
    // partials >= splits*M*n_pad and tickets >= n_tiles were checked above;
    // the packed codes cover n_pad/64 tiles x k_chunks x 2 KiB (the repack),
    // which bounds every bulk copy.
    unsafe { launch.launch(cfg) }.map_err(|e| driver_err(&format!("launch {KERNEL}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{auto_splits, bulk_smem_bytes, choose_splits};

    /// Automatic plans keep two blocks per SM (228 KiB, 1 KiB reserved per
    /// block plus the kernel's static barriers and reduction buffer).
    #[test]
    fn plans_fit_shared_memory() {
        for m in 1..=8 {
            for (k_chunks, group_k32) in
                [(64, 4), (128, 4), (224, 4), (256, 2), (16, 32), (224, 448)]
            {
                let splits = auto_splits(m, 64, k_chunks, group_k32, 132);
                let smem = bulk_smem_bytes(m, k_chunks, splits, group_k32);
                assert!(
                    2 * (smem + 1024 + 2048) <= 228 * 1024,
                    "M={m} {k_chunks} {smem}"
                );
            }
        }
    }

    /// Split factors of the benchmark shapes on 132 SMs: the measured best
    /// at M = 1, every SM gets work, each split >= 8 chunks.
    #[test]
    fn splits_fill_the_machine() {
        for (n, k) in [
            (4096, 4096),
            (6144, 4096),
            (14336, 4096),
            (4096, 14336),
            (28672, 4096),
            (28672, 8192),
            (64, 128),
        ] {
            let (tiles, kc) = (n / 64, k / 64);
            let s = choose_splits(tiles, kc, 132);
            assert!(s >= 1 && (s == 1 || kc / s >= 8), "{n}x{k}: {s}");
            if kc >= 8 * 4 {
                assert!(2 * tiles * s >= 132, "{n}x{k}: {s} splits leave SMs idle");
            }
        }
        assert_eq!(choose_splits(64, 64, 132), 4);
        assert_eq!(choose_splits(96, 64, 132), 1);
        assert_eq!(choose_splits(448, 128, 132), 1);
        assert_eq!(choose_splits(1, 16, 132), 2);
    }
}
