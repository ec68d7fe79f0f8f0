//! Hyper-parameters: typed keys resolved against GGUF metadata
//! (`{arch}.attention.head_count`) or a Hugging Face `config.json`
//! (`num_attention_heads`), and the [`ModelConfig`] every model reports.

use crate::error::{ModelError, Result};
use crate::source::WeightSource;
use marlin_io::gguf::GgufKey;

/// A hyper-parameter the architectures read. Each knows its GGUF key and its
/// `config.json` paths (first match wins; nested objects by path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HParam {
    VocabSize,
    ContextLength,
    EmbeddingLength,
    BlockCount,
    FeedForwardLength,
    HeadCount,
    HeadCountKv,
    HeadDim,
    RmsEps,
    RopeFreqBase,
    /// Rope base of sliding-window (local) layers (Gemma 3).
    RopeFreqBaseLocal,
    RopeDimCount,
    RopeScalingType,
    RopeScalingFactor,
    RopeScalingOrigContext,
    RopeScalingLowFreqFactor,
    RopeScalingHighFreqFactor,
    SlidingWindow,
    SlidingWindowPattern,
    FinalLogitSoftcap,
    /// Gemma's `query_pre_attn_scalar`: attention scores are scaled by its
    /// inverse square root.
    QueryPreAttnScalar,
    TieEmbeddings,
}

impl HParam {
    /// The GGUF key, if GGUF files carry this parameter.
    pub fn gguf_key(self) -> Option<GgufKey> {
        use HParam::*;
        Some(match self {
            VocabSize => GgufKey::VocabSize,
            ContextLength => GgufKey::ContextLength,
            EmbeddingLength => GgufKey::EmbeddingLength,
            BlockCount => GgufKey::BlockCount,
            FeedForwardLength => GgufKey::FeedForwardLength,
            HeadCount => GgufKey::AttentionHeadCount,
            HeadCountKv => GgufKey::AttentionHeadCountKv,
            HeadDim => GgufKey::AttentionKeyLength,
            RmsEps => GgufKey::AttentionLayerNormRmsEpsilon,
            RopeFreqBase => GgufKey::RopeFreqBase,
            RopeFreqBaseLocal => GgufKey::RopeFreqBaseSwa,
            RopeDimCount => GgufKey::RopeDimensionCount,
            RopeScalingType => GgufKey::RopeScalingType,
            RopeScalingFactor => GgufKey::RopeScalingFactor,
            RopeScalingOrigContext => GgufKey::RopeScalingOriginalContextLength,
            SlidingWindow => GgufKey::AttentionSlidingWindow,
            SlidingWindowPattern => GgufKey::AttentionSlidingWindowPattern,
            FinalLogitSoftcap => GgufKey::FinalLogitSoftcapping,
            QueryPreAttnScalar => GgufKey::AttentionScale,
            // GGUF stores Llama-3 frequency factors as a tensor, and tying as
            // the absence of `output.weight`.
            RopeScalingLowFreqFactor | RopeScalingHighFreqFactor | TieEmbeddings => return None,
        })
    }

    /// `config.json` paths, tried in order.
    pub fn hf_paths(self) -> &'static [&'static [&'static str]] {
        use HParam::*;
        match self {
            VocabSize => &[&["vocab_size"], &["text_config", "vocab_size"]],
            ContextLength => &[&["max_position_embeddings"]],
            EmbeddingLength => &[&["hidden_size"]],
            BlockCount => &[&["num_hidden_layers"]],
            FeedForwardLength => &[&["intermediate_size"]],
            HeadCount => &[&["num_attention_heads"]],
            HeadCountKv => &[&["num_key_value_heads"]],
            HeadDim => &[&["head_dim"]],
            RmsEps => &[&["rms_norm_eps"]],
            RopeFreqBase => &[&["rope_theta"], &["rope_parameters", "rope_theta"]],
            RopeFreqBaseLocal => &[&["rope_local_base_freq"]],
            RopeDimCount => &[],
            RopeScalingType => &[
                &["rope_scaling", "rope_type"],
                &["rope_scaling", "type"],
                &["rope_parameters", "rope_type"],
            ],
            RopeScalingFactor => &[&["rope_scaling", "factor"], &["rope_parameters", "factor"]],
            RopeScalingOrigContext => &[
                &["rope_scaling", "original_max_position_embeddings"],
                &["rope_parameters", "original_max_position_embeddings"],
            ],
            RopeScalingLowFreqFactor => &[
                &["rope_scaling", "low_freq_factor"],
                &["rope_parameters", "low_freq_factor"],
            ],
            RopeScalingHighFreqFactor => &[
                &["rope_scaling", "high_freq_factor"],
                &["rope_parameters", "high_freq_factor"],
            ],
            SlidingWindow => &[&["sliding_window"]],
            SlidingWindowPattern => &[&["sliding_window_pattern"]],
            FinalLogitSoftcap => &[&["final_logit_softcapping"]],
            QueryPreAttnScalar => &[&["query_pre_attn_scalar"]],
            TieEmbeddings => &[&["tie_word_embeddings"]],
        }
    }
}

