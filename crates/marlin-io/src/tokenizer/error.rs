//! The error type of the tokenizer and chat-template code.

use std::path::PathBuf;

/// Errors of building a tokenizer, encoding, decoding and rendering chat templates.
///
/// Every variant renders as one line that names the problem.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` names a tokenizer kind this crate does not build.
    #[error("unsupported tokenizer model {0:?} (supported: \"gpt2\", \"llama\")")]
    UnsupportedModel(String),

    /// The vocabulary has no tokens.
    #[error("tokenizer vocabulary is empty")]
    EmptyVocab,

    /// The vocabulary has more tokens than a `u32` id can name.
    #[error("tokenizer vocabulary has {0} tokens, more than a u32 id can address")]
    VocabTooLarge(usize),

    /// A per-token array (scores, token types) whose length differs from the vocabulary's.
    #[error("tokenizer {what} has {got} entries but the vocabulary has {expected} tokens")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },

    /// A token id (a special-token id from metadata, or an id given to `decode`) that is not in
    /// the vocabulary.
    #[error("{what} token id {id} is out of range (vocabulary size {vocab_size})")]
    TokenIdOutOfRange {
        what: &'static str,
        id: u64,
        vocab_size: usize,
    },

    /// A BPE merge rule that is malformed or names a token missing from the vocabulary.
    #[error("tokenizer merge #{index} {merge:?}: {reason}")]
    BadMerge {
        index: usize,
        merge: String,
        reason: &'static str,
    },

    /// A SentencePiece vocabulary without merges needs scores to rank them.
    #[error("SentencePiece vocabulary has neither merges nor scores")]
    MissingScores,

    /// An error reported by the `tokenizers` crate (encoding, decoding, a bad tokenizer.json).
    #[error("tokenizer: {0}")]
    Backend(String),

    /// An operating-system error on a path (missing file, permission, ...).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file that is larger than any tokenizer file should be.
    #[error("{}: {size} bytes is larger than the {limit}-byte limit for tokenizer files", path.display())]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },

    /// A JSON file (tokenizer.json, tokenizer_config.json) that does not parse or has a field of
    /// the wrong type.
    #[error("{}: {message}", path.display())]
    Json { path: PathBuf, message: String },

    /// A Hugging Face directory without `tokenizer.json`.
    #[error("{}: no tokenizer.json in this directory", .0.display())]
    MissingTokenizerJson(PathBuf),

    /// A chat template that fails to parse.
    #[error("chat template does not parse: {0}")]
    TemplateSyntax(String),

    /// A chat template that parses but fails while rendering (including `raise_exception`).
    #[error("chat template failed to render: {0}")]
    TemplateRender(String),

    /// A GGUF metadata key with the wrong type, or another GGUF reading error.
    #[error("GGUF tokenizer metadata: {0}")]
    Gguf(Box<crate::error::IoError>),

    /// A GGUF metadata array whose elements have the wrong type.
    #[error("GGUF key {key} should hold {expected}, found {found}")]
    GgufArrayType {
        key: String,
        expected: &'static str,
        found: String,
    },

    /// The model has no chat template.
    #[error("this model has no chat template")]
    NoChatTemplate,
}

/// Result type of the tokenizer module.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// Wraps an error of the `tokenizers` crate, which are boxed trait objects.
pub(crate) fn backend(err: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Backend(err.to_string())
}

/// Runs a call into the `tokenizers` crate, turning a panic into an error. The crate `expect`s
/// on some malformed `tokenizer.json` pipelines instead of returning an error: a decoder that is
/// not valid JSON or a bad Precompiled charsmap (at load), a TemplateProcessing post-processor
/// naming a special token its map lacks (at encode: the file loads fine).
pub(crate) fn catch_backend_panic<T>(
    what: &str,
    call: impl FnOnce() -> tokenizers::Result<T>,
) -> tokenizers::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|payload| {
        let reason = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("the tokenizers library panicked while {what}: {reason}").into())
    })
}
