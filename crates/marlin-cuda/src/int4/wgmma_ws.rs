//! Hopper (sm_90a) warp-specialised INT4 GEMM for large M:
//! `kernels/w4a16_wgmma_ws.cu`. Two launches per call:
//!
//! 1. `w4a16_ws_stage_t<TOK>` writes A once into the workspace's staged
//!    activation image (M blocks of TOK tokens x K chunks x TOK rows of
//!    128 bytes): the pack's K order inside each 64-chunk and wgmma's
//!    128-byte swizzle, zeros past M and K. So the main kernel moves a
//!    whole activation tile with one bulk copy, and K may be odd.
//! 2. `w4a16_ws_t<TOK>x<TPW>`: a producer warpgroup (one thread issuing
//!    `cp.async.bulk` copies into an mbarrier ring) and two consumer
//!    warpgroups that dequantise the packed codes (the weights of
//!    [`super::pack`], unchanged) into wgmma's register A operand and
//!    multiply them with the shared-memory activation tile
//!    (`wgmma.mma_async m64n<TOK>k16`, tokens = wgmma's N). Block =
//!    2 x TPW 64-column tiles x TOK tokens; split-K over `gridDim.z` with
//!    the deterministic last-block reduction of the other INT4 kernels.
//!    Or the stream-K form `w4a16_wsk_*` (session 5): one block per SM,
//!    each a contiguous range of the (tile, 64-chunk) units, partial tiles
//!    summed in block order by the last contributor (`ws_stream_k` picks
//!    the form).
//!
//! Both launches use programmatic dependent launch: the staging kernel
//! waits for its predecessor, the main kernel's producer streams its first
//! ring of weights before waiting for the staging kernel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use cudarc::driver::{CudaFunction, CudaSlice, CudaView, CudaViewMut, LaunchConfig};

use super::gemm::{arg_operands, launch_grid, GemmPath, GemmPlan, GemmWorkspace, Int4Weight};
use super::pack::{K_CHUNK, N_TILE};
use crate::act::{Act, ActDtype};
use crate::device::CudaDevice;
use crate::error::{CudaError, Result};
use crate::knobs;
use crate::ops::launch::{max_active_clusters, KernelLaunch};
use crate::ops::to_i32;

pub(super) const MODULE: &str = "w4a16_wgmma_ws";
pub(super) const SOURCE: &str = include_str!("../kernels/w4a16_wgmma_ws.cu");
/// Module of the diagnostic entries: the same source with `WS_DIAG_ENTRIES`
/// defined, which compiles only the probes (`_pd`, `_pc`,
/// `MARLIN_WGMMA_WS_PROBE`) and session 6's epilogue (`_e0`,
/// `MARLIN_WGMMA_WS_OLD_EPILOGUE=1`); compiled and loaded only when one of
/// them is selected, so that a cold kernel cache pays for the production
/// entries alone.
const DIAG_MODULE: &str = "w4a16_wgmma_ws_diag";
const DIAG_SOURCE: &str = concat!(
    "#define WS_DIAG_ENTRIES 1\n",
    include_str!("../kernels/w4a16_wgmma_ws.cu")
);
/// The entries built into [`DIAG_MODULE`] only (`#ifdef WS_DIAG_ENTRIES`
/// in the source).
const DIAG_KERNELS: [&str; 24] = [
    "w4a16_ws_t128x1_pd",
    "w4a16_ws_t128x2_pd",
    "w4a16_ws_t128x1_pc",
    "w4a16_ws_t128x2_pc",
    "w4a16_ws_t64x1_e0",
    "w4a16_ws_t64x2_e0",
    "w4a16_ws_t128x1_e0",
    "w4a16_ws_t128x2_e0",
    "w4a16_ws_t128x2_ps",
    "w4a16_ws_t128x2_pr",
    "w4a16_ws_t128x2_pcs",
    "w4a16_ws_t128x2_pcr",
    "w4a16_ws_t16x2_pd",
    "w4a16_ws_t16x2_pc",
    "w4a16_ws_t16x2_ps",
    "w4a16_ws_t16x2_pr",
    "w4a16_ws_t16x2_pcs",
    "w4a16_ws_t16x2_pcr",
    "w4a16_ws_t16x4_pd",
    "w4a16_ws_t16x4_pc",
    "w4a16_ws_t16x4_ps",
    "w4a16_ws_t16x4_pr",
    "w4a16_ws_t16x4_pcs",
    "w4a16_ws_t16x4_pcr",
];

/// The production entries (and staging kernels) with bf16 activations
/// (crate::act).
const BF16_MODULE: &str = "w4a16_wgmma_ws_bf16";
const BF16_SOURCE: &str = concat!(
    "#define MARLIN_ACT_BF16 1\n",
    include_str!("../kernels/w4a16_wgmma_ws.cu")
);

/// Module name and source that hold entry `kernel` for activation type
/// `act` (the staging kernels are in the production modules; the
/// diagnostic entries are f16 only: `resolve` refuses them for bf16).
fn module_of(kernel: &str, act: Act) -> (&'static str, &'static str) {
    match act {
        Act::Bf16 => (BF16_MODULE, BF16_SOURCE),
        Act::F16 if DIAG_KERNELS.contains(&kernel) => (DIAG_MODULE, DIAG_SOURCE),
        Act::F16 => (MODULE, SOURCE),
    }
}

/// Threads of the main kernel: producer + 2 consumer warpgroups.
const THREADS: u32 = 384;
/// Threads per block of the staging kernel.
const STAGE_THREADS: u32 = 256;
/// Chunks of 64 along K each split gets at least.
const MIN_CHUNKS_PER_SPLIT: usize = 8;
/// Dynamic shared memory the kernel may use (sm_90 opt-in limit, 227 KiB).
const SMEM_LIMIT: usize = 227 * 1024;

/// One compiled variant (`W4A16_WS_ENTRY` in the source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsVariant {
    /// Tokens per block (wgmma N): 64 or 128.
    pub tokens: usize,
    /// 64-column tiles per consumer warpgroup: 1 or 2 (block = 2x that).
    pub tiles_per_wg: usize,
    /// Ring depth (chunks in flight).
    pub stages: usize,
}

/// Every variant the source instantiates, (tokens, tiles per warpgroup,
/// stages); keep in sync with `W4A16_WS_ENTRY`.
pub(crate) const VARIANTS: [WsVariant; 4] = [
    variant(64, 1, 12),
    variant(64, 2, 10),
    variant(128, 1, 8),
    variant(128, 2, 8),
];

/// The small-token variants (change 71; split-K form, INT4 only): wgmma
/// m64n16k16 / m64n32k16 for M <= 32, so that a small M multiplies no
/// 64-token tile of zero rows and the ring carries 2 / 4 KiB of
/// activations per chunk instead of 8. Keep in sync with the source.
pub(crate) const SMALL_VARIANTS: [WsVariant; 3] =
    [variant(16, 2, 16), variant(16, 4, 10), variant(32, 4, 9)];

const fn variant(tokens: usize, tiles_per_wg: usize, stages: usize) -> WsVariant {
    WsVariant {
        tokens,
        tiles_per_wg,
        stages,
    }
}

impl WsVariant {
    /// One of [`SMALL_VARIANTS`] (fewer than 64 tokens per block).
    pub fn is_small(&self) -> bool {
        self.tokens < 64
    }

    /// 64-column tiles per block.
    pub fn tiles(&self) -> usize {
        2 * self.tiles_per_wg
    }

    /// Weight columns per block.
    pub fn n_block(&self) -> usize {
        N_TILE * self.tiles()
    }

    /// Dynamic shared memory: 1024 bytes of alignment slack, then per stage
    /// the activation tile (tokens x 128 B), the codes (2 KiB per tile) and
    /// two scale rows (128 B per tile each), and as much again for the zero
    /// points.
    pub fn smem_bytes(&self, has_zeros: bool) -> usize {
        let rows = 2 * 128 * self.tiles() * if has_zeros { 2 } else { 1 };
        1024 + self.stages * (128 * self.tokens + 2048 * self.tiles() + rows)
    }

    /// Name as in the source and `MARLIN_WGMMA_WS_VARIANT`:
    /// `t<tokens>x<tiles per warpgroup>`.
    pub fn name(&self) -> String {
        format!("t{}x{}", self.tokens, self.tiles_per_wg)
    }

