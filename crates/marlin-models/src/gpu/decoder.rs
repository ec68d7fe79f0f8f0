//! The one GPU decoder: a stack of pre-norm attention + gated-MLP blocks
//! parameterised by a [`DecoderSpec`] (optional QK-norm, post-norms, sliding
//! windows, embedding scale, GeGLU or SwiGLU, logit soft-capping).
//!
//! A forward pass runs `m` rows. Each row carries its token id, sequence and
//! position in device buffers ([`Scratch::ids`], `row_seq`, `row_pos`), so
//! the same code runs a prefill chunk of one sequence (rows = its new
//! tokens) and a batched decode step (rows = one token of each sequence).
//! [`GpuDecoder::forward_rows`] allocates nothing, never synchronises and
//! reads no per-step value from the host: the decode step is captured in a
//! CUDA graph as it is.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use marlin_cuda::ggml::GgmlGpuWeight;
use marlin_cuda::ops::{self, AttnParams, GpuKvCache, GpuRope};
use marlin_cuda::CudaDevice;

use super::linear::{GpuLinear, LinearScratch};
use super::spec::DecoderSpec;
use super::split::copy_columns;
use super::{driver_err, GpuError, Result};
use crate::layers::Activation;

/// Token embedding table.
pub enum GpuEmbedding {
    /// Rows dequantized by the weight's own `get_rows` (GGUF; shared with a
    /// tied LM head).
    Table(Arc<GgmlGpuWeight>),
    /// f32 (vocab, d) table (the synthetic benchmark model).
    Dense { table: CudaSlice<f32>, vocab: usize },
}

/// The q, k and v projections: three weights as checkpoints store them, or
/// one fused (q | k | v rows) weight, one GEMM whose output columns are
/// split afterwards (fewer, larger launches at decode).
pub enum QkvWeights {
    /// (n_heads*head_dim, d), (n_kv_heads*head_dim, d), (n_kv_heads*head_dim, d)
    Separate {
        q: GpuLinear,
        k: GpuLinear,
        v: GpuLinear,
    },
    /// ((n_heads + 2*n_kv_heads)*head_dim, d)
    Fused(GpuLinear),
}

/// The gate and up projections: two weights, or one fused (gate | up rows).
pub enum GateUpWeights {
    /// (ffn, d) each
    Separate { gate: GpuLinear, up: GpuLinear },
    /// (2*ffn, d)
    Fused(GpuLinear),
}

/// One block's weights. Norm weights (d or head_dim) already include the
/// checkpoint's `1 + w` convention.
pub struct GpuBlock {
    pub attn_norm: CudaSlice<f32>,
    pub qkv: QkvWeights,
    /// (d, n_heads*head_dim)
    pub wo: GpuLinear,
    /// (head_dim) each, when the spec has QK-norm.
    pub q_norm: Option<CudaSlice<f32>>,
    pub k_norm: Option<CudaSlice<f32>>,
    /// (d), when the spec has post-norms.
    pub post_attn_norm: Option<CudaSlice<f32>>,
    pub ffn_norm: CudaSlice<f32>,
    pub gate_up: GateUpWeights,
    /// (d, ffn)
    pub down: GpuLinear,
    pub post_ffn_norm: Option<CudaSlice<f32>>,
}

impl GpuBlock {
    /// Every linear of the block.
    pub fn linears(&self) -> Vec<&GpuLinear> {
        let mut v = Vec::with_capacity(7);
        match &self.qkv {
            QkvWeights::Separate { q, k, v: wv } => v.extend([q, k, wv]),
            QkvWeights::Fused(w) => v.push(w),
        }
        v.push(&self.wo);
        match &self.gate_up {
            GateUpWeights::Separate { gate, up } => v.extend([gate, up]),
            GateUpWeights::Fused(w) => v.push(w),
        }
        v.push(&self.down);
        v
    }

    /// Output width of the fused projections (0 without any).
    fn fused_width(&self) -> usize {
        let qkv = match &self.qkv {
            QkvWeights::Fused(w) => w.rows(),
            QkvWeights::Separate { .. } => 0,
        };
        let gate_up = match &self.gate_up {
            GateUpWeights::Fused(w) => w.rows(),
            GateUpWeights::Separate { .. } => 0,
        };
        qkv.max(gate_up)
    }
}

/// Which rows get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// The last of the `m` rows (a prefill chunk).
    Last,
    /// Every row (batched decode, perplexity).
    All,
}

