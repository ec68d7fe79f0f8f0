//! Loading a model with its tokenizer, and the adapters that let the engine
//! drive them.

use anyhow::Context;
use marlin_engine::{Detokenizer, EngineError, SequenceModel};
use marlin_io::tokenizer::{StreamDecoder, Tokenizer};
use marlin_models::{KvCache, LoadOptions, Model};
use std::path::Path;
use std::time::Instant;

/// Longest context used when the user does not ask for one: the KV cache is
/// allocated up front, and most prompts are far shorter than a model's
/// advertised window.
pub const DEFAULT_CTX_CAP: usize = 4096;

pub struct Loaded {
    pub model: Box<dyn Model>,
    pub tokenizer: Tokenizer,
}

pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    if !path.exists() {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    let t0 = Instant::now();
    let model = marlin_models::load_model(path, &LoadOptions::default())
        .with_context(|| format!("loading model {}", path.display()))?;
    let tokenizer =
        load_tokenizer(path).with_context(|| format!("loading tokenizer of {}", path.display()))?;
    tracing::info!(secs = t0.elapsed().as_secs_f64(), "model loaded");
    Ok(Loaded { model, tokenizer })
}

fn load_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    if path.is_dir() {
        return Ok(Tokenizer::from_hf_dir(path)?);
    }
    let gguf = marlin_io::gguf::GgufFile::open(path)?;
    Ok(Tokenizer::from_gguf(&gguf)?)
}

/// The context length to allocate: the user's, else the model's capped.
pub fn context_len(model: &dyn Model, requested: Option<usize>) -> anyhow::Result<usize> {
    let native = model.config().context_length;
    match requested {
        Some(0) => anyhow::bail!("--ctx must be at least 1"),
        Some(n) => Ok(n),
        None => Ok(native.clamp(1, DEFAULT_CTX_CAP)),
    }
}

/// One sequence: a model and its KV cache.
pub struct Sequence<'m> {
    pub model: &'m dyn Model,
    pub cache: KvCache,
}

impl<'m> Sequence<'m> {
    pub fn new(model: &'m dyn Model, ctx: usize) -> anyhow::Result<Self> {
        Ok(Self {
            model,
            cache: model.new_cache(ctx)?,
        })
    }
}

impl SequenceModel for Sequence<'_> {
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
    fn max_seq_len(&self) -> usize {
        self.cache.capacity()
    }
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.model
            .forward(tokens, &mut self.cache)
            .map_err(|e| EngineError::Model(e.to_string()))
    }
}

/// Streams text through the tokenizer's incremental decoder.
pub struct TextStream<'t>(pub StreamDecoder<'t>);

impl Detokenizer for TextStream<'_> {
    fn push(&mut self, id: u32) -> Result<String, EngineError> {
        self.0
            .push(id)
            .map_err(|e| EngineError::Model(format!("detokenizing: {e}")))
    }
    fn finish(&mut self) -> Result<String, EngineError> {
        self.0
            .flush()
            .map_err(|e| EngineError::Model(format!("detokenizing: {e}")))
    }
}