    fn kernel(&self, has_zeros: bool) -> &'static str {
        if let Some(probe) = ws_probe() {
            if !has_zeros && self.tokens == 16 {
                // Change 72: every probe at 16 tokens too.
                let x4 = self.tiles_per_wg == 4;
                return match (x4, probe) {
                    (false, WsProbe::Deliver) => "w4a16_ws_t16x2_pd",
                    (false, WsProbe::Compute) => "w4a16_ws_t16x2_pc",
                    (false, WsProbe::Ss) => "w4a16_ws_t16x2_ps",
                    (false, WsProbe::Raw) => "w4a16_ws_t16x2_pr",
                    (false, WsProbe::ComputeSs) => "w4a16_ws_t16x2_pcs",
                    (false, WsProbe::ComputeRaw) => "w4a16_ws_t16x2_pcr",
                    (true, WsProbe::Deliver) => "w4a16_ws_t16x4_pd",
                    (true, WsProbe::Compute) => "w4a16_ws_t16x4_pc",
                    (true, WsProbe::Ss) => "w4a16_ws_t16x4_ps",
                    (true, WsProbe::Raw) => "w4a16_ws_t16x4_pr",
                    (true, WsProbe::ComputeSs) => "w4a16_ws_t16x4_pcs",
                    (true, WsProbe::ComputeRaw) => "w4a16_ws_t16x4_pcr",
                };
            }
            if !has_zeros && self.tokens == 128 {
                let entry = match (self.tiles_per_wg, probe) {
                    (1, WsProbe::Deliver) => Some("w4a16_ws_t128x1_pd"),
                    (1, WsProbe::Compute) => Some("w4a16_ws_t128x1_pc"),
                    // The ceiling probes exist for t128x2 only.
                    (1, _) => None,
                    (_, WsProbe::Deliver) => Some("w4a16_ws_t128x2_pd"),
                    (_, WsProbe::Compute) => Some("w4a16_ws_t128x2_pc"),
                    (_, WsProbe::Ss) => Some("w4a16_ws_t128x2_ps"),
                    (_, WsProbe::Raw) => Some("w4a16_ws_t128x2_pr"),
                    (_, WsProbe::ComputeSs) => Some("w4a16_ws_t128x2_pcs"),
                    (_, WsProbe::ComputeRaw) => Some("w4a16_ws_t128x2_pcr"),
                };
                if let Some(entry) = entry {
                    return entry;
                }
            }
        }
        if !has_zeros && old_epilogue() {
            return match (self.tokens, self.tiles_per_wg) {
                (64, 1) => "w4a16_ws_t64x1_e0",
                (64, _) => "w4a16_ws_t64x2_e0",
                (_, 1) => "w4a16_ws_t128x1_e0",
                (_, _) => "w4a16_ws_t128x2_e0",
            };
        }
        match (self.tokens, self.tiles_per_wg, has_zeros) {
            (16, 2, false) => "w4a16_ws_t16x2",
            (16, 2, true) => "w4a16_ws_t16x2z",
            (16, _, false) => "w4a16_ws_t16x4",
            (16, _, true) => "w4a16_ws_t16x4z",
            (32, _, false) => "w4a16_ws_t32x4",
            (32, _, true) => "w4a16_ws_t32x4z",
            (64, 1, false) => "w4a16_ws_t64x1",
            (64, 1, true) => "w4a16_ws_t64x1z",
            (64, _, false) => "w4a16_ws_t64x2",
            (64, _, true) => "w4a16_ws_t64x2z",
            (_, 1, false) => "w4a16_ws_t128x1",
            (_, 1, true) => "w4a16_ws_t128x1z",
            (_, _, false) => "w4a16_ws_t128x2",
            (_, _, true) => "w4a16_ws_t128x2z",
        }
    }

    fn stream_k_kernel(&self, has_zeros: bool) -> &'static str {
        match (self.tokens, self.tiles_per_wg, has_zeros) {
            (64, 1, false) => "w4a16_wsk_t64x1",
            (64, 1, true) => "w4a16_wsk_t64x1z",
            (64, _, false) => "w4a16_wsk_t64x2",
            (64, _, true) => "w4a16_wsk_t64x2z",
            (_, 1, false) => "w4a16_wsk_t128x1",
            (_, 1, true) => "w4a16_wsk_t128x1z",
            (_, _, false) => "w4a16_wsk_t128x2",
            (_, _, true) => "w4a16_wsk_t128x2z",
        }
    }

    pub(crate) fn stage_kernel(&self) -> &'static str {
        match self.tokens {
            16 => "w4a16_ws_stage_t16",
            32 => "w4a16_ws_stage_t32",
            64 => "w4a16_ws_stage_t64",
            _ => "w4a16_ws_stage_t128",
        }
    }
}

/// Measurement knob: `MARLIN_WGMMA_WS_OLD_EPILOGUE=1` runs the split-K
/// form (symmetric weights) with session 6's epilogue (`_e0` entries,
/// byte-identical SASS to that session's kernels: 2-byte stores straight
/// from the accumulators, partials (splits, M, n_pad)) instead of the
/// shared-memory one, for same-run comparisons (docs/CUDA.md change 39).
fn old_epilogue() -> bool {
    static ON: knobs::Switch = knobs::Switch::new("MARLIN_WGMMA_WS_OLD_EPILOGUE", false);
    ON.get()
}

/// Diagnostic probe of the split-K form's 128- and 16-token variants
/// (symmetric weights, two-step dequantisation): `MARLIN_WGMMA_WS_PROBE=deliver` runs kernels whose consumers
/// only wait for each chunk and hand its slot back (the ring's delivery
/// rate), `=compute` kernels whose producer copies only the first ring and
/// then re-arms each slot without a copy (dequantisation + wgmma on stale
/// tiles). The output is meaningless (docs/CUDA.md change 39); the first
/// read says so on stderr. Change 47's ceiling probes (t128x2, and t16x2 /
/// t16x4 since change 72; other variants run their production kernel under
/// them): `=ss` the consumers skip the dequantisation and run
/// shared-memory-A wgmma on the activation tile (an fp16 GEMM's consumer on
/// this skeleton; at 16 tokens A is the slot's code region), `=raw` register-A wgmma
/// on the raw code words (no dequantisation arithmetic), `=compute-ss` /
/// `=compute-raw` those two with `compute`'s producer (no copies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WsProbe {
    Deliver,
    Compute,
    Ss,
    Raw,
    ComputeSs,
    ComputeRaw,
}

fn ws_probe() -> Option<WsProbe> {
    static PROBE: OnceLock<Option<WsProbe>> = OnceLock::new();
    *PROBE.get_or_init(|| {
        let raw = std::env::var("MARLIN_WGMMA_WS_PROBE").ok()?;
        let probe = match raw.trim() {
            "" => return None,
            "deliver" => WsProbe::Deliver,
            "compute" => WsProbe::Compute,
            "ss" => WsProbe::Ss,
            "raw" => WsProbe::Raw,
            "compute-ss" => WsProbe::ComputeSs,
            "compute-raw" => WsProbe::ComputeRaw,
            other => {
                eprintln!(
                    "marlin: ignoring MARLIN_WGMMA_WS_PROBE={other:?} (expected deliver, compute, \
                     ss, raw, compute-ss or compute-raw)"
                );
                return None;
            }
        };
        eprintln!(
            "marlin: MARLIN_WGMMA_WS_PROBE={}: DIAGNOSTIC, NOT A RESULT (the warp-specialised \
             INT4 kernel's 128- and 16-token split-K variants return meaningless output)",
            raw.trim()
        );
        Some(probe)
    })
}

/// Tuning switch: `MARLIN_WGMMA_WS_VARIANT=t128x2` (any [`WsVariant::name`]
/// of the compiled variants) forces a variant at every shape (the `wgemm`
/// formats' entries too); unset, [`ws_variant`] decides.
pub(crate) fn variant_override() -> Option<WsVariant> {
    let name = std::env::var("MARLIN_WGMMA_WS_VARIANT").ok()?;
    VARIANTS
        .into_iter()
        .chain(SMALL_VARIANTS)
        .find(|v| v.name() == name)
}

/// Time of one 64-chunk of one block, microseconds: a fixed part and the
/// tensor work (tokens x columns; 0.54 us for 128 x 256). Fitted to the
/// first H100 run at M = 1024 (docs/CUDA.md change 26): t128x2 0.91 us per
/// chunk, t128x1 0.63, t64x2 0.65.
fn chunk_us(v: WsVariant) -> f64 {
    if v.is_small() {
        // Measured per chunk, not tensor work (change 71).
        return one_round_fit(v).chunk_us;
    }
    const FIXED_US: f64 = 0.37;
    const US_PER_128X256: f64 = 0.54;
    FIXED_US + US_PER_128X256 * (v.tokens * v.n_block()) as f64 / (128.0 * 256.0)
}

/// Split-K factor for `blocks` blocks (one resident per SM): a grid of
/// at least one round is not split (first H100 run: 7 splits at 28672x8192
/// M = 256, 1568 blocks in 12 rounds and 205 MB of partials, took 466 us
/// where the unsplit grid's 2 rounds predict ~240); a smaller grid takes
/// the most splits that still fit one round, each split >= 8 chunks and
/// the fp32 partials (8 * splits * M bytes per column, written and read)
/// at most 2 K bytes per column, i.e. 4x the weight's own bytes (session
/// 5: the former cap of K / 2 left 4096x4096 at M = 256 with 32 blocks for
/// 132 SMs, 41.5 us against cuBLAS's 19.8).
fn choose_splits(blocks: usize, sm_count: usize, k_chunks: usize, m: usize) -> usize {
    let sms = sm_count.max(1);
    if blocks >= sms {
        return 1;
    }
    let by_partials = (2 * K_CHUNK).saturating_mul(k_chunks) / 8usize.saturating_mul(m.max(1));
    let by_round = sms / blocks.max(1);
    (k_chunks / MIN_CHUNKS_PER_SPLIT)
        .min(by_partials)
        .min(by_round)
        .max(1)
}

/// The cost model of a part-filled machine (grids of at most one round),
/// fitted (least squares, 7% rms error) to one H100 call that timed every
/// variant x 1 / 2 / 3 / 4 / 6 / 8 splits at 4096x4096, 6144x4096,
/// 14336x4096 and 4096x14336, M = 128 / 256 / 512 (session 14, docs/CUDA.md
/// change 67 (f)): per 64-chunk of one block, per block (fill, epilogue),
/// per MB of fp32 tiles one block reads back in the split-K reduction (the
/// ticket's last block: every split's tile; the cluster's blocks: their
/// share of each), and the ticket's own term.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OneRoundFit {
    pub chunk_us: f64,
    pub fixed_us: f64,
    /// Per MB of fp32 tiles one block reads back in the reduction.
    pub reduce_us_per_mb: f64,
    /// The ticket reduction's own term.
    pub ticket_fixed_us: f64,
}

