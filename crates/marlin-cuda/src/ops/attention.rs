//! Attention of f32 queries against the f16 [`GpuKvCache`] (kernels in
//! `kernels/attention.cu`): flash-decoding for few rows, a tiled
//! online-softmax kernel for many.

use cudarc::driver::{CudaFunction, CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::f16;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use marlin_cpu::ops::RopeStyle;

use super::fused::{check_projections, ActElem, HeadShape, ProjRows};
use super::kv::{GpuKvCache, ATTN_PARTIAL_FLOATS, ATTN_TICKETS};
use super::launch::{max_active_clusters, KernelLaunch};
use super::paged::PagedKvPool;
use super::rope::GpuRope;
use super::{check_len, mul, to_i32, to_u32};
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};
use crate::knobs;

const SOURCE: &str = include_str!("../kernels/attention.cu");
/// One module per head dimension (`ATT_ONLY_HD` defined ahead of the
/// source): a model loads only its head_dim's entries, a fifth of the
/// file's NVRTC time on a cold kernel cache.
const MODULES: [&str; 5] = [
    "decode_attention_hd16",
    "decode_attention_hd32",
    "decode_attention_hd64",
    "decode_attention_hd128",
    "decode_attention_hd256",
];

/// Index of `head_dim` in [`SUPPORTED_HEAD_DIMS`] (and [`MODULES`]).
fn module_index(head_dim: usize) -> Result<usize> {
    SUPPORTED_HEAD_DIMS
        .iter()
        .position(|&d| d == head_dim)
        .ok_or_else(|| CudaError::Unsupported(format!("attention: head_dim {head_dim}")))
}

/// The function `name` of the attention module for `head_dim`.
pub(crate) fn attention_function(
    dev: &CudaDevice,
    head_dim: usize,
    name: &'static str,
    max_dynamic_smem: u32,
) -> Result<CudaFunction> {
    static SOURCES: [OnceLock<String>; 5] = [const { OnceLock::new() }; 5];
    let i = module_index(head_dim)?;
    let source = SOURCES[i].get_or_init(|| {
        let stamps = if attn_stamps_enabled() {
            "#define ATT_STAMPS 1\n"
        } else {
            ""
        };
        let ring = match attn_ring_keys() {
            Some(keys) if head_dim <= 128 => format!("#define ATT_RING_KEYS {keys}\n"),
            _ => String::new(),
        };
        format!("#define ATT_ONLY_HD {head_dim}\n{stamps}{ring}{SOURCE}")
    });
    dev.function(MODULES[i], source, name, max_dynamic_smem)
}
const THREADS: u32 = 128;
/// Head dimensions with compiled kernels.
pub const SUPPORTED_HEAD_DIMS: [usize; 5] = [16, 32, 64, 128, 256];
/// Head dimensions of the prefill kernel; the others run every row count
/// through the decode kernel (correct for any row mapping, slower).
pub(crate) const PREFILL_HEAD_DIMS: [usize; 3] = [64, 128, 256];
/// `attention` takes the decode kernel up to this many rows (or the cache's
/// sequence count, if larger): at most one row per sequence in batched
/// decode; short prefill chunks re-read their keys per row there, which
/// costs less than an under-filled prefill launch.
pub const DECODE_MAX_ROWS: usize = 16;
/// Most key splits per (row, kv head) of the decode kernel (ATT_MAX_SPLITS
/// in the source: the merge's shared memory).
const MAX_SPLITS: usize = 64;
/// Keys per split (of the cache's capacity) below which splitting further
/// does not pay, unless `MARLIN_CUDA_ATTN_MIN_SPLIT_KEYS` sets another
/// value. It binds at small batches of short caches only (batch 1 of
/// Llama-8B at 707 positions: 15 splits instead of the device's 64; batch
/// 8 takes 8 splits by occupancy either way): fewer, longer splits keep
/// the merge within its first round trip (the partials of the first 16
/// splits load together with the (max, sum) pairs) and launch fewer
/// blocks, at the price of a key loop that continues after the PDL wait
/// (each block reads 16 keys before it). A cap on the split count would
/// do the same at 512 positions but starve long caches (16 splits of 256
/// keys at 4096 positions: one block per SM streaming the cache).
const MIN_KEYS_PER_SPLIT: usize = 48;
/// Most blocks of a thread-block cluster (ATT_CLUSTER_MAX in the source;
/// 16 is sm_90's non-portable maximum): a split count up to this merges
/// through distributed shared memory (see [`attn_cluster_enabled`]).
const ATT_CLUSTER_MAX: usize = 16;
/// Bits of the decode kernels' `flags` parameter (ATT_FLAG_* in the source).
const FLAG_EARLY_KV: i32 = 1;
const FLAG_STAGE_KV: i32 = 2;
/// The split length's alignment in keys sits at bit 8 of the flags.
const FLAG_ALIGN_SHIFT: i32 = 8;
/// Query vectors per prefill block and keys per shared-memory tile (keep in
/// sync with ATT_QV / ATT_KT in the source).
const PREFILL_QV: usize = 32;
const PREFILL_KT: usize = 32;
/// Query vectors per block of the tensor-core prefill kernel (`AttTc::QV`:
/// 4 warps x the mma's 16 rows).
pub(crate) const PREFILL_TC_QV: usize = 64;

/// Head layout, scaling and masking of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    pub n_heads: usize,
    /// Query head `h` reads kv head `h / (n_heads / n_kv_heads)`.
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `q·k` before the softmax (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// A query at position p sees keys `p - window < j <= p`; None: `j <= p`.
    pub window: Option<usize>,
    /// Scores become `cap * tanh(score / cap)` (after `scale`).
    pub softcap: Option<f32>,
}

/// Names in the messages of [`check_attn_scalars`] (static: the checks run
/// once per layer and step, the messages are formatted only on failure).
pub(crate) struct AttnNames {
    /// Message prefix ("attention", "paged attention").
    pub what: &'static str,
    /// What holds the keys ("cache", "pool").
    pub kv: &'static str,
    pub window: &'static str,
    pub q: &'static str,
    pub out: &'static str,
    pub row_seq: &'static str,
    pub row_pos: &'static str,
    pub rows: &'static str,
}

const CONTIGUOUS_NAMES: AttnNames = AttnNames {
    what: "attention",
    kv: "cache",
    window: "attention window",
    q: "attention q",
    out: "attention out",
    row_seq: "attention row_seq",
    row_pos: "attention row_pos",
    rows: "attention rows",
};

/// The checked scalars of an attention launch.
pub(crate) struct AttnScalars {
    /// Query heads per kv head.
    pub group: usize,
    /// `scale`, times log2(e) without a soft-cap (the kernels then work in
    /// the log2 domain from the query on).
    pub q_scale: f32,
    /// 0: none.
    pub softcap: f32,
    /// 0: none.
    pub window: i32,
}

