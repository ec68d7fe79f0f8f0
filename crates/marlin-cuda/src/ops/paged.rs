//! The paged f16 KV pool of the serving engine and its ops:
//! [`paged_kv_write`] (`kernels/paged_attention.cu`) stores a forward
//! pass's keys and values through the block tables, [`paged_attention`]
//! reads them back through the same tables (the contiguous cache's
//! attention kernels in `kernels/attention.cu`, addressing keys through the
//! tables), [`paged_attention_decode_rope`] does the write and the
//! attention of a pass of one row per sequence in one launch.
//!
//! The pool is `n_blocks` blocks of `block_size` positions per layer; which
//! sequence owns which block is the engine's business (its block manager).
//! Before a forward pass the caller uploads one block table per sequence of
//! the pass ([`PagedKvPool::set_block_tables`], validated on the host: a
//! block id outside the pool is an error, never a device fault); row `r` of
//! the pass belongs to table `row_seq[r]` at position `row_pos[r]`, exactly
//! as rows belong to cache slots in [`super::GpuKvCache`], so the decoder
//! runs unchanged over either.

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::f16;

use super::attention::{
    attention_function, check_attn_scalars, decode_launch, decode_rope_launch, prefill_grid,
    prefill_kernel, prefill_tc_smem_bytes, AttnNames, AttnParams, AttnScalars, DecodeKv,
    DecodeQueries, PrefillKernel, RopeInputs, DECODE_MAX_ROWS, PREFILL_HEAD_DIMS, PREFILL_TC_QV,
    SUPPORTED_HEAD_DIMS,
};
use super::fused::ActElem;
use super::kv::{check_kv_write_args, KvWriteArgs, ATTN_WORKSPACE_FLOATS};
use super::{grid_stride, mul, to_i32};
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};
use crate::knobs;

const MODULE: &str = "paged_attention";
const SOURCE: &str = include_str!("../kernels/paged_attention.cu");
/// Head dimensions with compiled kernels (16 and 32: small test models):
/// the decode kernel's, which reads the pool too.
pub const PAGED_HEAD_DIMS: [usize; 5] = SUPPORTED_HEAD_DIMS;

/// Keys and values of every layer in `n_blocks` blocks of `block_size`
/// positions, f16, laid out `[layer][block][kv_head][slot][head_dim]`,
/// plus the block tables of the current forward pass and the attention
/// kernel's split-K workspace.
pub struct PagedKvPool {
    n_layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    n_blocks: usize,
    pub(crate) k: CudaSlice<f16>,
    pub(crate) v: CudaSlice<f16>,
    /// (ATTN_WORKSPACE_FLOATS, as the contiguous cache's): the decode
    /// kernel's split-K partials, then its ATTN_TICKETS u32 tickets (zero
    /// between launches).
    pub(crate) workspace: CudaSlice<f32>,
    /// (n_tables, table_width) block ids, -1 past a table's end.
    pub(crate) tables: CudaSlice<i32>,
    pub(crate) n_tables: usize,
    pub(crate) table_width: usize,
    /// Rows `0..prompt_rows` of the coming passes are prompt rows (see
    /// [`PagedKvPool::set_prompt_rows`]).
    prompt_rows: usize,
    /// How many times `tables` was replaced by a larger buffer
    /// ([`PagedKvPool::buffers_generation`]).
    generation: u64,
}

/// Elements of each of K and V in a pool of this geometry.
fn pool_len(
    n_layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    n_blocks: usize,
) -> Result<usize> {
    let per_block = mul("paged kv pool", block_size, head_dim)?;
    let per_layer_block = mul("paged kv pool", per_block, n_kv_heads)?;
    let per_layer = mul("paged kv pool", per_layer_block, n_blocks)?;
    mul("paged kv pool", per_layer, n_layers)
}

/// Device bytes of one block (K and V of every layer), `None` on overflow.
pub fn paged_block_bytes(
    n_layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
) -> Option<usize> {
    pool_len(n_layers, n_kv_heads, head_dim, block_size, 1)
        .ok()?
        .checked_mul(2 * std::mem::size_of::<f16>())
}

