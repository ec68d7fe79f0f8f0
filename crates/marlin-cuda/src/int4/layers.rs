//! The decode step's transformer layers at one token in one persistent
//! launch (`kernels/w4a16_layers.cu`; docs/CUDA.md change 86).
//!
//! At batch 1 the layered step pays every kernel boundary (a launch ramp,
//! a tail, the next GEMM's blocks waiting for the previous kernel's to
//! leave) and leaves HBM idle during attention and the norms. Here one
//! block per SM streams its share of every layer's INT4 weights, in step
//! order, through a bulk-copy ring that never waits for a data dependency,
//! while its consumer warps wait for the inputs of the GEMV they are on
//! (counters in global memory). What it computes per layer is the layered
//! path's: RMSNorm, q|k|v, RoPE, the KV write, GQA attention over the
//! sequence's keys, o + residual, RMSNorm, gate|up, SiLU, down + residual.
//!
//! Scope (anything else: [`PersistentLayers::new`] returns `Unsupported`
//! and the caller keeps the layered step): sm_90+, one token, symmetric
//! INT4 weights (no zero points) with groups of 64 times a power of two
//! (64, 128, 256, ...; per-channel where K / 64 is one), fused q|k|v and
//! gate|up, head_dim 128, n_rot = head_dim, at most 8 query heads per KV
//! head, ffn a multiple of 64, the same shapes in every layer.

use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig};

use super::gemm::Int4Weight;
use crate::device::CudaDevice;
use crate::error::{CudaError, Result};
use crate::ops::launch::KernelLaunch;
use crate::ops::{to_i32, GpuKvCache, GpuRope};
use marlin_cpu::ops::RopeStyle;

const MODULE: &str = "w4a16_layers";
const SOURCE: &str = include_str!("../kernels/w4a16_layers.cu");
const KERNEL: &str = "w4_layers_m1";

// Keep in sync with the PL_* constants of the kernel.
const CONSUMER_WARPS: usize = 8;
/// Units (64-column tile x 64-chunk of K: 2 KiB of codes, 128 B of scale
/// rows) per ring slot.
const PIECE_UNITS: usize = 8;
const SLOT_BYTES: usize = PIECE_UNITS * (2048 + 128);
const MAX_SEGS: usize = 32;
const HEAD_DIM: usize = 128;
const MAX_GQA: usize = 8;
/// Largest hidden size the RMSNorm staging holds in registers
/// (PL_STAGE_X4 x 4 x consumer threads).
const MAX_HIDDEN: usize = 8 * 4 * 32 * CONSUMER_WARPS;
/// Counters per layer before the tickets (PL_SY_HEAD).
const SYNC_HEAD: usize = 5;
/// Dynamic shared memory of one block on sm_90 (227 KiB).
const SMEM_LIMIT: usize = 227 * 1024;
/// Fewest ring slots worth running (below this the ring hides too little).
const MIN_SLOTS: usize = 4;

/// One layer's weights, as the decoder holds them.
pub struct LayerWeights<'a> {
    /// (n_heads + 2 n_kv_heads) * head_dim rows: q, then k, then v.
    pub qkv: &'a Int4Weight,
    pub o: &'a Int4Weight,
    /// 2 ffn rows: gate, then up.
    pub gate_up: &'a Int4Weight,
    pub down: &'a Int4Weight,
    /// (hidden) f32, the `1 + w` convention already applied.
    pub attn_norm: &'a CudaSlice<f32>,
    pub ffn_norm: &'a CudaSlice<f32>,
}

/// The model's shape and constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerDims {
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub rms_eps: f32,
    /// Softmax scale of the scores (1/sqrt(head_dim) unless the model says).
    pub attn_scale: f32,
}

/// Whether the device can run the kernel (bulk copies, mbarrier byte
/// counts: sm_90+).
pub fn persistent_supported(dev: &CudaDevice) -> bool {
    dev.compute_capability().0 >= 9
}

