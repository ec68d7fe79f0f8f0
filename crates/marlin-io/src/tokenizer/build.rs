//! Building a `tokenizers` pipeline from a [`TokenizerSpec`].
//!
//! The pipelines mirror what Hugging Face transformers builds from the same GGUF metadata
//! (`integrations/gguf/gguf_tokenizer_mapping.py`), our reference for token ids:
//! - "gpt2": byte-level BPE, GPT-2's split regex or the one `tokenizer.ggml.pre` names;
//! - "llama": SentencePiece-style BPE with byte fallback and `▁` for spaces, merges from the
//!   file or recovered from the scores;
//! - "llama" with a Gemma architecture: spaces replaced by `▁` before splitting, merges ranked
//!   by vocabulary position, whitespace-only tokens respelled with `▁`.
//!
//! Control tokens (type 3) become special added tokens and user-defined ones (type 4) plain added
//! tokens, so both are matched whole in text.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    SplitDelimiterBehavior, TokenizerImpl,
};

use super::compact::{BpeOptions, CompactBpe, RecoveredRank};
use super::error::{backend, Result, TokenizerError};
use super::merges::bytes_to_unicode;
use super::spec::{token_type, TokenizerKind, TokenizerSpec};

/// SentencePiece's space marker.
const SPACE_MARKER: char = '\u{2581}';

/// Architectures whose SentencePiece vocabularies need Gemma's treatment.
const GEMMA_ARCHITECTURES: [&str; 3] = ["gemma", "gemma2", "gemma3"];

