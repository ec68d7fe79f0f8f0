//! Scaled dot-product attention of new queries against a per-sequence KV
//! cache, with grouped-query heads, causal masking and an optional sliding
//! window. The cache is paged: a block table maps positions to blocks of
//! `block_size` positions (a contiguous cache is one block).

use super::gemm::{gemm, Gemm};
use super::simd::kernels;
use super::softmax::softmax_inplace;
use crate::CpuError;
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Head layout and masking of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    pub n_heads: usize,
    /// Query heads `h` read KV head `h / (n_heads / n_kv_heads)`.
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `q·k` before the softmax (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// A query at position p sees keys at `p - window < j <= p` (Gemma 3
    /// local layers); `None`: all keys `j <= p`.
    pub window: Option<usize>,
}

/// The stored keys or values of a layer: f16 (half the memory, llama.cpp's
/// default cache type) or f32. Attention computes in f32: the one-token
/// path widens f16 rows inside its dot / axpy kernels (F16C), the prefill
/// path into the f32 tiles it builds anyway.
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

impl KvRows<'_> {
    pub fn len(&self) -> usize {
        match self {
            KvRows::F16(x) => x.len(),
            KvRows::F32(x) => x.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `at..at + dst.len()` as f32 into `dst`.
    fn read(&self, at: usize, dst: &mut [f32]) {
        match self {
            KvRows::F16(x) => x[at..at + dst.len()].convert_to_f32_slice(dst),
            KvRows::F32(x) => dst.copy_from_slice(&x[at..at + dst.len()]),
        }
    }

    /// Element `i` as f64 (the reference).
    fn get_f64(&self, i: usize) -> f64 {
        match self {
            KvRows::F16(x) => x[i].to_f64(),
            KvRows::F32(x) => x[i] as f64,
        }
    }
}

/// Keys and values of one layer, paged: `k` and `v` are each
/// (n_blocks, n_kv_heads, block_size, head_dim), so a head's positions are
/// contiguous within a block. Position `j` of the sequence lives at row
/// `j % block_size` of block `blocks[j / block_size]`.
#[derive(Clone, Copy)]
pub struct KvView<'a> {
    pub k: KvRows<'a>,
    pub v: KvRows<'a>,
    pub block_size: usize,
    /// The sequence's block table.
    pub blocks: &'a [u32],
}

/// The block table of a contiguous cache: one block.
const ONE_BLOCK: &[u32] = &[0];

impl<'a> KvView<'a> {
    /// A contiguous cache, each of `k`, `v` (n_kv_heads, capacity, head_dim).
    pub fn contiguous(k: KvRows<'a>, v: KvRows<'a>, capacity: usize) -> Self {
        Self {
            k,
            v,
            block_size: capacity,
            blocks: ONE_BLOCK,
        }
    }

    /// Positions the block table covers.
    pub fn capacity(&self) -> usize {
        self.blocks.len().saturating_mul(self.block_size)
    }

    /// Offset of key/value row `j` of kv head `g` (bounds checked by
    /// `AttentionParams::check`).
    fn row(&self, p: &AttentionParams, g: usize, j: usize) -> usize {
        let block = self.blocks[j / self.block_size] as usize;
        ((block * p.n_kv_heads + g) * self.block_size + j % self.block_size) * p.head_dim
    }

    /// The rows of kv head `g` at positions `keys`, as (offset, rows) runs
    /// that are contiguous in `k` and `v`, in position order.
    fn runs(
        &self,
        p: &AttentionParams,
        g: usize,
        keys: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (usize, usize)> + '_ {
        let bs = self.block_size;
        let p = *p;
        let mut j = keys.start;
        std::iter::from_fn(move || {
            if j >= keys.end {
                return None;
            }
            let n = (bs - j % bs).min(keys.end - j);
            let run = (self.row(&p, g, j), n);
            j += n;
            Some(run)
        })
    }
}

