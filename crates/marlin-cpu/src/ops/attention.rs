//! Scaled dot-product attention of new queries against a per-sequence KV
//! cache, with grouped-query heads, causal masking and an optional sliding
//! window.

use super::gemm::{gemm, Gemm};
use super::simd::kernels;
use super::softmax::softmax_inplace;
use crate::CpuError;
use rayon::prelude::*;

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

/// Keys and values of one layer of one sequence, each
/// (n_kv_heads, capacity, head_dim): a head's positions are contiguous.
#[derive(Clone, Copy)]
pub struct KvView<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub capacity: usize,
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
        let kv_len = self
            .n_kv_heads
            .checked_mul(kv.capacity)
            .and_then(|v| v.checked_mul(self.head_dim));
        if kv_len != Some(kv.k.len()) || kv_len != Some(kv.v.len()) {
            return bad(format!(
                "kv cache has {}/{} values, want {} kv heads x {} positions x {}",
                kv.k.len(),
                kv.v.len(),
                self.n_kv_heads,
                kv.capacity,
                self.head_dim
            ));
        }
        match pos0.checked_add(m) {
            Some(end) if end <= kv.capacity => Ok(m),
            _ => bad(format!(
                "positions {pos0}+{m} exceed the cache capacity {}",
                kv.capacity
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
/// (token, head) pairs on the rayon pool.
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
    out.par_chunks_mut(hd)
        .zip(q.par_chunks(hd))
        .enumerate()
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, (idx, (o, qh))| {
            let (tok, head) = (idx / p.n_heads, idx % p.n_heads);
            let keys = p.key_range(pos0 + tok);
            let base = (head / group) * kv.capacity * hd;
            let k_rows = &kv.k[base + keys.start * hd..base + keys.end * hd];
            let v_rows = &kv.v[base + keys.start * hd..base + keys.end * hd];
            scores.clear();
            scores.extend(k_rows.chunks_exact(hd).map(|kr| (k.dot)(qh, kr) * p.scale));
            softmax_inplace(scores);
            o.fill(0.0);
            for (s, vr) in scores.iter().zip(v_rows.chunks_exact(hd)) {
                (k.axpy)(*s, vr, o);
            }
        });
    Ok(())
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
    let (hd, nh, cap) = (p.head_dim, p.n_heads, kv.capacity);
    let group = nh / p.n_kv_heads;
    let n_blocks = m.div_ceil(QUERY_BLOCK);
    let tasks: Vec<(usize, usize)> = (0..p.n_kv_heads)
        .flat_map(|g| (0..n_blocks).map(move |b| (g, b)))
        .collect();
    let k = kernels();
    let gemm_err = || CpuError::Shape("attention: tile does not fit".into());
    let blocks = tasks
        .par_iter()
        .map(|&(g, b)| -> Result<Vec<f32>, CpuError> {
            let (t0, t1) = (b * QUERY_BLOCK, (b * QUERY_BLOCK + QUERY_BLOCK).min(m));
            let rows = t1 - t0;
            let key0 = p.key_range(pos0 + t0).start;
            let nk = pos0 + t1 - key0;
            let base = g * cap * hd;
            let mut kt = vec![0.0f32; hd * nk]; // (head_dim, nk): keys transposed
            for (j, kr) in kv.k[base + key0 * hd..base + (key0 + nk) * hd]
                .chunks_exact(hd)
                .enumerate()
            {
                for (d, v) in kr.iter().enumerate() {
                    kt[d * nk + j] = *v;
                }
            }
            let v_rows = &kv.v[base + key0 * hd..base + (key0 + nk) * hd]; // (nk, head_dim)
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
                    b: v_rows,
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
        })
        .collect::<Result<Vec<_>, _>>()?;
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
            let base = (h / group) * kv.capacity * hd;
            let keys = p.key_range(pos0 + t);
            let s: Vec<f64> = keys
                .clone()
                .map(|j| {
                    let kr = &kv.k[base + j * hd..][..hd];
                    qh.iter()
                        .zip(kr)
                        .map(|(a, b)| *a as f64 * *b as f64)
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
                    .map(|(j, w)| w / sum * kv.v[base + j * hd + d] as f64)
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
            let kv = KvView {
                k: &k,
                v: &v,
                capacity: cap,
            };
            let (mut got, mut want) = (vec![0.0; q.len()], vec![0.0; q.len()]);
            attention(&p, &q, &kv, pos0, &mut got).unwrap();
            attention_ref(&p, &q, &kv, pos0, &mut want).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-5,
                    "nh{nh} nkv{nkv} hd{hd} m{m}: {g} vs {w}"
                );
            }
        }
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
        let kv = KvView {
            k: &[0.0; 16],
            v: &[0.0; 16],
            capacity: 2,
        };
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
