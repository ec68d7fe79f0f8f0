//! The f16 KV cache of every layer and sequence, and its write.

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::f16;

use super::{check_len, grid_stride, mul, to_i32, OPS_MODULE, OPS_SOURCE};
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};

/// f32 elements of the attention split-K workspace (16 MiB): partial
/// (max, sum, output) of each (row, query head, split). The split count of
/// a launch is chosen to fit (see `attention::decode_splits`).
pub(crate) const ATTN_WORKSPACE_FLOATS: usize = 1 << 22;
/// The workspace's last elements: u32 tickets of the decode kernel, one
/// per (row, kv head x head chunk) block column (zero between launches).
pub(crate) const ATTN_TICKETS: usize = 1 << 16;
/// Workspace elements that hold partials (the rest are the tickets).
pub(crate) const ATTN_PARTIAL_FLOATS: usize = ATTN_WORKSPACE_FLOATS - ATTN_TICKETS;

/// Keys and values of every layer of `n_seqs` sequences, f16, each laid out
/// `[seq][layer][kv_head][pos][head_dim]` (a head's positions contiguous), plus
/// the attention kernels' split-K workspace (allocated here once, so that
/// `attention` never allocates).
pub struct GpuKvCache {
    n_layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    n_seqs: usize,
    capacity: usize,
    pub(crate) k: CudaSlice<f16>, // (n_seqs, n_layers, n_kv_heads, capacity, head_dim)
    pub(crate) v: CudaSlice<f16>, // (n_seqs, n_layers, n_kv_heads, capacity, head_dim)
    /// (ATTN_WORKSPACE_FLOATS): attention split-K partials, then
    /// ATTN_TICKETS u32 tickets.
    pub(crate) workspace: CudaSlice<f32>,
}

impl GpuKvCache {
    pub fn new(
        dev: &CudaDevice,
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        n_seqs: usize,
        capacity: usize,
    ) -> Result<Self> {
        if n_layers == 0 || n_kv_heads == 0 || head_dim == 0 || n_seqs == 0 || capacity == 0 {
            return Err(CudaError::Shape(format!(
                "kv cache: layers {n_layers}, kv heads {n_kv_heads}, head_dim {head_dim}, \
                 sequences {n_seqs}, capacity {capacity} must all be positive"
            )));
        }
        let len = cache_len(n_layers, n_kv_heads, head_dim, n_seqs, capacity)?;
        for (what, v) in [
            ("layers", n_layers),
            ("kv heads", n_kv_heads),
            ("head_dim", head_dim),
            ("sequences", n_seqs),
            ("capacity", capacity),
        ] {
            to_i32(&format!("kv cache {what}"), v)?;
        }
        Ok(Self {
            n_layers,
            n_kv_heads,
            head_dim,
            n_seqs,
            capacity,
            k: dev.alloc_zeros("KV cache keys", len)?,
            v: dev.alloc_zeros("KV cache values", len)?,
            workspace: dev.alloc_zeros("attention split-K workspace", ATTN_WORKSPACE_FLOATS)?,
        })
    }

    /// Positions per sequence.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    pub fn n_seqs(&self) -> usize {
        self.n_seqs
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
    /// Device bytes of keys and values.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * std::mem::size_of::<f16>()
    }
    /// Host copies of all keys and values, each
    /// (n_seqs, n_layers, n_kv_heads, capacity, head_dim). For tests and
    /// debugging: synchronises the stream.
    pub fn download(&self, dev: &CudaDevice) -> Result<(Vec<f16>, Vec<f16>)> {
        Ok((dev.download(&self.k)?, dev.download(&self.v)?))
    }

    /// Device bytes of the attention workspace (besides [`Self::bytes`]).
    pub fn workspace_bytes(&self) -> usize {
        self.workspace.len() * std::mem::size_of::<f32>()
    }
}

