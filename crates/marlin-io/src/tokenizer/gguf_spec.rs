//! Reading a [`TokenizerSpec`] from a GGUF file's `tokenizer.*` keys.

use crate::gguf::{GgufArray, GgufFile, GgufKey};

use super::error::{Result, TokenizerError};
use super::spec::TokenizerSpec;
use super::Tokenizer;

fn gguf_err(err: crate::error::IoError) -> TokenizerError {
    TokenizerError::Gguf(Box::new(err))
}

fn wrong_elements(
    file: &GgufFile,
    key: GgufKey,
    expected: &'static str,
    found: &GgufArray,
) -> TokenizerError {
    TokenizerError::GgufArrayType {
        key: file
            .key_text(&key)
            .map_or_else(|_| format!("{key:?}"), |k| k.into_owned()),
        expected,
        found: format!("an array of {}", found.elem_type().name()),
    }
}

fn strings(file: &GgufFile, key: GgufKey) -> Result<Option<Vec<String>>> {
    match file.get_array_opt(key).map_err(gguf_err)? {
        None => Ok(None),
        Some(array) => array
            .as_strings()
            .map(|s| Some(s.to_vec()))
            .ok_or_else(|| wrong_elements(file, key, "strings", array)),
    }
}

impl TokenizerSpec {
    /// The tokenizer description stored in `file`. Errors when a key has the wrong type; the
    /// spec is validated by [`Tokenizer::from_spec`].
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let id = |key| file.get_u32_opt(key).map_err(gguf_err);
        let flag = |key| file.get_bool_opt(key).map_err(gguf_err);
        let text = |key| {
            file.get_str_opt(key)
                .map(|s| s.map(str::to_string))
                .map_err(gguf_err)
        };
        let model = text(GgufKey::TokenizerModel)?.ok_or_else(|| {
            gguf_err(crate::error::IoError::MissingKey(
                "tokenizer.ggml.model".to_string(),
            ))
        })?;
        let scores =
            match file
                .get_array_opt(GgufKey::TokenizerScores)
                .map_err(gguf_err)?
            {
                None => None,
                Some(array) => Some(array.to_f32_vec().ok_or_else(|| {
                    wrong_elements(file, GgufKey::TokenizerScores, "numbers", array)
                })?),
            };
        let token_types = match file
            .get_array_opt(GgufKey::TokenizerTokenType)
            .map_err(gguf_err)?
        {
            None => None,
            Some(array) => {
                let wide = array.to_i64_vec().ok_or_else(|| {
                    wrong_elements(file, GgufKey::TokenizerTokenType, "integers", array)
                })?;
                // Types are small enums; anything outside i32 is treated as NORMAL-less garbage
                // and rejected rather than truncated.
                let narrow: Option<Vec<i32>> =
                    wide.into_iter().map(|t| i32::try_from(t).ok()).collect();
                Some(narrow.ok_or_else(|| {
                    wrong_elements(
                        file,
                        GgufKey::TokenizerTokenType,
                        "integers in i32 range",
                        array,
                    )
                })?)
            }
        };
        Ok(Self {
            model,
            pre: text(GgufKey::TokenizerPre)?,
            architecture: file.architecture().map(str::to_string),
            tokens: strings(file, GgufKey::TokenizerTokens)?.unwrap_or_default(),
            scores,
            token_types,
            merges: strings(file, GgufKey::TokenizerMerges)?,
            bos_id: id(GgufKey::TokenizerBosId)?,
            eos_id: id(GgufKey::TokenizerEosId)?,
            unk_id: id(GgufKey::TokenizerUnknownId)?,
            pad_id: id(GgufKey::TokenizerPaddingId)?,
            eot_id: id(GgufKey::TokenizerEotId)?,
            eom_id: id(GgufKey::TokenizerEomId)?,
            add_bos: flag(GgufKey::TokenizerAddBos)?,
            add_eos: flag(GgufKey::TokenizerAddEos)?,
            add_space_prefix: flag(GgufKey::TokenizerAddSpacePrefix)?,
            chat_template: text(GgufKey::TokenizerChatTemplate)?,
        })
    }
}

impl Tokenizer {
    /// The tokenizer described by a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        Self::from_spec(TokenizerSpec::from_gguf(file)?)
    }
}
