//! KV storage. [`KvPool`] is a fixed set of blocks of `block_size`
//! positions for every layer; a sequence's cache is a block table (which
//! block holds positions `i*block_size..(i+1)*block_size`). Which blocks are
//! free, shared or cached is the caller's business (the serving engine's
//! block manager): the pool only stores and checks indices.
//!
//! [`KvCache`] is the single-sequence cache of `run`, `chat` and perplexity:
//! a private pool of one block as long as the context.

use crate::error::{ModelError, Result};
use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use marlin_cpu::ops::{KvRows, KvView};

/// How the cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// Half the bytes of f32; llama.cpp's default cache type. Attention
    /// converts the rows it reads to f32.
    #[default]
    F16,
    F32,
}

impl KvType {
    pub fn bytes(self) -> usize {
        match self {
            KvType::F16 => size_of::<f16>(),
            KvType::F32 => size_of::<f32>(),
        }
    }
}

/// One layer's keys or values, (n_blocks, n_kv_heads, block_size, head_dim):
/// a head's positions are contiguous within a block so attention streams
/// them. f16 is held as its `u16` bits so that `vec![0; n]`, like the f32
/// `vec![0.0; n]`, is a zeroed allocation whose untouched pages (a long
/// context mostly unused) are never resident.
enum KvBuf {
    F16(Vec<u16>),
    F32(Vec<f32>),
}

impl KvBuf {
    fn zeroed(ty: KvType, n: usize) -> Self {
        match ty {
            KvType::F16 => KvBuf::F16(vec![0u16; n]),
            KvType::F32 => KvBuf::F32(vec![0.0; n]),
        }
    }

    fn store(&mut self, at: usize, src: &[f32]) {
        let range = at..at + src.len();
        match self {
            KvBuf::F16(x) => x[range]
                .reinterpret_cast_mut::<f16>()
                .convert_from_f32_slice(src),
            KvBuf::F32(x) => x[range].copy_from_slice(src),
        }
    }

    fn rows(&self) -> KvRows<'_> {
        match self {
            KvBuf::F16(x) => KvRows::F16(x.reinterpret_cast()),
            KvBuf::F32(x) => KvRows::F32(x),
        }
    }
}

struct LayerKv {
    k: KvBuf,
    v: KvBuf,
}

/// Keys and values of every layer in `n_blocks` blocks of `block_size`
/// positions, f16 or f32.
pub struct KvPool {
    layers: Vec<LayerKv>,
    n_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    n_blocks: usize,
}

