//! Loading a model with its tokenizer, and the adapters that let the engine
//! drive them.

use anyhow::Context;
use marlin_engine::{Detokenizer, EngineError, SequenceModel};
use marlin_io::tokenizer::{ChatTemplate, StreamDecoder, Tokenizer};
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

/// Gemma's turn format, for Gemma GGUFs that ship without a template (the
/// official template folds a system message into the first user turn).
const GEMMA_TEMPLATE: &str = "{{ bos_token }}\
{%- if messages[0]['role'] == 'system' -%}\
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\
{%- set loop_messages = messages[1:] -%}\
{%- else -%}\
{%- set first_user_prefix = '' -%}\
{%- set loop_messages = messages -%}\
{%- endif -%}\
{%- for message in loop_messages -%}\
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + (message['content'] | trim) + '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// ChatML, for models whose vocabulary has `<|im_start|>` but no template.
const CHATML_TEMPLATE: &str = "{%- for message in messages -%}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}";

/// The model's own chat template, or (as llama.cpp does for files without
/// one) the built-in template of its family.
pub fn chat_template(loaded: &Loaded) -> anyhow::Result<ChatTemplate> {
    let tok = &loaded.tokenizer;
    if tok.chat_template_source().is_some() {
        return Ok(tok.chat_template()?);
    }
    let arch = loaded.model.config().arch.as_str();
    let source = if arch.starts_with("gemma") {
        GEMMA_TEMPLATE
    } else if tok.token_to_id("<|im_start|>").is_some() {
        CHATML_TEMPLATE
    } else {
        anyhow::bail!(
            "this model has no chat template and marlin has no built-in one for architecture '{arch}'; run without --chat"
        );
    };
    let text = |id: Option<u32>| {
        id.and_then(|i| tok.token_str(i))
            .unwrap_or_default()
            .to_string()
    };
    let eos = text(tok.eos_ids().first().copied());
    Ok(ChatTemplate::new(source, &text(tok.bos_id()), &eos)?)
}