/// A decoder resident on one device.
pub struct GpuDecoder {
    pub spec: DecoderSpec,
    pub embed: GpuEmbedding,
    pub blocks: Vec<GpuBlock>,
    pub ropes: Vec<GpuRope>,
    pub out_norm: CudaSlice<f32>,
    /// (vocab, d)
    pub lm_head: GpuLinear,
}

/// Device buffers of one forward pass of up to `max_m` rows, allocated
/// once (a CUDA graph replays kernels on exactly these addresses).
pub struct Scratch {
    pub max_m: usize,
    /// Rows of logits `logits` holds.
    pub logit_rows: usize,
    /// (max_m) token id of each row.
    pub ids: CudaSlice<u32>,
    /// (max_m) sequence (KV-cache slot) of each row.
    pub row_seq: CudaSlice<i32>,
    /// (max_m) position of each row.
    pub row_pos: CudaSlice<i32>,
    /// (max_m, d) residual stream.
    x: CudaSlice<f32>,
    /// (max_m, d) normed input of the next projection.
    h: CudaSlice<f32>,
    /// (max_m, d) output of attention / MLP.
    delta: CudaSlice<f32>,
    /// (max_m, d) post-normed `delta` (Gemma).
    post: CudaSlice<f32>,
    /// (max_m, n_heads*head_dim)
    q: CudaSlice<f32>,
    /// (max_m, n_kv_heads*head_dim)
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    /// (max_m, n_heads*head_dim)
    attn: CudaSlice<f32>,
    /// (max_m, fused width): output of a fused projection before its split.
    fused: CudaSlice<f32>,
    /// (max_m, ffn) each
    gate: CudaSlice<f32>,
    up: CudaSlice<f32>,
    act: CudaSlice<f32>,
    /// (1, d): the last row of `h`, input of the LM head for `LogitRows::Last`.
    last: CudaSlice<f32>,
    /// (logit_rows, vocab)
    pub logits: CudaSlice<f32>,
    /// (max_m) argmax of each logits row.
    pub next_ids: CudaSlice<u32>,
    lin: LinearScratch,
}

impl Scratch {
    /// Buffers for `max_m` rows and `logit_rows` rows of logits.
    pub fn new(
        dev: &Arc<CudaDevice>,
        dec: &GpuDecoder,
        max_m: usize,
        logit_rows: usize,
    ) -> Result<Self> {
        let c = &dec.spec.cfg;
        if max_m == 0 || logit_rows == 0 {
            return Err(GpuError::Invalid("scratch for 0 rows".into()));
        }
        let rows = |w: usize| {
            max_m
                .checked_mul(w)
                .ok_or_else(|| GpuError::Invalid(format!("{max_m} rows of {w} overflow")))
        };
        let (d, qd, kvd, ffn) = (
            c.hidden_size,
            c.n_heads * c.head_dim,
            c.n_kv_heads * c.head_dim,
            c.ffn_size,
        );
        let widest_in = d.max(qd).max(ffn);
        let widest_out = dec
            .linears()
            .into_iter()
            .filter(|l| l.uses_f16_scratch())
            .map(GpuLinear::rows)
            .max();
        let fused_width = dec
            .blocks
            .iter()
            .map(GpuBlock::fused_width)
            .max()
            .unwrap_or(0);
        let lin = match widest_out {
            Some(out) => LinearScratch::new(dev, max_m.max(logit_rows), widest_in, out)?,
            None => LinearScratch::new(dev, 1, 1, 1)?,
        };
        for l in dec.linears() {
            l.prepare(dev, max_m.max(logit_rows))?;
        }
        let logits_len = logit_rows
            .checked_mul(c.vocab_size)
            .ok_or_else(|| GpuError::Invalid("logits buffer overflows".into()))?;
        Ok(Self {
            max_m,
            logit_rows,
            ids: dev.alloc_zeros("token ids", max_m)?,
            row_seq: dev.alloc_zeros("row sequences", max_m)?,
            row_pos: dev.alloc_zeros("row positions", max_m)?,
            x: dev.alloc_zeros("residual stream", rows(d)?)?,
            h: dev.alloc_zeros("normed activations", rows(d)?)?,
            delta: dev.alloc_zeros("block outputs", rows(d)?)?,
            post: dev.alloc_zeros("post-normed outputs", rows(d)?)?,
            q: dev.alloc_zeros("queries", rows(qd)?)?,
            k: dev.alloc_zeros("keys", rows(kvd)?)?,
            v: dev.alloc_zeros("values", rows(kvd)?)?,
            attn: dev.alloc_zeros("attention outputs", rows(qd)?)?,
            fused: dev.alloc_zeros("fused projection outputs", rows(fused_width.max(1))?)?,
            gate: dev.alloc_zeros("MLP gate", rows(ffn)?)?,
            up: dev.alloc_zeros("MLP up", rows(ffn)?)?,
            act: dev.alloc_zeros("MLP activations", rows(ffn)?)?,
            last: dev.alloc_zeros("last row", d)?,
            logits: dev.alloc_zeros("logits", logits_len)?,
            next_ids: dev.alloc_zeros("argmax ids", max_m.max(logit_rows))?,
            lin,
        })
    }
}

