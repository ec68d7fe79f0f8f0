//! `TokenizerSpec`: the tokenizer description as GGUF metadata stores it, as plain data.

use super::error::{Result, TokenizerError};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    /// Special tokens such as `<|im_start|>` or `<start_of_turn>`: matched whole in text.
    pub const CONTROL: i32 = 3;
    /// Added tokens that are not special (e.g. `<think>`): matched whole in text too.
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    /// `<0xXX>` byte-fallback tokens of SentencePiece vocabularies.
    pub const BYTE: i32 = 6;
}

/// The tokenizer description stored in a GGUF file's `tokenizer.ggml.*` keys.
///
/// Filled by the GGUF loader (or a test); [`super::Tokenizer::from_spec`] validates it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name ("smollm", "llama-bpe", "qwen2", "default"...).
    pub pre: Option<String>,
    /// `general.architecture`: Gemma files spell their vocabulary differently (see `build.rs`).
    pub architecture: Option<String>,
    /// `tokenizer.ggml.tokens`: the vocabulary, index = token id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: SentencePiece scores, one per token.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: one of [`token_type`] per token.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: "left right" BPE merge rules, best first.
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`: end of turn (e.g. `<|eot_id|>`).
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`: end of message (Llama 3.1 tool calls).
    pub eom_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; absent means true for "llama", false for "gpt2".
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`; absent means false.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`; absent means true for "llama" (not used by "gpt2").
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`: a Jinja template.
    pub chat_template: Option<String>,
}

/// The tokenizer kinds `tokenizer.ggml.model` can name that this crate builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// GPT-2 style byte-level BPE ("gpt2").
    ByteLevelBpe,
    /// SentencePiece BPE with byte fallback ("llama").
    SentencePiece,
}

impl TokenizerSpec {
    /// The tokenizer kind `model` names.
    pub fn kind(&self) -> Result<TokenizerKind> {
        match self.model.as_str() {
            "gpt2" => Ok(TokenizerKind::ByteLevelBpe),
            "llama" => Ok(TokenizerKind::SentencePiece),
            other => Err(TokenizerError::UnsupportedModel(other.to_string())),
        }
    }

    /// Checks sizes and ids against the vocabulary; returns the vocabulary size.
    pub fn validate(&self) -> Result<usize> {
        self.kind()?;
        let n = self.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::VocabTooLarge(n));
        }
        if let Some(scores) = &self.scores {
            check_len("scores", n, scores.len())?;
        }
        if let Some(types) = &self.token_types {
            check_len("token types", n, types.len())?;
        }
        let ids = [
            ("BOS", self.bos_id),
            ("EOS", self.eos_id),
            ("UNK", self.unk_id),
            ("PAD", self.pad_id),
            ("EOT", self.eot_id),
            ("EOM", self.eom_id),
        ];
        for (what, id) in ids {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(TokenizerError::TokenIdOutOfRange {
                        what,
                        id: u64::from(id),
                        vocab_size: n,
                    });
                }
            }
        }
        Ok(n)
    }

    /// The type of token `id`, NORMAL when the file has no types.
    pub(crate) fn token_type(&self, id: usize) -> i32 {
        self.token_types
            .as_ref()
            .and_then(|types| types.get(id).copied())
            .unwrap_or(token_type::NORMAL)
    }

    /// Whether BOS is prepended when encoding with special tokens.
    pub fn add_bos_or_default(&self) -> bool {
        self.add_bos
            .unwrap_or(matches!(self.kind(), Ok(TokenizerKind::SentencePiece)))
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(TokenizerError::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}