/// The block tables of one forward pass as the kernels read them: a
/// (tables.len(), width) matrix padded with -1, width the longest table
/// (at least `min_width`). Every id must name a block of the pool, and the
/// positions the widest table covers must fit the kernels' `int`.
pub fn pack_block_tables(
    tables: &[&[u32]],
    n_blocks: usize,
    block_size: usize,
    min_width: usize,
) -> Result<(Vec<i32>, usize)> {
    if tables.is_empty() {
        return Err(CudaError::Shape("paged pool: no block tables".into()));
    }
    to_i32("paged pool: block tables", tables.len())?;
    let width = tables
        .iter()
        .map(|t| t.len())
        .max()
        .unwrap_or(0)
        .max(min_width)
        .max(1);
    to_i32(
        "paged pool: positions of a block table",
        mul("paged pool: positions of a block table", width, block_size)?,
    )?;
    let mut packed = vec![-1i32; mul("paged pool: block tables", tables.len(), width)?];
    for (i, t) in tables.iter().enumerate() {
        for (j, &id) in t.iter().enumerate() {
            if id as usize >= n_blocks {
                return Err(CudaError::Shape(format!(
                    "paged pool: block table {i} entry {j} is block {id}, the pool has {n_blocks}"
                )));
            }
            packed[i * width + j] = id as i32;
        }
    }
    Ok((packed, width))
}

impl PagedKvPool {
    pub fn new(
        dev: &CudaDevice,
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        n_blocks: usize,
    ) -> Result<Self> {
        if n_layers == 0 || n_kv_heads == 0 || head_dim == 0 || block_size == 0 || n_blocks == 0 {
            return Err(CudaError::Shape(format!(
                "paged kv pool: layers {n_layers}, kv heads {n_kv_heads}, head_dim {head_dim}, \
                 block size {block_size}, blocks {n_blocks} must all be positive"
            )));
        }
        if !PAGED_HEAD_DIMS.contains(&head_dim) {
            return Err(CudaError::Unsupported(format!(
                "paged attention: head_dim {head_dim} (kernels exist for {PAGED_HEAD_DIMS:?})"
            )));
        }
        for (what, v) in [
            ("layers", n_layers),
            ("kv heads", n_kv_heads),
            ("block size", block_size),
            ("blocks", n_blocks),
        ] {
            to_i32(&format!("paged kv pool {what}"), v)?;
        }
        let len = pool_len(n_layers, n_kv_heads, head_dim, block_size, n_blocks)?;
        Ok(Self {
            n_layers,
            n_kv_heads,
            head_dim,
            block_size,
            n_blocks,
            k: dev.alloc_zeros("paged KV pool keys", len)?,
            v: dev.alloc_zeros("paged KV pool values", len)?,
            workspace: dev
                .alloc_zeros("paged attention split-K workspace", ATTN_WORKSPACE_FLOATS)?,
            tables: dev.alloc_zeros("block tables", 64)?,
            n_tables: 0,
            table_width: 0,
            prompt_rows: 0,
            generation: 0,
        })
    }