/// A hyper-parameter value as stored.
#[derive(Clone, Debug, PartialEq)]
pub enum HValue {
    Num(f64),
    Bool(bool),
    Str(String),
}

/// Typed access over [`WeightSource::hparam`].
pub struct Params<'a> {
    pub(crate) src: &'a dyn WeightSource,
}

impl Params<'_> {
    fn name(&self, key: HParam) -> String {
        format!("{key:?}")
    }

    pub fn f64_opt(&self, key: HParam) -> Result<Option<f64>> {
        match self.src.hparam(key)? {
            None => Ok(None),
            Some(HValue::Num(v)) if v.is_finite() => Ok(Some(v)),
            Some(v) => Err(ModelError::Config(format!(
                "{}: expected a number, found {v:?}",
                self.name(key)
            ))),
        }
    }

    pub fn f32_or(&self, key: HParam, default: f32) -> Result<f32> {
        Ok(self.f64_opt(key)?.map(|v| v as f32).unwrap_or(default))
    }

    pub fn f32(&self, key: HParam) -> Result<f32> {
        self.f64_opt(key)?
            .map(|v| v as f32)
            .ok_or_else(|| ModelError::Config(format!("missing {}", self.name(key))))
    }

    /// A positive integer no larger than `max` (guards allocations sized by it).
    pub fn usize_opt(&self, key: HParam, max: usize) -> Result<Option<usize>> {
        match self.f64_opt(key)? {
            None => Ok(None),
            Some(v) if v >= 1.0 && v.fract() == 0.0 && v <= max as f64 => Ok(Some(v as usize)),
            Some(v) => Err(ModelError::Config(format!(
                "{} = {v}: expected an integer in 1..={max}",
                self.name(key)
            ))),
        }
    }

    pub fn usize(&self, key: HParam, max: usize) -> Result<usize> {
        self.usize_opt(key, max)?
            .ok_or_else(|| ModelError::Config(format!("missing {}", self.name(key))))
    }

    pub fn str_opt(&self, key: HParam) -> Result<Option<String>> {
        match self.src.hparam(key)? {
            None => Ok(None),
            Some(HValue::Str(s)) => Ok(Some(s)),
            Some(v) => Err(ModelError::Config(format!(
                "{}: expected a string, found {v:?}",
                self.name(key)
            ))),
        }
    }

    pub fn bool_opt(&self, key: HParam) -> Result<Option<bool>> {
        match self.src.hparam(key)? {
            None => Ok(None),
            Some(HValue::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(ModelError::Config(format!(
                "{}: expected a bool, found {v:?}",
                self.name(key)
            ))),
        }
    }
}

/// Upper bounds on hyper-parameters, so that a corrupt file fails loading
/// instead of asking for absurd allocations.
pub mod limits {
    pub const MAX_VOCAB: usize = 1 << 22;
    pub const MAX_DIM: usize = 1 << 16;
    pub const MAX_FFN: usize = 1 << 18;
    pub const MAX_LAYERS: usize = 1024;
    pub const MAX_HEADS: usize = 1024;
    pub const MAX_HEAD_DIM: usize = 1024;
    pub const MAX_CONTEXT: usize = 1 << 24;
}