/// Pre-tokenizer names whose vocabularies put every digit in its own piece before GPT-2's
/// regex: SmolLM's `tokenizer.json` has `Digits(individual_digits)` then `ByteLevel`, and
/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_SMOLLM` splits `\p{N}` first. (transformers' GGUF loader
/// drops this step, so its ids differ from the model's own tokenizer on numbers.)
const ISOLATED_DIGITS_PRE: [&str; 1] = ["smollm"];

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex for a `tokenizer.ggml.pre` name; `None` means GPT-2's own regex (inside the
/// byte-level pre-tokenizer), which is also what "smollm" (after isolating every digit, see
/// [`ISOLATED_DIGITS_PRE`]), "gpt-2" and "default" use.
fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// The pipeline of a GGUF vocabulary: the `tokenizers` normalizers, pre-tokenizers, added
/// tokens, post-processor and decoders over the compact BPE model.
pub(crate) type GgufPipeline = TokenizerImpl<
    CompactBpe,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// Builds the `tokenizers` pipeline for a validated spec.
pub(crate) fn build_pipeline(spec: &TokenizerSpec) -> Result<GgufPipeline> {
    spec.validate()?;
    let mut tokenizer = match spec.kind()? {
        TokenizerKind::ByteLevelBpe => byte_level_bpe(spec)?,
        TokenizerKind::SentencePiece => {
            let gemma = spec
                .architecture
                .as_deref()
                .is_some_and(|arch| GEMMA_ARCHITECTURES.contains(&arch));
            if gemma {
                gemma_sentencepiece(spec)?
            } else {
                sentencepiece(spec)?
            }
        }
    };
    add_special_tokens(&mut tokenizer, spec)?;
    if let Some(processor) = bos_eos_processor(spec)? {
        tokenizer.with_post_processor(Some(processor));
    }
    Ok(tokenizer)
}

/// The post-processor adding BOS / EOS around the text when encoding with special tokens, as
/// `tokenizer.ggml.add_bos_token` / `add_eos_token` ask. `None` when neither is added.
fn bos_eos_processor(spec: &TokenizerSpec) -> Result<Option<TemplateProcessing>> {
    let bos = spec.bos_id.filter(|_| spec.add_bos_or_default());
    let eos = spec.eos_id.filter(|_| spec.add_eos.unwrap_or(false));
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    // Template pieces name special tokens by a key of our choosing, not by their text, so
    // token texts with spaces or colons cannot break the template syntax.
    let mut special_tokens = Vec::new();
    let mut single: Vec<String> = Vec::new();
    let mut pair: Vec<String> = Vec::new();
    for (key, id) in [("BOS", bos), ("EOS", eos)] {
        if let Some(id) = id {
            let text = spec.tokens.get(id as usize).cloned().unwrap_or_default();
            special_tokens
                .push(SpecialToken::new(key.to_string(), vec![id], vec![text]).map_err(backend)?);
        }
    }
    let bos_key = bos.map(|_| "BOS".to_string());
    let eos_key = eos.map(|_| "EOS".to_string());
    single.extend(bos_key.clone());
    single.push("$A".to_string());
    single.extend(eos_key.clone());
    pair.extend(bos_key.iter().map(|k| format!("{k}:0")));
    pair.push("$A:0".to_string());
    pair.extend(eos_key.iter().map(|k| format!("{k}:0")));
    pair.extend(bos_key.iter().map(|k| format!("{k}:1")));
    pair.push("$B:1".to_string());
    pair.extend(eos_key.iter().map(|k| format!("{k}:1")));
    let processor = TemplateProcessing::builder()
        .try_single(single)
        .map_err(backend)?
        .try_pair(pair)
        .map_err(backend)?
        .special_tokens(special_tokens)
        .build()
        .map_err(backend)?;
    Ok(Some(processor))
}

fn byte_level_bpe(spec: &TokenizerSpec) -> Result<GgufPipeline> {
    let spelling = bytes_to_unicode();
    let in_alphabet = |token: &str| token.chars().all(|c| spelling.contains(&c));
    // Tokens stored as plain text (some files do) are respelled in the byte alphabet.
    let respelled: Vec<String> = spec
        .tokens
        .iter()
        .map(|token| {
            if in_alphabet(token) {
                token.clone()
            } else {
                token.bytes().map(|b| spelling[usize::from(b)]).collect()
            }
        })
        .collect();
    let model = CompactBpe::new(
        &respelled,
        Some(spec.merges.as_deref().unwrap_or_default()),
        RecoveredRank::Position,
        BpeOptions {
            byte_fallback: false,
            unk_token: None,
            fuse_unk: false,
            empty_affixes: true,
        },
    )?;
    drop(respelled);
    let mut tokenizer = GgufPipeline::new(model);
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    let pre_tokenizer: PreTokenizerWrapper = match spec.pre.as_deref().and_then(pre_tokenizer_split)
    {
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(backend)?;
            PreTokenizerSequence::new(vec![split.into(), byte_level(false).into()]).into()
        }
        None if spec
            .pre
            .as_deref()
            .is_some_and(|p| ISOLATED_DIGITS_PRE.contains(&p)) =>
        {
            PreTokenizerSequence::new(vec![Digits::new(true).into(), byte_level(true).into()])
                .into()
        }
        None => byte_level(true).into(),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    Ok(tokenizer)
}

/// The SentencePiece BPE model with byte fallback (`<0xXX>` tokens).
fn sentencepiece_model(
    tokens: &[String],
    spec: &TokenizerSpec,
    rank: RecoveredRank,
) -> Result<CompactBpe> {
    CompactBpe::new(
        tokens,
        spec.merges.as_deref(),
        rank,
        BpeOptions {
            byte_fallback: true,
            unk_token: spec
                .unk_id
                .and_then(|id| tokens.get(id as usize))
                .map(String::as_str),
            fuse_unk: true,
            empty_affixes: false,
        },
    )
}

/// The decoder shared by SentencePiece vocabularies: `▁` back to spaces, `<0xXX>` tokens back
/// to bytes, and optionally the prefix space removed.
fn sentencepiece_decoder(strip_prefix_space: bool) -> Result<DecoderWrapper> {
    let mut steps: Vec<DecoderWrapper> = vec![
        Replace::new(SPACE_MARKER.to_string(), " ")
            .map_err(backend)?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if strip_prefix_space {
        steps.push(Strip::new(' ', 1, 0).into());
    }
    Ok(DecoderSequence::new(steps).into())
}

fn sentencepiece(spec: &TokenizerSpec) -> Result<GgufPipeline> {
    let rank = match (&spec.merges, &spec.scores) {
        (None, None) => return Err(TokenizerError::MissingScores),
        (_, scores) => RecoveredRank::Scores(scores.clone().unwrap_or_default()),
    };
    let model = sentencepiece_model(&spec.tokens, spec, rank)?;
    // llama.cpp's default: a SentencePiece vocabulary prefixes the text with a space.
    let add_space_prefix = spec.add_space_prefix.unwrap_or(true);
    let mut tokenizer = GgufPipeline::new(model);
    // As SentencePiece, llama.cpp and the Llama 2 / Mistral tokenizer.json do: spaces become `▁`
    // and every text segment (the text, and each piece after a special token) gets a `▁`
    // prefix even when it already starts with a space, so " hi" encodes as "▁▁hi" and decodes
    // back to " hi". (transformers' GGUF loader uses a Metaspace pre-tokenizer here, which skips
    // the prefix on text starting with a space; that drops the space on a round trip.)
    let mut steps: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        steps.push(Prepend::new(SPACE_MARKER.to_string()).into());
    }
    steps.push(
        Replace::new(" ", SPACE_MARKER.to_string())
            .map_err(backend)?
            .into(),
    );
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(steps)))
        .map_err(backend)?;
    tokenizer.with_decoder(Some(sentencepiece_decoder(add_space_prefix)?));
    Ok(tokenizer)
}

/// Python's `str.isspace`, which also counts U+001C..U+001F.
fn python_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn gemma_sentencepiece(spec: &TokenizerSpec) -> Result<GgufPipeline> {
    // Gemma files store tokens of two or more spaces as real spaces, which the normalizer below
    // never leaves in the text: respell every whitespace-only token holding a space as `▁`s.
    let respelled: Vec<String> = spec
        .tokens
        .iter()
        .map(|token| {
            if token.contains(' ') && token.chars().all(python_isspace) {
                std::iter::repeat_n(SPACE_MARKER, token.chars().count()).collect()
            } else {
                token.clone()
            }
        })
        .collect();
    let model = sentencepiece_model(&respelled, spec, RecoveredRank::Position)?;
    drop(respelled);
    let mut tokenizer = GgufPipeline::new(model);
    let normalizer: NormalizerWrapper = Replace::new(" ", SPACE_MARKER.to_string())
        .map_err(backend)?
        .into();
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(backend)?;
    let split = Split::new(
        SplitPattern::String(" ".to_string()),
        SplitDelimiterBehavior::MergedWithPrevious,
        false,
    )
    .map_err(backend)?;
    tokenizer.with_pre_tokenizer(Some(split));
    tokenizer.with_decoder(Some(sentencepiece_decoder(false)?));
    Ok(tokenizer)
}

/// Control tokens (and the BOS/EOS/UNK/PAD/EOT tokens) become special added tokens,
/// user-defined ones plain added tokens: both are then matched whole in text and never split.
fn add_special_tokens(tokenizer: &mut GgufPipeline, spec: &TokenizerSpec) -> Result<()> {
    let byte_level = matches!(spec.kind()?, TokenizerKind::ByteLevelBpe);
    let spelling = bytes_to_unicode();
    let mut special = Vec::new();
    let mut user_defined = Vec::new();
    for (id, token) in spec.tokens.iter().enumerate() {
        match spec.token_type(id) {
            // In a byte-level vocabulary a control token outside the byte alphabet is a
            // mislabel; adding it would give it a new id past the vocabulary.
            token_type::CONTROL if !byte_level || token.chars().all(|c| spelling.contains(&c)) => {
                special.push(AddedToken::from(token.clone(), true));
            }
            token_type::USER_DEFINED => user_defined.push(token.clone()),
            _ => {}
        }
    }
    // The named special tokens are special even where the file does not mark them as control,
    // as long as their text maps back to their id.
    for id in [
        spec.bos_id,
        spec.eos_id,
        spec.unk_id,
        spec.pad_id,
        spec.eot_id,
        spec.eom_id,
    ]
    .into_iter()
    .flatten()
    {
        if let Some(token) = spec.tokens.get(id as usize) {
            let maps_back = tokenizer.token_to_id(token) == Some(id);
            if maps_back && !special.iter().any(|t| &t.content == token) {
                special.push(AddedToken::from(token.clone(), true));
            }
        }
    }
    if !special.is_empty() {
        tokenizer.add_special_tokens(special).map_err(backend)?;
    }
    let user_defined: Vec<AddedToken> = user_defined
        .into_iter()
        .filter(|token| tokenizer.token_to_id(token).is_some())
        .map(|token| AddedToken::from(token, false).normalized(false))
        .collect();
    if !user_defined.is_empty() {
        tokenizer.add_tokens(user_defined).map_err(backend)?;
    }
    Ok(())
}
