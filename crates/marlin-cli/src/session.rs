//! Loading a model with its tokenizer, and the adapters that let the engine
//! drive them.

use anyhow::Context;
use marlin_core::Device;
use marlin_engine::{Detokenizer, EngineError, SequenceModel};
use marlin_io::tokenizer::{ChatTemplate, StreamDecoder, Tokenizer};
use marlin_models::{KvCache, LoadOptions, Model, ModelConfig};
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
    let model_context = || format!("loading model {}", path.display());
    let tokenizer_context = || format!("loading tokenizer of {}", path.display());
    if path.is_dir() {
        let model =
            marlin_models::load_model(path, &LoadOptions::default()).with_context(model_context)?;
        let tokenizer = Tokenizer::from_hf_dir(path).with_context(tokenizer_context)?;
        tracing::info!(secs = t0.elapsed().as_secs_f64(), "model loaded");
        return Ok(Loaded { model, tokenizer });
    }
    // One parse of the GGUF for both. The tokenizer is built first and the vocabulary arrays
    // dropped from the parsed metadata before the weights load, so neither they nor the
    // tokenizer build's temporaries are resident on top of the weights (peak memory).
    let mut gguf = marlin_io::gguf::GgufFile::open(path).with_context(model_context)?;
    let tokenizer = Tokenizer::from_gguf(&gguf);
    gguf.remove_metadata(|key| key.starts_with("tokenizer."));
    crate::memory::release_unused_memory();
    // A model error is reported before a tokenizer error, as when the model loaded first.
    let model =
        marlin_models::load_gguf(gguf, &LoadOptions::default()).with_context(model_context)?;
    // Repacking frees each source tensor after copying it; what malloc kept of those is
    // returned too, and the loader's code pages are unmapped.
    crate::memory::release_unused_memory();
    let tokenizer = tokenizer.with_context(tokenizer_context)?;
    tracing::info!(secs = t0.elapsed().as_secs_f64(), "model loaded");
    Ok(Loaded { model, tokenizer })
}

#[cfg(feature = "cuda")]
fn load_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    if path.is_dir() {
        return Ok(Tokenizer::from_hf_dir(path)?);
    }
    let gguf = marlin_io::gguf::GgufFile::open(path)?;
    Ok(Tokenizer::from_gguf(&gguf)?)
}

/// A model on the device the user chose.
pub enum DeviceModel {
    Cpu(Box<dyn Model>),
    #[cfg(feature = "cuda")]
    Cuda(Box<marlin_models::gpu::GpuModel>),
}

impl DeviceModel {
    pub fn config(&self) -> &ModelConfig {
        match self {
            DeviceModel::Cpu(m) => m.config(),
            #[cfg(feature = "cuda")]
            DeviceModel::Cuda(m) => m.config(),
        }
    }

    /// An empty sequence of up to `ctx` positions.
    pub fn new_sequence(&self, ctx: usize) -> anyhow::Result<DeviceSequence<'_>> {
        Ok(match self {
            DeviceModel::Cpu(m) => DeviceSequence::Cpu(Sequence::new(m.as_ref(), ctx)?),
            #[cfg(feature = "cuda")]
            DeviceModel::Cuda(m) => DeviceSequence::Cuda(Box::new(m.new_sequence(ctx)?)),
        })
    }
}

/// A model and its tokenizer, on a chosen device.
pub struct LoadedOn {
    pub model: DeviceModel,
    pub tokenizer: Tokenizer,
}

/// Loads the model at `path` onto `device` (`--device`), with its tokenizer.
/// Without the `cuda` feature or without a usable GPU, `cuda` is a one-line error.
pub fn load_on(path: &Path, device: Device) -> anyhow::Result<LoadedOn> {
    match device {
        Device::Cpu => {
            let Loaded { model, tokenizer } = load(path)?;
            Ok(LoadedOn {
                model: DeviceModel::Cpu(model),
                tokenizer,
            })
        }
        Device::Cuda(ordinal) => load_cuda(path, ordinal),
    }
}