/// What every model reports about itself (the engine and CLI read this).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Registry name: "llama", "gemma3", "qwen3".
    pub arch: String,
    pub vocab_size: usize,
    /// Trained context length.
    pub context_length: usize,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_size: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Sliding window of local layers, if any.
    pub sliding_window: Option<usize>,
    pub final_logit_softcap: Option<f32>,
    pub tied_embeddings: bool,
}

impl ModelConfig {
    /// f32 values one cached position takes across all layers (K and V).
    pub fn kv_floats_per_position(&self) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim
    }
}

/// The hyper-parameters every decoder-only architecture here shares, read
/// from `src`. `vocab_rows` is the row count of the token embedding (the
/// vocabulary size when the checkpoint does not state it).
pub fn base_config(src: &dyn WeightSource, arch: &str, vocab_rows: usize) -> Result<ModelConfig> {
    use limits::*;
    use HParam::*;
    let p = Params { src };
    let hidden_size = p.usize(EmbeddingLength, MAX_DIM)?;
    let n_layers = p.usize(BlockCount, MAX_LAYERS)?;
    let n_heads = p.usize(HeadCount, MAX_HEADS)?;
    let n_kv_heads = p.usize_opt(HeadCountKv, MAX_HEADS)?.unwrap_or(n_heads);
    if !n_heads.is_multiple_of(n_kv_heads) {
        return Err(ModelError::Config(format!(
            "{n_heads} attention heads cannot share {n_kv_heads} kv heads"
        )));
    }
    let head_dim = match p.usize_opt(HeadDim, MAX_HEAD_DIM)? {
        Some(h) => h,
        None if hidden_size.is_multiple_of(n_heads) => hidden_size / n_heads,
        None => {
            return Err(ModelError::Config(format!(
                "hidden size {hidden_size} is not a multiple of {n_heads} heads"
            )))
        }
    };
    let vocab_size = p.usize_opt(VocabSize, MAX_VOCAB)?.unwrap_or(vocab_rows);
    if vocab_size != vocab_rows {
        return Err(ModelError::Config(format!(
            "vocabulary size {vocab_size} but the token embedding has {vocab_rows} rows"
        )));
    }
    let sliding_window = p.usize_opt(SlidingWindow, MAX_CONTEXT)?;
    Ok(ModelConfig {
        arch: arch.to_string(),
        vocab_size,
        context_length: p.usize_opt(ContextLength, MAX_CONTEXT)?.unwrap_or(2048),
        hidden_size,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_size: p.usize(FeedForwardLength, MAX_FFN)?,
        rms_eps: p.f32_or(RmsEps, 1e-5)?,
        rope_base: p.f32_or(RopeFreqBase, 10_000.0)?,
        sliding_window,
        final_logit_softcap: p
            .f64_opt(FinalLogitSoftcap)?
            .map(|v| v as f32)
            .filter(|v| *v > 0.0),
        tied_embeddings: false,
    })
}

/// RoPE frequency scaling as the checkpoint configures it.
pub fn rope_scaling(src: &dyn WeightSource) -> Result<marlin_cpu::ops::RopeScaling> {
    use marlin_cpu::ops::RopeScaling;
    use HParam::*;
    // GGUF stores Llama-3 style scaling as precomputed per-frequency divisors.
    if src.contains("rope_freqs.weight") {
        return Ok(RopeScaling::FreqFactors(src.vector("rope_freqs.weight")?));
    }
    let p = Params { src };
    let kind = p.str_opt(RopeScalingType)?;
    match kind.as_deref() {
        None | Some("none") | Some("default") => Ok(RopeScaling::None),
        Some("linear") => Ok(RopeScaling::Linear {
            factor: p.f32(RopeScalingFactor)?,
        }),
        Some("llama3") => Ok(RopeScaling::Llama3 {
            factor: p.f32(RopeScalingFactor)?,
            low_freq_factor: p.f32_or(RopeScalingLowFreqFactor, 1.0)?,
            high_freq_factor: p.f32_or(RopeScalingHighFreqFactor, 4.0)?,
            original_max_position: p.f32_or(RopeScalingOrigContext, 8192.0)?,
        }),
        Some(other) => Err(ModelError::Config(format!(
            "rope scaling type `{other}` is not supported"
        ))),
    }
}
