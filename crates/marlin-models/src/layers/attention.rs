//! Self-attention with grouped-query heads over the paged KV pool:
//! projections, optional QK-norm, RoPE, cache write, masked attention,
//! output projection. Projections run on all sequences of a batch as one
//! matrix; attention runs per sequence over its block table.

use super::{ForwardCtx, KvPool, Linear, RmsNorm};
use crate::error::Result;
use crate::source::WeightSource;
use marlin_cpu::ops::{self, AttentionParams, Rope};

/// Per-layer attention geometry (layers of one model may differ in window
/// and rope base: Gemma 3 local vs global layers).
#[derive(Clone, Debug)]
pub struct AttentionConfig {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k (usually 1/sqrt(head_dim)).
    pub scale: f32,
    /// Sliding window (keys `p - window < j <= p`), `None` for global.
    pub window: Option<usize>,
    pub rope: Rope,
    /// QK-norm (Gemma 3, Qwen3): RMSNorm over each head of q and k, with
    /// this eps and weight offset (see [`RmsNorm::load`]).
    pub qk_norm: Option<(f32, f32)>,
}

pub struct Attention {
    /// (n_heads*head_dim, d)
    wq: Linear,
    /// (n_kv_heads*head_dim, d)
    wk: Linear,
    /// (n_kv_heads*head_dim, d)
    wv: Linear,
    /// (d, n_heads*head_dim)
    wo: Linear,
    /// (head_dim) each
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    cfg: AttentionConfig,
}

impl Attention {
    /// Loads `blk.{layer}.attn_{q,k,v,output}` (+ `attn_{q,k}_norm`).
    pub fn load(
        src: &dyn WeightSource,
        layer: usize,
        d: usize,
        cfg: AttentionConfig,
    ) -> Result<Self> {
        let p = format!("blk.{layer}");
        let (q_dim, kv_dim) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
        let wq = Linear::load_shaped(src, &format!("{p}.attn_q.weight"), q_dim, d)?;
        let wk = Linear::load_shaped(src, &format!("{p}.attn_k.weight"), kv_dim, d)?;
        let wv = Linear::load_shaped(src, &format!("{p}.attn_v.weight"), kv_dim, d)?;
        let wo = Linear::load_shaped(src, &format!("{p}.attn_output.weight"), d, q_dim)?;
        let (q_norm, k_norm) = match cfg.qk_norm {
            Some((eps, off)) => (
                Some(RmsNorm::load(
                    src,
                    &format!("{p}.attn_q_norm.weight"),
                    cfg.head_dim,
                    eps,
                    off,
                )?),
                Some(RmsNorm::load(
                    src,
                    &format!("{p}.attn_k_norm.weight"),
                    cfg.head_dim,
                    eps,
                    off,
                )?),
            ),
            None => (None, None),
        };
        Ok(Self {
            wq,
            wk,
            wv,
            wo,
            q_norm,
            k_norm,
            cfg,
        })
    }

    pub fn config(&self) -> &AttentionConfig {
        &self.cfg
    }

    /// `x` (m, d) -> new (m, d), m = rows of every sequence in `ctx`.
    /// Writes this layer's keys and values of the new positions into `pool`
    /// through each sequence's block table (checked by the caller).
    pub fn forward(
        &self,
        ctx: &mut ForwardCtx,
        layer: usize,
        x: &[f32],
        pool: &mut KvPool,
    ) -> Result<Vec<f32>> {
        let m = ctx.n_tokens;
        let c = &self.cfg;
        let il = Some(layer);
        let mut q = self.wq.forward(x, m)?; // (m, n_heads, head_dim)
        let mut k = self.wk.forward(x, m)?; // (m, n_kv_heads, head_dim)
        let v = self.wv.forward(x, m)?; // (m, n_kv_heads, head_dim)
        ctx.dump("Qcur", il, m, &q);
        ctx.dump("Kcur", il, m, &k);
        ctx.dump("Vcur", il, m, &v);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            qn.forward_inplace(&mut q)?;
            kn.forward_inplace(&mut k)?;
            ctx.dump("Qcur_normed", il, m, &q);
            ctx.dump("Kcur_normed", il, m, &k);
        }
        c.rope.apply(&mut q, c.n_heads, &ctx.positions)?;
        c.rope.apply(&mut k, c.n_kv_heads, &ctx.positions)?;
        ctx.dump("Qcur_rope", il, m, &q);
        ctx.dump("Kcur_rope", il, m, &k);

        let params = AttentionParams {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: c.scale,
            window: c.window,
        };
        let (q_row, kv_row) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let mut attn = vec![0.0f32; q.len()]; // (m, n_heads, head_dim)
        for s in &ctx.seqs {
            let (r0, r1) = (s.row0, s.row0 + s.len);
            let table = &s.block_table;
            pool.write(
                layer,
                table,
                s.pos0,
                &k[r0 * kv_row..r1 * kv_row],
                &v[r0 * kv_row..r1 * kv_row],
            );
            ops::attention(
                &params,
                &q[r0 * q_row..r1 * q_row],
                &pool.view(layer, table),
                s.pos0,
                &mut attn[r0 * q_row..r1 * q_row],
            )?;
        }
        ctx.dump("kqv_out", il, m, &attn);
        // Keys and values are in the pool now; none of these is held during the output
        // projection.
        drop((q, k, v));
        let out = self.wo.forward(&attn, m)?; // (m, d)
        ctx.dump("attn_out", il, m, &out);
        Ok(out)
    }
}