pub(crate) fn one_round_fit(v: WsVariant) -> OneRoundFit {
    let (chunk_us, fixed_us) = match (v.tokens, v.tiles_per_wg) {
        // Change 71 (H100, forced with 1..4 splits on 28672x8192,
        // 28672x4096 and 14336x4096 at M = 8..32, the warp-wide producer):
        // per chunk t16x2 0.53 us, t16x4 0.74, t32x4 0.78 (the consumers'
        // wgmma count per chunk sets it more than the tokens do).
        (16, 2) => (0.53, 3.1),
        (16, _) => (0.74, 8.0),
        (32, _) => (0.78, 11.0),
        (64, 1) => (0.562, 0.84),
        (64, _) => (0.607, 7.2),
        (_, 1) => (0.583, 5.6),
        (_, _) => (0.678, 9.9),
    };
    OneRoundFit {
        chunk_us,
        fixed_us,
        reduce_us_per_mb: 22.7,
        ticket_fixed_us: -2.7,
    }
}
/// Most splits of the cluster reduction: the portable cluster size. (A
/// split past the tile's 16-row pairs below M sums and stores nothing.)
const CLUSTER_MAX_SPLITS: usize = 8;

/// How many thread-block clusters of each size (index 2..=8) of this
/// kernel's one-block-per-SM blocks the device holds at once: a plan
/// reduces through clusters only where all of its clusters fit one wave
/// (clusters that do not all fit run in waves: docs/CUDA.md change 46).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterFit(pub [usize; CLUSTER_MAX_SPLITS + 1]);

impl ClusterFit {
    /// No cluster reduction (devices below sm_90, `MARLIN_WGMMA_WS_CLUSTER=0`).
    pub const NONE: Self = Self([0; CLUSTER_MAX_SPLITS + 1]);

    /// Whether `clusters` clusters of `splits` blocks fit one wave.
    fn holds(&self, splits: usize, clusters: usize) -> bool {
        (2..=CLUSTER_MAX_SPLITS).contains(&splits) && clusters <= self.0[splits]
    }
}

/// The device's [`ClusterFit`] for this kernel ([`ClusterFit::NONE`] where
/// [`cluster_enabled`] is off): `cuOccupancyMaxActiveClusters` of the
/// largest production entry for each cluster size (every variant runs one
/// block per SM), asked once per device and activation type and kept:
/// every call's `resolve` reads it.
pub fn ws_cluster_fit(dev: &CudaDevice, act: Act) -> Result<ClusterFit> {
    if !cluster_enabled() || !ws_supported(dev) {
        return Ok(ClusterFit::NONE);
    }
    static FITS: Mutex<Vec<((usize, Act), ClusterFit)>> = Mutex::new(Vec::new());
    let key = (dev.ordinal(), act);
    let cached =
        |fits: &[((usize, Act), ClusterFit)]| fits.iter().find(|(k, _)| *k == key).map(|&(_, f)| f);
    let lock = || {
        FITS.lock()
            .map_err(|_| CudaError::NotAvailable("cluster fit cache lock poisoned".into()))
    };
    if let Some(fit) = cached(&lock()?) {
        return Ok(fit);
    }
    // The plain t128x2 entry (the largest ring; not `kernel()`, which a
    // diagnostic knob may send to the diagnostic module).
    const KERNEL: &str = "w4a16_ws_t128x2";
    let smem = u32::try_from(VARIANTS[3].smem_bytes(false))
        .map_err(|_| CudaError::Shape("shared memory".into()))?;
    let (module, source) = module_of(KERNEL, act);
    let func = dev.function(module, source, KERNEL, smem)?;
    let mut fit = ClusterFit::NONE;
    for size in 2..=CLUSTER_MAX_SPLITS {
        let s = size as u32;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, s),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        fit.0[size] = max_active_clusters(dev, &func, KERNEL, (1, 1, s), &cfg)?;
    }
    let mut fits = lock()?;
    if cached(&fits).is_none() {
        fits.push((key, fit));
    }
    Ok(fit)
}

/// Estimated time of `v` with `splits` for M rows (microseconds): on a
/// grid of at most one round, [`one_round_fit`]'s per-block and per-chunk
/// times plus the reduction's MB read back by one block; on more rounds,
/// rounds x chunks x [`chunk_us`] (fitted on full machines, M = 1024).
#[allow(clippy::too_many_arguments)]
fn plan_cost_us(
    fit: fn(WsVariant) -> OneRoundFit,
    v: WsVariant,
    m: usize,
    splits: usize,
    blocks: usize,
    k_chunks: usize,
    sm_count: usize,
    cluster: bool,
) -> f64 {
    let splits = splits.max(1);
    let grid = blocks.saturating_mul(splits);
    let rounds = grid.div_ceil(sm_count.max(1));
    let chunks = k_chunks.max(1).div_ceil(splits);
    let fit = fit(v);
    if rounds > 1 {
        return fit.fixed_us + (rounds * chunks) as f64 * chunk_us(v);
    }
    let tile_mb = (4 * v.tokens * v.n_block()) as f64 / 1e6;
    let reduce = match (splits, cluster) {
        (1, _) => 0.0,
        (s, true) => {
            let pairs = m.min(v.tokens).div_ceil(16).max(1);
            let pair_mb = tile_mb * 16.0 / v.tokens as f64;
            (s * pairs.div_ceil(s)) as f64 * pair_mb * fit.reduce_us_per_mb
        }
        (s, false) => s as f64 * tile_mb * fit.reduce_us_per_mb + fit.ticket_fixed_us,
    };
    fit.fixed_us + chunks as f64 * fit.chunk_us + reduce
}

/// The variant, split factor and reduction for M rows of an N = `n_pad`,
/// K = `k_chunks` x 64 weight: the least [`plan_cost_us`] over every
/// variant (64-token ones only at M <= 64, unless forced; with `small`
/// (INT4), the [`SMALL_VARIANTS`] of at least M tokens) and split count
/// up to [`choose_splits`]' (ticket) or, where all the clusters fit one
/// wave ([`ClusterFit`]), up to [`CLUSTER_MAX_SPLITS`] without its
/// partials cap (cluster reduction). `fit`: the one-round times of the
/// weight format ([`one_round_fit`] for INT4; the `wgemm` formats have
/// their own, `crate::wgemm::wgmma_ws`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn ws_variant_for(
    m: usize,
    n_pad: usize,
    k_chunks: usize,
    sm_count: usize,
    clusters: &ClusterFit,
    forced: Option<WsVariant>,
    fit: fn(WsVariant) -> OneRoundFit,
    small: bool,
) -> (WsVariant, usize, bool) {
    let candidates: Vec<WsVariant> = match forced {
        Some(v) => vec![v],
        None if small && m <= 32 && small_variants_enabled() => VARIANTS
            .into_iter()
            .chain(SMALL_VARIANTS.into_iter().filter(|v| m <= v.tokens))
            .collect(),
        None => VARIANTS.to_vec(),
    };
    let mut best: Option<(f64, WsVariant, usize, bool)> = None;
    for v in candidates {
        if forced.is_none() && m <= 64 && v.tokens > 64 {
            continue;
        }
        // Saturating: M comes from the caller (resolve checks the sizes).
        let blocks = m
            .div_ceil(v.tokens)
            .max(1)
            .saturating_mul(n_pad.div_ceil(v.n_block()));
        let ticket_max = choose_splits(blocks, sm_count, k_chunks, m).max(1);
        let cluster_max = choose_splits(blocks, sm_count, k_chunks, 1).min(CLUSTER_MAX_SPLITS);
        for splits in 1..=ticket_max.max(cluster_max) {
            let cluster = splits > 1 && splits <= cluster_max && clusters.holds(splits, blocks);
            if !cluster && splits > ticket_max {
                continue;
            }
            let cost = plan_cost_us(fit, v, m, splits, blocks, k_chunks, sm_count, cluster);
            if best.is_none_or(|(c, ..)| cost < c - 1e-9) {
                best = Some((cost, v, splits, cluster));
            }
        }
    }
    best.map_or((VARIANTS[3], 1, false), |(_, v, s, c)| (v, s, c))
}

/// The variant, split factor and reduction (true: cluster) for M rows
/// ([`ws_variant_for`]).
pub fn ws_variant(
    m: usize,
    w: &Int4Weight,
    sm_count: usize,
    clusters: &ClusterFit,
) -> (WsVariant, usize, bool) {
    ws_variant_for(
        m,
        w.n_pad,
        w.k_chunks,
        sm_count,
        clusters,
        variant_override(),
        one_round_fit,
        true,
    )
}

/// Whether the split-K form may reduce its splits through a thread-block
/// cluster's distributed shared memory (change 67) where the plan's split
/// count allows it and the device holds every cluster at once: on unless
/// `MARLIN_WGMMA_WS_CLUSTER=0` (read once) or this thread's
/// [`set_ws_cluster_override`] says otherwise.
pub fn cluster_enabled() -> bool {
    static ON: knobs::Switch = knobs::Switch::new("MARLIN_WGMMA_WS_CLUSTER", true);
    CLUSTER_OVERRIDE
        .with(|c| c.get())
        .unwrap_or_else(|| ON.get())
}

