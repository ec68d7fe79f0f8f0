//! Adapters between marlin models / tokenizers and the serving engine
//! (what a server or the CLI writes once): the paged model, the
//! detokenizer source, and `generate()`'s contiguous-cache sequence.

#![allow(dead_code)]

use marlin_engine::serve::{BatchChunk, BatchModel, DetokenizerSource};
use marlin_engine::{Detokenizer, EngineError, SequenceModel};
use marlin_io::tokenizer::{StreamDecoder, Tokenizer};
use marlin_models::{KvCache, KvPool, LogitsWanted, Model, SeqChunk};
use std::path::PathBuf;
use std::sync::Arc;

/// `$MARLIN_MODELS/<file>` (default `<repo>/models`), or `None` with a
/// message when absent.
pub fn model_or_skip(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("MARLIN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let p = dir.join(file);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} not found", p.display());
        None
    }
}

/// A marlin model and its paged pool, as the engine drives them.
pub struct PagedModel {
    pub model: Arc<dyn Model>,
    pub pool: KvPool,
}

impl BatchModel for PagedModel {
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
    fn block_size(&self) -> usize {
        self.pool.block_size()
    }
    fn n_blocks(&self) -> usize {
        self.pool.n_blocks()
    }
    fn forward_batch(&mut self, chunks: &[BatchChunk]) -> Result<Vec<Vec<f32>>, EngineError> {
        let batched = self
            .model
            .batched()
            .ok_or_else(|| EngineError::Model("no batched forward".into()))?;
        let seqs: Vec<SeqChunk> = chunks
            .iter()
            .map(|c| SeqChunk {
                tokens: c.tokens,
                block_table: c.block_table,
                pos0: c.pos0,
                logits: c.want_logits.then_some(LogitsWanted::Last),
            })
            .collect();
        batched
            .forward_batch(&mut self.pool, &seqs)
            .map_err(|e| EngineError::Model(e.to_string()))
    }
}

pub struct TextStream<'t>(pub StreamDecoder<'t>);

impl Detokenizer for TextStream<'_> {
    fn push(&mut self, id: u32) -> Result<String, EngineError> {
        self.0
            .push(id)
            .map_err(|e| EngineError::Model(e.to_string()))
    }
    fn finish(&mut self) -> Result<String, EngineError> {
        self.0
            .flush()
            .map_err(|e| EngineError::Model(e.to_string()))
    }
}

pub struct Detok(pub Arc<Tokenizer>);

impl DetokenizerSource for Detok {
    fn detokenizer(&self) -> Box<dyn Detokenizer + '_> {
        Box::new(TextStream(self.0.stream_decoder()))
    }
}

/// `generate()`'s view of a model with a contiguous cache.
pub struct Contiguous<'m> {
    pub model: &'m dyn Model,
    pub cache: KvCache,
}

impl SequenceModel for Contiguous<'_> {
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
