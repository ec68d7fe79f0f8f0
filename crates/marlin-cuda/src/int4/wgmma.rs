//! Hopper (sm_90a) path of the INT4 GEMM: `kernels/w4a16_wgmma.cu`, the
//! transposed product D^T = W · A^T on `wgmma.mma_async` with the
//! dequantised weights as the register A operand and the activations as the
//! shared-memory B operand (tokens are wgmma's N dimension). It reads the
//! packed weights of [`super::pack`] as they are (no second layout).
//!
//! Block: NWG warpgroups = NWG x 64 weight columns (one 64-column tile of
//! the packing each) x TOK tokens (32, 64 or 128), split-K over `gridDim.z`
//! with the deterministic last-block reduction of the mma.sync kernels.

use std::cell::Cell;

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig};

use super::gemm::{arg_operands, launch_grid, GemmPath, GemmPlan, GemmWorkspace, Int4Weight};
use super::pack::N_TILE;
use crate::act::{Act, ActDtype};
use crate::device::CudaDevice;
use crate::error::{CudaError, Result};
use crate::knobs::{Force, Switch};
use crate::ops::launch::KernelLaunch;
use crate::ops::to_i32;

pub(super) const MODULE: &str = "w4a16_wgmma";
pub(super) const SOURCE: &str = include_str!("../kernels/w4a16_wgmma.cu");
/// Module of the diagnostic entries: the same source with
/// `W4G_DIAG_ENTRIES` defined, which compiles only the session-6 LEGACY
/// entries (`_e0`, `MARLIN_WGMMA_LEGACY_TAIL=1`) and session 8's refill
/// code (`_s8`, `MARLIN_WGMMA_S8_LOOP=1`, change 52b); compiled and loaded
/// only when one of them is selected, so that a cold kernel cache pays for
/// the production entries alone.
const DIAG_MODULE: &str = "w4a16_wgmma_diag";
const DIAG_SOURCE: &str = concat!(
    "#define W4G_DIAG_ENTRIES 1\n",
    include_str!("../kernels/w4a16_wgmma.cu")
);
/// The entries built into [`DIAG_MODULE`] only (`#ifdef W4G_DIAG_ENTRIES`
/// in the source).
const DIAG_KERNELS: [&str; 16] = [
    "w4a16_wgmma_t32w2_e0",
    "w4a16_wgmma_t64w2_e0",
    "w4a16_wgmma_t64w4_e0",
    "w4a16_wgmma_t128w2_e0",
    "w4a16_wgmma_t128w3_e0",
    "w4a16_wgmma_t32w2d_e0",
    "w4a16_wgmma_t64w2d_e0",
    "w4a16_wgmma_t128w2d_e0",
    "w4a16_wgmma_t32w2_s8",
    "w4a16_wgmma_t64w2_s8",
    "w4a16_wgmma_t64w4_s8",
    "w4a16_wgmma_t128w2_s8",
    "w4a16_wgmma_t128w3_s8",
    "w4a16_wgmma_t32w2d_s8",
    "w4a16_wgmma_t64w2d_s8",
    "w4a16_wgmma_t128w2d_s8",
];

/// The production entries with bf16 activations (crate::act).
const BF16_MODULE: &str = "w4a16_wgmma_bf16";
const BF16_SOURCE: &str = concat!(
    "#define MARLIN_ACT_BF16 1\n",
    include_str!("../kernels/w4a16_wgmma.cu")
);

/// Module name and source that hold entry `kernel` for activation type
/// `act` (the diagnostic entries are f16 only: `resolve` refuses them for
/// bf16).
fn module_of(kernel: &str, act: Act) -> (&'static str, &'static str) {
    match act {
        Act::Bf16 => (BF16_MODULE, BF16_SOURCE),
        Act::F16 if DIAG_KERNELS.contains(&kernel) => (DIAG_MODULE, DIAG_SOURCE),
        Act::F16 => (MODULE, SOURCE),
    }
}
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
/// at M = 256; slower at M = 1024 on every shape. `resolve_call` (session
/// 7) takes this kernel first where [`wgmma_over_ws`] holds, then asks
/// [`super::wgmma_ws::ws_auto`] and [`mid_m_takes_ws`]: the
/// warp-specialised kernel takes the points of this range where it
/// measured faster, and only the rest come here.
pub fn wgmma_auto(m: usize, n: usize, k: usize) -> bool {
    (WGMMA_MIN_M..WGMMA_MAX_M).contains(&m)
        && (m < 128 || n.saturating_mul(k) >= super::gemm::LARGE_WEIGHT_ELEMS)
}

