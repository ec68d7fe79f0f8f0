//! Typed metadata keys: llama.cpp's `LLM_KV_*` pattern, an enum whose
//! architecture-specific members are prefixed with `general.architecture`
//! (`llama.context_length`, `gemma3.attention.sliding_window`).

use std::borrow::Cow;

use crate::error::{IoError, Result};

/// The key under which every GGUF names its architecture.
pub const ARCHITECTURE_KEY: &str = "general.architecture";

/// The metadata keys marlin reads. `name()` gives the key text; the ones
/// returning [`KeyName::Arch`] are prefixed with the architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgufKey {
    // general.*
    Architecture,
    Name,
    Alignment,
    FileType,
    QuantizationVersion,

    // {arch}.*
    VocabSize,
    ContextLength,
    EmbeddingLength,
    BlockCount,
    FeedForwardLength,
    ExpertCount,
    ExpertUsedCount,
    ExpertFeedForwardLength,
    ExpertSharedCount,
    FinalLogitSoftcapping,
    AttnLogitSoftcapping,
    AttentionHeadCount,
    AttentionHeadCountKv,
    AttentionKeyLength,
    AttentionValueLength,
    AttentionLayerNormEpsilon,
    AttentionLayerNormRmsEpsilon,
    AttentionSlidingWindow,
    AttentionSlidingWindowPattern,
    AttentionCausal,
    AttentionScale,
    RopeDimensionCount,
    RopeFreqBase,
    RopeFreqBaseSwa,
    RopeScaleLinear,
    RopeScalingType,
    RopeScalingFactor,
    RopeScalingAttnFactor,
    RopeScalingOriginalContextLength,
    RopeScalingFinetuned,

    // tokenizer.*
    TokenizerModel,
    TokenizerPre,
    TokenizerTokens,
    TokenizerTokenType,
    TokenizerScores,
    TokenizerMerges,
    TokenizerBosId,
    TokenizerEosId,
    TokenizerEotId,
    TokenizerEomId,
    TokenizerUnknownId,
    TokenizerSeparatorId,
    TokenizerPaddingId,
    TokenizerMaskId,
    TokenizerAddBos,
    TokenizerAddEos,
    TokenizerAddSpacePrefix,
    TokenizerRemoveExtraWhitespaces,
    TokenizerChatTemplate,
}