thread_local! {
    static CLUSTER_OVERRIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Sets this thread's choice of [`cluster_enabled`] (None: the knob), so
/// that a test runs both reductions in one process.
pub fn set_ws_cluster_override(on: Option<bool>) {
    CLUSTER_OVERRIDE.with(|c| c.set(on));
}

/// Split-K launches of this process that reduced through clusters.
static CLUSTER_LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// How many launches of this kernel, on any thread, ran the cluster
/// reduction (lets a test tell that it ran, not the ticket fallback).
pub fn ws_cluster_launches() -> u64 {
    CLUSTER_LAUNCHES.load(Ordering::Relaxed)
}

/// Largest magnitude of an f16 (65504).
const F16_MAX: f64 = 65504.0;
/// Smallest normal f16 magnitude (2^-14).
const F16_MIN_NORMAL: f64 = 1.0 / 16384.0;
/// Shifts the kernel can build its constants for: 2^(12-m) normal and
/// 2^-m at least the smallest subnormal (`ws_f16_pow2`).
const SUBNORMAL_SHIFTS: std::ops::RangeInclusive<i32> = -3..=24;

/// The shift m of the subnormal dequantisation (`_n` entries, f16; docs/
/// CUDA.md change 51) for nonzero scale magnitudes within [min_abs,
/// max_abs]: the smallest m with max_abs * 2^(24-m) <= 65504 (the low
/// nibbles' multiplier, a finite f16), provided min_abs * 2^-m >= 2^-14
/// (every product (u - z) * s * 2^-m with u != z, and the addends, normal
/// f16: rounded exactly as the two-step dequantisation rounds (u - z) * s).
/// None: no such m (scales spread over more than 2^6, or out of the
/// shifts the kernel builds).
pub(super) fn subnormal_shift_for_range(min_abs: f64, max_abs: f64) -> Option<i32> {
    if !(min_abs.is_finite() && max_abs.is_finite()) || min_abs <= 0.0 || max_abs < min_abs {
        return None;
    }
    let m = SUBNORMAL_SHIFTS
        .clone()
        .find(|&m| max_abs * 2f64.powi(24 - m) <= F16_MAX)?;
    (min_abs * 2f64.powi(-m) >= F16_MIN_NORMAL).then_some(m)
}

/// [`subnormal_shift_for_range`] of a packed weight's f16x2 scale words
/// and `-zero*scale` words (zeros are skipped: a zero scale or a zero
/// point of 0 stays exact at any shift); None if any is not finite. All
/// zeros: shift 0.
pub(super) fn subnormal_shift(scales: &[u32], neg_zero_scales: Option<&[u32]>) -> Option<i32> {
    // Magnitudes of finite f16 order as their bit patterns.
    let halves = |words: &'_ [u32]| -> Option<(u16, u16)> {
        let (mut lo, mut hi) = (u16::MAX, 0u16);
        for &w in words {
            for h in [w as u16, (w >> 16) as u16] {
                let mag = h & 0x7FFF;
                if mag >= 0x7C00 {
                    return None;
                }
                if mag != 0 {
                    lo = lo.min(mag);
                    hi = hi.max(mag);
                }
            }
        }
        Some((lo, hi))
    };
    let (s_lo, s_hi) = halves(scales)?;
    let (z_lo, z_hi) = match neg_zero_scales {
        Some(z) => halves(z)?,
        None => (u16::MAX, 0),
    };
    if s_hi == 0 {
        // Every scale zero: the output is zero at any shift.
        return Some(0);
    }
    let value = |bits: u16| f64::from(half::f16::from_bits(bits).to_f32());
    let m = subnormal_shift_for_range(value(s_lo.min(z_lo)), value(s_hi))?;
    // The addends -z*s*2^-m stay finite (at most 15 s: far below).
    (z_hi == 0 || value(z_hi) * 2f64.powi(-m) <= F16_MAX).then_some(m)
}

/// Measurement knob, read at every call: `MARLIN_WGMMA_WS_SMALL=0` keeps
/// the INT4 plans on the 64- / 128-token variants (session 16's choice)
/// where [`ws_variant_for`] would take a [`SMALL_VARIANTS`] one.
fn small_variants_enabled() -> bool {
    std::env::var("MARLIN_WGMMA_WS_SMALL").map_or(true, |v| v.trim() != "0")
}

/// Measurement knob, read at every call: `MARLIN_WGMMA_WS_SUBNORMAL=0`
/// keeps the split-K form on the two-step dequantisation (the entries
/// without `n`) where the subnormal one (change 51) would be taken.
fn subnormal_enabled() -> bool {
    match std::env::var("MARLIN_WGMMA_WS_SUBNORMAL") {
        Ok(v) if v.trim() == "0" => false,
        Ok(v) if v.trim() == "1" || v.trim().is_empty() => true,
        Ok(v) => {
            static WARNED: OnceLock<()> = OnceLock::new();
            WARNED.get_or_init(|| {
                eprintln!("marlin: ignoring MARLIN_WGMMA_WS_SUBNORMAL={v:?} (expected 0 or 1)")
            });
            true
        }
        Err(_) => true,
    }
}

/// The subnormal-dequantisation entry of a production split-K entry.
fn subnormal_entry(kernel: &str) -> Option<&'static str> {
    Some(match kernel {
        "w4a16_ws_t64x1" => "w4a16_ws_t64x1n",
        "w4a16_ws_t64x2" => "w4a16_ws_t64x2n",
        "w4a16_ws_t128x1" => "w4a16_ws_t128x1n",
        "w4a16_ws_t128x2" => "w4a16_ws_t128x2n",
        "w4a16_ws_t64x1z" => "w4a16_ws_t64x1zn",
        "w4a16_ws_t64x2z" => "w4a16_ws_t64x2zn",
        "w4a16_ws_t128x1z" => "w4a16_ws_t128x1zn",
        "w4a16_ws_t128x2z" => "w4a16_ws_t128x2zn",
        "w4a16_ws_t16x2" => "w4a16_ws_t16x2n",
        "w4a16_ws_t16x4" => "w4a16_ws_t16x4n",
        "w4a16_ws_t32x4" => "w4a16_ws_t32x4n",
        "w4a16_ws_t16x2z" => "w4a16_ws_t16x2zn",
        "w4a16_ws_t16x4z" => "w4a16_ws_t16x4zn",
        "w4a16_ws_t32x4z" => "w4a16_ws_t32x4zn",
        _ => return None,
    })
}

/// The cluster-reduction entry of a subnormal split-K entry (change 67:
/// only these carry it, so that the other entries keep their schedule).
fn cluster_entry(kernel: &str) -> Option<&'static str> {
    Some(match kernel {
        "w4a16_ws_t64x1n" => "w4a16_ws_t64x1nc",
        "w4a16_ws_t64x2n" => "w4a16_ws_t64x2nc",
        "w4a16_ws_t128x1n" => "w4a16_ws_t128x1nc",
        "w4a16_ws_t128x2n" => "w4a16_ws_t128x2nc",
        "w4a16_ws_t64x1zn" => "w4a16_ws_t64x1znc",
        "w4a16_ws_t64x2zn" => "w4a16_ws_t64x2znc",
        "w4a16_ws_t128x1zn" => "w4a16_ws_t128x1znc",
        "w4a16_ws_t128x2zn" => "w4a16_ws_t128x2znc",
        _ => return None,
    })
}

/// Test and tuning switch: `MARLIN_WGMMA_WS_STREAMK=1` takes the stream-K
/// form (`w4a16_wsk_*`, persistent grid) and `=0` the split-K form
/// wherever no split factor is forced; unset, [`ws_stream_k`] decides.
fn stream_k_override() -> Option<bool> {
    match std::env::var("MARLIN_WGMMA_WS_STREAMK").as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    }
}

/// Test switch: `MARLIN_WGMMA_WS_SK_BLOCKS=<n>` launches the stream-K form
/// with n blocks (so that tests cover tiles owned by one block as well as
/// tiles shared by several); unset, one block per SM.
fn stream_k_blocks_override() -> Option<usize> {
    std::env::var("MARLIN_WGMMA_WS_SK_BLOCKS")
        .ok()?
        .parse()
        .ok()
        .filter(|&b| b > 0)
}

/// Units (one 64-chunk of one block tile) of the stream-K form of `v`.
fn stream_k_units(m: usize, w: &Int4Weight, v: WsVariant) -> usize {
    m.div_ceil(v.tokens)
        .max(1)
        .saturating_mul(w.n_pad.div_ceil(v.n_block()))
        .saturating_mul(w.k_chunks.max(1))
}

/// Reduction length (in 64-chunks) from which the stream-K form is taken
/// for small grids (see [`ws_stream_k`]).
pub const WS_SK_AUTO_MIN_CHUNKS: usize = 128;
/// Weights of at least this many elements take this kernel at M = 33..=64
/// (and at M = 17..=32 when its 256-column blocks cover a third of the SMs).
pub const WS_LOW_M_AUTO_MIN_ELEMS: usize = 1 << 25;
/// Smallest M that `GemmPath::Auto` sends to this kernel below 128.
/// Session 13 (docs/CUDA.md change 62): 17, was 32. H100, one call, this
/// kernel against the wgmma kernel that Auto took at M = 24: 14336x4096
/// 28.25 against 32.35 us, 28672x8192 77.73 against 98.71; the decode step
/// at batch 24 (its gate|up and LM head on the wgmma kernel) took 4942 us
/// against 4449 at batch 32.
pub const WS_LOW_M_AUTO_MIN_M: usize = 17;
/// Smallest M that `GemmPath::Auto` sends to this kernel's 16-token
/// variants (change 71), on weights of at least
/// [`WS_SMALL_M_AUTO_MIN_ELEMS`] elements and K >= [`WS_SMALL_M_AUTO_MIN_K`]:
/// H100, 28672x8192 at M = 12 / 16, t16x4 with 2 splits 57.4-57.8 us
/// against the decode kernel's 62.0-64.2 (its two token tiles and two K
/// splits); at K = 4096 (28672x4096, 14336x4096) and on 4096x14336 the
/// decode kernel stays faster (28.4 / 16.8 / 20.7 us against 33.5 / 21.7 /
/// 22.2 at M = 16), and at M <= 8 too (28672x8192 47.6-49.5 us).
pub const WS_SMALL_M_AUTO_MIN_M: usize = 9;
/// Least weight size of that rule (2^27 elements: 28672x8192 is 2^27.8).
pub const WS_SMALL_M_AUTO_MIN_ELEMS: usize = 1 << 27;
/// Least K of that rule.
pub const WS_SMALL_M_AUTO_MIN_K: usize = 8192;
/// Largest M at which this kernel also needs the wide grid (256-column
/// blocks covering a third of the SMs).
const WS_LOW_M_WIDE_MAX_M: usize = 32;

/// Blocks of the unsplit grid of 256-column tiles (64 tokens at M <= 64,
/// else 128): what decides between the two forms.
fn natural_blocks(m: usize, w: &Int4Weight) -> usize {
    let tokens = if m <= 64 { 64 } else { 128 };
    m.div_ceil(tokens)
        .max(1)
        .saturating_mul(w.n_pad.div_ceil(256))
}

