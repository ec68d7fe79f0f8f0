//! The `Model` trait the engine drives, and the shared prologue of every
//! forward pass.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layers::{ActivationHook, ForwardCtx, KvCache, LogitsWanted};

/// Options for [`crate::load_model`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Largest KV cache [`Model::new_cache`] may allocate, in bytes.
    pub max_cache_bytes: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_cache_bytes: 16 << 30,
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
}

/// Validates a forward call against `cfg` and the cache, and builds its
/// context. Architectures call this first and `cache.advance` last.
pub(crate) fn begin_forward<'h>(
    cfg: &ModelConfig,
    tokens: &[u32],
    cache: &KvCache,
    logits: LogitsWanted,
    hook: Option<&'h mut dyn ActivationHook>,
) -> Result<ForwardCtx<'h>> {
    if tokens.is_empty() {
        return Err(ModelError::Invalid("forward: no tokens".into()));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
        return Err(ModelError::TokenOutOfRange {
            id: bad,
            vocab: cfg.vocab_size,
        });
    }
    cache.check(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, tokens.len())?;
    Ok(ForwardCtx::new(cache.len(), tokens.len(), logits, hook))
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
        max_seq,
        opts.max_cache_bytes,
    )
}