/// Whether `GemmPath::Auto` takes this kernel before asking
/// [`super::wgmma_ws::ws_auto`]: M = 17..128 on narrow weights with a long
/// reduction (N <= 4096, K >= 8192: the down projection). Session 7, second
/// H100 call (same call, this kernel with change 40 (f)-(g) against the
/// warp-specialised one): 4096x14336 M = 48 34.67 against 39.67 us, M = 64
/// 33.65 / 33.63 / 34.21 against 39.37 / 39.29 / 40.03, M = 100 49.32
/// against 55.88, M = 128 48.38 / 49.10 / 49.63 against 54.73 / 55.68 /
/// 56.48; only this shape of the four has N <= 4096 and K >= 8192.
pub fn wgmma_over_ws(m: usize, n: usize, k: usize) -> bool {
    (WGMMA_MIN_M..=128).contains(&m) && n <= 4096 && k >= 8192
}

/// Whether `GemmPath::Auto` takes the warp-specialised kernel
/// ([`super::wgmma_ws`]) at M rows in this kernel's range whatever
/// [`super::wgmma_ws::ws_auto`] says: M = 65..128 where [`wgmma_over_ws`]
/// does not hold. Session 7, second H100 call (same call): M = 100 / 128
/// on 4096x4096 27.91 / 27.98 us against this kernel's 32.70 / 31.22 and
/// dequantize + cuBLAS 35.19 / 34.51 (Auto's old choice at M = 128),
/// 14336x4096 38.41 / 39.81 against 56.66 / 54.00 (old choice: this
/// kernel), 28672x8192 99.77 / 103.53 against 202.28 / 201.52. Every one
/// of these weights has at least 2^24 elements, so smaller weights
/// (below [`super::wgmma_ws::WS_MID_M_AUTO_MIN_ELEMS`]) keep
/// [`wgmma_auto`]'s choice: unmeasured.
pub fn mid_m_takes_ws(m: usize, n: usize, k: usize) -> bool {
    (65..=128).contains(&m)
        && n.saturating_mul(k) >= super::wgmma_ws::WS_MID_M_AUTO_MIN_ELEMS
        && !wgmma_over_ws(m, n, k)
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
    /// Deep ring (session 7): one block per SM and as many stages as
    /// 227 KiB hold with zero points (`_d` entries).
    pub deep: bool,
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
        if !has_zeros && legacy_tail() {
            return match (self.tokens, self.warpgroups, self.deep) {
                (32, _, true) => "w4a16_wgmma_t32w2d_e0",
                (64, _, true) => "w4a16_wgmma_t64w2d_e0",
                (_, _, true) => "w4a16_wgmma_t128w2d_e0",
                (32, _, false) => "w4a16_wgmma_t32w2_e0",
                (64, 4, false) => "w4a16_wgmma_t64w4_e0",
                (64, _, false) => "w4a16_wgmma_t64w2_e0",
                (_, 3, false) => "w4a16_wgmma_t128w3_e0",
                (_, _, false) => "w4a16_wgmma_t128w2_e0",
            };
        }
        if !has_zeros && s8_loop() {
            return match (self.tokens, self.warpgroups, self.deep) {
                (32, _, true) => "w4a16_wgmma_t32w2d_s8",
                (64, _, true) => "w4a16_wgmma_t64w2d_s8",
                (_, _, true) => "w4a16_wgmma_t128w2d_s8",
                (32, _, false) => "w4a16_wgmma_t32w2_s8",
                (64, 4, false) => "w4a16_wgmma_t64w4_s8",
                (64, _, false) => "w4a16_wgmma_t64w2_s8",
                (_, 3, false) => "w4a16_wgmma_t128w3_s8",
                (_, _, false) => "w4a16_wgmma_t128w2_s8",
            };
        }
        if self.deep {
            return match (self.tokens, has_zeros) {
                (32, false) => "w4a16_wgmma_t32w2d",
                (32, true) => "w4a16_wgmma_t32w2dz",
                (64, false) => "w4a16_wgmma_t64w2d",
                (64, true) => "w4a16_wgmma_t64w2dz",
                (_, false) => "w4a16_wgmma_t128w2d",
                (_, true) => "w4a16_wgmma_t128w2dz",
            };
        }
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

/// `MARLIN_WGMMA_DEEP=1` / `=0`: the deep-ring variants (one block per SM,
/// 16 / 14 / 10 stages at 32 / 64 / 128 tokens) or the session-3 rings at
/// every M (wide blocks are never deep); unset, [`wgmma_variant`] decides.
static DEEP_KNOB: Force = Force::new("MARLIN_WGMMA_DEEP");
/// `MARLIN_WGMMA_PREWAIT=0`: the kernel waits for its predecessor before
/// any copy (the session-6 order) instead of issuing its first ring of codes
/// and scales before `griddepcontrol.wait`.
static PREWAIT_KNOB: Switch = Switch::new("MARLIN_WGMMA_PREWAIT", true);
/// `MARLIN_WGMMA_ACT_AHEAD4=1` (opt-in; change 40): the activation copies
/// of the current entries run 4 chunks ahead instead of as far as the
/// weights (the ring depth - 2), so that the deep rings' prologue issues 4
/// chunks of 4-byte copies instead of 12. Change 46 (H100, same call as the
/// default): within ±1.5% at every M = 32 / 64 / 128 point of the four
/// benchmark shapes, so it stays off.
static ACT_AHEAD4_KNOB: Switch = Switch::new("MARLIN_WGMMA_ACT_AHEAD4", false);
/// `MARLIN_WGMMA_LEGACY_TAIL=1` (same-run A/B of change 40): the `_e0`
/// entries, whose prologue loops are unrolled and whose split-K epilogue is
/// session 6's (per-value partials, a fence per thread, one split per
/// round); symmetric weights only (zero-point weights keep the current
/// entries). They live in the diagnostic module ([`DIAG_MODULE`]), built
/// and loaded only when selected.
static LEGACY_TAIL_KNOB: Switch = Switch::new("MARLIN_WGMMA_LEGACY_TAIL", false);

/// `MARLIN_WGMMA_S8_LOOP=1` (same-run A/B of change 52b): the `_s8`
/// entries, session 8's refill code (index products, ring-slot modulo and
/// K clamp per copy) instead of the lean running-state refills; symmetric
/// weights only (zero-point weights keep the current entries). They live in
/// the diagnostic module ([`DIAG_MODULE`]). `MARLIN_WGMMA_LEGACY_TAIL=1`
/// takes precedence.
static S8_LOOP_KNOB: Switch = Switch::new("MARLIN_WGMMA_S8_LOOP", false);

/// Per-thread overrides of the knobs above (tests run both sides of
/// each in one process; the knobs are read once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WgmmaOverride {
    pub deep: Option<bool>,
    pub weights_before_wait: Option<bool>,
    pub legacy_tail: Option<bool>,
    pub act_ahead4: Option<bool>,
    pub s8_loop: Option<bool>,
}

