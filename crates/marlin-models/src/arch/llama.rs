//! Llama family (Llama 2/3, SmolLM2, Mistral): pre-norm blocks of GQA
//! attention with RoPE and a SwiGLU MLP. Qwen3 reuses this with QK-norm
//! (see `qwen3.rs`).

use crate::config::{base_config, rope_scaling, ModelConfig};
use crate::error::Result;
use crate::layers::Linear;
use crate::layers::{
    add_inplace, Activation, ActivationHook, Attention, AttentionConfig, Embedding, KvCache,
    KvPool, LogitsWanted, Mlp, OutputHead, RmsNorm, SeqChunk,
};
use crate::model::{
    begin_batch, finish_batch, forward_on_cache, in_micro_batches, new_cache_for, new_pool_for,
    BatchedModel, LoadOptions, Model,
};
use crate::source::{SourceKind, WeightSource};
use marlin_cpu::ops::{Rope, RopeStyle};

pub fn load(src: &dyn WeightSource, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    // llama.cpp permutes Llama Q/K rows in GGUF so that RoPE pairs are
    // adjacent; Hugging Face checkpoints pair i with i + n_rot/2.
    let style = match src.kind() {
        SourceKind::Gguf => RopeStyle::Normal,
        SourceKind::HfDir => RopeStyle::Neox,
    };
    Ok(Box::new(Llama::load(src, opts, "llama", style, false)?))
}

struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    mlp: Mlp,
}

/// A Llama-style decoder; `qk_norm` adds per-head RMSNorm on q and k.
pub(crate) struct Llama {
    cfg: ModelConfig,
    opts: LoadOptions,
    embed: Embedding,
    blocks: Vec<Block>,
    head: OutputHead,
}

impl Llama {
    pub(crate) fn load(
        src: &dyn WeightSource,
        opts: &LoadOptions,
        arch: &str,
        rope_style: RopeStyle,
        qk_norm: bool,
    ) -> Result<Self> {
        let tok_embd = Linear::load(src, "token_embd.weight")?; // (vocab, d)
        let embed = Embedding::from_linear(&tok_embd);
        let mut cfg = base_config(src, arch, embed.vocab_size())?;
        let d = cfg.hidden_size;
        if embed.dim() != d {
            return Err(crate::ModelError::tensor(
                "token_embd.weight",
                format!("{} columns, expected hidden size {d}", embed.dim()),
            ));
        }
        let n_rot = crate::config::Params { src }
            .usize_opt(crate::config::HParam::RopeDimCount, cfg.head_dim)?
            .unwrap_or(cfg.head_dim);
        let rope = Rope::new(
            cfg.head_dim,
            n_rot,
            cfg.rope_base,
            rope_style,
            &rope_scaling(src)?,
        )?;
        let attn_cfg = AttentionConfig {
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
            window: None,
            rope,
            qk_norm: qk_norm.then_some((cfg.rms_eps, 0.0)),
        };
        let eps = cfg.rms_eps;
        let blocks = (0..cfg.n_layers)
            .map(|il| {
                Ok(Block {
                    attn_norm: RmsNorm::load(
                        src,
                        &format!("blk.{il}.attn_norm.weight"),
                        d,
                        eps,
                        0.0,
                    )?,
                    attn: Attention::load(src, il, d, attn_cfg.clone())?,
                    ffn_norm: RmsNorm::load(
                        src,
                        &format!("blk.{il}.ffn_norm.weight"),
                        d,
                        eps,
                        0.0,
                    )?,
                    mlp: Mlp::load(src, il, d, cfg.ffn_size, Activation::Silu)?,
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
            norm: RmsNorm::load(src, "output_norm.weight", d, eps, 0.0)?,
            lm_head,
            softcap: cfg.final_logit_softcap,
        };
        Ok(Self {
            cfg,
            opts: opts.clone(),
            embed,
            blocks,
            head,
        })
    }
}

impl Model for Llama {
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

impl BatchedModel for Llama {
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

impl Llama {
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
        let mut x = self.embed.forward(&tokens, 1.0)?; // (m, d)
        ctx.dump("inp_embd", None, m, &x);
        for (il, b) in self.blocks.iter().enumerate() {
            let h = b.attn_norm.forward(&x)?; // (m, d)
            ctx.dump("attn_norm", Some(il), m, &h);
            let attn = b.attn.forward(&mut ctx, il, &h, pool)?; // (m, d)
            add_inplace(&mut x, &attn);
            // Freed before the MLP's larger buffers exist (a shadowed binding would live to the
            // end of the iteration): lower peak memory in a long prefill.
            drop((h, attn));
            ctx.dump("ffn_inp", Some(il), m, &x);
            let h = b.ffn_norm.forward(&x)?; // (m, d)
            ctx.dump("ffn_norm", Some(il), m, &h);
            let ffn = b.mlp.forward(&mut ctx, il, &h)?; // (m, d)
            add_inplace(&mut x, &ffn);
            ctx.dump("l_out", Some(il), m, &x);
        }
        finish_batch(&self.head, &mut ctx, &x)
    }
}