/// The persistent step of one decoder: the device table of its layers'
/// weights, the work and counter buffers, the launch shape.
///
/// The table holds the weights' device addresses: [`PersistentLayers::run`]
/// takes the same layers again and refuses any other.
pub struct PersistentLayers {
    dims: LayerDims,
    n_layers: usize,
    /// Host copy of the table's weight addresses (the check in `run`).
    addresses: Vec<u64>,
    table: CudaSlice<u8>,
    /// Every weight's scale rows reordered tile-major (the kernel's scale
    /// stream), in table order: held because the table points at them.
    _scale_streams: Vec<CudaSlice<u32>>,
    grid: usize,
    n_slots: usize,
    act_bytes: usize,
    smem_bytes: usize,
    max_splits: usize,
    sync_stride: usize,
    work: CudaSlice<f32>,
    sync: CudaSlice<u32>,
    err: CudaSlice<u32>,
    layout: WorkLayout,
}

/// Offsets (f32 elements) of the work buffer's parts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct WorkLayout {
    qkv_out: usize,
    gu_out: usize,
    glu_out: usize,
    att_out: usize,
    att_part: usize,
    part: usize,
    res: usize,
    total: usize,
}

fn unsupported(what: String) -> CudaError {
    CudaError::Unsupported(format!("persistent decode layers: {what}"))
}

fn checked(what: &str, v: Option<usize>) -> Result<usize> {
    v.ok_or_else(|| CudaError::Shape(format!("persistent decode layers: {what} overflows")))
}

/// 64-column tiles and units (tile x 64-chunk of K) of one GEMV (N padded
/// to 64 as the pack pads it; gate|up: its gate and up tiles).
fn gemv_units(n: usize, k_chunks: usize) -> Result<(usize, usize)> {
    let tiles = n.div_ceil(64);
    Ok((tiles, checked("units", tiles.checked_mul(k_chunks))?))
}

/// The most column blocks (4 per tile) one block's contiguous range of
/// `units` touches.
fn max_segments(units: usize, k_chunks: usize, grid: usize) -> usize {
    4 * (units.div_ceil(grid).div_ceil(k_chunks) + 1)
}