thread_local! {
    static OVERRIDE: Cell<WgmmaOverride> = const {
        Cell::new(WgmmaOverride {
            deep: None,
            weights_before_wait: None,
            legacy_tail: None,
            act_ahead4: None,
            s8_loop: None,
        })
    };
}

fn s8_loop() -> bool {
    OVERRIDE
        .with(|c| c.get().s8_loop)
        .unwrap_or_else(|| S8_LOOP_KNOB.get())
}

/// Sets this thread's [`WgmmaOverride`] (`Default` clears it).
pub fn set_wgmma_override(o: WgmmaOverride) {
    OVERRIDE.with(|c| c.set(o));
}

fn deep_choice() -> Option<bool> {
    OVERRIDE.with(|c| c.get().deep).or_else(|| DEEP_KNOB.get())
}

fn legacy_tail() -> bool {
    OVERRIDE
        .with(|c| c.get().legacy_tail)
        .unwrap_or_else(|| LEGACY_TAIL_KNOB.get())
}

fn act_ahead4() -> bool {
    OVERRIDE
        .with(|c| c.get().act_ahead4)
        .unwrap_or_else(|| ACT_AHEAD4_KNOB.get())
}

fn weights_before_wait() -> bool {
    OVERRIDE
        .with(|c| c.get().weights_before_wait)
        .unwrap_or_else(|| PREWAIT_KNOB.get())
}