    pub fn n_layers(&self) -> usize {
        self.n_layers
    }
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }
    /// Device bytes of keys and values.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * std::mem::size_of::<f16>()
    }
    /// Positions the widest current block table covers.
    pub fn table_positions(&self) -> usize {
        self.table_width * self.block_size
    }
    /// Changes whenever the block-table buffer was replaced by a larger one
    /// (more or wider tables than before): a CUDA graph captured before
    /// reads the freed buffer and must be captured again.
    pub fn buffers_generation(&self) -> u64 {
        self.generation
    }

    /// Uploads the block tables of the next forward pass (table `i` for the
    /// rows with `row_seq == i`). Validated first: an id outside the pool is
    /// an error and leaves the previous tables in place.
    pub fn set_block_tables(&mut self, dev: &CudaDevice, tables: &[&[u32]]) -> Result<()> {
        self.set_block_tables_width(dev, tables, 1)
    }

    /// [`PagedKvPool::set_block_tables`] padded to at least `min_width`
    /// blocks per table: a CUDA graph of a pass replays its kernels with
    /// the table width it was captured with (`GpuBatchModel` rounds the
    /// width up to a power of two, so that a graph serves a range of
    /// sequence lengths).
    pub fn set_block_tables_width(
        &mut self,
        dev: &CudaDevice,
        tables: &[&[u32]],
        min_width: usize,
    ) -> Result<()> {
        let (packed, width) = pack_block_tables(tables, self.n_blocks, self.block_size, min_width)?;
        if self.tables.len() < packed.len() {
            self.generation += 1;
            self.tables = dev.alloc_zeros("block tables", packed.len().next_power_of_two())?;
        }
        dev.stream()
            .memcpy_htod(&packed, &mut self.tables.slice_mut(0..packed.len()))
            .map_err(|e| driver_err("block tables to the device", e))?;
        self.n_tables = tables.len();
        self.table_width = width;
        self.prompt_rows = 0;
        Ok(())
    }

    /// Says that rows `0..rows` of the passes run with the current tables
    /// are prompt rows: chunks of several rows of one sequence in position
    /// order, the rest (decode rows, one per sequence) after them.
    /// [`paged_attention`] runs the prompt rows on the tensor-core tile
    /// kernel (query tiles share each key tile) and the others on the
    /// split-K decode kernel. Only a schedule: both kernels are correct for
    /// any rows, but the tile kernel walks the keys once per sequence in a
    /// query tile, so prompt rows should be long runs of one sequence
    /// (`GpuBatchModel` marks chunk bodies of 16 or more rows).
    /// [`PagedKvPool::set_block_tables`] resets it to 0 (every row on the
    /// decode kernel).
    pub fn set_prompt_rows(&mut self, rows: usize) {
        self.prompt_rows = rows;
    }

    /// See [`PagedKvPool::set_prompt_rows`].
    pub fn prompt_rows(&self) -> usize {
        self.prompt_rows
    }

    /// Host copies of all keys and values, each
    /// (n_layers, n_blocks, n_kv_heads, block_size, head_dim). For tests:
    /// synchronises the stream.
    pub fn download(&self, dev: &CudaDevice) -> Result<(Vec<f16>, Vec<f16>)> {
        Ok((dev.download(&self.k)?, dev.download(&self.v)?))
    }
}

/// Store `k`, `v` (rows, n_kv_heads * head_dim) f32 of layer `layer` as f16
/// at position `row_pos[r]` of block table `row_seq[r]`. Rows outside the
/// current tables, or whose block id is outside the pool, are skipped.
#[allow(clippy::too_many_arguments)]
pub fn paged_kv_write(
    dev: &CudaDevice,
    pool: &mut PagedKvPool,
    layer: usize,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
) -> Result<()> {
    let (n, rows_i) = check_kv_write_args(
        "paged_kv_write",
        "a pool",
        layer,
        pool.n_layers,
        pool.n_kv_heads * pool.head_dim,
        KvWriteArgs {
            k,
            v,
            rows,
            row_seq,
            row_pos,
        },
    )?;
    if rows == 0 {
        return Ok(());
    }
    if pool.n_tables == 0 {
        return Err(CudaError::Shape(
            "paged_kv_write: no block tables set".into(),
        ));
    }
    let func = dev.function(MODULE, SOURCE, "paged_kv_write", 0)?;
    let ints = [
        layer as i32,
        pool.n_blocks as i32,
        pool.n_kv_heads as i32,
        pool.head_dim as i32,
        pool.block_size as i32,
        pool.n_tables as i32,
        pool.table_width as i32,
    ];
    let mut b = dev.stream().launch_builder(&func);
    b.arg(&mut pool.k)
        .arg(&mut pool.v)
        .arg(k)
        .arg(v)
        .arg(row_seq)
        .arg(row_pos)
        .arg(&pool.tables)
        .arg(&rows_i);
    for i in &ints {
        b.arg(i);
    }
    // SAFETY: argument order and types match paged_kv_write; k, v hold
    // rows*n_kv_heads*head_dim values, row_seq/row_pos rows, the tables
    // n_tables*table_width ids; the kernel skips rows outside the tables and
    // block ids outside the pool.
    unsafe { b.launch(grid_stride(dev, n)) }.map_err(|e| driver_err("launch paged_kv_write", e))?;
    Ok(())
}