impl GpuDecoder {
    /// An empty KV cache for `n_seqs` sequences of `capacity` positions.
    pub fn new_cache(
        &self,
        dev: &Arc<CudaDevice>,
        n_seqs: usize,
        capacity: usize,
    ) -> Result<GpuKvCache> {
        let c = &self.spec.cfg;
        Ok(GpuKvCache::new(
            dev,
            c.n_layers,
            c.n_kv_heads,
            c.head_dim,
            n_seqs,
            capacity,
        )?)
    }

    /// Every linear, the LM head last.
    pub fn linears(&self) -> Vec<&GpuLinear> {
        let mut v: Vec<&GpuLinear> = self.blocks.iter().flat_map(GpuBlock::linears).collect();
        v.push(&self.lm_head);
        v
    }

    /// Bytes of weights one decode step reads (every linear, the LM head).
    pub fn weight_bytes(&self) -> usize {
        self.linears()
            .into_iter()
            .map(GpuLinear::weight_bytes)
            .sum()
    }

    /// Runs `m` rows whose ids, sequences and positions are in `s`; writes
    /// their keys and values into `cache` and the logits of `which` rows
    /// into `s.logits` (soft-capped when the model caps them); with `argmax`,
    /// also each logits row's argmax into `s.next_ids`. Returns the number
    /// of logits rows. Allocates nothing and does not synchronise.
    pub fn forward_rows(
        &self,
        dev: &Arc<CudaDevice>,
        cache: &mut GpuKvCache,
        s: &mut Scratch,
        m: usize,
        which: LogitRows,
        argmax: bool,
    ) -> Result<usize> {
        let c = &self.spec.cfg;
        let n_logits = match which {
            LogitRows::Last => 1,
            LogitRows::All => m,
        };
        if m == 0 || m > s.max_m || n_logits > s.logit_rows {
            return Err(GpuError::Invalid(format!(
                "forward of {m} rows ({n_logits} with logits) in a scratch for {} ({} with logits)",
                s.max_m, s.logit_rows
            )));
        }
        let (d, eps, off) = (c.hidden_size, c.rms_eps, 0.0f32);
        match &self.embed {
            GpuEmbedding::Table(t) => {
                t.get_rows(dev, &s.ids, m, self.spec.embed_scale, &mut s.x)?
            }
            GpuEmbedding::Dense { table, vocab } => ops::embedding_rows(
                dev,
                table,
                *vocab,
                d,
                &s.ids,
                m,
                self.spec.embed_scale,
                &mut s.x,
            )?,
        }
        ops::rms_norm(
            dev,
            &s.x,
            &self.blocks[0].attn_norm,
            m,
            d,
            eps,
            off,
            &mut s.h,
        )?;
        for (il, b) in self.blocks.iter().enumerate() {
            self.attention(dev, il, b, cache, s, m)?;
            // x += post_norm(attn); h = ffn_norm(x)
            let delta = match &b.post_attn_norm {
                Some(w) => {
                    ops::rms_norm(dev, &s.delta, w, m, d, eps, off, &mut s.post)?;
                    &s.post
                }
                None => &s.delta,
            };
            ops::add_rms_norm(dev, &mut s.x, delta, &b.ffn_norm, m, d, eps, off, &mut s.h)?;
            self.mlp(dev, b, s, m)?;
            // x += post_norm(ffn); h = next block's attn_norm(x) (or the final norm)
            let next_norm = match self.blocks.get(il + 1) {
                Some(nb) => &nb.attn_norm,
                None => &self.out_norm,
            };
            let delta = match &b.post_ffn_norm {
                Some(w) => {
                    ops::rms_norm(dev, &s.delta, w, m, d, eps, off, &mut s.post)?;
                    &s.post
                }
                None => &s.delta,
            };
            ops::add_rms_norm(dev, &mut s.x, delta, next_norm, m, d, eps, off, &mut s.h)?;
        }
        // s.h = final-normed rows; the LM head runs on the wanted ones only.
        match which {
            LogitRows::Last => {
                let src = s.h.slice((m - 1) * d..m * d);
                dev.stream()
                    .memcpy_dtod(&src, &mut s.last)
                    .map_err(|e| driver_err("copy of the last row", e))?;
                self.lm_head
                    .forward(dev, &s.last, 1, &mut s.logits, &mut s.lin)?;
            }
            LogitRows::All => self
                .lm_head
                .forward(dev, &s.h, m, &mut s.logits, &mut s.lin)?,
        }
        let vocab = c.vocab_size;
        if let Some(cap) = c.final_logit_softcap {
            ops::softcap_inplace(dev, &mut s.logits, n_logits * vocab, cap)?;
        }
        if argmax {
            ops::argmax_rows(dev, &s.logits, n_logits, vocab, &mut s.next_ids)?;
        }
        Ok(n_logits)
    }