/// Launch-argument checks shared by the contiguous-cache attention and the
/// paged one (`paged::check_params`): head layout against the KV storage's
/// (n_layers, n_kv_heads, head_dim), the head size against
/// `supported_head_dims` where given, the layer, a finite scale, a positive
/// finite soft-cap, a non-empty window (clipped to `window_cap`), and
/// `lens` = (q, out, row_seq, row_pos) lengths for `rows` rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_attn_scalars(
    names: &AttnNames,
    p: &AttnParams,
    (n_layers, n_kv_heads, head_dim): (usize, usize, usize),
    supported_head_dims: Option<&[usize]>,
    layer: usize,
    window_cap: usize,
    rows: usize,
    lens: (usize, usize, usize, usize),
) -> Result<AttnScalars> {
    let what = names.what;
    let bad = |m: String| Err(CudaError::Shape(format!("{what}: {m}")));
    if p.n_heads == 0 || p.n_kv_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) {
        return bad(format!(
            "{} query heads cannot share {} kv heads",
            p.n_heads, p.n_kv_heads
        ));
    }
    let kv = names.kv;
    if p.n_kv_heads != n_kv_heads || p.head_dim != head_dim {
        return bad(format!(
            "{} kv heads x {} dims, the {kv} has {n_kv_heads} x {head_dim}",
            p.n_kv_heads, p.head_dim
        ));
    }
    if let Some(dims) = supported_head_dims {
        if !dims.contains(&p.head_dim) {
            return Err(CudaError::Unsupported(format!(
                "{what}: head_dim {} (kernels exist for {dims:?})",
                p.head_dim
            )));
        }
    }
    if layer >= n_layers {
        return bad(format!("layer {layer} of a {kv} with {n_layers} layers"));
    }
    if !p.scale.is_finite() {
        return bad(format!("scale {}", p.scale));
    }
    let softcap = match p.softcap {
        Some(c) if !(c.is_finite() && c > 0.0) => return bad(format!("softcap {c}")),
        Some(c) => c,
        None => 0.0,
    };
    let window = match p.window {
        Some(0) => return bad("window 0 sees no key".into()),
        Some(w) => to_i32(names.window, w.min(window_cap))?,
        None => 0,
    };
    let n = mul(names.q, rows, mul(names.q, p.n_heads, p.head_dim)?)?;
    let (q_len, out_len, seq_len, pos_len) = lens;
    check_len(names.q, q_len, n)?;
    check_len(names.out, out_len, n)?;
    check_len(names.row_seq, seq_len, rows)?;
    check_len(names.row_pos, pos_len, rows)?;
    to_u32(names.rows, rows)?;
    // Without a cap the kernels work in the log2 domain from the query on;
    // with one, after the tanh (which needs the natural-domain score).
    let q_scale = if softcap > 0.0 {
        p.scale
    } else {
        p.scale * std::f32::consts::LOG2_E
    };
    Ok(AttnScalars {
        group: p.n_heads / p.n_kv_heads,
        q_scale,
        softcap,
        window,
    })
}

/// Validated launch parameters shared by both kernels.
pub(crate) struct Checked {
    group: usize,
    q_scale: f32,
    softcap: f32,
    window: i32,
    ints: [i32; 6], // n_heads, n_kv_heads, group, n_layers, layer, ...
}

fn check(
    p: &AttnParams,
    cache_dims: (usize, usize, usize, usize), // (n_layers, n_kv_heads, head_dim, capacity)
    layer: usize,
    rows: usize,
    lens: (usize, usize, usize, usize), // (q, out, row_seq, row_pos)
) -> Result<Checked> {
    let (n_layers, n_kv_heads, head_dim, capacity) = cache_dims;
    let AttnScalars {
        group,
        q_scale,
        softcap,
        window,
    } = check_attn_scalars(
        &CONTIGUOUS_NAMES,
        p,
        (n_layers, n_kv_heads, head_dim),
        Some(&SUPPORTED_HEAD_DIMS),
        layer,
        // A window covering the whole cache is no window.
        capacity,
        rows,
        lens,
    )?;
    Ok(Checked {
        group,
        q_scale,
        softcap,
        window,
        ints: [
            to_i32("attention n_heads", p.n_heads)?,
            to_i32("attention n_kv_heads", p.n_kv_heads)?,
            group as i32,
            n_layers as i32,
            layer as i32,
            0,
        ],
    })
}

#[allow(clippy::too_many_arguments)]
fn checked<T: ActElem>(
    p: &AttnParams,
    q: &CudaSlice<f32>,
    cache: &GpuKvCache,
    layer: usize,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
    out: &CudaSlice<T>,
) -> Result<Checked> {
    check(
        p,
        (
            cache.n_layers(),
            cache.n_kv_heads(),
            cache.head_dim(),
            cache.capacity(),
        ),
        layer,
        rows,
        (q.len(), out.len(), row_seq.len(), row_pos.len()),
    )
}

/// `out (rows, n_heads, head_dim) = softmax(scale·q·Kᵀ [soft-capped] + mask)·V`
/// for queries `q (rows, n_heads, head_dim)`: row `r` attends the keys `j`
/// of sequence `row_seq[r]` with `j <= row_pos[r]` (and
/// `j > row_pos[r] - window`) of layer `layer`. Rows whose sequence or
/// position is outside the cache get zeros. One contract for prefill (rows
/// = one sequence's new tokens) and batched decode (one row per sequence):
/// the decode kernel runs up to `max(DECODE_MAX_ROWS, n_seqs)` rows, the
/// prefill kernel above; both are correct for any row mapping.
#[allow(clippy::too_many_arguments)]
pub fn attention<T: ActElem>(
    dev: &CudaDevice,
    p: &AttnParams,
    q: &CudaSlice<f32>,
    cache: &GpuKvCache,
    layer: usize,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    if rows <= DECODE_MAX_ROWS.max(cache.n_seqs()) || !PREFILL_HEAD_DIMS.contains(&p.head_dim) {
        attention_decode(dev, p, q, cache, layer, rows, row_seq, row_pos, out)
    } else {
        attention_prefill(dev, p, q, cache, layer, rows, row_seq, row_pos, out)
    }
}

/// Query heads per decode block for a GQA group: the next power of two, at
/// most 8 (larger groups take several head chunks). The paged kernel
/// (ops/paged.rs) uses the same.
pub(crate) fn decode_heads_per_block(group: usize) -> usize {
    group.next_power_of_two().min(8)
}

/// Key splits per (row, kv head, head chunk): as many blocks as the device
/// holds at once (`sm_count` x `per_sm`, the kernel's occupancy), rounded
/// down to whole splits so that the grid runs in one wave (a second,
/// partial wave would cost a whole block's latency-bound time: batch 32
/// at 4 blocks per SM took 3 splits = 1.45 waves), at most [`MAX_SPLITS`],
/// none shorter than `min_keys` keys at full capacity, and the partials
/// must fit the workspace.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_splits(
    sm_count: usize,
    per_sm: usize,
    rows: usize,
    n_heads: usize,
    blocks_per_split: usize,
    head_dim: usize,
    capacity: usize,
    min_keys: usize,
) -> usize {
    let want = (per_sm.max(1) * sm_count) / blocks_per_split.max(1);
    let by_keys = capacity.div_ceil(min_keys.max(1)).max(1);
    let per_split = rows
        .saturating_mul(n_heads)
        .saturating_mul(head_dim + 2)
        .max(1);
    let by_workspace = ATTN_PARTIAL_FLOATS / per_split;
    want.min(MAX_SPLITS).min(by_keys).min(by_workspace).max(1)
}

/// The flash-decoding kernel (see [`attention`]), whatever the row count.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode<T: ActElem>(
    dev: &CudaDevice,
    p: &AttnParams,
    q: &CudaSlice<f32>,
    cache: &GpuKvCache,
    layer: usize,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    let c = checked(p, q, cache, layer, rows, row_seq, row_pos, out)?;
    decode_launch(
        dev,
        p,
        &c,
        DecodeQueries::Roped(q.slice(..)),
        DecodeKv::Slots(cache),
        rows,
        &row_seq.slice(..),
        &row_pos.slice(..),
        &mut out.slice_mut(..),
    )
}

