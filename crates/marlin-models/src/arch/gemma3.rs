//! Gemma 3 (text): embeddings scaled by sqrt(d), GeGLU MLP, QK-norm, norms
//! before *and* after attention and MLP, sliding-window (local) layers
//! interleaved with global ones, each kind with its own RoPE base, optional
//! final logit soft-capping.

use crate::config::{base_config, rope_scaling, HParam, ModelConfig, Params};
use crate::error::{ModelError, Result};
use crate::layers::{
    add_inplace, Activation, ActivationHook, Attention, AttentionConfig, Embedding, KvCache,
    KvPool, Linear, LogitsWanted, Mlp, OutputHead, RmsNorm, SeqChunk,
};
use crate::model::{
    begin_batch, finish_batch, forward_on_cache, in_micro_batches, new_cache_for, new_pool_for,
    BatchedModel, LoadOptions, Model,
};
use crate::source::{SourceKind, WeightSource};
use marlin_cpu::ops::{Rope, RopeScaling, RopeStyle};

/// Every `pattern`-th layer is global (llama.cpp and transformers default).
const DEFAULT_SLIDING_WINDOW_PATTERN: usize = 6;
/// RoPE base of local layers when the checkpoint does not say.
const DEFAULT_LOCAL_ROPE_BASE: f32 = 10_000.0;

pub fn load(src: &dyn WeightSource, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    Ok(Box::new(Gemma3::load(src, opts)?))
}

struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    mlp: Mlp,
    post_ffn_norm: RmsNorm,
}

struct Gemma3 {
    cfg: ModelConfig,
    opts: LoadOptions,
    embed: Embedding,
    /// sqrt(hidden_size): Gemma scales embeddings by it.
    embed_scale: f32,
    blocks: Vec<Block>,
    head: OutputHead,
}

