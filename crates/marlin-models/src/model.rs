//! The `Model` trait the engine drives, and the shared prologue of every
//! forward pass.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layers::{
    ActivationHook, ForwardCtx, KvCache, KvPool, KvType, LogitsWanted, OutputHead, SeqChunk,
};

/// Options for [`crate::load_model`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Largest KV cache [`Model::new_cache`] may allocate, in bytes.
    pub max_cache_bytes: usize,
    /// How caches and pools store keys and values (f16 by default).
    pub kv_type: KvType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_cache_bytes: 16 << 30,
            kv_type: KvType::default(),
        }
    }
}

/// A loaded model: weights on the CPU kernels, ready to run.
///
/// `forward*` processes new tokens of one sequence at positions
/// `cache.len()..`, appends their keys and values to `cache`, and returns
/// logits. A batch of tokens (the prompt) goes through each layer as one
/// (m, d) matrix; decoding passes one token at a time.
pub trait Model: Send + Sync {
    fn config(&self) -> &ModelConfig;

    /// An empty cache for up to `max_seq` positions.
    fn new_cache(&self, max_seq: usize) -> Result<KvCache>;

    /// The general form: which logits to return, and an optional hook that
    /// receives named intermediate activations.
    fn forward_with(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits: LogitsWanted,
        hook: Option<&mut dyn ActivationHook>,
    ) -> Result<Vec<f32>>;

    /// Logits (vocab) of the last new position.
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        self.forward_with(tokens, cache, LogitsWanted::Last, None)
    }

    /// Logits (m, vocab) of every new position (perplexity, reference checks).
    fn forward_all(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        self.forward_with(tokens, cache, LogitsWanted::All, None)
    }

    /// The batched forward over a paged KV pool (the serving engine), for
    /// models that have one: every CPU architecture does.
    fn batched(&self) -> Option<&dyn BatchedModel> {
        None
    }
}

/// Several sequences in one forward pass over a shared [`KvPool`]: all
/// their new tokens go through each linear layer as one (sum m, d) matrix;
/// attention runs per sequence over its block table.
pub trait BatchedModel: Send + Sync {
    /// A pool of `n_blocks` blocks of `block_size` positions, bounded by
    /// the load options' `max_cache_bytes`.
    fn new_pool(&self, block_size: usize, n_blocks: usize) -> Result<KvPool>;

    /// Processes `seqs` (each writes its new keys and values through its
    /// block table) and returns, per sequence, the logits it asked for:
    /// (vocab) for `Last`, (m, vocab) for `All`, empty for `None`. Two
    /// chunks of one call must not write the same block position.
    fn forward_batch_with(
        &self,
        pool: &mut KvPool,
        seqs: &[SeqChunk],
        hook: Option<&mut dyn ActivationHook>,
    ) -> Result<Vec<Vec<f32>>>;

    fn forward_batch(&self, pool: &mut KvPool, seqs: &[SeqChunk]) -> Result<Vec<Vec<f32>>> {
        self.forward_batch_with(pool, seqs, None)
    }
}

/// Rows one pass through the layer stack processes at most (llama.cpp's
/// `n_ubatch`): a longer batch (a long prompt) runs as several passes in
/// position order, so the activation buffers, (rows, ffn) f32 each, are
/// bounded by this instead of by the prompt length. 128 rows: half the
/// activations of 256 (SmolLM2's pp512 peak: -1.8 MiB against an allowance of
/// 10% of the file), and pp512 as fast (Gemma 3) or 6-9% faster (SmolLM2)
/// than 256 (docs/BENCHMARKS.md, "Session 5").
pub const MICRO_BATCH: usize = 128;

/// Runs the batched forward `seqs` as passes of at most [`MICRO_BATCH`]
/// rows through `pass` (an architecture's layer stack): a sequence's chunk
/// that does not fit is split, its later rows going to the next pass (their
/// attention reads the keys the earlier pass wrote to the pool). Returns the
/// logits each sequence asked for, as one call would. The whole call is
/// validated first, so a bad chunk runs no pass. With an activation hook the
/// batch runs as one pass: dumps stay whole matrices.
pub(crate) fn in_micro_batches(
    cfg: &ModelConfig,
    pool: &mut KvPool,
    seqs: &[SeqChunk],
    hook: Option<&mut dyn ActivationHook>,
    mut pass: impl FnMut(
        &mut KvPool,
        &[SeqChunk],
        Option<&mut dyn ActivationHook>,
    ) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    let rows = seqs
        .iter()
        .fold(0usize, |n, s| n.saturating_add(s.tokens.len()));
    if hook.is_some() || rows <= MICRO_BATCH {
        return pass(pool, seqs, hook);
    }
    check_batch(cfg, pool, seqs)?;
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); seqs.len()];
    // Tokens of each sequence already run, and the first sequence not done.
    let mut done = vec![0usize; seqs.len()];
    let mut next = 0;
    while next < seqs.len() {
        let mut budget = MICRO_BATCH;
        let (mut pieces, mut owners) = (Vec::new(), Vec::new());
        while next < seqs.len() && budget > 0 {
            let s = &seqs[next];
            let start = done[next];
            let end = start + (s.tokens.len() - start).min(budget);
            let finished = end == s.tokens.len();
            let logits = match s.logits {
                Some(LogitsWanted::All) => Some(LogitsWanted::All),
                Some(LogitsWanted::Last) if finished => Some(LogitsWanted::Last),
                _ => None,
            };
            pieces.push(SeqChunk {
                tokens: &s.tokens[start..end],
                block_table: s.block_table,
                // Within the checked pos0 + len.
                pos0: s.pos0 + start,
                logits,
            });
            owners.push(next);
            budget -= end - start;
            done[next] = end;
            if finished {
                next += 1;
            }
        }
        for (owner, logits) in owners.into_iter().zip(pass(pool, &pieces, None)?) {
            if out[owner].is_empty() {
                out[owner] = logits;
            } else {
                out[owner].extend_from_slice(&logits);
            }
        }
    }
    Ok(out)
}