/// Whether the decode attention kernels are compiled with timing stamps
/// (`ATT_STAMPS` in the source: thread 0 of each block writes the global
/// timer and its SM's clock at each point of its post-wait chain) for
/// [`attn_stamp_report`]: only when `MARLIN_CUDA_ATTN_STAMPS=1` (a
/// measurement build: the stamps' stores are on the chain they time; read
/// once, before the first attention launch).
pub fn attn_stamps_enabled() -> bool {
    static ON: knobs::Switch = knobs::Switch::new("MARLIN_CUDA_ATTN_STAMPS", false);
    ON.get()
}

/// Stamp points of the decode kernels (ATT_STAMP_* in the source).
const STAMP_NAMES: [&str; 9] = [
    "entry", "waited", "roped", "keys", "merged", "ticket", "done", "exit", "key1",
];
/// The points reported per split too (`keys`, `ticket`).
const STAMP_BY_SPLIT: [usize; 2] = [3, 5];
const STAMP_LAYERS: usize = 64;
const STAMP_BLOCKS: usize = 1024;

/// Where the post-wait chain of the decode attention launches of the
/// `head_dim` module went, from the stamps of each layer's last launch
/// (`MARLIN_CUDA_ATTN_STAMPS=1`; None when stamps are off or the module
/// never ran). Per layer, times are taken from the first block's return
/// from its PDL wait (`t0`); each line gives, over the layers, the median
/// of the first block's, the median block's and the last block's time at
/// that point, and the median over blocks of the SM-clock cycles since
/// their own wait returned.
pub fn attn_stamp_report(dev: &CudaDevice, head_dim: usize) -> Result<Option<String>> {
    if !attn_stamps_enabled() {
        return Ok(None);
    }
    let Some(bytes) = dev.module_global_bytes(MODULES[module_index(head_dim)?], "att_stamps")?
    else {
        return Ok(None);
    };
    let points = STAMP_NAMES.len();
    // Global timer and clock per point, then the block index.
    let per_block = 2 * points + 1;
    if bytes.len() != STAMP_LAYERS * STAMP_BLOCKS * per_block * 8 {
        return Err(CudaError::Shape(format!(
            "att_stamps: {} bytes, expected {}",
            bytes.len(),
            STAMP_LAYERS * STAMP_BLOCKS * per_block * 8
        )));
    }
    let words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    Ok(stamp_summary(&words, head_dim))
}

/// The report of [`attn_stamp_report`] from the stamp words
/// (`[layer][block][global timer x points, clock x points, block index]`),
/// None when no layer has a stamped block.
fn stamp_summary(words: &[u64], head_dim: usize) -> Option<String> {
    use std::fmt::Write as _;
    let points = STAMP_NAMES.len();
    let per_block = 2 * points + 1;
    let median = |v: &mut Vec<f64>| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Per point: over layers, (first, median, last) block in µs after t0 and
    // the median block's cycles since its own wait.
    let mut per_point: Vec<[Vec<f64>; 4]> = (0..points).map(|_| Default::default()).collect();
    // [point of STAMP_BY_SPLIT][split]: times over layers and kv heads.
    let mut by_split: Vec<Vec<Vec<f64>>> = vec![Vec::new(); STAMP_BY_SPLIT.len()];
    // [point of STAMP_BY_SPLIT][alone on its SM, beside another block of
    // the launch]: times over layers and blocks.
    let mut by_sharing: Vec<[Vec<f64>; 2]> = vec![Default::default(); STAMP_BY_SPLIT.len()];
    let mut layers = 0usize;
    let mut blocks_seen = 0usize;
    for layer in 0..STAMP_LAYERS {
        let rows: Vec<&[u64]> = (0..STAMP_BLOCKS)
            .map(|b| {
                let at = (layer * STAMP_BLOCKS + b) * per_block;
                &words[at..at + per_block]
            })
            .filter(|r| r[1] != 0)
            .collect();
        if rows.is_empty() {
            continue;
        }
        // Only the blocks of this layer's last launch: waits within 200 µs
        // of the newest (stale blocks of an earlier, larger grid are older).
        let newest = rows.iter().map(|r| r[1]).max().unwrap_or(0);
        let rows: Vec<&[u64]> = rows
            .into_iter()
            .filter(|r| newest - r[1] < 200_000)
            .collect();
        let Some(t0) = rows.iter().map(|r| r[1]).min() else {
            continue;
        };
        layers += 1;
        blocks_seen = blocks_seen.max(rows.len());
        let sm_of = |r: &[u64]| r[2 * points] >> 32;
        let mut per_sm = std::collections::HashMap::<u64, usize>::new();
        for r in &rows {
            *per_sm.entry(sm_of(r)).or_default() += 1;
        }
        for (p, acc) in per_point.iter_mut().enumerate() {
            // A point of this launch lies on the right side of the block's
            // wait and near it (a point some blocks pass only, such as the
            // merge, may hold an older launch's stamp).
            let current = |r: &&&[u64]| {
                let (at, waited) = (r[p], r[1]);
                at != 0
                    && at.abs_diff(waited) < 200_000
                    && (if p == 0 { at <= waited } else { at >= waited })
            };
            let cur: Vec<&[u64]> = rows.iter().filter(current).copied().collect();
            if cur.is_empty() {
                continue;
            }
            let after_t0 = |r: &[u64]| (r[p] as f64 - t0 as f64) / 1e3;
            let mut at: Vec<f64> = cur.iter().map(|r| after_t0(r)).collect();
            let mut cycles: Vec<f64> = cur
                .iter()
                .map(|r| r[points + p] as f64 - r[points + 1] as f64)
                .collect();
            if let Some(q) = STAMP_BY_SPLIT.iter().position(|&b| b == p) {
                for r in &cur {
                    let split = (r[2 * points] & 0x3ff) as usize;
                    if by_split[q].len() <= split {
                        by_split[q].resize(split + 1, Vec::new());
                    }
                    by_split[q][split].push(after_t0(r));
                    let shared = per_sm.get(&sm_of(r)).copied().unwrap_or(0) > 1;
                    by_sharing[q][usize::from(shared)].push(after_t0(r));
                }
            }
            at.sort_by(f64::total_cmp);
            acc[0].push(at[0]);
            acc[1].push(at[at.len() / 2]);
            acc[2].push(at[at.len() - 1]);
            acc[3].push(median(&mut cycles));
        }
    }
    if layers == 0 {
        return None;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "attention stamps (head_dim {head_dim}, {layers} layers, up to {blocks_seen} blocks): \
         us after the first block's PDL wait returned, median over layers"
    );
    let _ = writeln!(
        out,
        "  point       first block  median block  last block  median cycles since own wait"
    );
    for (p, acc) in per_point.iter_mut().enumerate() {
        if acc[0].is_empty() {
            continue;
        }
        let first = median(&mut acc[0]);
        let mid = median(&mut acc[1]);
        let last = median(&mut acc[2]);
        let cyc = median(&mut acc[3]);
        let _ = writeln!(
            out,
            "  {:<10} {first:>12.2} {mid:>13.2} {last:>11.2} {cyc:>14.0}",
            STAMP_NAMES[p]
        );
    }
    for (q, splits) in by_split.iter_mut().enumerate() {
        let _ = write!(out, "  {} by split:", STAMP_NAMES[STAMP_BY_SPLIT[q]]);
        for v in splits.iter_mut() {
            let _ = write!(out, " {:.2}", median(v));
        }
        let _ = writeln!(out);
    }
    for (q, groups) in by_sharing.iter_mut().enumerate() {
        let (alone, shared) = (groups[0].len(), groups[1].len());
        let _ = writeln!(
            out,
            "  {} alone on its SM: {:.2} ({alone} block-layers), beside another of the launch: {:.2} ({shared})",
            STAMP_NAMES[STAMP_BY_SPLIT[q]],
            median(&mut groups[0]),
            median(&mut groups[1]),
        );
    }
    Some(out)
}