impl Gemma3 {
    fn load(src: &dyn WeightSource, opts: &LoadOptions) -> Result<Self> {
        let tok_embd = Linear::load(src, "token_embd.weight")?; // (vocab, d)
        let embed = Embedding::from_linear(&tok_embd);
        let mut cfg = base_config(src, "gemma3", embed.vocab_size())?;
        let d = cfg.hidden_size;
        if embed.dim() != d {
            return Err(ModelError::tensor(
                "token_embd.weight",
                format!("{} columns, expected hidden size {d}", embed.dim()),
            ));
        }
        let p = Params { src };
        // GGUF conversion stores norm weights as 1 + w; HF stores w.
        let norm_offset = match src.kind() {
            SourceKind::Gguf => 0.0,
            SourceKind::HfDir => 1.0,
        };
        let scale = match src.kind() {
            // llama.cpp's `attention.scale` is the multiplier itself.
            SourceKind::Gguf => p.f32_or(
                HParam::QueryPreAttnScalar,
                1.0 / (cfg.head_dim as f32).sqrt(),
            )?,
            SourceKind::HfDir => {
                1.0 / p
                    .f32_or(HParam::QueryPreAttnScalar, cfg.head_dim as f32)?
                    .sqrt()
            }
        };
        if !(scale.is_finite() && scale > 0.0) {
            return Err(ModelError::Config(format!("attention scale {scale}")));
        }
        let pattern = p
            .usize_opt(HParam::SlidingWindowPattern, cfg.n_layers.max(1))?
            .unwrap_or(DEFAULT_SLIDING_WINDOW_PATTERN);
        let window = cfg.sliding_window;
        let local_base = p.f32_or(HParam::RopeFreqBaseLocal, DEFAULT_LOCAL_ROPE_BASE)?;
        let global_rope = Rope::new(
            cfg.head_dim,
            cfg.head_dim,
            cfg.rope_base,
            RopeStyle::Neox,
            &rope_scaling(src)?,
        )?;
        let local_rope = Rope::new(
            cfg.head_dim,
            cfg.head_dim,
            local_base,
            RopeStyle::Neox,
            &RopeScaling::None,
        )?;

        let eps = cfg.rms_eps;
        let norm = |name: String| RmsNorm::load(src, &name, d, eps, norm_offset);
        let blocks = (0..cfg.n_layers)
            .map(|il| {
                let local = window.is_some() && !(il + 1).is_multiple_of(pattern);
                let attn_cfg = AttentionConfig {
                    n_heads: cfg.n_heads,
                    n_kv_heads: cfg.n_kv_heads,
                    head_dim: cfg.head_dim,
                    scale,
                    window: if local { window } else { None },
                    rope: if local {
                        local_rope.clone()
                    } else {
                        global_rope.clone()
                    },
                    qk_norm: Some((eps, norm_offset)),
                };
                Ok(Block {
                    attn_norm: norm(format!("blk.{il}.attn_norm.weight"))?,
                    attn: Attention::load(src, il, d, attn_cfg)?,
                    post_attn_norm: norm(format!("blk.{il}.post_attention_norm.weight"))?,
                    ffn_norm: norm(format!("blk.{il}.ffn_norm.weight"))?,
                    mlp: Mlp::load(src, il, d, cfg.ffn_size, Activation::GeluTanh)?,
                    post_ffn_norm: norm(format!("blk.{il}.post_ffw_norm.weight"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        cfg.tied_embeddings = !src.contains("output.weight");
        // Tied: the LM head is the embedding table itself (one copy).
        let lm_head = if cfg.tied_embeddings {
            tok_embd
        } else {
            Linear::load_shaped(src, "output.weight", cfg.vocab_size, d)?
        };
        let head = OutputHead {
            norm: norm("output_norm.weight".to_string())?,
            lm_head,
            softcap: cfg.final_logit_softcap,
        };
        Ok(Self {
            embed_scale: (d as f32).sqrt(),
            cfg,
            opts: opts.clone(),
            embed,
            blocks,
            head,
        })
    }
}

impl Model for Gemma3 {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn new_cache(&self, max_seq: usize) -> Result<KvCache> {
        new_cache_for(&self.cfg, &self.opts, max_seq)
    }

    fn forward_with(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits: LogitsWanted,
        hook: Option<&mut dyn ActivationHook>,
    ) -> Result<Vec<f32>> {
        forward_on_cache(self, tokens, cache, logits, hook)
    }

    fn batched(&self) -> Option<&dyn BatchedModel> {
        Some(self)
    }
}

impl BatchedModel for Gemma3 {
    fn new_pool(&self, block_size: usize, n_blocks: usize) -> Result<KvPool> {
        new_pool_for(&self.cfg, &self.opts, block_size, n_blocks)
    }

    fn forward_batch_with(
        &self,
        pool: &mut KvPool,
        seqs: &[SeqChunk],
        hook: Option<&mut dyn ActivationHook>,
    ) -> Result<Vec<Vec<f32>>> {
        in_micro_batches(&self.cfg, pool, seqs, hook, |pool, seqs, hook| {
            self.forward_pass(pool, seqs, hook)
        })
    }
}

impl Gemma3 {
    /// One pass of the layer stack over all rows of `seqs` (at most
    /// [`crate::model::MICRO_BATCH`] of them, see [`in_micro_batches`]).
    fn forward_pass(
        &self,
        pool: &mut KvPool,
        seqs: &[SeqChunk],
        hook: Option<&mut dyn ActivationHook>,
    ) -> Result<Vec<Vec<f32>>> {
        let (mut ctx, tokens) = begin_batch(&self.cfg, pool, seqs, hook)?;
        let m = tokens.len();
        let mut x = self.embed.forward(&tokens, self.embed_scale)?; // (m, d)
        ctx.dump("inp_scaled", None, m, &x);
        for (il, b) in self.blocks.iter().enumerate() {
            let h = b.attn_norm.forward(&x)?; // (m, d)
            ctx.dump("attn_norm", Some(il), m, &h);
            let mut attn = b.attn.forward(&mut ctx, il, &h, pool)?; // (m, d)
            b.post_attn_norm.forward_inplace(&mut attn)?;
            ctx.dump("attn_post_norm", Some(il), m, &attn);
            add_inplace(&mut x, &attn);
            // Freed before the MLP's larger buffers exist (a shadowed binding would live to the
            // end of the iteration): lower peak memory in a long prefill.
            drop((h, attn));
            ctx.dump("sa_out", Some(il), m, &x);
            let h = b.ffn_norm.forward(&x)?; // (m, d)
            ctx.dump("ffn_norm", Some(il), m, &h);
            let mut ffn = b.mlp.forward(&mut ctx, il, &h)?; // (m, d)
            b.post_ffn_norm.forward_inplace(&mut ffn)?;
            ctx.dump("ffn_post_norm", Some(il), m, &ffn);
            add_inplace(&mut x, &ffn);
            ctx.dump("l_out", Some(il), m, &x);
        }
        finish_batch(&self.head, &mut ctx, &x)
    }
}