impl PersistentLayers {
    /// Checks the model against the kernel's scope, uploads the table and
    /// allocates the buffers.
    pub fn new(dev: &CudaDevice, dims: LayerDims, layers: &[LayerWeights<'_>]) -> Result<Self> {
        if !persistent_supported(dev) {
            return Err(unsupported("needs compute capability 9.0 or newer".into()));
        }
        let d = dims;
        if layers.is_empty() {
            return Err(unsupported("no layers".into()));
        }
        if d.head_dim != HEAD_DIM {
            return Err(unsupported(format!(
                "head_dim {} (only {HEAD_DIM})",
                d.head_dim
            )));
        }
        if d.n_kv_heads == 0
            || !d.n_heads.is_multiple_of(d.n_kv_heads)
            || d.n_heads / d.n_kv_heads > MAX_GQA
        {
            return Err(unsupported(format!(
                "{} query heads over {} KV heads (at most {MAX_GQA} per KV head)",
                d.n_heads, d.n_kv_heads
            )));
        }
        if d.ffn == 0
            || !d.ffn.is_multiple_of(64)
            || d.hidden == 0
            || !d.hidden.is_multiple_of(4)
            || d.hidden > MAX_HIDDEN
        {
            return Err(unsupported(format!(
                "ffn {} (a positive multiple of 64), hidden {} (a multiple of 4, at most {MAX_HIDDEN})",
                d.ffn, d.hidden
            )));
        }
        let qd = d.n_heads * HEAD_DIM;
        let kvd = d.n_kv_heads * HEAD_DIM;
        let shapes = [
            ("q|k|v", qd + 2 * kvd, d.hidden),
            ("o", d.hidden, qd),
            ("gate|up", 2 * d.ffn, d.hidden),
            ("down", d.hidden, d.ffn),
        ];
        let mut grid = dev.sm_count();
        let mut addresses = Vec::with_capacity(layers.len() * 10);
        let mut table = Vec::with_capacity(layers.len() * LAYER_DESC_BYTES);
        let mut max_k_pad = 0usize;
        let mut scale_streams = Vec::with_capacity(layers.len() * 4);
        for (il, l) in layers.iter().enumerate() {
            let ws = [l.qkv, l.o, l.gate_up, l.down];
            for (w, &(name, n, k)) in ws.iter().zip(&shapes) {
                if w.n != n || w.k != k {
                    return Err(unsupported(format!(
                        "layer {il} {name}: {}x{} weight, expected {n}x{k}",
                        w.n, w.k
                    )));
                }
                let group_chunks = w.group_k32 / 2;
                if w.neg_zero_scales.is_some()
                    || w.group_k32 < 2
                    || !w.group_k32.is_multiple_of(2)
                    || !group_chunks.is_power_of_two()
                {
                    return Err(unsupported(format!(
                        "layer {il} {name}: needs symmetric codes with groups of 64 x a power of two \
                         (groups of {}, zero points {})",
                        32 * w.group_k32,
                        w.neg_zero_scales.is_some()
                    )));
                }
                let (_, units) = gemv_units(n, w.k_chunks)?;
                to_i32("persistent layers units", units)?;
                grid = grid.min(units);
                max_k_pad = max_k_pad.max(w.k_chunks * 64);
            }
            for (_, v) in [("attn norm", l.attn_norm), ("ffn norm", l.ffn_norm)] {
                if v.len() != d.hidden {
                    return Err(unsupported(format!(
                        "layer {il}: norm weight of {} values for hidden {}",
                        v.len(),
                        d.hidden
                    )));
                }
            }
            let stream = dev.stream();
            for w in ws {
                let ss = scale_stream(dev, w)?;
                let (wp, _g1) = w.words.device_ptr(stream);
                let (sp, _g2) = w.scales.device_ptr(stream);
                let ssp = ss.device_ptr(stream).0;
                addresses.extend([wp, sp]);
                table.extend_from_slice(&wp.to_le_bytes());
                table.extend_from_slice(&ssp.to_le_bytes());
                scale_streams.push(ss);
                let group_shift = (w.group_k32 / 2).trailing_zeros() as usize;
                for v in [w.n, w.n_pad / 16, w.k_chunks, group_shift] {
                    table.extend_from_slice(
                        &to_i32("persistent layers dimension", v)?.to_le_bytes(),
                    );
                }
            }
            let (an, _g4) = l.attn_norm.device_ptr(stream);
            let (fnp, _g5) = l.ffn_norm.device_ptr(stream);
            addresses.extend([an, fnp]);
            table.extend_from_slice(&an.to_le_bytes());
            table.extend_from_slice(&fnp.to_le_bytes());
        }
        debug_assert_eq!(table.len(), layers.len() * LAYER_DESC_BYTES);
        // Every block's range of every GEMV must touch at most MAX_SEGS
        // column blocks (its column sums live in shared memory).
        for (name, n, k) in shapes {
            let k_chunks = k.div_ceil(64);
            let (_, units) = gemv_units(n, k_chunks)?;
            let segs = max_segments(units, k_chunks, grid);
            if segs > MAX_SEGS {
                return Err(unsupported(format!(
                    "{name}: {segs} column blocks per block (at most {MAX_SEGS})"
                )));
            }
        }
        let gq = d.n_heads / d.n_kv_heads;
        // Attention scratch: q (gq heads), this step's key and value, the
        // warps' partial results.
        let att_bytes = 4 * (gq * HEAD_DIM + 2 * HEAD_DIM + CONSUMER_WARPS * gq * (HEAD_DIM + 2));
        let act_bytes = (2 * max_k_pad).max(att_bytes).next_multiple_of(16);
        // ... + column sums + flags + reduction scratch + RoPE cos / sin.
        let fixed = act_bytes
            + 4 * CONSUMER_WARPS * (MAX_SEGS / 4) * 16
            + 4 * 2 * MAX_SEGS
            + 4 * 2 * CONSUMER_WARPS
            + 4 * HEAD_DIM;
        let n_slots = SMEM_LIMIT.saturating_sub(fixed) / (SLOT_BYTES + 16);
        if n_slots < MIN_SLOTS {
            return Err(unsupported(format!(
                "{act_bytes} bytes of GEMV input leave {n_slots} ring slots of {SLOT_BYTES} bytes"
            )));
        }
        let smem_bytes = n_slots * (SLOT_BYTES + 16) + fixed;
        let max_splits = (grid / d.n_kv_heads).max(1);
        let n_layers = layers.len();
        // Tickets: one per padded column block of each weight, one per
        // SiLU pair.
        let blocks = |n: usize| 4 * n.div_ceil(64);
        let sync_stride = SYNC_HEAD
            + d.n_kv_heads
            + blocks(qd + 2 * kvd)
            + blocks(d.hidden)
            + blocks(2 * d.ffn)
            + blocks(d.hidden)
            + d.ffn / 16;
        let layout = work_layout(&dims, grid, max_splits, n_layers)?;
        let sync_len = checked("counters", sync_stride.checked_mul(n_layers))?;
        Ok(Self {
            dims,
            n_layers,
            addresses,
            table: dev.upload("persistent layers table", &table)?,
            _scale_streams: scale_streams,
            grid,
            n_slots,
            act_bytes,
            smem_bytes,
            max_splits,
            sync_stride,
            work: dev.alloc_zeros("persistent layers work", layout.total)?,
            sync: dev.alloc_zeros("persistent layers counters", sync_len)?,
            err: dev.alloc_zeros("persistent layers error flag", 1)?,
            layout,
        })
    }

    /// Blocks of the launch (one per SM at most).
    pub fn grid(&self) -> usize {
        self.grid
    }

    /// Ring slots per block.
    pub fn ring_slots(&self) -> usize {
        self.n_slots
    }

    /// Runs every layer on the token whose residual row is `x` (hidden f32,
    /// overwritten with the last layer's output), at position
    /// `row_pos[0]` of sequence `row_seq[0]` of `cache` (keys and values of
    /// the step written there). Graph-capturable: a memset and one launch.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        dev: &CudaDevice,
        layers: &[LayerWeights<'_>],
        x: &mut CudaSlice<f32>,
        rope: &GpuRope,
        cache: &mut GpuKvCache,
        row_seq: &CudaSlice<i32>,
        row_pos: &CudaSlice<i32>,
    ) -> Result<()> {
        let d = self.dims;
        if layers.len() != self.n_layers || !self.same_weights(dev, layers) {
            return Err(CudaError::Shape(
                "persistent decode layers: run with other weights than the table was built from"
                    .into(),
            ));
        }
        if x.len() < d.hidden || row_seq.is_empty() || row_pos.is_empty() {
            return Err(CudaError::Shape(format!(
                "persistent decode layers: residual of {} values (hidden {}), {} sequence ids, {} positions",
                x.len(),
                d.hidden,
                row_seq.len(),
                row_pos.len()
            )));
        }
        if cache.n_layers() != self.n_layers
            || cache.n_kv_heads() != d.n_kv_heads
            || cache.head_dim() != HEAD_DIM
        {
            return Err(CudaError::Shape(format!(
                "persistent decode layers: cache of {} layers x {} KV heads x {}, model {} x {} x {HEAD_DIM}",
                cache.n_layers(),
                cache.n_kv_heads(),
                cache.head_dim(),
                self.n_layers,
                d.n_kv_heads
            )));
        }
        if rope.head_dim() != HEAD_DIM || rope.n_rot() != HEAD_DIM {
            return Err(unsupported(format!(
                "RoPE over {} of {} dimensions (only all {HEAD_DIM})",
                rope.n_rot(),
                rope.head_dim()
            )));
        }
        // The attribute is set once per loaded function: the limit, not
        // this model's size (two models in one process share the function).
        let func = dev.function(MODULE, SOURCE, KERNEL, SMEM_LIMIT as u32)?;
        dev.stream()
            .memset_zeros(&mut self.sync)
            .map_err(|e| crate::device::driver_err("persistent layers counters", e))?;
        let lay = self.layout;
        let part = |a: usize, b: usize| self.work.slice(a..b);
        let (qkv_out, gu_out, glu_out) = (
            part(lay.qkv_out, lay.gu_out),
            part(lay.gu_out, lay.glu_out),
            part(lay.glu_out, lay.att_out),
        );
        let (att_out, att_part, gemv_part, res) = (
            part(lay.att_out, lay.att_part),
            part(lay.att_part, lay.part),
            part(lay.part, lay.res),
            part(lay.res, lay.total),
        );
        let i = |what: &str, v: usize| to_i32(what, v);
        let (n_layers, hidden, n_heads) = (
            i("layers", self.n_layers)?,
            i("hidden", d.hidden)?,
            i("heads", d.n_heads)?,
        );
        let (n_kv, ffn, neox) = (
            i("kv heads", d.n_kv_heads)?,
            i("ffn", d.ffn)?,
            i32::from(rope.style() == RopeStyle::Neox),
        );
        let (cache_layers, cache_seqs, capacity) = (
            i("cache layers", cache.n_layers())?,
            i("cache sequences", cache.n_seqs())?,
            i("cache capacity", cache.capacity())?,
        );
        let (sync_stride, max_splits, n_slots, act_bytes) = (
            i("counters", self.sync_stride)?,
            i("splits", self.max_splits)?,
            i("ring slots", self.n_slots)?,
            i("input bytes", self.act_bytes)?,
        );
        let mut l = KernelLaunch::new(dev, &func, KERNEL);
        l.arg(&self.table)
            .arg(&n_layers)
            .arg(&hidden)
            .arg(&n_heads)
            .arg(&n_kv)
            .arg(&ffn)
            .arg(&d.rms_eps)
            .arg(&d.attn_scale)
            .arg(&rope.inv_freq)
            .arg(&neox)
            .arg(x)
            .arg(row_seq)
            .arg(row_pos)
            .arg(&cache.k)
            .arg(&cache.v)
            .arg(&cache_layers)
            .arg(&cache_seqs)
            .arg(&capacity)
            .arg(&qkv_out)
            .arg(&gu_out)
            .arg(&glu_out)
            .arg(&att_out)
            .arg(&att_part)
            .arg(&gemv_part)
            .arg(&res)
            .arg(&self.sync)
            .arg(&sync_stride)
            .arg(&max_splits)
            .arg(&n_slots)
            .arg(&act_bytes)
            .arg(&self.err)
            .arg(&diagnosis_bits());
        let cfg = LaunchConfig {
            grid_dim: (self.grid as u32, 1, 1),
            block_dim: (32 * (CONSUMER_WARPS as u32 + 1), 1, 1),
            shared_mem_bytes: self.smem_bytes as u32,
        };
        // SAFETY: the parameters follow w4_layers_m1's signature; the table
        // holds these layers' weight addresses (checked above) with their
        // shapes; the work buffer's parts and the counters are sized by
        // `work_layout` / `sync_stride` for this grid; the cache matches the
        // model (checked) and the kernel bounds the position and sequence
        // by the cache's. The grid is at most one block per SM, each block
        // alone on its SM (its shared memory), and the launch is not PDL:
        // every block is resident before any waits for another.
        unsafe { l.launch(cfg) }
    }

    /// The kernel's error flag (0: none; 1: a wait timed out; 2: position
    /// or sequence outside the cache). Synchronises.
    pub fn error_flag(&self, dev: &CudaDevice) -> Result<u32> {
        Ok(dev.download(&self.err)?.first().copied().unwrap_or(0))
    }

    /// Host copies of the last run's intermediate buffers (tests and
    /// debugging; synchronises): the last layer's q|k|v output (f32), its
    /// attention output (f16 as f32), its SiLU(gate) * up (f16 as f32), and
    /// every layer's residual after attention and after the MLP (the last
    /// layer's is the caller's `x`), as (n_layers - 1) * 2 + 1 rows.
    pub fn intermediates(&self, dev: &CudaDevice) -> Result<PersistentIntermediates> {
        let w = dev.download(&self.work)?;
        let d = self.dims;
        let lay = self.layout;
        let halves = |at: usize, n: usize| -> Vec<f32> {
            w[at..]
                .iter()
                .flat_map(|v| {
                    let b = v.to_bits();
                    [b as u16, (b >> 16) as u16]
                })
                .take(n)
                .map(|h| half::f16::from_bits(h).to_f32())
                .collect()
        };
        let qd = d.n_heads * HEAD_DIM;
        Ok(PersistentIntermediates {
            qkv: w[lay.qkv_out..lay.qkv_out + qd + 2 * d.n_kv_heads * HEAD_DIM].to_vec(),
            attention: halves(lay.att_out, qd),
            glu: halves(lay.glu_out, d.ffn),
            residuals: w[lay.res..lay.res + (2 * self.n_layers - 1) * d.hidden].to_vec(),
            error_flag: self.error_flag(dev)?,
        })
    }

    fn same_weights(&self, dev: &CudaDevice, layers: &[LayerWeights<'_>]) -> bool {
        let stream = dev.stream();
        let mut it = self.addresses.iter();
        let mut same = |p: u64| it.next() == Some(&p);
        layers.iter().all(|l| {
            [l.qkv, l.o, l.gate_up, l.down]
                .iter()
                .all(|w| same(w.words.device_ptr(stream).0) && same(w.scales.device_ptr(stream).0))
                && same(l.attn_norm.device_ptr(stream).0)
                && same(l.ffn_norm.device_ptr(stream).0)
        })
    }
}

/// What [`PersistentLayers::intermediates`] returns.
#[derive(Clone, Debug)]
pub struct PersistentIntermediates {
    pub qkv: Vec<f32>,
    pub attention: Vec<f32>,
    pub glu: Vec<f32>,
    /// Layer l's residual after attention at row 2l, after the MLP at 2l + 1.
    pub residuals: Vec<f32>,
    pub error_flag: u32,
}

/// `w`'s scale rows (groups, n_pad/16, 8) reordered into the kernel's
/// stream (n_pad/64 tiles, groups, 4, 8) on the device.
fn scale_stream(dev: &CudaDevice, w: &Int4Weight) -> Result<CudaSlice<u32>> {
    let tiles = w.n_pad / 64;
    let groups = w.k_chunks.div_ceil(w.group_k32 / 2);
    let len = checked(
        "scale stream",
        tiles.checked_mul(groups).and_then(|v| v.checked_mul(32)),
    )?;
    if len != w.scales.len() {
        return Err(CudaError::Shape(format!(
            "persistent decode layers: {} scale words for {tiles} tiles x {groups} groups",
            w.scales.len()
        )));
    }
    let out = dev.alloc_zeros::<u32>("persistent layers scale stream", len)?;
    let func = dev.function(MODULE, SOURCE, "w4_layers_scale_stream", 0)?;
    let (tiles_i, groups_i, nbs_i) = (
        to_i32("tiles", tiles)?,
        to_i32("groups", groups)?,
        to_i32("column blocks", w.n_pad / 16)?,
    );
    let mut l = KernelLaunch::new(dev, &func, "w4_layers_scale_stream");
    l.arg(&w.scales)
        .arg(&out)
        .arg(&tiles_i)
        .arg(&groups_i)
        .arg(&nbs_i);
    // SAFETY: w4_layers_scale_stream(s, out, tiles, groups, nbs_pad) reads
    // s[(g * nbs_pad + 4 * pt) * 8 + j] < groups * nbs_pad * 8 = s.len()
    // (checked above: len = tiles * groups * 32 = groups * nbs_pad * 8) and
    // writes out[0..len).
    unsafe { l.launch(crate::ops::grid_stride(dev, len)) }?;
    Ok(out)
}

/// `MARLIN_PERSISTENT_DIAG` (read once; timing diagnosis only, the results
/// are then wrong): bit 1 no dependency waits, 2 no GEMV arithmetic, 4 no
/// attention, 8 no scale copies, 16 no GEMV input staging and epilogues.
fn diagnosis_bits() -> i32 {
    static BITS: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *BITS.get_or_init(|| {
        std::env::var("MARLIN_PERSISTENT_DIAG")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Bytes of one layer's descriptor (`PlLayer`: four `PlGemv` of two
/// pointers and four i32, then two pointers).
const LAYER_DESC_BYTES: usize = 4 * (16 + 16) + 16;

fn work_layout(
    d: &LayerDims,
    grid: usize,
    max_splits: usize,
    n_layers: usize,
) -> Result<WorkLayout> {
    let qd = d.n_heads * HEAD_DIM;
    let kvd = d.n_kv_heads * HEAD_DIM;
    let gq = d.n_heads / d.n_kv_heads;
    let round = |v: usize| v.next_multiple_of(16);
    let mut at = 0usize;
    let mut take = |len: Option<usize>| -> Result<usize> {
        let start = at;
        at = checked("work buffer", len.and_then(|l| at.checked_add(round(l))))?;
        Ok(start)
    };
    let qkv_out = take(Some(qd + 2 * kvd))?;
    let gu_out = take(d.ffn.checked_mul(2))?;
    let glu_out = take(Some(d.ffn.div_ceil(2)))?;
    let att_out = take(Some(qd.div_ceil(2)))?;
    let att_part = take(
        d.n_kv_heads
            .checked_mul(max_splits)
            .and_then(|v| v.checked_mul(gq * (HEAD_DIM + 2))),
    )?;
    let part = take(grid.checked_mul(MAX_SEGS * 16))?;
    let res = take(
        n_layers
            .checked_mul(2)
            .and_then(|v| v.checked_mul(d.hidden)),
    )?;
    Ok(WorkLayout {
        qkv_out,
        gu_out,
        glu_out,
        att_out,
        att_part,
        part,
        res,
        total: at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_bound_the_llama_8b_shapes() {
        // 132 SMs: q|k|v 96 tiles x 64 chunks, o 64 x 64, gate|up 448 x
        // 64, down 64 x 224.
        for (units, kc) in [
            (96 * 64, 64),
            (64 * 64, 64),
            (448 * 64, 64),
            (64 * 224, 224),
        ] {
            let s = max_segments(units, kc, 132);
            assert!(s <= MAX_SEGS, "{units} units of {kc}: {s}");
        }
        assert_eq!(max_segments(64, 64, 1), 8);
    }

    #[test]
    fn units_are_padded_tiles_times_chunks() {
        assert_eq!(gemv_units(2 * 14336, 64).unwrap(), (448, 448 * 64));
        assert_eq!(gemv_units(6144, 64).unwrap(), (96, 96 * 64));
        assert_eq!(gemv_units(100, 2).unwrap(), (2, 4));
        assert!(gemv_units(usize::MAX, 128).is_err());
    }

    #[test]
    fn work_layout_parts_do_not_overlap() {
        let d = LayerDims {
            hidden: 4096,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            ffn: 14336,
            rms_eps: 1e-5,
            attn_scale: 0.088,
        };
        let l = work_layout(&d, 132, 16, 32).unwrap();
        let parts = [
            l.qkv_out, l.gu_out, l.glu_out, l.att_out, l.att_part, l.part, l.res, l.total,
        ];
        assert!(parts.windows(2).all(|w| w[0] < w[1]), "{l:?}");
        assert_eq!(l.gu_out - l.qkv_out, 6144);
        assert_eq!(l.total - l.res, 2 * 32 * 4096);
        assert!(work_layout(&d, usize::MAX, 16, 32).is_err());
    }
}