/// Whether the decoder fuses QK-norm + RoPE + the KV write into decode
/// attention ([`attention_decode_rope`]): not when `MARLIN_CUDA_ATTN_ROPE=0`
/// (measuring the difference; read once).
pub fn attn_rope_fusion_enabled() -> bool {
    static ON: knobs::Switch = knobs::Switch::new("MARLIN_CUDA_ATTN_ROPE", true);
    ON.get()
}

/// Whether the fused decode attention reads the keys of earlier positions
/// before its PDL wait (their DRAM round trip overlapping the previous
/// kernel): not when `MARLIN_CUDA_ATTN_EARLY_KV=0` (measuring the
/// difference; read once).
fn attn_early_kv_enabled() -> bool {
    static ON: knobs::Switch = knobs::Switch::new("MARLIN_CUDA_ATTN_EARLY_KV", true);
    ON.get()
}

/// Whether the decode kernel streams its keys and values through a ring of
/// keys per lane group in shared memory (`cp.async`, 4 keys since session
/// 23, 6 before: [`attn_ring_keys`]; the ring's first keys before the PDL
/// wait where the fused entry reads early) instead of 2 in registers: not
/// when `MARLIN_CUDA_ATTN_STAGE_KV=0` (measuring the difference; read
/// once). Longer splits keep twice the bytes in flight. Same
/// keys in the same order through the same key step, so the same results
/// bit for bit (gpu_ops `attention_matches_reference` compares the two
/// through [`AttnOverride::stage_kv`]).
fn attn_stage_kv_enabled() -> bool {
    static ON: knobs::Switch = knobs::Switch::new("MARLIN_CUDA_ATTN_STAGE_KV", true);
    OVERRIDE
        .with(|c| c.get().stage_kv)
        .unwrap_or_else(|| ON.get())
}

/// Whether the splits of a decode launch with 2..=16 splits run as one
/// thread-block cluster per (row, head chunk) on sm_90+ and merge through
/// distributed shared memory (no partials in global memory, no fence, no
/// ticket, the merge spread over the cluster's blocks): only when
/// `MARLIN_CUDA_ATTN_CLUSTER=1` (opt-in; read once). Measured slower in
/// the decode step (docs/CUDA.md change 42: +90-115 us per batch-1 graph
/// step, +290-340 at batch 8, even at 32). Larger split counts, and
/// devices that cannot place such a cluster, take the ticket merge.
fn attn_cluster_enabled() -> bool {
    static ON: knobs::Switch = knobs::Switch::new("MARLIN_CUDA_ATTN_CLUSTER", false);
    OVERRIDE
        .with(|c| c.get().cluster)
        .unwrap_or_else(|| ON.get())
}

/// Per-thread overrides of the decode knobs above (tests run both sides of
/// each in one process; the knobs are read once). `None` leaves the knob.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttnOverride {
    /// `MARLIN_CUDA_ATTN_STAGE_KV`: the shared-memory key ring (true) or
    /// the register ring (false).
    pub stage_kv: Option<bool>,
    /// `MARLIN_CUDA_ATTN_CLUSTER`: the cluster merge where the launch
    /// allows it (true) or always the ticket merge (false).
    pub cluster: Option<bool>,
    /// `MARLIN_CUDA_ATTN_MAX_SPLITS`: at most this many key splits (long
    /// splits: long key loops).
    pub max_splits: Option<usize>,
}

thread_local! {
    static OVERRIDE: Cell<AttnOverride> = const {
        Cell::new(AttnOverride {
            stage_kv: None,
            cluster: None,
            max_splits: None,
        })
    };
}

/// Sets this thread's [`AttnOverride`] (`Default` clears it).
pub fn set_attn_override(o: AttnOverride) {
    OVERRIDE.with(|c| c.set(o));
}

/// Decode launches of this process that ran as thread-block clusters
/// (merging through distributed shared memory): lets a test tell that the
/// cluster merge ran rather than the ticket merge it falls back to.
static CLUSTER_LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// How many decode attention launches of this process, on any thread, ran
/// with the cluster merge (see [`AttnOverride::cluster`]).
pub fn attn_cluster_launches() -> u64 {
    CLUSTER_LAUNCHES.load(Ordering::Relaxed)
}

/// Whether decode kernel `func` can run clusters of `splits` blocks with
/// `cfg` on `dev` (at least one such cluster fits the device).
fn cluster_fits(
    dev: &CudaDevice,
    func: &CudaFunction,
    name: &'static str,
    splits: usize,
    cfg: &LaunchConfig,
) -> Result<bool> {
    let Ok(cluster_x) = u32::try_from(splits) else {
        return Ok(false);
    };
    Ok(max_active_clusters(dev, func, name, (cluster_x, 1, 1), cfg)? > 0)
}

/// Blocks per SM that the decode split count aims at, when
/// `MARLIN_CUDA_ATTN_BLOCKS_PER_SM` sets it (at most the kernel's
/// occupancy; read once): fewer blocks leave room on the SMs for the next
/// GEMM's blocks to become resident and stream their weights while
/// attention runs. None: the occupancy.
fn attn_blocks_per_sm_override() -> Option<usize> {
    static KNOB: knobs::Count = knobs::Count::new("MARLIN_CUDA_ATTN_BLOCKS_PER_SM", 1..=64);
    KNOB.get()
}

/// Keys per lane group in the decode kernels' shared-memory ring, when
/// `MARLIN_CUDA_ATTN_RING=n` (1..=10; read once, before the module's first
/// load) sets a depth other than the source's 4 (a measurement knob: only
/// the ring's keys are read before the PDL wait, and the ring's shared
/// memory decides what of the next GEMM fits beside the attention blocks;
/// docs/CUDA.md change 77). Head dims above 128 keep the default (their
/// query staging leaves no room for 10 in 48 KiB of static shared memory).
fn attn_ring_keys() -> Option<usize> {
    static KNOB: knobs::Count = knobs::Count::new("MARLIN_CUDA_ATTN_RING", 1..=10);
    KNOB.get()
}

/// Keys a decode split's length is rounded up to (of the row's keys
/// divided by the split count): `MARLIN_CUDA_ATTN_SPLIT_ALIGN=n` (1..=256),
/// default 16 (sessions 1-20; 1 and 8 measured no faster, docs/CUDA.md
/// change 75 (j)).
fn attn_split_align() -> i32 {
    static KNOB: knobs::Count = knobs::Count::new("MARLIN_CUDA_ATTN_SPLIT_ALIGN", 1..=256);
    KNOB.get().map_or(16, |n| n as i32)
}

/// The shortest decode split in keys of the cache's capacity:
/// `MARLIN_CUDA_ATTN_MIN_SPLIT_KEYS` (1..=4096; read once), else
/// [`MIN_KEYS_PER_SPLIT`].
fn attn_min_split_keys() -> usize {
    static KNOB: knobs::Count = knobs::Count::new("MARLIN_CUDA_ATTN_MIN_SPLIT_KEYS", 1..=4096);
    KNOB.get().unwrap_or(MIN_KEYS_PER_SPLIT)
}

/// A cap on the decode split count below [`MAX_SPLITS`], when
/// `MARLIN_CUDA_ATTN_MAX_SPLITS` sets one (1..=64; read once): fewer
/// splits shorten the merge (the last block loads every split's partial
/// output) and lengthen each block's key loop. None: [`MAX_SPLITS`].
fn attn_max_splits_override() -> Option<usize> {
    static KNOB: knobs::Count = knobs::Count::new("MARLIN_CUDA_ATTN_MAX_SPLITS", 1..=MAX_SPLITS);
    OVERRIDE
        .with(|c| c.get().max_splits)
        .map(|n| n.clamp(1, MAX_SPLITS))
        .or_else(|| KNOB.get())
}