impl AttentionParams {
    fn check(
        &self,
        q_len: usize,
        kv: &KvView,
        pos0: usize,
        out_len: usize,
    ) -> Result<usize, CpuError> {
        let bad = |msg: String| Err(CpuError::Shape(format!("attention: {msg}")));
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || self.head_dim == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return bad(format!(
                "{} query heads cannot share {} kv heads (head_dim {})",
                self.n_heads, self.n_kv_heads, self.head_dim
            ));
        }
        let per_token = self.n_heads * self.head_dim;
        if !q_len.is_multiple_of(per_token) || out_len != q_len {
            return bad(format!(
                "q has {q_len} values, out {out_len}, tokens are {per_token}"
            ));
        }
        let m = q_len / per_token;
        let per_block = self
            .n_kv_heads
            .checked_mul(kv.block_size)
            .and_then(|v| v.checked_mul(self.head_dim))
            .filter(|&n| n > 0 && kv.k.len().is_multiple_of(n) && kv.k.len() == kv.v.len());
        let Some(per_block) = per_block else {
            return bad(format!(
                "kv cache has {}/{} values, not whole blocks of {} kv heads x {} positions x {}",
                kv.k.len(),
                kv.v.len(),
                self.n_kv_heads,
                kv.block_size,
                self.head_dim
            ));
        };
        let n_blocks = kv.k.len() / per_block;
        if let Some(b) = kv.blocks.iter().find(|&&b| b as usize >= n_blocks) {
            return bad(format!("block table names block {b} of {n_blocks}"));
        }
        match pos0.checked_add(m) {
            Some(end) if end <= kv.capacity() => Ok(m),
            _ => bad(format!(
                "positions {pos0}+{m} exceed the cache capacity {}",
                kv.capacity()
            )),
        }
    }

    /// Keys visible from a query at `pos`.
    fn key_range(&self, pos: usize) -> std::ops::Range<usize> {
        let start = match self.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        start..pos + 1
    }
}

/// `out (m, n_heads, head_dim) = softmax(scale·q·Kᵀ + mask)·V` for the `m`
/// queries `q (m, n_heads, head_dim)` at positions `pos0..pos0+m`; `kv`
/// already holds keys and values of positions `0..pos0+m`. Parallel over
/// (token, head) pairs on [`crate::pool`], the threads of the matmuls
/// (rayon's would be a second set of threads waking up between them).
pub fn attention(
    p: &AttentionParams,
    q: &[f32],
    kv: &KvView,
    pos0: usize,
    out: &mut [f32],
) -> Result<(), CpuError> {
    let m = p.check(q.len(), kv, pos0, out.len())?;
    if m > 1 {
        return attention_blocked(p, q, kv, pos0, m, out);
    }
    let hd = p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    let k = kernels();
    // One query token: each head is a row of dot products over the keys.
    crate::pool::current().try_for_each_chunk_mut(out, hd, |idx, o| {
        let qh = &q[idx * hd..(idx + 1) * hd];
        let (tok, head) = (idx / p.n_heads, idx % p.n_heads);
        let keys = p.key_range(pos0 + tok);
        let g = head / group;
        let mut scores = Vec::with_capacity(keys.len());
        for (off, n) in kv.runs(p, g, keys.clone()) {
            let rows = off..off + n * hd;
            match kv.k {
                KvRows::F16(x) => scores.extend(
                    x[rows]
                        .chunks_exact(hd)
                        .map(|kr| (k.dot_f16)(qh, kr) * p.scale),
                ),
                KvRows::F32(x) => {
                    scores.extend(x[rows].chunks_exact(hd).map(|kr| (k.dot)(qh, kr) * p.scale))
                }
            }
        }
        softmax_inplace(&mut scores);
        o.fill(0.0);
        let mut weights = scores.iter();
        for (off, n) in kv.runs(p, g, keys) {
            let rows = off..off + n * hd;
            // Rows first: zip stops on them without taking a weight.
            match kv.v {
                KvRows::F16(x) => {
                    for (vr, s) in x[rows].chunks_exact(hd).zip(weights.by_ref()) {
                        (k.axpy_f16)(*s, vr, o);
                    }
                }
                KvRows::F32(x) => {
                    for (vr, s) in x[rows].chunks_exact(hd).zip(weights.by_ref()) {
                        (k.axpy)(*s, vr, o);
                    }
                }
            }
        }
        Ok(())
    })
}