/// Bits of the kernels' `flags` argument (`W4G_*` in the source).
const FLAG_WEIGHTS_BEFORE_WAIT: i32 = 1;
const FLAG_PROBE_NO_ACT: i32 = 2;
const FLAG_PROBE_NO_SYNC: i32 = 4;
const FLAG_ACT_AHEAD_4: i32 = 8;
const FLAG_PROBE_NO_MMA: i32 = 16;

/// Diagnostic timing probes, `MARLIN_WGMMA_PROBE=no-act` (no activation
/// copies), `=no-sync` (no activation copies and no block barrier per
/// chunk) or `=no-mma` (every copy, wait and barrier, no dequantisation and
/// no wgmma: the memory pipeline alone; change 46): the output is
/// meaningless; announced once on stderr.
fn probe_flags() -> i32 {
    static PROBE: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *PROBE.get_or_init(|| {
        let raw = std::env::var("MARLIN_WGMMA_PROBE").unwrap_or_default();
        let flags = match raw.trim() {
            "" => 0,
            "no-act" => FLAG_PROBE_NO_ACT,
            "no-sync" => FLAG_PROBE_NO_SYNC,
            "no-mma" => FLAG_PROBE_NO_MMA,
            other => {
                eprintln!(
                    "marlin: ignoring MARLIN_WGMMA_PROBE={other:?} (expected no-act, no-sync or no-mma)"
                );
                0
            }
        };
        if flags != 0 {
            eprintln!(
                "marlin: MARLIN_WGMMA_PROBE={}: wgmma INT4 GEMMs skip work, output meaningless \
                 (DIAGNOSTIC, NOT A RESULT)",
                raw.trim()
            );
        }
        flags
    })
}

/// The variant for M rows and reduction length K: the smallest token tile
/// that holds M, 128 tokens (several token blocks) beyond that. At 128
/// tokens and K >= 8192, 3 warpgroups share one activation tile (H100:
/// 28672x8192 M = 128 240.8 vs 260.8 us, M = 256 389.1 vs 430.1 us; at
/// K = 4096 the 2-warpgroup block was faster: 14336x4096 M = 128 54.7 vs
/// 68.2 us). 4 warpgroups at 64 tokens were not better (4096x4096 M = 64
/// 28.0 vs 21.6 us). `deep`: the deep-ring form (one block per SM), where
/// the block is not wide.
pub fn wgmma_variant(m: usize, k: usize, deep: bool) -> WgmmaVariant {
    let wide = wide_override().unwrap_or(m > 64 && k >= 8192);
    let deep = deep && !wide;
    let (tokens, warpgroups, stages, blocks_per_sm) = match m {
        0..=32 if deep => (32, 2, 16, 1),
        0..=32 => (32, 2, 8, 2),
        33..=64 if wide => (64, 4, 6, 1),
        33..=64 if deep => (64, 2, 14, 1),
        33..=64 => (64, 2, 6, 2),
        _ if wide => (128, 3, 6, 1),
        _ if deep => (128, 2, 10, 1),
        _ => (128, 2, 6, 1),
    };
    WgmmaVariant {
        tokens,
        warpgroups,
        stages,
        blocks_per_sm,
        deep,
    }
}