/// The shapes the stream-K form was made for: a long reduction (>= 128
/// chunks, K >= 8192) whose unsplit grid fills less than half the SMs.
fn stream_k_shape(m: usize, w: &Int4Weight, sm_count: usize) -> bool {
    w.k_chunks >= WS_SK_AUTO_MIN_CHUNKS && 2 * natural_blocks(m, w) < sm_count.max(1)
}

/// The stream-K form is taken below this M only (session 7).
const WS_SK_AUTO_MAX_M: usize = 255;

/// Whether the stream-K form is used when no split factor is forced:
/// [`stream_k_shape`] at M <= 255. Second H100 run of session 5
/// (docs/CUDA.md change 28): 4096x14336 (16 / 32 blocks) M = 64 39.8 us
/// (split-K form 49.0, old wgmma kernel 44.8) and M = 256 78.1 (split-K
/// 88.6-90.5); the split-K form won wherever the grid is larger (28672x8192
/// M = 64 with 112 blocks unsplit: 83.9 against 101.0) or K shorter
/// (14336x4096, 4096x4096: more contributors per tile). Session 7 (change
/// 39, after the split-K form's compact epilogue): 4096x14336 M = 256
/// split-K (4 splits) 64.0-65.5 us against the stream-K form 77.3-85.9 in
/// three runs (79.9 in the same call). `MARLIN_WGMMA_WS_STREAMK=0/1`
/// overrides.
pub fn ws_stream_k(m: usize, w: &Int4Weight, sm_count: usize) -> bool {
    // The small-token variants have no stream-K form.
    if variant_override().is_some_and(|v| v.is_small()) {
        return false;
    }
    stream_k_override().unwrap_or_else(|| m <= WS_SK_AUTO_MAX_M && stream_k_shape(m, w, sm_count))
}

/// The variant of the stream-K form: the least estimated time, units per
/// block x [`chunk_us`]; 64-token variants only at M <= 64 (a 128-token
/// tile would multiply zero rows).
pub fn ws_stream_k_variant(m: usize, w: &Int4Weight, sm_count: usize) -> WsVariant {
    if let Some(v) = variant_override() {
        return v;
    }
    let mut best: Option<(f64, WsVariant)> = None;
    for v in VARIANTS {
        if m <= 64 && v.tokens > 64 {
            continue;
        }
        let per_block = stream_k_units(m, w, v).div_ceil(sm_count.max(1));
        let cost = per_block as f64 * chunk_us(v);
        if best.is_none_or(|(c, _)| cost < c - 1e-9) {
            best = Some((cost, v));
        }
    }
    best.map_or(VARIANTS[3], |(_, v)| v)
}

/// Smallest M that `GemmPath::Auto` sends to this kernel.
pub const WS_AUTO_MIN_M: usize = 128;
/// Weights of at least this many elements (4096 x 4096) take this kernel at
/// every M = 128..=WS_LARGE_WEIGHT_AUTO_MAX_M (session 7, after the compact
/// epilogue: M <= 511; session 8: M = 512 too; session 9: M <= 1024).
pub const WS_MID_M_AUTO_MIN_ELEMS: usize = 1 << 24;
/// Largest M of that rule. Session 8 (docs/CUDA.md change 47 run 1, H100,
/// two interleaved rounds of the staged kernel): at M = 512 the two shapes
/// whose last round the wave check found under 90% full ran faster on this
/// kernel than on dequantize + cuBLAS, which Auto took: 14336x4096 123.3 /
/// 118.7 us against 166.1 / 165.8 (224 blocks, 85% of 2 rounds), 28672x8192
/// 470.2 / 452.3 against 578.7 / 581.9 (448 blocks, 85% of 4). At M = 1024
/// 14336x4096 (448 blocks) the wave check is still right: 262.2 / 262.1
/// against 235.6 / 235.0.
/// Session 9 (docs/CUDA.md change 51 run 2, H100, two rounds, the
/// subnormal dequantisation): M = 1024 too. Forced to this kernel against
/// dequantize + cuBLAS in the same rounds, M = 768: 4096x4096 52.1 / 52.1
/// us against 59.8 / 59.0, 14336x4096 155.0 / 156.3 against 193.1 /
/// 196.3, 4096x14336 177.8 / 180.5 against 188.2 / 186.5, 28672x8192
/// 647.9 / 650.7 against 789.6 / 775.6; M = 1024: 57.0 / 57.1 against
/// 70.0 / 70.5, 213.3 / 206.9 against 226.5 / 230.1, 183.8 / 184.0
/// against 226.9 / 222.4, 780.4 / 744.3 against 978.9 / 987.5 (the wave
/// check had sent 4096x4096 and 4096x14336 at M = 768, 96 blocks, and
/// 14336x4096 at M = 768 and 1024 and 28672x8192 at M = 768, 85% of their
/// last round, to dequantize + cuBLAS).
const WS_LARGE_WEIGHT_AUTO_MAX_M: usize = 1024;
/// From this M on, `GemmPath::Auto` also asks for a full last round.
const WS_AUTO_WAVE_CHECK_M: usize = 512;
/// Least fraction of the last round's SMs the plan must keep busy at
/// M >= 512 (blocks / (rounds x SMs)).
const WS_AUTO_MIN_WAVE_EFFICIENCY: f64 = 0.9;

/// `GemmPath::Auto`'s choice of this kernel on sm_90 (the form, split-K
/// or stream-K, is [`ws_stream_k`]'s):
/// - M = 9..=16 on weights of >= 2^27 elements with K >= 8192 (the
///   16-token variants, change 71: [`WS_SMALL_M_AUTO_MIN_M`]);
/// - M = 33..=64 on weights of >= 2^25 elements, M = 17..=32 when the
///   256-column blocks also cover a third of the SMs;
/// - M = 128..1024 on weights of >= 2^24 elements; on smaller weights at
///   M = 128..255 when the grid of 128-token x 256-column blocks covers at
///   least 3/4 of the SMs, and at M = 256..511 the same or on the
///   stream-K form's shapes ([`stream_k_shape`]; the split-K form runs
///   them at M >= 256 since session 7);
/// - M >= 512 (smaller weights) and M >= 1025 (larger) if the plan keeps
///   >= 90% of its last round of SMs busy.
///
/// Session 8: M = 512 on weights of >= 2^24 elements without the wave check;
/// session 9: up to M = 1024 ([`WS_LARGE_WEIGHT_AUTO_MAX_M`] has the
/// numbers).
///
/// Session 7 (docs/CUDA.md change 39, one H100 run, two benchmarks each,
/// after the compact epilogue; against the path Auto took before in the
/// same benchmarks): 4096x4096 M = 128 28.41 / 28.47 us against dequantize
/// and cuBLAS 34.83 / 34.54, M = 256 29.96 / 29.94 against 41.45 / 41.42;
/// 14336x4096 M = 128 39.90 / 39.53 against the wgmma kernel 53.36 /
/// 53.46. (4096x14336 and 28672x8192 at M = 128..256 and 14336x4096 at
/// M = 256 took this kernel already.)
///
/// Session 6 (docs/CUDA.md change 35, three runs, each against the old
/// wgmma kernel that Auto took before in the same run): 4096x14336 M = 128
/// (stream-K form, 16 column blocks) 58.0 / 56.2 / 56.1 us against 64.2 /
/// 63.9 / 63.7.
/// Session 5's second H100 run (docs/CUDA.md change 28; each point against
/// the path Auto took before): M = 64 28672x8192 83.9 us (split-K form,
/// one split: 112 blocks; old wgmma kernel 147.9, cuBLAS 171.5),
/// 14336x4096 34.8 (40.7), 4096x14336 39.8 (stream-K; 44.8); M = 32
/// 14336x4096 32.9 (37.3), 28672x8192: the unsplit launch of M = 64
/// (same variant and grid, the same work at any M <= 64; at M = 32 only
/// the stream-K form was timed, 98.7 against the old kernel's 109.4);
/// M = 256 4096x14336 78.1 (stream-K; 93.8). Not taken where it lost:
/// 4096x4096 at M <= 64 (old kernel 20.4 vs 35.4) and M = 256
/// (dequantize and cuBLAS 41.1 vs 53.3 split 4 ways), 4096x14336 at
/// M = 32 (31.8 vs 42.8).
/// Session 4's second run (change 26): 28672x8192 M = 128 108.9 vs
/// 239.3 us, M = 256 210.3 vs 405.1, M = 1024 806.3 vs 970.1 (dequantize
/// and cuBLAS); 14336x4096 M = 256 60.4 vs 107.9; 4096x4096 and 4096x14336
/// M = 1024 64.5 vs 69.1 and 198.9 vs 229.3; not taken: 14336x4096
/// M = 128 (56 blocks: 56.5 vs 54.9) and M = 1024 (85% of the last
/// round: 233.2 vs 220.5).
pub fn ws_auto(m: usize, w: &Int4Weight, sm_count: usize) -> bool {
    let sms = sm_count.max(1);
    if m < WS_LOW_M_AUTO_MIN_M {
        return small_m_auto(m, w.n, w.k);
    }
    if (WS_LOW_M_AUTO_MIN_M..=64).contains(&m) {
        let wide = 3 * w.n_pad.div_ceil(256) >= sms;
        return w.n.saturating_mul(w.k) >= WS_LOW_M_AUTO_MIN_ELEMS
            && (m > WS_LOW_M_WIDE_MAX_M || wide);
    }
    if m < WS_AUTO_MIN_M {
        return false;
    }
    if m <= WS_LARGE_WEIGHT_AUTO_MAX_M && w.n.saturating_mul(w.k) >= WS_MID_M_AUTO_MIN_ELEMS {
        return true;
    }
    let big_blocks = m.div_ceil(128).saturating_mul(w.n_pad.div_ceil(256));
    let covers_sms = big_blocks.saturating_mul(4) >= 3 * sms;
    if m < 256 {
        return covers_sms
            || (w.n.saturating_mul(w.k) >= WS_LOW_M_AUTO_MIN_ELEMS && ws_stream_k(m, w, sm_count));
    }
    if m < WS_AUTO_WAVE_CHECK_M {
        // (Where the stream-K form was taken before session 7; the split-K
        // form runs those shapes now.)
        return covers_sms || stream_k_shape(m, w, sm_count);
    }
    let p = ws_plan(m, w, sm_count, &ClusterFit::NONE, None).0;
    let blocks = p
        .m_blocks
        .saturating_mul(p.n_tiles)
        .saturating_mul(p.splits);
    let rounds = blocks.div_ceil(sms);
    blocks as f64 / (rounds as f64 * sms as f64) >= WS_AUTO_MIN_WAVE_EFFICIENCY
}