const PAGED_NAMES: AttnNames = AttnNames {
    what: "paged attention",
    kv: "pool",
    window: "paged attention window",
    q: "paged attention q",
    out: "paged attention out",
    row_seq: "paged attention row_seq",
    row_pos: "paged attention row_pos",
    rows: "paged attention rows",
};

fn check_params(
    p: &AttnParams,
    pool: &PagedKvPool,
    layer: usize,
    rows: usize,
    lens: (usize, usize, usize, usize), // (q, out, row_seq, row_pos)
) -> Result<AttnScalars> {
    check_attn_scalars(
        &PAGED_NAMES,
        p,
        (pool.n_layers, pool.n_kv_heads, pool.head_dim),
        None,
        layer,
        // A window longer than any table is no window.
        i32::MAX as usize,
        rows,
        lens,
    )
}

/// `out (rows, n_heads, head_dim) = softmax(scale·q·Kᵀ [soft-capped] + mask)·V`
/// for queries `q (rows, n_heads, head_dim)`: row `r` attends the keys
/// `j <= row_pos[r]` (and `j > row_pos[r] - window`) of block table
/// `row_seq[r]`, layer `layer`. Rows outside the tables get zeros. The keys
/// of the pass's own rows must have been written (by [`paged_kv_write`] of
/// the same layer) before: a prompt chunk then attends its sequence's
/// earlier blocks and causally within itself.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    dev: &CudaDevice,
    p: &AttnParams,
    q: &CudaSlice<f32>,
    pool: &PagedKvPool,
    layer: usize,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let c = check_params(
        p,
        pool,
        layer,
        rows,
        (q.len(), out.len(), row_seq.len(), row_pos.len()),
    )?;
    if rows == 0 {
        return Ok(());
    }
    if pool.n_tables == 0 {
        return Err(CudaError::Shape(
            "paged attention: no block tables set".into(),
        ));
    }
    let tiled = prompt_tile_rows(pool.prompt_rows, rows, p.head_dim, prefill_kernel());
    if tiled > 0 {
        paged_prefill_tc(dev, p, &c, q, pool, layer, tiled, row_seq, row_pos, out)?;
    }
    if tiled == rows {
        return Ok(());
    }
    // The decode rows after the prompt rows (the same buffers from row
    // `tiled` on): the contiguous cache's decode kernel, reading keys
    // through the tables (`attn_paged_*`; splits merged in the launch).
    let qd = p.n_heads * p.head_dim;
    let c = DecodeKv::Paged(pool).check(
        p,
        layer,
        rows,
        (q.len(), out.len(), row_seq.len(), row_pos.len()),
    )?;
    decode_launch::<f32>(
        dev,
        p,
        &c,
        DecodeQueries::Roped(q.slice(tiled * qd..)),
        DecodeKv::Paged(pool),
        rows - tiled,
        &row_seq.slice(tiled..),
        &row_pos.slice(tiled..),
        &mut out.slice_mut(tiled * qd..),
    )
}

/// Whether the serving decoder takes [`paged_attention_decode_rope`] for a
/// pass of one row per sequence: not when `MARLIN_CUDA_PAGED_ROPE=0`
/// (measuring the difference against `qkv_rope_kv` + [`paged_attention`];
/// read once).
pub fn paged_rope_fusion_enabled() -> bool {
    static ON: knobs::Switch = knobs::Switch::new("MARLIN_CUDA_PAGED_ROPE", true);
    ON.get()
}