/// Query tokens per task of the blocked path.
const QUERY_BLOCK: usize = 32;

/// Many query tokens (prefill): per (kv head, block of query tokens), the
/// scores of every query head of the group are one small GEMM against the
/// transposed keys, and the output another against the values. Rows see
/// their own causal/window range; keys past it get probability 0.
fn attention_blocked(
    p: &AttentionParams,
    q: &[f32],
    kv: &KvView,
    pos0: usize,
    m: usize,
    out: &mut [f32],
) -> Result<(), CpuError> {
    let (hd, nh) = (p.head_dim, p.n_heads);
    let group = nh / p.n_kv_heads;
    let n_blocks = m.div_ceil(QUERY_BLOCK);
    let tasks: Vec<(usize, usize)> = (0..p.n_kv_heads)
        .flat_map(|g| (0..n_blocks).map(move |b| (g, b)))
        .collect();
    let k = kernels();
    let gemm_err = || CpuError::Shape("attention: tile does not fit".into());
    let block = |&(g, b): &(usize, usize)| -> Result<Vec<f32>, CpuError> {
        let (t0, t1) = (b * QUERY_BLOCK, (b * QUERY_BLOCK + QUERY_BLOCK).min(m));
        let rows = t1 - t0;
        let key0 = p.key_range(pos0 + t0).start;
        let nk = pos0 + t1 - key0;
        let keys = key0..key0 + nk;
        let mut kt = vec![0.0f32; hd * nk]; // (head_dim, nk): keys transposed
                                            // (nk, head_dim): the values in f32; first the keys, to transpose them.
        let mut v_rows = vec![0.0f32; nk * hd];
        let mut at = 0;
        for (off, n) in kv.runs(p, g, keys.clone()) {
            kv.k.read(off, &mut v_rows[at..at + n * hd]);
            at += n * hd;
        }
        for (j, kr) in v_rows.chunks_exact(hd).enumerate() {
            for (d, v) in kr.iter().enumerate() {
                kt[d * nk + j] = *v;
            }
        }
        let mut at = 0;
        for (off, n) in kv.runs(p, g, keys) {
            kv.v.read(off, &mut v_rows[at..at + n * hd]);
            at += n * hd;
        }
        let mut scores = vec![0.0f32; rows * nk]; // (rows, nk)
        let mut o = vec![0.0f32; group * rows * hd]; // (group, rows, head_dim)
        for hh in 0..group {
            let h = g * group + hh;
            let qg = Gemm {
                a: &q[(t0 * nh + h) * hd..],
                lda: nh * hd,
                b: &kt,
                ldb: nk,
                r: rows,
                k: hd,
                n: nk,
            };
            if !gemm(&qg, &mut scores, nk) {
                return Err(gemm_err());
            }
            for (i, row) in scores.chunks_exact_mut(nk).enumerate() {
                let vis = p.key_range(pos0 + t0 + i);
                let (lo, hi) = (vis.start - key0, vis.end - key0);
                row[..lo].fill(0.0);
                row[hi..].fill(0.0);
                (k.scale)(&mut row[lo..hi], p.scale);
                softmax_inplace(&mut row[lo..hi]);
            }
            let pv = Gemm {
                a: &scores,
                lda: nk,
                b: &v_rows,
                ldb: hd,
                r: rows,
                k: nk,
                n: hd,
            };
            if !gemm(&pv, &mut o[hh * rows * hd..], hd) {
                return Err(gemm_err());
            }
        }
        Ok(o)
    };
    let mut blocks: Vec<Vec<f32>> = vec![Vec::new(); tasks.len()];
    crate::pool::current().try_for_each_chunk_mut(&mut blocks, 1, |t, slot| {
        slot[0] = block(&tasks[t])?;
        Ok(())
    })?;
    for (&(g, b), o) in tasks.iter().zip(&blocks) {
        let t0 = b * QUERY_BLOCK;
        let rows = o.len() / (group * hd);
        for hh in 0..group {
            for i in 0..rows {
                let dst = ((t0 + i) * nh + g * group + hh) * hd;
                out[dst..dst + hd].copy_from_slice(&o[(hh * rows + i) * hd..][..hd]);
            }
        }
    }
    Ok(())
}