    /// `s.h` (m, d) -> `s.delta` (m, d); writes this layer's keys and values.
    fn attention(
        &self,
        dev: &Arc<CudaDevice>,
        il: usize,
        b: &GpuBlock,
        cache: &mut GpuKvCache,
        s: &mut Scratch,
        m: usize,
    ) -> Result<()> {
        let c = &self.spec.cfg;
        let ls = &self.spec.layers[il];
        match &b.qkv {
            QkvWeights::Separate { q, k, v } => {
                q.forward(dev, &s.h, m, &mut s.q, &mut s.lin)?;
                k.forward(dev, &s.h, m, &mut s.k, &mut s.lin)?;
                v.forward(dev, &s.h, m, &mut s.v, &mut s.lin)?;
            }
            QkvWeights::Fused(w) => {
                let (qd, kvd) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
                let width = qd + 2 * kvd;
                w.forward(dev, &s.h, m, &mut s.fused, &mut s.lin)?;
                copy_columns(dev, &s.fused, m, width, 0, qd, &mut s.q)?;
                copy_columns(dev, &s.fused, m, width, qd, kvd, &mut s.k)?;
                copy_columns(dev, &s.fused, m, width, qd + kvd, kvd, &mut s.v)?;
            }
        }
        if let (Some(qn), Some(kn)) = (&b.q_norm, &b.k_norm) {
            let eps = c.rms_eps;
            ops::rms_norm_heads_inplace(dev, &mut s.q, qn, m * c.n_heads, c.head_dim, eps, 0.0)?;
            ops::rms_norm_heads_inplace(dev, &mut s.k, kn, m * c.n_kv_heads, c.head_dim, eps, 0.0)?;
        }
        let rope = &self.ropes[ls.rope];
        ops::rope_inplace(dev, &mut s.q, m, c.n_heads, rope, &s.row_pos)?;
        ops::rope_inplace(dev, &mut s.k, m, c.n_kv_heads, rope, &s.row_pos)?;
        ops::kv_write(dev, cache, il, &s.k, &s.v, m, &s.row_seq, &s.row_pos)?;
        let params = AttnParams {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: self.spec.attn_scale,
            window: ls.window,
            softcap: None,
        };
        ops::attention(
            dev,
            &params,
            &s.q,
            cache,
            il,
            m,
            &s.row_seq,
            &s.row_pos,
            &mut s.attn,
        )?;
        b.wo.forward(dev, &s.attn, m, &mut s.delta, &mut s.lin)
    }

    /// `s.h` (m, d) -> `s.delta` (m, d).
    fn mlp(&self, dev: &Arc<CudaDevice>, b: &GpuBlock, s: &mut Scratch, m: usize) -> Result<()> {
        let ffn = self.spec.cfg.ffn_size;
        let n = m * ffn;
        match &b.gate_up {
            GateUpWeights::Separate { gate, up } => {
                gate.forward(dev, &s.h, m, &mut s.gate, &mut s.lin)?;
                up.forward(dev, &s.h, m, &mut s.up, &mut s.lin)?;
            }
            GateUpWeights::Fused(w) => {
                w.forward(dev, &s.h, m, &mut s.fused, &mut s.lin)?;
                copy_columns(dev, &s.fused, m, 2 * ffn, 0, ffn, &mut s.gate)?;
                copy_columns(dev, &s.fused, m, 2 * ffn, ffn, ffn, &mut s.up)?;
            }
        }
        match self.spec.activation {
            Activation::Silu => ops::silu_mul(dev, &s.gate, &s.up, n, &mut s.act)?,
            Activation::GeluTanh => ops::gelu_tanh_mul(dev, &s.gate, &s.up, n, &mut s.act)?,
        }
        b.down.forward(dev, &s.act, m, &mut s.delta, &mut s.lin)
    }
}