/// Whether a launch of `blocks` blocks of the session-3 variant runs one
/// block per SM anyway, so that the deep ring (one block per SM, same
/// grid) only adds chunks in flight. Session 7, first H100 call: 4096x4096
/// M = 64 (4 splits, 128 blocks) 18.25 us deep against 20.37; where the
/// 2-block plan fills more than one block per SM the deep plan (fewer
/// splits or two rounds) was slower: 28672x8192 M = 32 178.0 against
/// 111.5, 14336x4096 M = 32 52.7 against 36.8, 4096x14336 M = 32 34.7
/// against 30.2.
fn deep_default(blocks: usize, sm_count: usize) -> bool {
    blocks <= sm_count
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
    // Saturating: M comes from the caller (GemmWorkspace::prepare takes it
    // without a buffer); a huge M gives one split, and `resolve`'s checked
    // sizes refuse the call.
    let by_partials = (32usize.saturating_mul(k_chunks)) / 8usize.saturating_mul(m.max(1));
    let max_splits = (k_chunks / MIN_CHUNKS_PER_SPLIT).min(by_partials).max(1);
    let mut best = (f64::INFINITY, 1);
    for s in 1..=max_splits {
        let rounds = base_blocks.saturating_mul(s).div_ceil(slots.max(1));
        let cost = rounds as f64 / s as f64;
        if cost < best.0 - 1e-9 {
            best = (cost, s);
        }
    }
    best.1
}

/// What the planning reads of a weight (host-testable without a device).
#[derive(Clone, Copy, Debug)]
struct WeightShape {
    n_pad: usize,
    k: usize,
    k_chunks: usize,
    has_zeros: bool,
}

impl WeightShape {
    fn of(w: &Int4Weight) -> Self {
        WeightShape {
            n_pad: w.n_pad,
            k: w.k,
            k_chunks: w.k_chunks,
            has_zeros: w.neg_zero_scales.is_some(),
        }
    }
}

/// Launch shape of the wgmma path for M rows. `GemmPlan::m_tiles` holds
/// tokens / 16 and `n_tiles` the column blocks (64 x warpgroups wide).
/// The grid of variant `v` and the chosen (or forced) splits. Products of
/// the caller's M saturate (`resolve` checks the sizes it allocates).
fn plan_of(
    v: WgmmaVariant,
    m: usize,
    w: WeightShape,
    sm_count: usize,
    splits: Option<usize>,
) -> GemmPlan {
    let m_blocks = m.div_ceil(v.tokens).max(1);
    let n_blocks = w.n_pad.div_ceil(v.n_block());
    let max_splits = w.k_chunks.max(1);
    let splits = splits
        .unwrap_or_else(|| {
            // The partials cap counts the token tile (rows past M are
            // stored too): M = 48 on 4096x4096 took 5 splits (160 blocks,
            // 18.55 us) where M = 64 took 4 (128 blocks, 15.15 us).
            choose_splits(
                n_blocks.saturating_mul(m_blocks),
                sm_count.saturating_mul(v.blocks_per_sm),
                w.k_chunks,
                m_blocks.saturating_mul(v.tokens),
            )
        })
        .clamp(1, max_splits);
    GemmPlan {
        path: GemmPath::Wgmma,
        kernel: v.kernel(w.has_zeros),
        m_tiles: v.tokens / 16,
        m_blocks,
        n_tiles: n_blocks,
        splits,
    }
}

/// Variant and launch shape for M rows: the session-3 variant and its
/// split choice; its deep-ring form with the same grid where that grid is
/// at most one block per SM (`deep_default`; `MARLIN_WGMMA_DEEP` or a
/// [`WgmmaOverride`] forces either, a forced deep variant choosing its
/// splits for one block per SM). `GemmPlan::m_tiles` holds tokens / 16 and
/// `n_tiles` the column blocks (64 x warpgroups wide).
pub fn wgmma_plan_variant(
    m: usize,
    w: &Int4Weight,
    sm_count: usize,
    splits: Option<usize>,
) -> (GemmPlan, WgmmaVariant) {
    plan_variant_for(m, WeightShape::of(w), sm_count, splits, deep_choice())
}