/// One layer's projections and what [`super::qkv_rope_kv`] applies to
/// them, for [`attention_decode_rope`].
pub struct RopeInputs<'a, 'b, T> {
    pub q: &'a ProjRows<'b, T>,
    pub k: &'a ProjRows<'b, T>,
    pub v: &'a ProjRows<'b, T>,
    /// (q weight, k weight), each head_dim, plus `w_offset`.
    pub qk_norm: Option<(&'a CudaSlice<f32>, &'a CudaSlice<f32>)>,
    pub eps: f32,
    pub w_offset: f32,
    pub rope: &'a GpuRope,
}

/// [`super::qkv_rope_kv`] into the cache followed by [`attention_decode`],
/// in one launch: every block ropes its query heads from the projection
/// rows, and the block whose keys include the row's position ropes this
/// step's key and writes it and the value into layer `layer` of `cache`
/// (rows with a sequence or position out of range write nothing and get
/// zeros). The rows must belong to distinct sequences (a decode step): a
/// row never sees a key that another row of the same call writes. The
/// keys and values of earlier positions are read before the kernel's PDL
/// wait (unless `MARLIN_CUDA_ATTN_EARLY_KV=0`), so they must have been
/// written by work that completed before this launch could start, never
/// by a launch of the same PDL chain: a kernel that triggers its
/// dependents before its own wait lets its successor start while its
/// predecessor still runs, so any earlier PDL launch may still be
/// running. In a decode step earlier steps wrote them, and the host copy
/// of `row_seq` / `row_pos` before each step (a stream-ordered copy that
/// no PDL launch overlaps) separates the steps.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_rope<T: ActElem>(
    dev: &CudaDevice,
    p: &AttnParams,
    inp: &RopeInputs<'_, '_, T>,
    cache: &mut GpuKvCache,
    layer: usize,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    decode_rope_launch(
        dev,
        p,
        inp,
        DecodeKv::Slots(cache),
        layer,
        rows,
        row_seq,
        row_pos,
        out,
    )
}

/// The fused decode launch of [`attention_decode_rope`] and
/// [`super::paged_attention_decode_rope`]: the projections and scalars
/// checked against the store's geometry, then the kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_rope_launch<T: ActElem>(
    dev: &CudaDevice,
    p: &AttnParams,
    inp: &RopeInputs<'_, '_, T>,
    kv: DecodeKv<'_>,
    layer: usize,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    let shape = HeadShape {
        n_heads: p.n_heads,
        n_kv_heads: p.n_kv_heads,
        head_dim: p.head_dim,
    };
    let strides = check_projections(inp.q, inp.k, inp.v, rows, shape, inp.qk_norm, inp.rope)?;
    let q_len = mul(
        "attention q",
        rows,
        mul("attention q", p.n_heads, p.head_dim)?,
    )?;
    let c = kv.check(
        p,
        layer,
        rows,
        (q_len, out.len(), row_seq.len(), row_pos.len()),
    )?;
    decode_launch(
        dev,
        p,
        &c,
        DecodeQueries::Proj(inp, strides),
        kv,
        rows,
        &row_seq.slice(..),
        &row_pos.slice(..),
        &mut out.slice_mut(..),
    )
}