#[cfg(feature = "cuda")]
fn load_cuda(path: &Path, ordinal: usize) -> anyhow::Result<LoadedOn> {
    use marlin_models::gpu::{GpuLoadOptions, GpuModel};
    if !path.exists() {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    let t0 = Instant::now();
    let opts = GpuLoadOptions {
        ordinal,
        ..GpuLoadOptions::default()
    };
    let model = GpuModel::load(path, &opts)
        .with_context(|| format!("loading model {} onto cuda:{ordinal}", path.display()))?;
    let tokenizer =
        load_tokenizer(path).with_context(|| format!("loading tokenizer of {}", path.display()))?;
    tracing::info!(secs = t0.elapsed().as_secs_f64(), "model loaded on the GPU");
    Ok(LoadedOn {
        model: DeviceModel::Cuda(Box::new(model)),
        tokenizer,
    })
}

#[cfg(not(feature = "cuda"))]
fn load_cuda(_path: &Path, _ordinal: usize) -> anyhow::Result<LoadedOn> {
    anyhow::bail!(
        "--device cuda: this marlin was built without the `cuda` feature (cargo build --release --features cuda)"
    )
}

/// One sequence on the CPU or the GPU.
pub enum DeviceSequence<'m> {
    Cpu(Sequence<'m>),
    #[cfg(feature = "cuda")]
    Cuda(Box<marlin_models::gpu::GpuSequence<'m>>),
}

impl DeviceSequence<'_> {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        match self {
            DeviceSequence::Cpu(s) => s.cache.len(),
            #[cfg(feature = "cuda")]
            DeviceSequence::Cuda(s) => s.len(),
        }
    }

    pub fn capacity(&self) -> usize {
        match self {
            DeviceSequence::Cpu(s) => s.cache.capacity(),
            #[cfg(feature = "cuda")]
            DeviceSequence::Cuda(s) => s.capacity(),
        }
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        match self {
            DeviceSequence::Cpu(s) => s.cache.truncate(len),
            #[cfg(feature = "cuda")]
            DeviceSequence::Cuda(s) => s.truncate(len),
        }
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Appends `tokens`; logits (vocab) of the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> anyhow::Result<Vec<f32>> {
        Ok(match self {
            DeviceSequence::Cpu(s) => s.model.forward(tokens, &mut s.cache)?,
            #[cfg(feature = "cuda")]
            DeviceSequence::Cuda(s) => s.forward(tokens)?,
        })
    }

    /// Appends `tokens`; logits (tokens.len(), vocab) of every one.
    pub fn forward_all(&mut self, tokens: &[u32]) -> anyhow::Result<Vec<f32>> {
        Ok(match self {
            DeviceSequence::Cpu(s) => s.model.forward_all(tokens, &mut s.cache)?,
            #[cfg(feature = "cuda")]
            DeviceSequence::Cuda(s) => s.forward_all(tokens)?,
        })
    }
}

impl SequenceModel for DeviceSequence<'_> {
    fn vocab_size(&self) -> usize {
        match self {
            DeviceSequence::Cpu(s) => s.vocab_size(),
            #[cfg(feature = "cuda")]
            DeviceSequence::Cuda(s) => s.vocab_size(),
        }
    }
    fn max_seq_len(&self) -> usize {
        self.capacity()
    }
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        DeviceSequence::forward(self, tokens).map_err(|e| EngineError::Model(format!("{e:#}")))
    }
}

/// The context length to allocate: the user's, else the model's capped.
pub fn context_len_for(cfg: &ModelConfig, requested: Option<usize>) -> anyhow::Result<usize> {
    let native = cfg.context_length;
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
pub fn chat_template_for(tok: &Tokenizer, arch: &str) -> anyhow::Result<ChatTemplate> {
    if tok.chat_template_source().is_some() {
        return Ok(tok.chat_template()?);
    }
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