/// [`super::qkv_rope_kv`] into the pool followed by attention, in one
/// launch of the contiguous cache's fused decode kernel
/// ([`super::attention_decode_rope`]) reading and writing the pool through
/// its block tables: every block ropes its query heads from the projection
/// rows, the block whose keys include the row's position ropes this step's
/// key and writes it and the value into layer `layer` of the pool, the
/// splits are merged by the last block, and `out` takes the GEMMs' element
/// type (no f32 round trip). Rows outside the tables, and keys in blocks
/// outside the pool, are skipped as by [`paged_kv_write`] and
/// [`paged_attention`].
///
/// The rows must belong to distinct tables (one decode row per sequence:
/// a row never reads a key another row of the call writes), and the keys
/// of earlier positions must have been written by work that completed
/// before this launch could start (they are read before the PDL wait):
/// earlier passes, separated from this one by the host copies of the
/// tables and of `row_seq` / `row_pos` before each pass, as for
/// [`super::attention_decode_rope`].
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_decode_rope<T: ActElem>(
    dev: &CudaDevice,
    p: &AttnParams,
    inp: &RopeInputs<'_, '_, T>,
    pool: &mut PagedKvPool,
    layer: usize,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    if rows > 0 && pool.n_tables == 0 {
        return Err(CudaError::Shape(
            "fused paged decode attention: no block tables set".into(),
        ));
    }
    decode_rope_launch(
        dev,
        p,
        inp,
        DecodeKv::Paged(pool),
        layer,
        rows,
        row_seq,
        row_pos,
        out,
    )
}

/// Rows `0..n` of a pass that the tensor-core tile kernel runs: the pool's
/// prompt rows when their head dim has the kernel and there are more than
/// [`DECODE_MAX_ROWS`] of them (fewer re-read their keys per row on the
/// decode kernel for less than an under-filled tile launch costs, as in
/// `ops::attention`), else none; none either under
/// `MARLIN_CUDA_ATTN_PREFILL=scalar` (`kind` [`PrefillKernel::Scalar`]:
/// the precise f32 path, here the decode kernel, as `ops::attention` takes
/// its CUDA-core prefill kernel then).
fn prompt_tile_rows(
    prompt_rows: usize,
    rows: usize,
    head_dim: usize,
    kind: PrefillKernel,
) -> usize {
    let n = prompt_rows.min(rows);
    if kind == PrefillKernel::TensorCore
        && n > DECODE_MAX_ROWS
        && PREFILL_HEAD_DIMS.contains(&head_dim)
    {
        n
    } else {
        0
    }
}

/// Entry of the paged tensor-core prefill kernel (kernels/attention.cu).
fn prefill_tc_name(head_dim: usize) -> Result<&'static str> {
    Ok(match head_dim {
        64 => "paged_attn_prefill_tc_hd64",
        128 => "paged_attn_prefill_tc_hd128",
        256 => "paged_attn_prefill_tc_hd256",
        _ => {
            return Err(CudaError::Unsupported(format!(
                "paged tensor-core prefill for head_dim {head_dim}"
            )))
        }
    })
}