/// Validates a batched forward call against `cfg` and the pool.
fn check_batch(cfg: &ModelConfig, pool: &KvPool, seqs: &[SeqChunk]) -> Result<()> {
    if seqs.is_empty() {
        return Err(ModelError::Invalid("forward: no sequences".into()));
    }
    let shape = (cfg.n_layers, cfg.n_kv_heads, cfg.head_dim);
    for s in seqs {
        if s.tokens.is_empty() {
            return Err(ModelError::Invalid("forward: no tokens".into()));
        }
        if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(ModelError::TokenOutOfRange {
                id: bad,
                vocab: cfg.vocab_size,
            });
        }
        pool.check(shape, s.block_table, s.pos0, s.tokens.len())?;
    }
    Ok(())
}

/// Validates a batched forward call against `cfg` and the pool, and builds
/// its context and its stacked tokens (sum m). Architectures call this
/// first and [`finish_batch`] last.
pub(crate) fn begin_batch<'h>(
    cfg: &ModelConfig,
    pool: &KvPool,
    seqs: &[SeqChunk],
    hook: Option<&'h mut dyn ActivationHook>,
) -> Result<(ForwardCtx<'h>, Vec<u32>)> {
    check_batch(cfg, pool, seqs)?;
    let tokens = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
    Ok((ForwardCtx::batch(seqs, hook), tokens))
}

/// The output head over the rows whose logits were asked for; `x` (m, d)
/// -> per sequence (vocab), (m_i, vocab) or nothing.
pub(crate) fn finish_batch(
    head: &OutputHead,
    ctx: &mut ForwardCtx,
    x: &[f32],
) -> Result<Vec<Vec<f32>>> {
    let d = x.len() / ctx.n_tokens.max(1);
    // Only the rows asked for go through the (expensive) LM head.
    let mut rows = Vec::new(); // (n, d)
    let mut counts = Vec::with_capacity(ctx.seqs.len());
    for s in &ctx.seqs {
        let picked = match s.logits {
            None => s.row0..s.row0,
            Some(LogitsWanted::Last) => s.row0 + s.len - 1..s.row0 + s.len,
            Some(LogitsWanted::All) => s.row0..s.row0 + s.len,
        };
        rows.extend_from_slice(&x[picked.start * d..picked.end * d]);
        counts.push(picked.len());
    }
    if rows.is_empty() {
        return Ok(vec![Vec::new(); counts.len()]);
    }
    ctx.logits = LogitsWanted::All;
    let logits = head.forward(ctx, &rows)?; // (n, vocab)
    if counts.len() == 1 {
        // One sequence (the KvCache path, perplexity): no copy.
        return Ok(vec![logits]);
    }
    let vocab = logits.len() / (rows.len() / d);
    let mut out = Vec::with_capacity(counts.len());
    let mut at = 0;
    for n in counts {
        out.push(logits[at * vocab..(at + n) * vocab].to_vec());
        at += n;
    }
    Ok(out)
}

/// [`Model::forward_with`] through the batched forward: `cache` is a pool
/// of one block.
pub(crate) fn forward_on_cache(
    model: &dyn BatchedModel,
    tokens: &[u32],
    cache: &mut KvCache,
    logits: LogitsWanted,
    hook: Option<&mut dyn ActivationHook>,
) -> Result<Vec<f32>> {
    let pos0 = cache.len();
    let (pool, block_table) = cache.as_pool();
    let chunk = SeqChunk {
        tokens,
        block_table,
        pos0,
        logits: Some(logits),
    };
    let out = model.forward_batch_with(pool, &[chunk], hook)?;
    cache.advance(tokens.len());
    out.into_iter()
        .next()
        .ok_or_else(|| ModelError::Invalid("forward: no logits".into()))
}

/// A pool for `cfg`, bounded by `opts.max_cache_bytes`.
pub(crate) fn new_pool_for(
    cfg: &ModelConfig,
    opts: &LoadOptions,
    block_size: usize,
    n_blocks: usize,
) -> Result<KvPool> {
    KvPool::new(
        cfg.n_layers,
        cfg.n_kv_heads,
        cfg.head_dim,
        (block_size, n_blocks),
        opts.kv_type,
        opts.max_cache_bytes,
    )
}

/// A cache for `cfg`, bounded by `opts.max_cache_bytes`.
pub(crate) fn new_cache_for(
    cfg: &ModelConfig,
    opts: &LoadOptions,
    max_seq: usize,
) -> Result<KvCache> {
    if max_seq == 0 {
        return Err(ModelError::Invalid("KV cache of 0 positions".into()));
    }
    KvCache::new(
        cfg.n_layers,
        cfg.n_kv_heads,
        cfg.head_dim,
        (max_seq, opts.kv_type),
        opts.max_cache_bytes,
    )
}