/// Scalar reference: same contract as [`attention`], single-threaded, f64
/// accumulation, no shared primitives.
pub fn attention_ref(
    p: &AttentionParams,
    q: &[f32],
    kv: &KvView,
    pos0: usize,
    out: &mut [f32],
) -> Result<(), CpuError> {
    let m = p.check(q.len(), kv, pos0, out.len())?;
    let hd = p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    for t in 0..m {
        for h in 0..p.n_heads {
            let qh = &q[(t * p.n_heads + h) * hd..][..hd];
            let g = h / group;
            let keys = p.key_range(pos0 + t);
            let s: Vec<f64> = keys
                .clone()
                .map(|j| {
                    let row = kv.row(p, g, j);
                    qh.iter()
                        .enumerate()
                        .map(|(d, a)| *a as f64 * kv.k.get_f64(row + d))
                        .sum::<f64>()
                        * p.scale as f64
                })
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            let o = &mut out[(t * p.n_heads + h) * hd..][..hd];
            for (d, od) in o.iter_mut().enumerate() {
                *od = keys
                    .clone()
                    .zip(&e)
                    .map(|(j, w)| w / sum * kv.v.get_f64(kv.row(p, g, j) + d))
                    .sum::<f64>() as f32;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_reference_with_gqa_window_and_offsets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // (n_heads, n_kv_heads, head_dim, m, pos0, window)
        let cases = [
            (1, 1, 1, 1, 0, None),
            (4, 2, 16, 3, 0, None),
            (9, 3, 64, 17, 5, None),
            (4, 1, 24, 17, 20, Some(6)),
            (2, 2, 8, 1, 40, Some(512)),
            (6, 3, 5, 1, 33, Some(1)),
            (9, 3, 64, 70, 0, None),
            (4, 1, 32, 45, 3, Some(16)),
            (2, 1, 8, 33, 0, Some(1)),
        ];
        for (nh, nkv, hd, m, pos0, window) in cases {
            let cap = pos0 + m + 3;
            let p = AttentionParams {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                window,
            };
            let mut r =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect() };
            let q = r(m * nh * hd);
            let (k, v) = (r(nkv * cap * hd), r(nkv * cap * hd));
            let (k16, v16) = (to_f16(&k), to_f16(&v));
            for kv in [
                KvView::contiguous(KvRows::F32(&k), KvRows::F32(&v), cap),
                KvView::contiguous(KvRows::F16(&k16), KvRows::F16(&v16), cap),
            ] {
                let (mut got, mut want) = (vec![0.0; q.len()], vec![0.0; q.len()]);
                attention(&p, &q, &kv, pos0, &mut got).unwrap();
                attention_ref(&p, &q, &kv, pos0, &mut want).unwrap();
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-5,
                        "nh{nh} nkv{nkv} hd{hd} m{m} {:?}: {g} vs {w}",
                        matches!(kv.k, KvRows::F16(_))
                    );
                }
            }
        }
    }

    fn to_f16(x: &[f32]) -> Vec<f16> {
        x.iter().map(|&v| f16::from_f32(v)).collect()
    }

    /// Copies a contiguous (n_kv, cap, hd) cache into `n_blocks` blocks of
    /// `bs` positions in a scrambled order; returns (k, v, block table).
    fn page(
        k: &[f16],
        v: &[f16],
        (nkv, cap, hd): (usize, usize, usize),
        bs: usize,
    ) -> (Vec<f16>, Vec<f16>, Vec<u32>) {
        let n_used = cap.div_ceil(bs);
        let n_blocks = n_used + 2;
        // Blocks in reverse order, physical block 0 and the last unused.
        let table: Vec<u32> = (0..n_used).map(|i| (n_used - i) as u32).collect();
        let (mut pk, mut pv) = (
            vec![f16::NAN; n_blocks * nkv * bs * hd],
            vec![f16::NAN; n_blocks * nkv * bs * hd],
        );
        for g in 0..nkv {
            for j in 0..cap {
                let dst = ((table[j / bs] as usize * nkv + g) * bs + j % bs) * hd;
                let src = (g * cap + j) * hd;
                pk[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                pv[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
            }
        }
        (pk, pv, table)
    }

    #[test]
    fn paged_equals_contiguous_bitwise() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        // (n_heads, n_kv_heads, head_dim, m, pos0, window, block_size)
        let cases = [
            (4, 2, 16, 1, 0, None, 1),
            (9, 3, 64, 1, 37, None, 16),
            (9, 3, 64, 17, 5, None, 16),
            (4, 1, 24, 17, 20, Some(6), 3),
            (6, 3, 5, 70, 0, None, 7),
            (4, 1, 32, 45, 3, Some(16), 16),
        ];
        for (nh, nkv, hd, m, pos0, window, bs) in cases {
            let cap = pos0 + m;
            let p = AttentionParams {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                window,
            };
            let mut r =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect() };
            let q = r(m * nh * hd);
            let (k, v) = (to_f16(&r(nkv * cap * hd)), to_f16(&r(nkv * cap * hd)));
            let (pk, pv, table) = page(&k, &v, (nkv, cap, hd), bs);
            let paged = KvView {
                k: KvRows::F16(&pk),
                v: KvRows::F16(&pv),
                block_size: bs,
                blocks: &table,
            };
            let contiguous = KvView::contiguous(KvRows::F16(&k), KvRows::F16(&v), cap);
            let (mut got, mut want, mut reference) =
                (vec![0.0; q.len()], vec![0.0; q.len()], vec![0.0; q.len()]);
            attention(&p, &q, &paged, pos0, &mut got).unwrap();
            attention(&p, &q, &contiguous, pos0, &mut want).unwrap();
            attention_ref(&p, &q, &paged, pos0, &mut reference).unwrap();
            assert_eq!(got, want, "nh{nh} nkv{nkv} hd{hd} m{m} bs{bs}");
            for (g, w) in got.iter().zip(&reference) {
                assert!((g - w).abs() < 1e-5, "m{m} bs{bs}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn rejects_bad_block_tables() {
        let p = AttentionParams {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            scale: 1.0,
            window: None,
        };
        let (k, v) = ([f16::ZERO; 24], [f16::ZERO; 24]); // 3 blocks of 2 positions
        let view = |blocks: &'static [u32], bs| KvView {
            k: KvRows::F16(&k),
            v: KvRows::F16(&v),
            block_size: bs,
            blocks,
        };
        let q = [0.0; 8];
        assert!(attention(&p, &q, &view(&[2, 0], 2), 3, &mut [0.0; 8]).is_ok());
        assert!(attention(&p, &q, &view(&[3], 2), 0, &mut [0.0; 8]).is_err());
        assert!(attention(&p, &q, &view(&[0], 2), 2, &mut [0.0; 8]).is_err());
        assert!(attention(&p, &q, &view(&[0], 5), 0, &mut [0.0; 8]).is_err());
        assert!(attention(&p, &q, &view(&[0], 0), 0, &mut [0.0; 8]).is_err());
    }

    #[test]
    fn rejects_bad_shapes() {
        let p = AttentionParams {
            n_heads: 3,
            n_kv_heads: 2,
            head_dim: 4,
            scale: 1.0,
            window: None,
        };
        let kv = KvView::contiguous(KvRows::F32(&[0.0; 16]), KvRows::F32(&[0.0; 16]), 2);
        assert!(attention(&p, &[0.0; 12], &kv, 0, &mut [0.0; 12]).is_err());
        let p = AttentionParams {
            n_heads: 2,
            n_kv_heads: 2,
            ..p
        };
        assert!(
            attention(&p, &[0.0; 8], &kv, 2, &mut [0.0; 8]).is_err(),
            "past capacity"
        );
        assert!(attention(&p, &[0.0; 8], &kv, 1, &mut [0.0; 8]).is_ok());
    }
}