/// [`ws_auto`]'s rule at M = 9..16 for an N x K weight (the 16-token
/// variants; [`WS_SMALL_M_AUTO_MIN_M`] has the measurements).
fn small_m_auto(m: usize, n: usize, k: usize) -> bool {
    (WS_SMALL_M_AUTO_MIN_M..WS_LOW_M_AUTO_MIN_M).contains(&m)
        && k >= WS_SMALL_M_AUTO_MIN_K
        && n.saturating_mul(k) >= WS_SMALL_M_AUTO_MIN_ELEMS
}

/// Whether the device runs this kernel (compute capability 9.0: the module
/// is compiled for sm_90a; elsewhere it is empty).
pub fn ws_supported(dev: &CudaDevice) -> bool {
    dev.compute_capability() == (9, 0)
}

/// Launch shape for M rows, and whether its splits reduce through
/// clusters. `GemmPlan::m_tiles` holds tokens / 16 and `n_tiles` the
/// column blocks (64 x 2 x tiles per warpgroup wide). Forced `splits`
/// reduce through clusters where `clusters` holds the plan's clusters.
pub fn ws_plan(
    m: usize,
    w: &Int4Weight,
    sm_count: usize,
    clusters: &ClusterFit,
    splits: Option<usize>,
) -> (GemmPlan, bool) {
    if splits.is_none() && ws_stream_k(m, w, sm_count) {
        let v = ws_stream_k_variant(m, w, sm_count);
        let plan = GemmPlan {
            path: GemmPath::WgmmaWs,
            kernel: v.stream_k_kernel(w.neg_zero_scales.is_some()),
            m_tiles: v.tokens / 16,
            m_blocks: m.div_ceil(v.tokens).max(1),
            n_tiles: w.n_pad.div_ceil(v.n_block()),
            splits: 1,
        };
        return (plan, false);
    }
    let (v, auto_splits, auto_cluster) = ws_variant(m, w, sm_count, clusters);
    let m_blocks = m.div_ceil(v.tokens).max(1);
    let n_tiles = w.n_pad.div_ceil(v.n_block());
    let (splits, cluster) = match splits {
        None => (auto_splits, auto_cluster),
        Some(s) => {
            let s = s.clamp(1, w.k_chunks.max(1));
            (
                s,
                s > 1 && clusters.holds(s, m_blocks.saturating_mul(n_tiles)),
            )
        }
    };
    let plan = GemmPlan {
        path: GemmPath::WgmmaWs,
        kernel: v.kernel(w.neg_zero_scales.is_some()),
        m_tiles: v.tokens / 16,
        m_blocks,
        n_tiles,
        splits,
    };
    (plan, cluster)
}

/// A resolved call: plan, variant, shared memory, scratch sizes.
pub(super) struct WsCall {
    pub plan: GemmPlan,
    pub variant: WsVariant,
    pub smem: u32,
    /// fp32 partials and tickets (blocks) it needs: split-K, one block
    /// tile (tokens x block columns) per (split, block); stream-K, two per
    /// block.
    pub partials: usize,
    pub tickets: usize,
    /// f16 elements of the staged activation image (m_blocks x tokens x
    /// k_pad).
    pub staged: usize,
    /// Stream-K form: its number of blocks (the grid); None: split-K form.
    pub stream_k_blocks: Option<usize>,
    /// Activation type of the call (module of both kernels).
    pub act: Act,
    /// The split-K kernel's `subn_m` argument: the subnormal
    /// dequantisation's shift on `_n` entries, 0 (ignored) on the others.
    pub subn_m: i32,
    /// Split-K form launched as thread-block clusters of `splits` blocks
    /// (cluster z = the split axis): the splits reduce through distributed
    /// shared memory, no partials or tickets (change 67).
    pub cluster: bool,
}

pub(super) fn resolve(
    dev: &CudaDevice,
    m: usize,
    w: &Int4Weight,
    splits: Option<usize>,
    act: Act,
) -> Result<WsCall> {
    if !ws_supported(dev) {
        let (major, minor) = dev.compute_capability();
        return Err(CudaError::Unsupported(format!(
            "the warp-specialised wgmma INT4 GEMM needs compute capability 9.0 (sm_90a), device has {major}.{minor}"
        )));
    }
    // Only f16 has cluster entries (`_nc`, subnormal): bf16 plans for the
    // ticket. (f16 plans the same whether or not its call can take the
    // subnormal entry, so that both dequantisations sum the same splits:
    // the two-step entry then runs the plan's splits with the ticket.)
    let clusters = if act == Act::F16 {
        ws_cluster_fit(dev, act)?
    } else {
        ClusterFit::NONE
    };
    let (mut plan, cluster) = ws_plan(m, w, dev.sm_count(), &clusters, splits);
    let stream_k = splits.is_none() && ws_stream_k(m, w, dev.sm_count());
    // f16 split-K calls on weights whose scales allow it take the subnormal
    // dequantisation (bf16 has no such entries: 7 mantissa bits).
    let mut subn_m = 0;
    if let (Act::F16, false, Some(shift)) = (act, stream_k, w.subnormal_shift) {
        if let Some(entry) = subnormal_entry(plan.kernel).filter(|_| subnormal_enabled()) {
            plan.kernel = entry;
            subn_m = shift;
        }
    }
    let variant = if stream_k {
        ws_stream_k_variant(m, w, dev.sm_count())
    } else {
        ws_variant(m, w, dev.sm_count(), &clusters).0
    };
    if act != Act::F16 && DIAG_KERNELS.contains(&plan.kernel) {
        return Err(CudaError::Unsupported(format!(
            "warp-specialised INT4 entry {} (a diagnostic knob's) has f16 activations only",
            plan.kernel
        )));
    }
    let smem_bytes = variant.smem_bytes(w.neg_zero_scales.is_some());
    if smem_bytes > SMEM_LIMIT {
        return Err(CudaError::Shape(format!(
            "{}: {smem_bytes} bytes of shared memory exceed {SMEM_LIMIT}",
            plan.kernel
        )));
    }
    let smem = u32::try_from(smem_bytes).map_err(|_| CudaError::Shape("shared memory".into()))?;
    // Only the subnormal entries (f16) have a cluster form; the others
    // (bf16, scales the subnormal form refuses, the diagnostic entries)
    // keep the ticket with the plan's splits.
    let cluster_kernel = cluster_entry(plan.kernel).filter(|_| cluster && !stream_k);
    let cluster = cluster_kernel.is_some();
    if let Some(entry) = cluster_kernel {
        plan.kernel = entry;
    }
    let overflow =
        || CudaError::Shape(format!("M = {m}, N = {}, K = {}: sizes overflow", w.n, w.k));
    // Stream-K: one block per SM (at most one per unit); two partial tiles
    // (tokens x block columns, fp32) per block. Split-K (session 7): one
    // tile per (split, block), thread-interleaved as the kernel holds it.
    let units = stream_k_units(m, w, variant);
    let stream_k_blocks = stream_k.then(|| {
        stream_k_blocks_override()
            .unwrap_or(dev.sm_count())
            .clamp(1, units.max(1))
    });
    let partials = match stream_k_blocks {
        Some(g) => g
            .checked_mul(2 * variant.tokens * variant.n_block())
            .ok_or_else(overflow)?,
        None if cluster => 0,
        None => plan
            .splits
            .checked_mul(plan.m_blocks)
            .and_then(|x| x.checked_mul(plan.n_tiles))
            .and_then(|x| x.checked_mul(variant.tokens * variant.n_block()))
            .ok_or_else(overflow)?,
    };
    let staged = plan
        .m_blocks
        .checked_mul(variant.tokens)
        .and_then(|x| x.checked_mul(w.k_chunks))
        .and_then(|x| x.checked_mul(K_CHUNK))
        .ok_or_else(overflow)?;
    let tickets = plan
        .n_tiles
        .checked_mul(plan.m_blocks)
        .ok_or_else(overflow)?;
    Ok(WsCall {
        plan,
        variant,
        smem,
        partials,
        tickets,
        staged,
        stream_k_blocks,
        act,
        subn_m,
        cluster,
    })
}

/// Load both kernels of `call` and size the workspace's scratch (split-K
/// partials and the staged activation image).
pub(super) fn prepare(dev: &CudaDevice, call: &WsCall, ws: &mut GemmWorkspace) -> Result<()> {
    if (call.plan.splits > 1 && !call.cluster) || call.stream_k_blocks.is_some() {
        ws.reserve(dev, call.partials, call.tickets)?;
    }
    ws.reserve_staged_act(dev, call.staged)?;
    let (stage_module, stage_source) = module_of(call.variant.stage_kernel(), call.act);
    dev.function(stage_module, stage_source, call.variant.stage_kernel(), 0)?;
    let (module, source) = module_of(call.plan.kernel, call.act);
    dev.function(module, source, call.plan.kernel, call.smem)?;
    Ok(())
}