/// The queries of a decode launch: roped f32 rows, or projection rows (and
/// their q / kv row strides) that the kernel ropes itself.
pub(crate) enum DecodeQueries<'a, 'b, 'c, T> {
    Roped(CudaView<'a, f32>),
    Proj(&'a RopeInputs<'b, 'c, T>, [i32; 2]),
}

/// The keys and values a decode launch reads (and, fused, writes): a
/// contiguous per-sequence cache, or the paged pool through its current
/// block tables (`super::paged::paged_attention` and
/// `paged_attention_decode_rope`; roped queries with f32 output, or the
/// fused entries).
pub(crate) enum DecodeKv<'a> {
    Slots(&'a GpuKvCache),
    Paged(&'a PagedKvPool),
}

impl DecodeKv<'_> {
    /// (K, V, workspace: partials then tickets).
    fn buffers(&self) -> (&CudaSlice<f16>, &CudaSlice<f16>, &CudaSlice<f32>) {
        match self {
            DecodeKv::Slots(c) => (&c.k, &c.v, &c.workspace),
            DecodeKv::Paged(p) => (&p.k, &p.v, &p.workspace),
        }
    }

    /// Positions a row may address: the cache's capacity, or what the
    /// widest block table covers.
    fn positions(&self) -> usize {
        match self {
            DecodeKv::Slots(c) => c.capacity(),
            DecodeKv::Paged(p) => p.table_positions(),
        }
    }

    /// The launch parameters checked against this store (see [`check`]).
    pub(crate) fn check(
        &self,
        p: &AttnParams,
        layer: usize,
        rows: usize,
        lens: (usize, usize, usize, usize), // (q, out, row_seq, row_pos)
    ) -> Result<Checked> {
        let (n_layers, n_kv_heads, head_dim) = match self {
            DecodeKv::Slots(c) => (c.n_layers(), c.n_kv_heads(), c.head_dim()),
            DecodeKv::Paged(p) => (p.n_layers(), p.n_kv_heads(), p.head_dim()),
        };
        let dims = (n_layers, n_kv_heads, head_dim, self.positions().max(1));
        check(p, dims, layer, rows, lens)
    }
}

/// The decode kernel launch of [`attention_decode`],
/// [`attention_decode_rope`] and their paged forms (arguments checked by
/// the caller).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_launch<T: ActElem>(
    dev: &CudaDevice,
    p: &AttnParams,
    c: &Checked,
    queries: DecodeQueries<'_, '_, '_, T>,
    kv: DecodeKv<'_>,
    rows: usize,
    row_seq: &CudaView<'_, i32>,
    row_pos: &CudaView<'_, i32>,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let gt = decode_heads_per_block(c.group);
    let head_chunks = c.group.div_ceil(gt);
    let grid_y = p.n_kv_heads * head_chunks;
    let rope = matches!(queries, DecodeQueries::Proj(..));
    let paged = matches!(kv, DecodeKv::Paged(_));
    let name = decode_kernel_name(p.head_dim, gt, T::IS_F16, rope, paged)?;
    let func = attention_function(dev, p.head_dim, name, 0)?;
    let per_sm = blocks_per_sm(&func, name)?;
    let per_sm = attn_blocks_per_sm_override().map_or(per_sm, |n| n.min(per_sm));
    // One ticket per (row, block column) for the merge of the splits: more
    // columns than tickets run unsplit (never at decode sizes).
    let splits = if rows * grid_y <= ATTN_TICKETS {
        decode_splits(
            dev.sm_count(),
            per_sm,
            rows,
            p.n_heads,
            rows * grid_y,
            p.head_dim,
            kv.positions(),
            attn_min_split_keys(),
        )
    } else {
        1
    };
    let splits = attn_max_splits_override().map_or(splits, |n| splits.min(n));
    if grid_y > 65_535 || rows > 65_535 {
        return Err(CudaError::Shape(format!(
            "attention: grid of {grid_y} x {rows} blocks exceeds CUDA limits"
        )));
    }
    let [n_heads, n_kv_heads, group, n_layers, layer_i, _] = c.ints;
    // Contiguous: (sequences, capacity); paged: (tables, table width, blocks,
    // block size), each checked to fit an int when the pool or its tables
    // were set (the kernel computes a table's positions itself).
    let kv_ints: [i32; 4] = match &kv {
        DecodeKv::Slots(cache) => [cache.n_seqs() as i32, cache.capacity() as i32, 0, 0],
        DecodeKv::Paged(pool) => [
            pool.n_tables as i32,
            pool.table_width as i32,
            pool.n_blocks() as i32,
            pool.block_size() as i32,
        ],
    };
    let splits_i = splits as i32;
    let cfg = LaunchConfig {
        grid_dim: (splits as u32, grid_y as u32, rows as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let cluster = splits > 1
        && splits <= ATT_CLUSTER_MAX
        && dev.compute_capability().0 >= 9
        && attn_cluster_enabled()
        && cluster_fits(dev, &func, name, splits, &cfg)?;
    let null: u64 = 0;
    let mut b = KernelLaunch::new(dev, &func, name);
    match queries {
        DecodeQueries::Roped(q) => {
            b.arg(&q);
        }
        DecodeQueries::Proj(inp, strides) => {
            let n_rot = inp.rope.n_rot() as i32;
            let neox = i32::from(inp.rope.style() == RopeStyle::Neox);
            b.arg(&inp.q.data)
                .arg(&inp.k.data)
                .arg(&inp.v.data)
                .arg(&strides[0])
                .arg(&strides[1]);
            match inp.qk_norm {
                Some((qn, kn)) => b.arg(qn).arg(kn),
                None => b.arg(&null).arg(&null),
            };
            b.arg(&inp.eps)
                .arg(&inp.w_offset)
                .arg(&inp.rope.inv_freq)
                .arg(&n_rot)
                .arg(&neox);
        }
    }
    // The cache is written by the fused entries only (this step's keys and
    // values), borrowed mutably by attention_decode_rope (and
    // paged_attention_decode_rope) for that.
    let (k, v, workspace) = kv.buffers();
    b.arg(k).arg(v);
    if let DecodeKv::Paged(pool) = &kv {
        b.arg(&pool.tables)
            .arg(&kv_ints[1])
            .arg(&kv_ints[2])
            .arg(&kv_ints[3]);
    }
    b.arg(row_seq)
        .arg(row_pos)
        .arg(&*out)
        // Written by the kernel although borrowed shared: device memory that
        // the host never reads, ordered by the one stream.
        .arg(workspace)
        .arg(&workspace.slice(ATTN_PARTIAL_FLOATS..))
        .arg(&n_heads)
        .arg(&n_kv_heads)
        .arg(&group)
        .arg(&n_layers)
        .arg(&layer_i)
        .arg(&kv_ints[0]);
    if !paged {
        b.arg(&kv_ints[1]);
    }
    b.arg(&c.q_scale)
        .arg(&c.softcap)
        .arg(&c.window)
        .arg(&splits_i);
    let mut flags = 0;
    if rope && attn_early_kv_enabled() {
        flags |= FLAG_EARLY_KV;
    }
    if attn_stage_kv_enabled() {
        flags |= FLAG_STAGE_KV;
    }
    flags |= attn_split_align() << FLAG_ALIGN_SHIFT;
    b.arg(&flags);
    // SAFETY: argument order and types match attn_decode_hd*_g* (queries
    // as f32 rows), attn_decode_rope_hd*_g* (projection rows: every
    // row's reads stay inside q / k / v, strides and lengths checked by
    // check_projections; inv_freq holds n_rot/2 <= head_dim/2 values; the
    // norm weights head_dim) or attn_paged_rope_hd*_g* (the same, then the
    // pool's n_tables*table_width block ids, validated on the host) in
    // kernels/attention.cu; out holds
    // rows*n_heads*head_dim values, row_seq/row_pos rows; the cache / pool
    // matches (n_kv_heads, head_dim, layer checked); the kernel clamps
    // every key index to the cache (the rows' positions to the tables,
    // block ids to the pool) and writes a key / value only at a
    // valid (sequence, position); the workspace holds
    // rows*n_heads*splits*(head_dim+2) floats of partials (decode_splits)
    // below ATTN_PARTIAL_FLOATS and rows*grid_y <= ATTN_TICKETS zeroed
    // tickets after it (the merging block of each column zeroes its ticket
    // again); the kernel waits on its predecessor before reading anything
    // but constants and the host-copied sequences / positions
    // (launch_pdl's contract), except, in the fused entries with early_kv,
    // the cache's keys of earlier positions (written by completed launches:
    // attention_decode_rope's contract). A cluster launch has
    // cluster x = splits = grid x (the kernel merges through the cluster
    // when its cluster size equals its split count; cluster_fits asked the
    // driver for the size).
    if cluster {
        unsafe { b.launch_pdl_cluster(cfg, splits as u32) }?;
        CLUSTER_LAUNCHES.fetch_add(1, Ordering::Relaxed);
    } else {
        unsafe { b.launch_pdl(cfg) }?;
    }
    Ok(())
}

/// Blocks of decode kernel `name` one SM holds at once (the driver's
/// occupancy for its registers and shared memory; asked once per kernel).
fn blocks_per_sm(func: &CudaFunction, name: &'static str) -> Result<usize> {
    static SEEN: Mutex<Vec<(&'static str, usize)>> = Mutex::new(Vec::new());
    let mut seen = SEEN
        .lock()
        .map_err(|_| CudaError::NotAvailable("occupancy cache lock poisoned".into()))?;
    if let Some(&(_, n)) = seen.iter().find(|(n, _)| *n == name) {
        return Ok(n);
    }
    let n = func
        .occupancy_max_active_blocks_per_multiprocessor(THREADS, 0, None)
        .map_err(|e| driver_err(&format!("occupancy of {name}"), e))? as usize;
    let n = n.max(1);
    seen.push((name, n));
    Ok(n)
}

/// Entry names of the decode kernel for one head_dim and heads per block:
/// f32 out, f16 out, fused QK-norm/RoPE/KV write with f32, with f16, the
/// fused entries over a paged pool with f32, with f16, roped f32 queries
/// over a paged pool with f32 out.
macro_rules! decode_names_g {
    ($hd:literal, $g:literal) => {
        [
            concat!("attn_decode_hd", $hd, "_g", $g),
            concat!("attn_decode_hd", $hd, "_g", $g, "_h"),
            concat!("attn_decode_rope_hd", $hd, "_g", $g),
            concat!("attn_decode_rope_hd", $hd, "_g", $g, "_h"),
            concat!("attn_paged_rope_hd", $hd, "_g", $g),
            concat!("attn_paged_rope_hd", $hd, "_g", $g, "_h"),
            concat!("attn_paged_hd", $hd, "_g", $g),
        ]
    };
}
macro_rules! decode_names_hd {
    ($hd:literal) => {
        [
            decode_names_g!($hd, 1),
            decode_names_g!($hd, 2),
            decode_names_g!($hd, 4),
            decode_names_g!($hd, 8),
        ]
    };
}
/// By [`SUPPORTED_HEAD_DIMS`] index, then [`DECODE_GT`] index.
const DECODE_NAMES: [[[&str; 7]; 4]; 5] = [
    decode_names_hd!(16),
    decode_names_hd!(32),
    decode_names_hd!(64),
    decode_names_hd!(128),
    decode_names_hd!(256),
];
/// Query heads per decode block with compiled entries.
const DECODE_GT: [usize; 4] = [1, 2, 4, 8];

fn decode_kernel_name(
    head_dim: usize,
    gt: usize,
    f16_out: bool,
    rope: bool,
    paged: bool,
) -> Result<&'static str> {
    let hd_i = SUPPORTED_HEAD_DIMS.iter().position(|&d| d == head_dim);
    let gt_i = DECODE_GT.iter().position(|&g| g == gt);
    let index = match (rope, paged, f16_out) {
        (false, false, f16) => usize::from(f16),
        (true, false, f16) => 2 + usize::from(f16),
        (true, true, f16) => 4 + usize::from(f16),
        (false, true, false) => 6,
        (false, true, true) => {
            return Err(CudaError::Unsupported(
                "decode kernel over a paged pool with roped queries and f16 output".into(),
            ))
        }
    };
    match (hd_i, gt_i) {
        (Some(h), Some(g)) => Ok(DECODE_NAMES[h][g][index]),
        _ => Err(CudaError::Unsupported(format!(
            "attention decode kernel for head_dim {head_dim}, {gt} heads per block"
        ))),
    }
}

/// Dynamic shared memory of the CUDA-core prefill kernel (see the source).
fn prefill_scalar_smem_bytes(head_dim: usize) -> usize {
    PREFILL_QV * head_dim * 4
        + PREFILL_KT * (head_dim + 2) * 2
        + PREFILL_KT * head_dim * 2
        + 4 * PREFILL_KT * 4
}

/// Dynamic shared memory of the tensor-core prefill kernel (`AttTc` in the
/// source): the block's f16 queries, then two stages of key and value
/// tiles, rows padded by 8 halves.
pub(crate) fn prefill_tc_smem_bytes(head_dim: usize) -> usize {
    (PREFILL_TC_QV + 4 * prefill_tc_keys_per_tile(head_dim)) * (head_dim + 8) * 2
}

/// Keys per shared-memory tile of the tensor-core prefill kernel (`AttTc::KT`).
fn prefill_tc_keys_per_tile(head_dim: usize) -> usize {
    if head_dim <= 128 {
        64
    } else {
        32
    }
}

/// Which prefill kernel runs (see [`attention_prefill_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefillKernel {
    /// FlashAttention-2's loop on mma.sync tensor cores (default): f16
    /// queries and probabilities, f32 accumulation and softmax.
    TensorCore,
    /// The CUDA-core kernel: f32 queries, scores and probabilities (the
    /// precise one; 10-50x slower at 512-4096 tokens on the H100).
    Scalar,
}

/// `MARLIN_CUDA_ATTN_PREFILL=scalar` makes [`attention`] take the CUDA-core
/// prefill kernel (unset or `tc`: the tensor-core one); read once.
pub(crate) fn prefill_kernel() -> PrefillKernel {
    static KIND: OnceLock<PrefillKernel> = OnceLock::new();
    *KIND.get_or_init(
        || match std::env::var("MARLIN_CUDA_ATTN_PREFILL").as_deref() {
            Ok("scalar") => PrefillKernel::Scalar,
            Ok("tc") | Ok("") | Err(_) => PrefillKernel::TensorCore,
            Ok(other) => {
                eprintln!(
                "marlin: MARLIN_CUDA_ATTN_PREFILL={other} not understood (tc or scalar); using tc"
            );
                PrefillKernel::TensorCore
            }
        },
    )
}

/// The tiled prefill kernel (see [`attention`]), whatever the row count:
/// the tensor-core kernel unless `MARLIN_CUDA_ATTN_PREFILL` says otherwise.
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill<T: ActElem>(
    dev: &CudaDevice,
    p: &AttnParams,
    q: &CudaSlice<f32>,
    cache: &GpuKvCache,
    layer: usize,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    let kind = prefill_kernel();
    attention_prefill_with(dev, kind, p, q, cache, layer, rows, row_seq, row_pos, out)
}

/// Entry name of a prefill kernel (f32 or f16 output).
fn prefill_entry(kind: PrefillKernel, head_dim: usize, f16_out: bool) -> Result<&'static str> {
    use PrefillKernel::{Scalar, TensorCore};
    Ok(match (kind, head_dim, f16_out) {
        (Scalar, 64, false) => "attn_prefill_hd64",
        (Scalar, 64, true) => "attn_prefill_hd64_h",
        (Scalar, 128, false) => "attn_prefill_hd128",
        (Scalar, 128, true) => "attn_prefill_hd128_h",
        (Scalar, 256, false) => "attn_prefill_hd256",
        (Scalar, 256, true) => "attn_prefill_hd256_h",
        (TensorCore, 64, false) => "attn_prefill_tc_hd64",
        (TensorCore, 64, true) => "attn_prefill_tc_hd64_h",
        (TensorCore, 128, false) => "attn_prefill_tc_hd128",
        (TensorCore, 128, true) => "attn_prefill_tc_hd128_h",
        (TensorCore, 256, false) => "attn_prefill_tc_hd256",
        (TensorCore, 256, true) => "attn_prefill_tc_hd256_h",
        _ => {
            return Err(CudaError::Unsupported(format!(
                "attention prefill kernel for head_dim {head_dim} (decode kernel: any row count)"
            )))
        }
    })
}