/// [`wgmma_plan_variant`] with the deep-ring choice given (`None`:
/// `deep_default` decides).
fn plan_variant_for(
    m: usize,
    w: WeightShape,
    sm_count: usize,
    splits: Option<usize>,
    forced_deep: Option<bool>,
) -> (GemmPlan, WgmmaVariant) {
    let shallow = wgmma_variant(m, w.k, false);
    let plan = plan_of(shallow, m, w, sm_count, splits);
    let deep = match forced_deep {
        Some(forced) => forced,
        None => deep_default(
            plan.m_blocks
                .saturating_mul(plan.n_tiles)
                .saturating_mul(plan.splits),
            sm_count,
        ),
    };
    let v = wgmma_variant(m, w.k, deep);
    if !v.deep {
        return (plan, shallow);
    }
    let splits = if forced_deep.is_some() {
        splits
    } else {
        Some(plan.splits)
    };
    (plan_of(v, m, w, sm_count, splits), v)
}

/// Launch shape of the wgmma path for M rows ([`wgmma_plan_variant`]).
pub fn wgmma_plan(m: usize, w: &Int4Weight, sm_count: usize, splits: Option<usize>) -> GemmPlan {
    wgmma_plan_variant(m, w, sm_count, splits).0
}

/// A resolved wgmma call: plan, shared memory, scratch sizes.
pub(super) struct WgmmaCall {
    pub plan: GemmPlan,
    pub variant: WgmmaVariant,
    pub smem: u32,
    /// fp32 partials (splits x blocks x the block's tile) and tickets
    /// (blocks) it needs.
    pub partials: usize,
    pub tickets: usize,
    /// Activation type of the call (module of the kernel).
    pub act: Act,
}

pub(super) fn resolve(
    dev: &CudaDevice,
    m: usize,
    w: &Int4Weight,
    splits: Option<usize>,
    act: Act,
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
    let (plan, v) = wgmma_plan_variant(m, w, dev.sm_count(), splits);
    if act != Act::F16 && DIAG_KERNELS.contains(&plan.kernel) {
        return Err(CudaError::Unsupported(format!(
            "wgmma INT4 entry {} (a diagnostic knob's) has f16 activations only",
            plan.kernel
        )));
    }
    // The kernel indexes the scale (and zero-point) rows with 32-bit
    // products (change 52b).
    if u32::try_from(w.scales.len()).is_err() {
        return Err(CudaError::Unsupported(format!(
            "the wgmma INT4 GEMM indexes scales with 32 bits; {} scale words",
            w.scales.len()
        )));
    }
    let smem = u32::try_from(v.smem_bytes(w.neg_zero_scales.is_some()))
        .map_err(|_| CudaError::Shape("shared memory size".into()))?;
    // One fp32 slot per split and block holding the block's whole output
    // tile (tokens x 64 * warpgroups), rows past M included.
    let overflow =
        || CudaError::Shape(format!("M = {m}, N = {}, K = {}: sizes overflow", w.n, w.k));
    let partials = plan
        .splits
        .checked_mul(plan.m_blocks)
        .and_then(|x| x.checked_mul(v.tokens))
        .and_then(|x| x.checked_mul(plan.n_tiles))
        .and_then(|x| x.checked_mul(v.n_block()))
        .ok_or_else(overflow)?;
    let tickets = plan
        .n_tiles
        .checked_mul(plan.m_blocks)
        .ok_or_else(overflow)?;
    Ok(WgmmaCall {
        plan,
        variant: v,
        smem,
        partials,
        tickets,
        act,
    })
}

