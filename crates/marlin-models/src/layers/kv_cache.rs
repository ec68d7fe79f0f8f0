//! Per-sequence KV cache: f32, contiguous, one K and one V buffer per layer.

use crate::error::{ModelError, Result};
use marlin_cpu::ops::KvView;

struct LayerKv {
    /// (n_kv_heads, capacity, head_dim): a head's positions are contiguous
    /// so attention streams them.
    k: Vec<f32>,
    /// (n_kv_heads, capacity, head_dim)
    v: Vec<f32>,
}

/// Keys and values of every layer for positions `0..len()` of one sequence.
pub struct KvCache {
    layers: Vec<LayerKv>,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    /// Allocates room for `capacity` positions; errors instead of
    /// overflowing or asking for more than `max_bytes`.
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        max_bytes: usize,
    ) -> Result<Self> {
        let per_layer = n_kv_heads
            .checked_mul(head_dim)
            .and_then(|x| x.checked_mul(capacity))
            .ok_or_else(|| {
                ModelError::Invalid(format!("KV cache of {capacity} positions overflows"))
            })?;
        per_layer
            .checked_mul(2 * 4)
            .and_then(|x| x.checked_mul(n_layers))
            .filter(|&b| b <= max_bytes)
            .ok_or_else(|| {
                ModelError::Invalid(format!(
                    "KV cache of {capacity} positions needs more than the {max_bytes} bytes allowed"
                ))
            })?;
        let layers = (0..n_layers)
            .map(|_| LayerKv {
                k: vec![0.0; per_layer],
                v: vec![0.0; per_layer],
            })
            .collect();
        Ok(Self {
            layers,
            n_kv_heads,
            head_dim,
            capacity,
            len: 0,
        })
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
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

    /// Checks that `n` new tokens fit and that the cache matches the model.
    pub(crate) fn check(
        &self,
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        n: usize,
    ) -> Result<()> {
        if (self.layers.len(), self.n_kv_heads, self.head_dim) != (n_layers, n_kv_heads, head_dim) {
            return Err(ModelError::Invalid(
                "KV cache was created for a model of another shape".into(),
            ));
        }
        if self
            .len
            .checked_add(n)
            .is_none_or(|end| end > self.capacity)
        {
            return Err(ModelError::ContextOverflow {
                used: self.len,
                new: n,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Stores `k`, `v` (m, n_kv_heads, head_dim) of layer `layer` at
    /// positions `pos0..pos0+m`. The caller checked capacity.
    pub(crate) fn write(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let (hd, cap) = (self.head_dim, self.capacity);
        let per_tok = self.n_kv_heads * hd;
        let l = &mut self.layers[layer];
        for (t, (kt, vt)) in k
            .chunks_exact(per_tok)
            .zip(v.chunks_exact(per_tok))
            .enumerate()
        {
            for h in 0..self.n_kv_heads {
                let dst = (h * cap + pos0 + t) * hd;
                l.k[dst..dst + hd].copy_from_slice(&kt[h * hd..(h + 1) * hd]);
                l.v[dst..dst + hd].copy_from_slice(&vt[h * hd..(h + 1) * hd]);
            }
        }
    }

    pub(crate) fn view(&self, layer: usize) -> KvView<'_> {
        let l = &self.layers[layer];
        KvView {
            k: &l.k,
            v: &l.v,
            capacity: self.capacity,
        }
    }
}