impl KvPool {
    /// Allocates `n_blocks` blocks of `kv_type`; errors instead of
    /// overflowing or asking for more than `max_bytes`.
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        (block_size, n_blocks): (usize, usize),
        kv_type: KvType,
        max_bytes: usize,
    ) -> Result<Self> {
        if block_size == 0 || n_blocks == 0 {
            return Err(ModelError::Invalid(format!(
                "KV pool of {n_blocks} blocks of {block_size} positions"
            )));
        }
        let per_layer = n_kv_heads
            .checked_mul(head_dim)
            .and_then(|x| x.checked_mul(block_size))
            .and_then(|x| x.checked_mul(n_blocks))
            .ok_or_else(|| {
                ModelError::Invalid(format!(
                    "KV pool of {n_blocks} blocks of {block_size} positions overflows"
                ))
            })?;
        per_layer
            .checked_mul(2 * kv_type.bytes())
            .and_then(|x| x.checked_mul(n_layers))
            .filter(|&b| b <= max_bytes)
            .ok_or_else(|| {
                ModelError::Invalid(format!(
                    "KV pool of {n_blocks} blocks of {block_size} positions needs more than the {max_bytes} bytes allowed"
                ))
            })?;
        let layers = (0..n_layers)
            .map(|_| LayerKv {
                k: KvBuf::zeroed(kv_type, per_layer),
                v: KvBuf::zeroed(kv_type, per_layer),
            })
            .collect();
        Ok(Self {
            layers,
            n_kv_heads,
            head_dim,
            block_size,
            n_blocks,
        })
    }

    /// Bytes of K and V per block over all layers, with the default
    /// [`KvType`] (the pool of `LoadOptions::default()`).
    pub fn block_bytes(n_layers: usize, n_kv_heads: usize, head_dim: usize, bs: usize) -> usize {
        n_layers
            .saturating_mul(n_kv_heads)
            .saturating_mul(head_dim)
            .saturating_mul(bs)
            .saturating_mul(2 * KvType::default().bytes())
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Checks that the pool matches the model, and that `table` names
    /// existing blocks and covers positions `0..end`.
    pub(crate) fn check(
        &self,
        (n_layers, n_kv_heads, head_dim): (usize, usize, usize),
        table: &[u32],
        pos0: usize,
        n: usize,
    ) -> Result<()> {
        if (self.layers.len(), self.n_kv_heads, self.head_dim) != (n_layers, n_kv_heads, head_dim) {
            return Err(ModelError::Invalid(
                "KV cache was created for a model of another shape".into(),
            ));
        }
        if let Some(b) = table.iter().find(|&&b| b as usize >= self.n_blocks) {
            return Err(ModelError::Invalid(format!(
                "block table names block {b} of a pool of {}",
                self.n_blocks
            )));
        }
        let capacity = table.len().saturating_mul(self.block_size);
        if pos0.checked_add(n).is_none_or(|end| end > capacity) {
            return Err(ModelError::ContextOverflow {
                used: pos0,
                new: n,
                capacity,
            });
        }
        Ok(())
    }

    /// Stores `k`, `v` (m, n_kv_heads, head_dim) of layer `layer` at
    /// positions `pos0..pos0+m` of the sequence with block table `table`.
    /// The caller checked the table with [`Self::check`].
    pub(crate) fn write(&mut self, layer: usize, table: &[u32], pos0: usize, k: &[f32], v: &[f32]) {
        let (hd, bs, nkv) = (self.head_dim, self.block_size, self.n_kv_heads);
        let per_tok = nkv * hd;
        let l = &mut self.layers[layer];
        for (t, (kt, vt)) in k
            .chunks_exact(per_tok)
            .zip(v.chunks_exact(per_tok))
            .enumerate()
        {
            let pos = pos0 + t;
            let block = table[pos / bs] as usize;
            for h in 0..nkv {
                let dst = ((block * nkv + h) * bs + pos % bs) * hd;
                l.k.store(dst, &kt[h * hd..(h + 1) * hd]);
                l.v.store(dst, &vt[h * hd..(h + 1) * hd]);
            }
        }
    }

    pub(crate) fn view<'a>(&'a self, layer: usize, table: &'a [u32]) -> KvView<'a> {
        let l = &self.layers[layer];
        KvView {
            k: l.k.rows(),
            v: l.v.rows(),
            block_size: self.block_size,
            blocks: table,
        }
    }
}

/// The block table of a [`KvCache`]: its one block.
const CACHE_TABLE: &[u32] = &[0];

/// Keys and values of every layer for positions `0..len()` of one sequence,
/// contiguous (a pool of one block of `capacity` positions).
pub struct KvCache {
    pool: KvPool,
    len: usize,
}

impl KvCache {
    /// Allocates room for `capacity` positions of `kv_type`; errors instead
    /// of overflowing or asking for more than `max_bytes`.
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        (capacity, kv_type): (usize, KvType),
        max_bytes: usize,
    ) -> Result<Self> {
        let pool = KvPool::new(
            n_layers,
            n_kv_heads,
            head_dim,
            (capacity, 1),
            kv_type,
            max_bytes,
        )
        .map_err(|_| {
            ModelError::Invalid(format!(
                "KV cache of {capacity} positions needs more than the {max_bytes} bytes allowed"
            ))
        })?;
        Ok(Self { pool, len: 0 })
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.pool.block_size()
    }

    pub fn n_layers(&self) -> usize {
        self.pool.n_layers()
    }

    /// Forgets everything after the first `len` positions (prompt reuse,
    /// rewinding); they will be overwritten.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Marks `n` more positions as filled (after every layer wrote them).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// The pool and the block table of this cache, for the batched forward.
    pub(crate) fn as_pool(&mut self) -> (&mut KvPool, &'static [u32]) {
        (&mut self.pool, CACHE_TABLE)
    }
}