/// Load the kernel of `call` and size the workspace's split-K scratch.
pub(super) fn prepare(dev: &CudaDevice, call: &WgmmaCall, ws: &mut GemmWorkspace) -> Result<()> {
    if call.plan.splits > 1 {
        ws.reserve(dev, call.partials, call.tickets)?;
    }
    let (module, source) = module_of(call.plan.kernel, call.act);
    dev.function(module, source, call.plan.kernel, call.smem)?;
    Ok(())
}

/// Enqueue the kernel (no allocation, no module load: `prepare` did both).
pub(super) fn launch<T: ActDtype>(
    dev: &CudaDevice,
    a: &CudaView<'_, T>,
    m: usize,
    w: &Int4Weight,
    c: &mut CudaViewMut<'_, T>,
    ws: &mut GemmWorkspace,
    call: &WgmmaCall,
) -> Result<()> {
    if T::ACT != call.act {
        return Err(CudaError::Unsupported(format!(
            "wgmma INT4 call resolved for {} activations, launched with {}",
            call.act.name(),
            T::ACT.name()
        )));
    }
    let p = call.plan;
    let grid = launch_grid(p.m_blocks, p.n_tiles, p.splits)?;
    ws.check_split_k(p.splits, call.partials, call.tickets, (m, w.n), "prepare")?;
    let (module, source) = module_of(p.kernel, call.act);
    let func = dev.function(module, source, p.kernel, call.smem)?;
    let (m_i32, n_i32, k_i32) = (to_i32("M", m)?, to_i32("N", w.n)?, to_i32("K", w.k)?);
    let (n_pad_i32, k_chunks_i32, group_k32_i32, splits_i32) = (
        to_i32("n_pad", w.n_pad)?,
        to_i32("k_chunks", w.k_chunks)?,
        to_i32("group_k32", w.group_k32)?,
        to_i32("splits", p.splits)?,
    );
    let flags = if weights_before_wait() {
        FLAG_WEIGHTS_BEFORE_WAIT
    } else {
        0
    } | if act_ahead4() { FLAG_ACT_AHEAD_4 } else { 0 }
        | probe_flags();
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (call.variant.threads() as u32, 1, 1),
        shared_mem_bytes: call.smem,
    };
    // Programmatic dependent launch (ops::launch, decode step): every
    // W4A16_WGMMA_ENTRY waits in w4g_pdl_enter before touching A, C, the
    // partials or the tickets (with FLAG_WEIGHTS_BEFORE_WAIT it first
    // issues copies of codes and scales: read-only for every kernel).
    let mut launch = KernelLaunch::new(dev, &func, p.kernel);
    arg_operands(&mut launch, a, w, c, (&ws.partials, &ws.tickets))
        .arg(&m_i32)
        .arg(&n_i32)
        .arg(&k_i32)
        .arg(&n_pad_i32)
        .arg(&k_chunks_i32)
        .arg(&group_k32_i32)
        .arg(&splits_i32)
        .arg(&flags);
    // SAFETY: argument types and order match W4A16_WGMMA_ENTRY in
    // kernels/w4a16_wgmma.cu; the caller checked A >= M*K and C >= M*N;
    // partials >= splits*M*n_pad and tickets >= blocks were checked above;
    // the packed buffers cover n_pad x k_chunks (the repack); the kernel
    // reads only the read-only weights before waiting on its predecessor.
    unsafe { launch.launch_pdl(cfg) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{
        choose_splits, plan_variant_for, wgmma_variant, WeightShape, DIAG_KERNELS, SOURCE,
    };

    fn shape(n: usize, k: usize) -> WeightShape {
        WeightShape {
            n_pad: n.next_multiple_of(64),
            k,
            k_chunks: k.div_ceil(64),
            has_zeros: false,
        }
    }

    /// Every variant fits the sm_90 opt-in limit (227 KiB per block) and
    /// its promised resident blocks fit 228 KiB per SM (1 KiB reserved per
    /// block, plus the kernel's static 128 bytes).
    #[test]
    fn variants_fit_shared_memory() {
        for deep in [false, true] {
            for (m, k) in [17, 32, 33, 64, 65, 128, 1024]
                .into_iter()
                .flat_map(|m| [(m, 4096), (m, 8192)])
            {
                let v = wgmma_variant(m, k, deep);
                assert!(v.tokens >= m.min(128), "{v:?}");
                // Wide blocks (3 warpgroups at > 64 tokens, K >= 8192) are
                // never deep.
                assert_eq!(v.deep, deep && !(m > 64 && k >= 8192), "{v:?}");
                if v.deep {
                    assert_eq!(v.blocks_per_sm, 1, "{v:?}");
                }
                for z in [false, true] {
                    let per_block = v.smem_bytes(z) + 1024 + 128;
                    assert!(v.smem_bytes(z) + 128 <= 227 * 1024, "{v:?}");
                    assert!(v.blocks_per_sm * per_block <= 228 * 1024, "{v:?} z={z}");
                }
            }
        }
    }

    /// The planner takes the deep ring only where the session-3 grid is at
    /// most one block per SM, and then keeps that grid (same splits); a
    /// forced deep ring chooses its own splits.
    #[test]
    fn deep_ring_only_for_one_block_per_sm() {
        let w = shape(4096, 4096);
        // M = 64 on 132 SMs: 32 column blocks x 4 splits = 128 blocks.
        let (shallow, _) = plan_variant_for(64, w, 132, None, Some(false));
        assert_eq!(shallow.splits, 4);
        let (plan, v) = plan_variant_for(64, w, 132, None, None);
        assert!(v.deep, "{v:?}");
        assert_eq!(plan.kernel, "w4a16_wgmma_t64w2d");
        assert_eq!(
            (plan.m_blocks, plan.n_tiles, plan.splits),
            (shallow.m_blocks, shallow.n_tiles, shallow.splits)
        );
        // The same weight and M on 64 SMs: 128 blocks are two per SM.
        let (plan, v) = plan_variant_for(64, w, 64, None, None);
        assert!(!v.deep, "{v:?}");
        assert_eq!(plan.kernel, "w4a16_wgmma_t64w2");
        assert!(plan.m_blocks * plan.n_tiles * plan.splits > 64, "{plan:?}");
        // 14336x4096 at M = 32: the 2-block plan fills more than one block
        // per SM (change 40: deep 52.7 us against 36.8).
        let (plan, v) = plan_variant_for(32, shape(14336, 4096), 132, None, None);
        assert!(!v.deep, "{v:?}");
        assert!(plan.m_blocks * plan.n_tiles * plan.splits > 132, "{plan:?}");
        // Forced splits are kept by the deep form too.
        let (plan, v) = plan_variant_for(64, w, 132, Some(2), None);
        assert!(v.deep && plan.splits == 2, "{v:?} {plan:?}");
        // Forced deep: splits for one block per SM of the deep variant
        // (132 slots: still 4 splits x 32 blocks).
        let (plan, v) = plan_variant_for(64, w, 132, None, Some(true));
        assert!(v.deep && plan.splits == 4, "{v:?} {plan:?}");
        // A huge caller M saturates instead of overflowing (resolve then
        // refuses the partials size).
        let (plan, _) = plan_variant_for(usize::MAX, w, 132, None, None);
        assert_eq!(plan.splits, 1);
    }

    /// The entries `module_of` sends to the diagnostic module are exactly
    /// those the source builds under `W4G_DIAG_ENTRIES`, and the production
    /// part builds none of them.
    #[test]
    fn diag_entries_match_the_source() {
        let (prod, diag) = SOURCE
            .split_once("#else   // W4G_DIAG_ENTRIES")
            .expect("diagnostic section");
        let entry = |line: &str| {
            let rest = line.strip_prefix("W4A16_WGMMA_ENTRY_L(")?;
            Some(rest.split(',').next()?.trim().to_string())
        };
        let built: Vec<String> = diag.lines().filter_map(entry).collect();
        assert_eq!(built, DIAG_KERNELS.map(String::from).to_vec());
        for name in DIAG_KERNELS {
            assert!(!prod.contains(&format!("{name},")), "{name}");
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