/// A key's text: fixed, or a suffix to append to `{arch}.`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyName {
    Fixed(&'static str),
    Arch(&'static str),
}

impl GgufKey {
    pub fn name(self) -> KeyName {
        use GgufKey::*;
        use KeyName::{Arch, Fixed};
        match self {
            Architecture => Fixed(ARCHITECTURE_KEY),
            Name => Fixed("general.name"),
            Alignment => Fixed("general.alignment"),
            FileType => Fixed("general.file_type"),
            QuantizationVersion => Fixed("general.quantization_version"),

            VocabSize => Arch("vocab_size"),
            ContextLength => Arch("context_length"),
            EmbeddingLength => Arch("embedding_length"),
            BlockCount => Arch("block_count"),
            FeedForwardLength => Arch("feed_forward_length"),
            ExpertCount => Arch("expert_count"),
            ExpertUsedCount => Arch("expert_used_count"),
            ExpertFeedForwardLength => Arch("expert_feed_forward_length"),
            ExpertSharedCount => Arch("expert_shared_count"),
            FinalLogitSoftcapping => Arch("final_logit_softcapping"),
            AttnLogitSoftcapping => Arch("attn_logit_softcapping"),
            AttentionHeadCount => Arch("attention.head_count"),
            AttentionHeadCountKv => Arch("attention.head_count_kv"),
            AttentionKeyLength => Arch("attention.key_length"),
            AttentionValueLength => Arch("attention.value_length"),
            AttentionLayerNormEpsilon => Arch("attention.layer_norm_epsilon"),
            AttentionLayerNormRmsEpsilon => Arch("attention.layer_norm_rms_epsilon"),
            AttentionSlidingWindow => Arch("attention.sliding_window"),
            AttentionSlidingWindowPattern => Arch("attention.sliding_window_pattern"),
            AttentionCausal => Arch("attention.causal"),
            AttentionScale => Arch("attention.scale"),
            RopeDimensionCount => Arch("rope.dimension_count"),
            RopeFreqBase => Arch("rope.freq_base"),
            RopeFreqBaseSwa => Arch("rope.freq_base_swa"),
            RopeScaleLinear => Arch("rope.scale_linear"),
            RopeScalingType => Arch("rope.scaling.type"),
            RopeScalingFactor => Arch("rope.scaling.factor"),
            RopeScalingAttnFactor => Arch("rope.scaling.attn_factor"),
            RopeScalingOriginalContextLength => Arch("rope.scaling.original_context_length"),
            RopeScalingFinetuned => Arch("rope.scaling.finetuned"),

            TokenizerModel => Fixed("tokenizer.ggml.model"),
            TokenizerPre => Fixed("tokenizer.ggml.pre"),
            TokenizerTokens => Fixed("tokenizer.ggml.tokens"),
            TokenizerTokenType => Fixed("tokenizer.ggml.token_type"),
            TokenizerScores => Fixed("tokenizer.ggml.scores"),
            TokenizerMerges => Fixed("tokenizer.ggml.merges"),
            TokenizerBosId => Fixed("tokenizer.ggml.bos_token_id"),
            TokenizerEosId => Fixed("tokenizer.ggml.eos_token_id"),
            TokenizerEotId => Fixed("tokenizer.ggml.eot_token_id"),
            TokenizerEomId => Fixed("tokenizer.ggml.eom_token_id"),
            TokenizerUnknownId => Fixed("tokenizer.ggml.unknown_token_id"),
            // Spelled as llama.cpp writes it.
            TokenizerSeparatorId => Fixed("tokenizer.ggml.seperator_token_id"),
            TokenizerPaddingId => Fixed("tokenizer.ggml.padding_token_id"),
            TokenizerMaskId => Fixed("tokenizer.ggml.mask_token_id"),
            TokenizerAddBos => Fixed("tokenizer.ggml.add_bos_token"),
            TokenizerAddEos => Fixed("tokenizer.ggml.add_eos_token"),
            TokenizerAddSpacePrefix => Fixed("tokenizer.ggml.add_space_prefix"),
            TokenizerRemoveExtraWhitespaces => Fixed("tokenizer.ggml.remove_extra_whitespaces"),
            TokenizerChatTemplate => Fixed("tokenizer.chat_template"),
        }
    }

    /// The full key text for architecture `arch`.
    pub fn resolve(self, arch: &str) -> String {
        match self.name() {
            KeyName::Fixed(s) => s.to_string(),
            KeyName::Arch(suffix) => format!("{arch}.{suffix}"),
        }
    }
}

/// Anything that names a metadata key: a literal (`"general.name"`) or a
/// [`GgufKey`], which may need the architecture to be resolved.
pub trait MetaKey {
    /// The key text; `arch` is `general.architecture` if the file has one.
    fn key_text(&self, arch: Option<&str>) -> Result<Cow<'_, str>>;
}

impl MetaKey for str {
    fn key_text(&self, _arch: Option<&str>) -> Result<Cow<'_, str>> {
        Ok(Cow::Borrowed(self))
    }
}

impl MetaKey for String {
    fn key_text(&self, _arch: Option<&str>) -> Result<Cow<'_, str>> {
        Ok(Cow::Borrowed(self))
    }
}

impl<K: MetaKey + ?Sized> MetaKey for &K {
    fn key_text(&self, arch: Option<&str>) -> Result<Cow<'_, str>> {
        (**self).key_text(arch)
    }
}

impl MetaKey for GgufKey {
    fn key_text(&self, arch: Option<&str>) -> Result<Cow<'_, str>> {
        match self.name() {
            KeyName::Fixed(s) => Ok(Cow::Borrowed(s)),
            KeyName::Arch(suffix) => match arch {
                Some(arch) => Ok(Cow::Owned(format!("{arch}.{suffix}"))),
                None => Err(IoError::MissingKey(ARCHITECTURE_KEY.to_string())),
            },
        }
    }
}