/// Query vectors per block (rows x heads of one kv head) and the rows per
/// block they cover: a GQA group's heads (up to the block's vectors) share
/// each key and value tile.
fn prefill_block_shape(group: usize, vectors: usize) -> (usize, usize) {
    let heads_per_block = group.min(vectors);
    (heads_per_block, (vectors / heads_per_block).max(1))
}

/// The launch of a prefill kernel (contiguous or paged) over `rows` rows:
/// blocks of `vectors` query vectors, `heads_per_block` heads of a GQA
/// group by `rows_per_block` rows, one block row per (kv head, head chunk).
pub(crate) struct PrefillGrid {
    pub cfg: LaunchConfig,
    pub heads_per_block: i32,
    pub rows_per_block: i32,
}

pub(crate) fn prefill_grid(
    what: &str,
    p: &AttnParams,
    group: usize,
    vectors: usize,
    rows: usize,
    smem: usize,
) -> Result<PrefillGrid> {
    let (heads_per_block, rows_per_block) = prefill_block_shape(group, vectors);
    let grid_y = p.n_kv_heads * group.div_ceil(heads_per_block);
    let grid_x = rows.div_ceil(rows_per_block);
    if grid_y > 65_535 || grid_x > i32::MAX as usize {
        return Err(CudaError::Shape(format!(
            "{what}: {grid_x} x {grid_y} prefill blocks exceed CUDA limits"
        )));
    }
    Ok(PrefillGrid {
        cfg: LaunchConfig {
            grid_dim: (grid_x as u32, grid_y as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        },
        heads_per_block: heads_per_block as i32,
        rows_per_block: rows_per_block as i32,
    })
}

/// Attention of many query rows (see [`attention`]) on the prefill kernel
/// `kind`, whatever the row count and `MARLIN_CUDA_ATTN_PREFILL`.
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill_with<T: ActElem>(
    dev: &CudaDevice,
    kind: PrefillKernel,
    p: &AttnParams,
    q: &CudaSlice<f32>,
    cache: &GpuKvCache,
    layer: usize,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    let c = checked(p, q, cache, layer, rows, row_seq, row_pos, out)?;
    if rows == 0 {
        return Ok(());
    }
    let name = prefill_entry(kind, p.head_dim, T::IS_F16)?;
    let (vectors, smem, max_smem) = match kind {
        PrefillKernel::Scalar => (
            PREFILL_QV,
            prefill_scalar_smem_bytes(p.head_dim),
            prefill_scalar_smem_bytes(256),
        ),
        PrefillKernel::TensorCore => {
            let smem = prefill_tc_smem_bytes(p.head_dim);
            (PREFILL_TC_QV, smem, smem)
        }
    };
    let grid = prefill_grid("attention", p, c.group, vectors, rows, smem)?;
    let func = attention_function(dev, p.head_dim, name, max_smem as u32)?;
    let [n_heads, n_kv_heads, group, n_layers, layer_i, _] = c.ints;
    let (n_seqs, capacity) = (cache.n_seqs() as i32, cache.capacity() as i32);
    let (rows_i, hpb, rpb) = (rows as i32, grid.heads_per_block, grid.rows_per_block);
    let mut b = dev.stream().launch_builder(&func);
    b.arg(q)
        .arg(&cache.k)
        .arg(&cache.v)
        .arg(row_seq)
        .arg(row_pos)
        .arg(out)
        .arg(&rows_i)
        .arg(&n_heads)
        .arg(&n_kv_heads)
        .arg(&group)
        .arg(&hpb)
        .arg(&rpb)
        .arg(&n_layers)
        .arg(&layer_i)
        .arg(&n_seqs)
        .arg(&capacity)
        .arg(&c.q_scale)
        .arg(&c.softcap)
        .arg(&c.window);
    // SAFETY: argument order and types match attn_prefill_hd* and
    // attn_prefill_tc_hd* in kernels/attention.cu (one signature); q and out
    // hold rows*n_heads*head_dim values, row_seq/row_pos rows; the cache
    // matches (checked); every key index is clamped to the row's range inside
    // the cache; smem as the source lays it out, within the attribute set at
    // load.
    unsafe { b.launch(grid.cfg) }.map_err(|e| driver_err(&format!("launch {name}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> AttnParams {
        AttnParams {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 0.1,
            window: None,
            softcap: None,
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let dims = (2, 2, 64, 100);
        let n = 3 * 4 * 64;
        let ok = check(&params(4, 2, 64), dims, 1, 3, (n, n, 3, 3));
        assert!(ok.is_ok());
        assert_eq!(ok.unwrap().group, 2);
        assert!(
            check(&params(4, 2, 64), dims, 2, 3, (n, n, 3, 3)).is_err(),
            "layer"
        );
        assert!(
            check(&params(3, 2, 64), dims, 0, 3, (n, n, 3, 3)).is_err(),
            "gqa"
        );
        assert!(
            check(&params(4, 4, 64), dims, 0, 3, (n, n, 3, 3)).is_err(),
            "kv heads"
        );
        assert!(matches!(
            check(&params(4, 2, 96), (2, 2, 96, 100), 0, 3, (n, n, 3, 3)),
            Err(CudaError::Unsupported(_))
        ));
        assert!(
            check(&params(4, 2, 64), dims, 0, 3, (n - 1, n, 3, 3)).is_err(),
            "q"
        );
        assert!(
            check(&params(4, 2, 64), dims, 0, 3, (n, n - 1, 3, 3)).is_err(),
            "out"
        );
        assert!(
            check(&params(4, 2, 64), dims, 0, 3, (n, n, 2, 3)).is_err(),
            "seq"
        );
        assert!(
            check(&params(4, 2, 64), dims, 0, 3, (n, n, 3, 2)).is_err(),
            "pos"
        );
        let zero_window = AttnParams {
            window: Some(0),
            ..params(4, 2, 64)
        };
        assert!(check(&zero_window, dims, 0, 3, (n, n, 3, 3)).is_err());
        let bad_cap = AttnParams {
            softcap: Some(-1.0),
            ..params(4, 2, 64)
        };
        assert!(check(&bad_cap, dims, 0, 3, (n, n, 3, 3)).is_err());
    }

    #[test]
    fn stamp_summary_times_each_point_from_the_first_wait() {
        let points = STAMP_NAMES.len();
        let per_block = 2 * points + 1;
        let mut words = vec![0u64; STAMP_LAYERS * STAMP_BLOCKS * per_block];
        // Layer 3: block 0 (split 0) waits at t = 1_000_000 ns, ropes 500 ns
        // later, ends its keys at +2000; block 1 (split 1) waits 1000 ns
        // later and ends its keys at +4000. A stale block 2 from an older
        // launch (1 ms earlier) is left out.
        let mut put = |block: usize, split: u64, stamps: &[(usize, u64)]| {
            let at = (3 * STAMP_BLOCKS + block) * per_block;
            for &(p, t) in stamps {
                words[at + p] = t;
                words[at + points + p] = t * 2; // 2 cycles per ns
            }
            words[at + 2 * points] = split;
        };
        put(
            0,
            0,
            &[(0, 999_000), (1, 1_000_000), (2, 1_000_500), (3, 1_002_000)],
        );
        put(1, 1, &[(0, 999_500), (1, 1_001_000), (3, 1_004_000)]);
        put(2, 0, &[(1, 1), (3, 2)]);
        let text = stamp_summary(&words, 128).expect("one stamped layer");
        assert!(text.contains("1 layers, up to 2 blocks"), "{text}");
        let line = |name: &str| -> Vec<f64> {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no {name} line in {text}"))
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap())
                .collect()
        };
        // first, median (upper of two), last block in µs; median cycles.
        assert_eq!(line("waited"), vec![0.0, 1.0, 1.0, 0.0]);
        assert_eq!(line("roped"), vec![0.5, 0.5, 0.5, 1000.0]);
        assert_eq!(line("keys"), vec![2.0, 4.0, 4.0, 6000.0]);
        assert!(text.contains("keys by split: 2.00 4.00"), "{text}");
        // Both blocks on SM 0 (the index word's high half).
        assert!(
            text.contains("keys alone on its SM: NaN (0 block-layers), beside another of the launch: 4.00 (2)"),
            "{text}"
        );
        assert!(stamp_summary(&vec![0u64; words.len()], 128).is_none());
    }

    #[test]
    fn splits_fill_the_device_and_fit_the_workspace() {
        // Llama-8B shapes on an H100 (132 SMs): batch 1 splits widely,
        // batch 32 a little, short caches little or not at all.
        // One wave: 4 blocks per SM x 132 SMs = 528 blocks.
        let mk = MIN_KEYS_PER_SPLIT;
        assert_eq!(decode_splits(132, 4, 1, 32, 8, 128, 4096, mk), 64);
        assert_eq!(decode_splits(132, 4, 32, 32, 256, 128, 4096, mk), 2);
        assert_eq!(decode_splits(132, 4, 8, 32, 64, 128, 4096, mk), 8);
        assert_eq!(decode_splits(132, 2, 8, 32, 64, 128, 4096, mk), 4);
        assert_eq!(decode_splits(132, 4, 1, 32, 8, 128, 64, 16), 4);
        assert_eq!(decode_splits(132, 4, 1, 32, 8, 128, 707, 16), 45);
        assert_eq!(decode_splits(132, 4, 1, 32, 8, 128, 16, 16), 1);
        assert_eq!(decode_splits(132, 4, 64, 32, 1024, 128, 4096, mk), 1);
        // The minimum binds at batch 1 of a short cache only.
        assert_eq!(decode_splits(132, 4, 1, 32, 8, 128, 707, 48), 15);
        assert_eq!(decode_splits(132, 4, 8, 32, 64, 128, 707, 48), 8);
        assert_eq!(decode_splits(132, 4, 1, 32, 8, 128, 0, 48), 1);
        for rows in [1, 3, 17, 64, 256] {
            let s = decode_splits(132, 4, rows, 64, rows * 8, 256, 1 << 20, mk);
            assert!(s >= 1 && rows * 64 * s * 258 <= ATTN_PARTIAL_FLOATS || s == 1);
        }
        assert_eq!(decode_heads_per_block(1), 1);
        assert_eq!(decode_heads_per_block(3), 4);
        assert_eq!(decode_heads_per_block(5), 8);
        assert_eq!(decode_heads_per_block(16), 8);
    }
}