/// Enqueue the staging kernel `stage` (a `W4A16_WS_STAGE_ENTRY` of its
/// module, for the main kernel's token count) writing the first
/// `staged_elems` halves of `staged` (m_blocks x tokens x k_pad, which the
/// caller sized for M, K = `k` and `k_chunks`) from A (>= M*K elements, the
/// caller checked). Shared with the `wgemm` formats' warp-specialised path,
/// which reads the same image.
pub(crate) fn launch_staging<T: ActDtype>(
    dev: &CudaDevice,
    (stage_fn, name): (&CudaFunction, &str),
    a: &CudaView<'_, T>,
    staged: &CudaSlice<half::f16>,
    staged_elems: usize,
    (m, k, k_chunks): (usize, usize, usize),
) -> Result<()> {
    if staged.len() < staged_elems {
        return Err(CudaError::Shape(format!(
            "staged activation scratch of {} elements, the call needs {staged_elems}",
            staged.len()
        )));
    }
    let (m_i32, k_i32, k_chunks_i32) = (
        to_i32("M", m)?,
        to_i32("K", k)?,
        to_i32("k_chunks", k_chunks)?,
    );
    // One thread per 16-byte unit (8 halves) of the image.
    let units = staged_elems / 8;
    let units_i64 =
        i64::try_from(units).map_err(|_| CudaError::Shape("staged image too large".into()))?;
    let stage_blocks = u32::try_from(units.div_ceil(STAGE_THREADS as usize))
        .map_err(|_| CudaError::Shape("staged image too large".into()))?;
    let stage_cfg = LaunchConfig {
        grid_dim: (stage_blocks, 1, 1),
        block_dim: (STAGE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut stage = KernelLaunch::new(dev, stage_fn, name);
    stage
        .arg(a)
        .arg(staged)
        .arg(&m_i32)
        .arg(&k_i32)
        .arg(&k_chunks_i32)
        .arg(&units_i64);
    // SAFETY: argument types and order match W4A16_WS_STAGE_ENTRY; the
    // caller checked A >= M*K; the image holds staged_elems halves =
    // `units` 16-byte units (checked above); the kernel waits on its
    // predecessor first (pdl_wait).
    unsafe { stage.launch_pdl(stage_cfg) }
}

/// Enqueue the staging and the main kernel (no allocation, no module load:
/// `prepare` did both).
pub(super) fn launch<T: ActDtype>(
    dev: &CudaDevice,
    a: &CudaView<'_, T>,
    m: usize,
    w: &Int4Weight,
    c: &mut CudaViewMut<'_, T>,
    ws: &mut GemmWorkspace,
    call: &WsCall,
) -> Result<()> {
    if T::ACT != call.act {
        return Err(CudaError::Unsupported(format!(
            "warp-specialised INT4 call resolved for {} activations, launched with {}",
            call.act.name(),
            T::ACT.name()
        )));
    }
    let p = call.plan;
    let grid = match call.stream_k_blocks {
        Some(g) => launch_grid(g, 1, 1)?,
        None => launch_grid(p.m_blocks, p.n_tiles, p.splits)?,
    };
    if call.stream_k_blocks.is_some()
        && (ws.partials.len() < call.partials || ws.tickets.len() < call.tickets)
    {
        return Err(CudaError::Shape(format!(
            "stream-K workspace too small for M={m} N={}: call GemmWorkspace::prepare",
            w.n
        )));
    }
    if !call.cluster {
        ws.check_split_k(p.splits, call.partials, call.tickets, (m, w.n), "prepare")?;
    }
    let (stage_module, stage_source) = module_of(call.variant.stage_kernel(), call.act);
    let stage_fn = dev.function(stage_module, stage_source, call.variant.stage_kernel(), 0)?;
    let (module, source) = module_of(p.kernel, call.act);
    let func = dev.function(module, source, p.kernel, call.smem)?;
    let (m_i32, n_i32) = (to_i32("M", m)?, to_i32("N", w.n)?);
    // The last kernel argument: the split count, or the stream-K kernel's
    // token blocks (it derives its unit range from the grid).
    let last_arg = if call.stream_k_blocks.is_some() {
        p.m_blocks
    } else {
        p.splits
    };
    let (n_pad_i32, k_chunks_i32, group_k32_i32, splits_i32) = (
        to_i32("n_pad", w.n_pad)?,
        to_i32("k_chunks", w.k_chunks)?,
        to_i32("group_k32", w.group_k32)?,
        to_i32("splits / m_blocks", last_arg)?,
    );
    let staged = match ws.staged_act.as_mut() {
        Some(s) if s.len() >= call.staged => s,
        _ => {
            return Err(CudaError::Shape(format!(
                "staged activation scratch missing or smaller than {} elements: call GemmWorkspace::prepare",
                call.staged
            )))
        }
    };
    launch_staging(
        dev,
        (&stage_fn, call.variant.stage_kernel()),
        a,
        &*staged,
        call.staged,
        (m, w.k, w.k_chunks),
    )?;

    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: call.smem,
    };
    let mut launch = KernelLaunch::new(dev, &func, p.kernel);
    arg_operands(&mut launch, &*staged, w, c, (&ws.partials, &ws.tickets))
        .arg(&m_i32)
        .arg(&n_i32)
        .arg(&n_pad_i32)
        .arg(&k_chunks_i32)
        .arg(&group_k32_i32)
        .arg(&splits_i32);
    if call.stream_k_blocks.is_none() {
        launch.arg(&call.subn_m);
    }
    // SAFETY: argument types and order match W4A16_WS_ENTRY_X (split-K,
    // with subn_m) and W4A16_WSK_ENTRY (the same list without subn_m, the
    // last one m_blocks there); an `_n` entry gets the shift its weight's
    // scales were checked for (`subnormal_shift`); the staged
    // image covers m_blocks x k_chunks tiles; partials >= splits x blocks x
    // tile and tickets >= blocks were checked above; the packed buffers cover
    // n_pad x k_chunks (the repack); C >= M*N was checked by the caller;
    // stream-K: partials >= 2 x blocks x tile and tickets >= tiles (checked
    // above). PDL: the producer waits (pdl_wait) before its first read
    // of the staged image; before it, only the read-only weights are read;
    // C, partials and tickets are written only after data the producer
    // copied after the wait. Cluster launch (resolve checked 2..=8 splits
    // and that every cluster fits): the kernel reduces through the cluster
    // exactly when its cluster size equals its split count (grid z =
    // splits = cluster z), and then touches neither partials nor tickets.
    if call.cluster {
        let splits = u32::try_from(p.splits).map_err(|_| CudaError::Shape("splits".into()))?;
        unsafe { launch.launch_pdl_cluster_dims(cfg, (1, 1, splits)) }?;
        CLUSTER_LAUNCHES.fetch_add(1, Ordering::Relaxed);
        Ok(())
    } else {
        unsafe { launch.launch_pdl(cfg) }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        choose_splits, cluster_entry, one_round_fit, small_m_auto, subnormal_entry,
        subnormal_shift, subnormal_shift_for_range, ws_variant_for, ClusterFit, DIAG_KERNELS,
        SMALL_VARIANTS, SMEM_LIMIT, SOURCE, VARIANTS,
    };

    /// The subnormal dequantisation's shift: the smallest m whose low-nibble
    /// multiplier s * 2^(24-m) is a finite f16, refused where the smallest
    /// scale would make a product subnormal or m leaves -3..=24.
    #[test]
    fn subnormal_shift_bounds() {
        // random_int4: [0.002, 0.022) -> 3; random_on_device: [2^-9, 2^-6) -> 3.
        assert_eq!(subnormal_shift_for_range(0.002, 0.022), Some(3));
        assert_eq!(subnormal_shift_for_range(1.0 / 512.0, 1.0 / 64.0), Some(3));
        // Edges of shift 3: max 65504 * 2^-21, min 2^-11.
        let max3 = 65504.0 * 2f64.powi(-21);
        assert_eq!(subnormal_shift_for_range(2f64.powi(-11), max3), Some(3));
        // Past it: shift 4, whose smallest scale is 2^-10.
        assert_eq!(
            subnormal_shift_for_range(2f64.powi(-11), max3 * 1.001),
            None
        );
        assert_eq!(
            subnormal_shift_for_range(2f64.powi(-10), max3 * 1.001),
            Some(4)
        );
        assert_eq!(
            subnormal_shift_for_range(2f64.powi(-11) * 0.999, max3),
            None
        );
        // A spread over more than 2^6 is refused at any shift.
        assert_eq!(subnormal_shift_for_range(0.0001, 0.022), None);
        // Large and tiny scales: shift 14; below m = -3 refused.
        assert_eq!(subnormal_shift_for_range(1.0, 60.0), Some(14));
        assert_eq!(
            subnormal_shift_for_range(2f64.powi(-20), 2f64.powi(-18)),
            None
        );
        assert_eq!(subnormal_shift_for_range(0.0, 1.0), None);
        assert_eq!(subnormal_shift_for_range(f64::NAN, 1.0), None);
        // Packed words: zeros skipped, all zero -> 0, inf / NaN refused,
        // zero points count towards the smallest magnitude.
        let pair = |lo: u16, hi: u16| u32::from(lo) | (u32::from(hi) << 16);
        let (s_lo, s_hi) = (0x1000u16, 0x27FFu16); // 2^-11, 65504 * 2^-21
        assert_eq!(
            subnormal_shift(&[pair(s_lo, 0), pair(s_hi, 0x8000 | s_lo)], None),
            Some(3)
        );
        assert_eq!(subnormal_shift(&[0, 0], None), Some(0));
        assert_eq!(subnormal_shift(&[pair(s_lo, 0x7C00)], None), None);
        assert_eq!(subnormal_shift(&[pair(s_lo, 0x7E00)], None), None);
        assert_eq!(
            subnormal_shift(&[pair(s_lo, s_hi)], Some(&[pair(0, 0x0FFF)])),
            None
        );
        assert_eq!(
            subnormal_shift(&[pair(s_lo, s_hi)], Some(&[pair(0, 0x2000)])),
            Some(3)
        );
        // Every production split-K entry has its `_n` form, nothing else.
        for v in VARIANTS {
            for z in [false, true] {
                let k = v.kernel(z);
                assert_eq!(
                    subnormal_entry(k).map(|n| n.strip_suffix('n')),
                    Some(Some(k)),
                    "{k}"
                );
                assert!(SOURCE.contains(&format!("W4A16_WS_ENTRY_X({k}n,")), "{k}");
            }
            assert_eq!(subnormal_entry(v.stream_k_kernel(false)), None);
            // ... and every `_n` entry its cluster form `_nc`.
            for z in [false, true] {
                let n = subnormal_entry(v.kernel(z)).expect("subnormal entry");
                let c = cluster_entry(n).expect("cluster entry");
                assert_eq!(c.strip_suffix('c'), Some(n));
                assert!(SOURCE.contains(&format!("W4A16_WS_ENTRY_C({c},")), "{c}");
            }
        }
        // The small-token variants: plain, zero-point and `_n` entries (no
        // cluster or stream-K form), each built with its (TOK, TPW, STAGES).
        for v in SMALL_VARIANTS {
            let shape = format!(", {}, {}, {},", v.tokens, v.tiles_per_wg, v.stages);
            for z in [false, true] {
                let k = v.kernel(z);
                assert!(
                    SOURCE.contains(&format!("W4A16_WS_ENTRY({k}{shape}")),
                    "{k}"
                );
                let n = subnormal_entry(k).expect("subnormal entry");
                assert_eq!(n.strip_suffix('n'), Some(k));
                assert!(
                    SOURCE.contains(&format!("W4A16_WS_ENTRY_X({n}{shape}")),
                    "{n}"
                );
                assert_eq!(cluster_entry(n), None);
            }
            let stage = v.stage_kernel();
            assert!(SOURCE.contains(&format!("W4A16_WS_STAGE_ENTRY({stage}, {})", v.tokens)));
        }
    }

    /// Every variant fits the sm_90 opt-in shared-memory limit with and
    /// without zero points (one block per SM).
    #[test]
    fn variants_fit_shared_memory() {
        for v in VARIANTS.into_iter().chain(SMALL_VARIANTS) {
            for z in [false, true] {
                assert!(v.smem_bytes(z) <= SMEM_LIMIT, "{v:?} z={z}");
            }
        }
        let big = super::variant(128, 2, 8);
        assert_eq!(big.smem_bytes(false), 1024 + 8 * (16384 + 8192 + 1024));
        assert_eq!(big.n_block(), 256);
    }

    /// The entries `module_of` sends to the diagnostic module are exactly
    /// those the source builds under `WS_DIAG_ENTRIES`, and the production
    /// part builds none of them.
    #[test]
    fn diag_entries_match_the_source() {
        let (prod, diag) = SOURCE
            .split_once("#else   // WS_DIAG_ENTRIES")
            .expect("diagnostic section");
        let entry = |line: &str| {
            let rest = line.strip_prefix("W4A16_WS_ENTRY(")?;
            Some(rest.split(',').next()?.trim().to_string())
        };
        let built: Vec<String> = diag.lines().filter_map(entry).collect();
        assert_eq!(built, DIAG_KERNELS.map(String::from).to_vec());
        for name in DIAG_KERNELS {
            assert!(!prod.contains(&format!("{name},")), "{name}");
        }
    }

    /// Few blocks split up to one round; a full machine or a large M does
    /// not split.
    #[test]
    fn splits_fill_the_machine() {
        // 4096x4096 at M = 64 with 16 blocks: 8 splits fill one round.
        assert_eq!(choose_splits(16, 132, 64, 64), 8);
        // M = 256: 32 blocks (4096x4096, 128x256 tiles) take 4 splits,
        // 64 blocks 2.
        assert_eq!(choose_splits(32, 132, 64, 256), 4);
        assert_eq!(choose_splits(64, 132, 64, 256), 2);
        // Partials capped at 2 K bytes per column: M = 1024 at K = 4096
        // allows one split, whatever the grid.
        assert_eq!(choose_splits(16, 132, 64, 1024), 1);
        // A grid of at least one round is never split.
        assert_eq!(choose_splits(224, 132, 128, 256), 1);
        assert_eq!(choose_splits(132, 132, 64, 64), 1);
        assert_eq!(choose_splits(896, 132, 128, 1024), 1);
        // Short K: no split below 8 chunks per split.
        assert_eq!(choose_splits(4, 132, 8, 64), 1);
    }

    /// The plans of change 67's cost model on a 132-SM device whose
    /// clusters of 2..8 one-block-per-SM blocks fit 66 / 39 / 30 / 22 / 17
    /// / 15 / 15 at once (the H100's), against the fastest of every variant
    /// x splits in one H100 call (change 67 (f)).
    #[test]
    fn plans_weigh_the_split_k_reduction() {
        let h100 = ClusterFit([0, 0, 66, 39, 30, 22, 17, 15, 15]);
        let plan = |m: usize, n: usize, k: usize, fit: &ClusterFit| {
            let (v, s, c) = ws_variant_for(m, n, k / 64, 132, fit, None, one_round_fit, true);
            (v.name(), s, c)
        };
        let name = |s: &str| s.to_string();
        // The fastest of the sweep: 4096x4096 M = 128 t128x1 / 4 splits
        // (ticket: 32 clusters of 4 do not fit) 19.7 us, M = 256 t128x1 / 2
        // 26.8, M = 512 t128x2 / 2 37.3; 6144x4096 M = 128 t128x2 / 4 25.3;
        // 14336x4096 M = 128 t128x2 / 2 35.0, M = 256 unsplit 51.0.
        assert_eq!(plan(128, 4096, 4096, &h100), (name("t128x1"), 4, false));
        assert_eq!(plan(256, 4096, 4096, &h100), (name("t128x1"), 2, true));
        assert_eq!(plan(512, 4096, 4096, &h100), (name("t128x2"), 2, true));
        assert_eq!(plan(128, 6144, 4096, &h100), (name("t128x2"), 4, true));
        assert_eq!(plan(128, 14336, 4096, &h100), (name("t128x2"), 2, true));
        assert_eq!(plan(256, 14336, 4096, &h100), (name("t128x2"), 1, false));
        assert_eq!(plan(64, 14336, 4096, &h100), (name("t64x2"), 2, true));
        // Full grids do not split.
        assert_eq!(plan(256, 28672, 8192, &h100), (name("t128x2"), 1, false));
        assert_eq!(plan(1024, 14336, 4096, &h100), (name("t128x2"), 1, false));
        // Without clusters the ticket takes their splits.
        assert_eq!(
            plan(512, 4096, 4096, &ClusterFit::NONE),
            (name("t128x2"), 2, false)
        );
        // The decode step's warp-specialised GEMMs (gate|up and the LM head
        // of Llama-3.1-8B) at batch 33-64 keep session 13's plan; at batch
        // 17-32 they take t32x4 (change 71: gate|up 28672x4096 at M = 24 /
        // 32 36.2-36.8 us with 2 splits against t64x2's 41.2-42.7; the LM
        // head by the same per-chunk times, not timed alone).
        for m in [48, 64] {
            for n in [28672, 128256] {
                assert_eq!(
                    plan(m, n, 4096, &h100),
                    (name("t64x2"), 1, false),
                    "M={m} N={n}"
                );
            }
        }
        for m in [17, 24, 32] {
            assert_eq!(plan(m, 28672, 4096, &h100).0, name("t32x4"), "M={m}");
            assert_eq!(plan(m, 128256, 4096, &h100).0, name("t32x4"), "M={m}");
            // 28672x8192: 60.8-61.7 us against t64x2's 77.5; 14336x4096
            // with 4 splits 25.0-25.3 against 26.7-27.7.
            assert_eq!(plan(m, 28672, 8192, &h100), (name("t32x4"), 2, true));
            assert_eq!(plan(m, 14336, 4096, &h100).0, name("t32x4"), "M={m}");
        }
        // M = 33..64: 64-token tiles only.
        for m in [33, 48, 64] {
            for (n, k) in [(4096, 4096), (6144, 4096), (4096, 14336), (28672, 4096)] {
                for fit in [&ClusterFit::NONE, &h100] {
                    let (v, _, _) =
                        ws_variant_for(m, n, k / 64, 132, fit, None, one_round_fit, true);
                    assert_eq!(v.tokens, 64, "M={m} {n}x{k}");
                }
            }
        }
        // M <= 16 (change 71): the 16-token variants; 28672x8192 takes
        // t16x4 with 2 splits (55.5-57.8 us on the H100 at M = 12 / 16,
        // t16x2 unsplit 70.5-74); the wgemm formats never take them.
        for m in [9, 12, 16] {
            assert_eq!(plan(m, 28672, 8192, &h100), (name("t16x4"), 2, true));
            let (v, _, _) = ws_variant_for(m, 28672, 128, 132, &h100, None, one_round_fit, false);
            assert_eq!(v.tokens, 64, "M={m}");
        }
    }

    /// `GemmPath::Auto` takes the 16-token variants at M = 9..16 on large
    /// long-K weights only (change 71's measurements), nowhere at M <= 8.
    #[test]
    fn auto_takes_small_token_variants_where_measured() {
        for m in 9..=16 {
            assert!(small_m_auto(m, 28672, 8192), "M={m}");
            for (n, k) in [(28672, 4096), (14336, 4096), (4096, 14336), (4096, 4096)] {
                assert!(!small_m_auto(m, n, k), "M={m} {n}x{k}");
            }
        }
        for m in [1, 4, 8, 17, 32] {
            assert!(!small_m_auto(m, 28672, 8192), "M={m}");
        }
    }
}