/// Elements of each of K and V.
pub(crate) fn cache_len(
    n_layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    n_seqs: usize,
    capacity: usize,
) -> Result<usize> {
    let per_head = mul("kv cache", capacity, head_dim)?;
    let per_layer = mul("kv cache", per_head, n_kv_heads)?;
    let per_seq = mul("kv cache", per_layer, n_layers)?;
    mul("kv cache", per_seq, n_seqs)
}

/// The rows handed to a KV write (contiguous cache or paged pool).
pub(crate) struct KvWriteArgs<'a> {
    pub k: &'a CudaSlice<f32>,
    pub v: &'a CudaSlice<f32>,
    pub rows: usize,
    pub row_seq: &'a CudaSlice<i32>,
    pub row_pos: &'a CudaSlice<i32>,
}

/// Launch-argument checks shared by [`kv_write`] and
/// `paged::paged_kv_write`: `layer` below `n_layers` (of `container`, for the
/// message), `k` and `v` of `rows * row_width` values, one sequence and
/// position per row. Returns (values per K or V, rows as the kernel's i32).
pub(crate) fn check_kv_write_args(
    name: &str,
    container: &str,
    layer: usize,
    n_layers: usize,
    row_width: usize,
    args: KvWriteArgs<'_>,
) -> Result<(usize, i32)> {
    if layer >= n_layers {
        return Err(CudaError::Shape(format!(
            "{name}: layer {layer} of {container} with {n_layers} layers"
        )));
    }
    // The message names ("kv_write k", ...) are built only on failure: this
    // runs once per layer and decode step.
    let len = |what: &str, have: usize, need: usize| {
        if have < need {
            check_len(&format!("{name} {what}"), have, need)
        } else {
            Ok(())
        }
    };
    let n = mul(name, args.rows, row_width)?;
    len("k", args.k.len(), n)?;
    len("v", args.v.len(), n)?;
    len("row_seq", args.row_seq.len(), args.rows)?;
    len("row_pos", args.row_pos.len(), args.rows)?;
    let rows_i =
        i32::try_from(args.rows).or_else(|_| to_i32(&format!("{name} rows"), args.rows))?;
    Ok((n, rows_i))
}

/// Store `k`, `v` (rows, n_kv_heads * head_dim) f32 of layer `layer` as f16
/// at (`row_seq[r]`, `row_pos[r]`) for each row `r`. Rows with a sequence
/// outside `0..n_seqs` or a position outside `0..capacity` are skipped
/// (never written out of bounds).
#[allow(clippy::too_many_arguments)]
pub fn kv_write(
    dev: &CudaDevice,
    cache: &mut GpuKvCache,
    layer: usize,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
) -> Result<()> {
    let (n, rows_i) = check_kv_write_args(
        "kv_write",
        "a cache",
        layer,
        cache.n_layers,
        cache.n_kv_heads * cache.head_dim,
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
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_kv_write", 0)?;
    let ints = [
        layer as i32,
        cache.n_layers as i32,
        cache.n_kv_heads as i32,
        cache.head_dim as i32,
        cache.n_seqs as i32,
        cache.capacity as i32,
    ];
    let mut b = dev.stream().launch_builder(&func);
    b.arg(&mut cache.k)
        .arg(&mut cache.v)
        .arg(k)
        .arg(v)
        .arg(row_seq)
        .arg(row_pos)
        .arg(&rows_i);
    for i in &ints {
        b.arg(i);
    }
    // SAFETY: argument order and types match mops_kv_write; k, v hold
    // rows*n_kv_heads*head_dim values, row_seq/row_pos rows; the kernel
    // skips rows whose sequence or position is outside the cache.
    unsafe { b.launch(grid_stride(dev, n)) }.map_err(|e| driver_err("launch mops_kv_write", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes() {
        assert_eq!(cache_len(2, 3, 4, 5, 6).unwrap(), 2 * 3 * 4 * 5 * 6);
        assert!(cache_len(usize::MAX, 3, 4, 5, 6).is_err());
    }
}