/// Rows `0..rows` of a pass (prompt rows) on the tensor-core prefill loop
/// of `ops::attention`, reading keys through the block tables.
#[allow(clippy::too_many_arguments)]
fn paged_prefill_tc(
    dev: &CudaDevice,
    p: &AttnParams,
    c: &AttnScalars,
    q: &CudaSlice<f32>,
    pool: &PagedKvPool,
    layer: usize,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let name = prefill_tc_name(p.head_dim)?;
    let smem = prefill_tc_smem_bytes(p.head_dim);
    let grid = prefill_grid("paged attention", p, c.group, PREFILL_TC_QV, rows, smem)?;
    let func = attention_function(dev, p.head_dim, name, smem as u32)?;
    // Engine block sizes are powers of two: the kernel shifts instead of
    // dividing (-1: divide).
    let block_shift = if pool.block_size.is_power_of_two() {
        pool.block_size.trailing_zeros() as i32
    } else {
        -1
    };
    let ints = [
        rows as i32,
        p.n_heads as i32,
        c.group as i32,
        grid.heads_per_block,
        grid.rows_per_block,
        layer as i32,
        pool.n_blocks as i32,
        pool.n_kv_heads as i32,
        pool.block_size as i32,
        block_shift,
        pool.n_tables as i32,
        pool.table_width as i32,
    ];
    let mut b = dev.stream().launch_builder(&func);
    b.arg(q)
        .arg(&pool.k)
        .arg(&pool.v)
        .arg(row_seq)
        .arg(row_pos)
        .arg(&pool.tables)
        .arg(out);
    for i in &ints {
        b.arg(i);
    }
    b.arg(&c.q_scale).arg(&c.softcap).arg(&c.window);
    // SAFETY: argument order and types match paged_attn_prefill_tc_hd* in
    // kernels/attention.cu; q and out hold at least rows*n_heads*head_dim
    // values, row_seq/row_pos at least rows (checked for the whole pass);
    // the tables n_tables*table_width ids; the pool matches (checked); the
    // kernel gives rows outside the tables zeros and reads keys in blocks
    // outside the pool as zeros; smem as AttTc lays it out, the attribute
    // set at load.
    unsafe { b.launch(grid.cfg) }.map_err(|e| driver_err(&format!("launch {name}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_tables_are_validated_and_padded() {
        let (packed, width) = pack_block_tables(&[&[3, 1], &[0], &[2, 4, 5]], 6, 16, 1).unwrap();
        assert_eq!(width, 3);
        assert_eq!(packed, vec![3, 1, -1, 0, -1, -1, 2, 4, 5]);
        // An id outside the pool names the table and the entry.
        let e = pack_block_tables(&[&[0, 1], &[6]], 6, 16, 1).unwrap_err();
        assert!(e.to_string().contains("table 1 entry 0"), "{e}");
        assert!(pack_block_tables(&[&[u32::MAX]], 6, 16, 1).is_err());
        assert!(pack_block_tables(&[], 6, 16, 1).is_err());
        // Positions past i32 are refused, not truncated.
        let long = vec![0u32; 1 << 20];
        assert!(pack_block_tables(&[&long], 1, 1 << 12, 1).is_err());
        // An empty table is a row of padding.
        let (packed, width) = pack_block_tables(&[&[]], 1, 16, 1).unwrap();
        assert_eq!((packed, width), (vec![-1], 1));
        // A minimum width pads every table; a longer table still sets it.
        let (packed, width) = pack_block_tables(&[&[2], &[0, 1]], 6, 16, 4).unwrap();
        assert_eq!(width, 4);
        assert_eq!(packed, vec![2, -1, -1, -1, 0, 1, -1, -1]);
        let (_, width) = pack_block_tables(&[&[0, 1, 2]], 6, 16, 2).unwrap();
        assert_eq!(width, 3);
        // The padded width's positions must fit i32 too.
        assert!(pack_block_tables(&[&[0]], 1, 1 << 12, 1 << 20).is_err());
    }

    #[test]
    fn prompt_rows_take_the_tile_kernel_when_it_pays() {
        // More prompt rows than DECODE_MAX_ROWS on a head dim with the
        // kernel: all of them, never more than the pass has.
        let tc = PrefillKernel::TensorCore;
        assert_eq!(prompt_tile_rows(200, 230, 128, tc), 200);
        assert_eq!(prompt_tile_rows(300, 230, 64, tc), 230);
        assert_eq!(prompt_tile_rows(17, 20, 256, tc), 17);
        // Few prompt rows, head dims without the kernel, or the precise
        // path asked for: the decode kernel.
        assert_eq!(prompt_tile_rows(DECODE_MAX_ROWS, 230, 128, tc), 0);
        assert_eq!(prompt_tile_rows(0, 230, 128, tc), 0);
        assert_eq!(prompt_tile_rows(200, 230, 32, tc), 0);
        assert_eq!(prompt_tile_rows(200, 230, 128, PrefillKernel::Scalar), 0);
        assert!(prefill_tc_name(32).is_err());
        for hd in PREFILL_HEAD_DIMS {
            assert!(prefill_tc_name(hd).unwrap().ends_with(&format!("_hd{hd}")));
        }
    }

    #[test]
    fn pool_sizes() {
        assert_eq!(pool_len(2, 3, 64, 16, 5).unwrap(), 2 * 3 * 64 * 16 * 5);
        assert!(pool_len(usize::MAX, 3, 64, 16, 5).is_err());
        // SmolLM2-135M: 30 layers, 3 kv heads of 64, blocks of 16: 360 KiB.
        assert_eq!(paged_block_bytes(30, 3, 64, 16), Some(30 * 3 * 64 * 16 * 4));
        assert_eq!(paged_block_bytes(usize::MAX, 3, 64, 16), None);
    }
}
