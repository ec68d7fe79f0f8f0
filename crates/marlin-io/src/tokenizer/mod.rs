//! Tokenizers (GPT-2 byte-level BPE, SentencePiece BPE, Hugging Face `tokenizer.json`) and chat
//! templates.
//!
//! A [`Tokenizer`] is built from plain data ([`TokenizerSpec`], as GGUF metadata stores it) or
//! from a Hugging Face directory. Token ids match Hugging Face transformers loading the same
//! file: the encoding pipelines are those of the `tokenizers` crate, assembled as transformers
//! assembles them (see `build.rs`).

mod build;
mod chat_template;
mod compact;
mod error;
mod gguf_spec;
mod hf;
mod merges;
mod spec;
mod stream;

use std::collections::HashMap;
use std::path::Path;

use tokenizers::{AddedToken, Encoding, Tokenizer as HfTokenizer};

use build::GgufPipeline;
use compact::TokenTexts;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use error::{Result, TokenizerError};
pub use spec::{token_type, TokenizerKind, TokenizerSpec};
pub use stream::StreamDecoder;

/// End-of-turn / end-of-generation tokens that stop generation when the vocabulary has them as
/// special tokens (the set llama.cpp treats as end of generation).
const END_OF_TURN_TOKENS: [&str; 12] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "<EOT>",
    "<|return|>",
    "<|call|>",
    "<｜end▁of▁sentence｜>",
    "<|END_OF_TURN_TOKEN|>",
];

/// The encoding pipeline: the compact BPE model for GGUF vocabularies, or whatever a Hugging Face
/// `tokenizer.json` describes.
#[derive(Clone)]
enum Pipeline {
    Gguf(Box<GgufPipeline>),
    Hf(Box<HfTokenizer>),
}

impl Pipeline {
    fn encode_fast(&self, text: &str, add_special: bool) -> tokenizers::Result<Encoding> {
        match self {
            Pipeline::Gguf(p) => p.encode_fast(text, add_special),
            Pipeline::Hf(p) => {
                error::catch_backend_panic("encoding", || p.encode_fast(text, add_special))
            }
        }
    }

    fn decode(&self, ids: &[u32], skip_special: bool) -> tokenizers::Result<String> {
        match self {
            Pipeline::Gguf(p) => p.decode(ids, skip_special),
            Pipeline::Hf(p) => {
                error::catch_backend_panic("decoding", || p.decode(ids, skip_special))
            }
        }
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            Pipeline::Gguf(p) => p.token_to_id(token),
            Pipeline::Hf(p) => p.token_to_id(token),
        }
    }

    /// The pipeline as `tokenizer.json`. The compact model is written as the `tokenizers`
    /// `BPE` model it stands for, so other tools load the file.
    fn to_json(&self) -> Result<String> {
        match self {
            Pipeline::Hf(p) => p.to_string(false).map_err(error::backend),
            Pipeline::Gguf(p) => {
                let mut hf = HfTokenizer::new(p.get_model().to_bpe()?);
                hf.with_normalizer(p.get_normalizer().cloned())
                    .map_err(error::backend)?;
                hf.with_pre_tokenizer(p.get_pre_tokenizer().cloned());
                hf.with_post_processor(p.get_post_processor().cloned());
                hf.with_decoder(p.get_decoder().cloned());
                // Every added token of a GGUF vocabulary is one of its pieces, so adding them
                // again keeps their ids; specials first, as the pipeline was built.
                let mut added: Vec<(u32, AddedToken)> =
                    p.get_added_tokens_decoder().into_iter().collect();
                added.sort_by_key(|(id, _)| *id);
                let (special, plain): (Vec<_>, Vec<_>) =
                    added.into_iter().map(|(_, t)| t).partition(|t| t.special);
                hf.add_special_tokens(special).map_err(error::backend)?;
                hf.add_tokens(plain).map_err(error::backend)?;
                hf.to_string(false).map_err(error::backend)
            }
        }
    }
}

/// Token texts as the model file spells them.
#[derive(Clone)]
enum Spelling {
    /// The compact model's pieces, except for the ids in the map, which the pipeline respells
    /// (Gemma's whitespace pieces, byte-level pieces stored as plain text): no second copy of a
    /// 262,144-piece vocabulary.
    ModelPieces(HashMap<u32, String>),
    /// A table of their own (Hugging Face pipelines).
    Own(TokenTexts),
}

/// A tokenizer: text to token ids and back.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Pipeline,
    /// Token text by id (as the model file spells it); `vocab_size()` entries.
    spelling: Spelling,
    /// Whether a token is special (control/added special); same length as `tokens`.
    special: Vec<bool>,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    /// Whether chat prompts start with BOS.
    add_bos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Builds a tokenizer from GGUF-style metadata. Errors (never panics) on an empty
    /// vocabulary, arrays of the wrong length, ids out of range, bad merges, unknown models.
    pub fn from_spec(spec: TokenizerSpec) -> Result<Self> {
        let inner = build::build_pipeline(&spec)?;
        let vocab_size = spec.tokens.len();
        let added = inner.get_added_tokens_decoder();
        let model = inner.get_model();
        let respelled: HashMap<u32, String> = spec
            .tokens
            .iter()
            .enumerate()
            .filter_map(|(id, token)| {
                // `validate` checked that ids fit u32.
                let id = u32::try_from(id).ok()?;
                (model.piece(id) != Some(token.as_str())).then(|| (id, token.clone()))
            })
            .collect();
        let special: Vec<bool> = (0..vocab_size)
            .map(|id| {
                u32::try_from(id)
                    .ok()
                    .and_then(|id| added.get(&id))
                    .is_some_and(|t| t.special)
            })
            .collect();
        let add_bos = spec.add_bos_or_default() && spec.bos_id.is_some();
        let mut eos_ids: Vec<u32> = [spec.eos_id, spec.eot_id, spec.eom_id]
            .into_iter()
            .flatten()
            .collect();
        let mut tokenizer = Self {
            inner: Pipeline::Gguf(Box::new(inner)),
            spelling: Spelling::ModelPieces(respelled),
            special,
            bos_id: spec.bos_id,
            eos_ids: Vec::new(),
            add_bos,
            chat_template: spec.chat_template,
        };
        tokenizer.extend_end_of_turn(&mut eos_ids);
        tokenizer.eos_ids = eos_ids;
        Ok(tokenizer)
    }

    /// Builds a tokenizer from a Hugging Face directory: `tokenizer.json`, plus
    /// `tokenizer_config.json` (BOS/EOS, chat template), `chat_template.jinja` and
    /// `generation_config.json` (extra EOS ids) when present.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        hf::from_hf_dir(dir.as_ref())
    }

    /// Builds a tokenizer from a lone `tokenizer.json` (no BOS/EOS information beyond the
    /// end-of-turn tokens it names, no chat template).
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self> {
        hf::from_tokenizer_json(path.as_ref())
    }

    /// Assembles a tokenizer from a loaded `tokenizers` pipeline and the ids read beside it.
    fn from_pipeline(
        inner: HfTokenizer,
        bos_id: Option<u32>,
        mut eos_ids: Vec<u32>,
        add_bos: Option<bool>,
        chat_template: Option<String>,
    ) -> Result<Self> {
        let vocab: HashMap<String, u32> = inner.get_vocab(true);
        let vocab_size = vocab
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .ok_or(TokenizerError::EmptyVocab)?;
        // Ids are dense in practice; a sparse map with a huge id would allocate a large table,
        // which the JSON file (capped in size) could not describe without also being huge.
        if vocab_size > vocab.len().saturating_mul(4).max(1024) {
            return Err(TokenizerError::Backend(format!(
                "token ids are sparse: {} tokens but ids up to {}",
                vocab.len(),
                vocab_size - 1
            )));
        }
        let mut by_id = vec![String::new(); vocab_size];
        for (token, id) in vocab {
            if let Some(slot) = by_id.get_mut(id as usize) {
                *slot = token;
            }
        }
        let tokens = TokenTexts::new(by_id.iter().map(String::as_str))?;
        drop(by_id);
        let added = inner.get_added_tokens_decoder();
        let special = (0..vocab_size)
            .map(|id| {
                u32::try_from(id)
                    .ok()
                    .and_then(|id| added.get(&id))
                    .is_some_and(|t| t.special)
            })
            .collect();
        for (what, id) in [("BOS", bos_id)]
            .into_iter()
            .chain(eos_ids.iter().map(|&id| ("EOS", Some(id))))
        {
            if let Some(id) = id.filter(|&id| id as usize >= vocab_size) {
                return Err(TokenizerError::TokenIdOutOfRange {
                    what,
                    id: u64::from(id),
                    vocab_size,
                });
            }
        }
        let mut tokenizer = Self {
            inner: Pipeline::Hf(Box::new(inner)),
            spelling: Spelling::Own(tokens),
            special,
            bos_id,
            eos_ids: Vec::new(),
            add_bos: false,
            chat_template,
        };
        // Without an explicit flag, the pipeline's post-processor says whether BOS is added.
        tokenizer.add_bos = match (add_bos, bos_id) {
            (_, None) => false,
            (Some(flag), Some(_)) => flag,
            (None, Some(bos)) => tokenizer.encode("a", true)?.first() == Some(&bos),
        };
        tokenizer.extend_end_of_turn(&mut eos_ids);
        tokenizer.eos_ids = eos_ids;
        Ok(tokenizer)
    }

    /// Adds the vocabulary's special end-of-turn tokens to `eos_ids`, without duplicates.
    fn extend_end_of_turn(&self, eos_ids: &mut Vec<u32>) {
        for name in END_OF_TURN_TOKENS {
            if let Some(id) = self.inner.token_to_id(name) {
                if self.is_special(id) {
                    eos_ids.push(id);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        eos_ids.retain(|id| seen.insert(*id));
    }

    /// Text to token ids. Special tokens written in the text (`<|im_start|>`,
    /// `<start_of_turn>`) become their single ids. With `add_special`, BOS (and EOS) are added
    /// as the model's metadata asks.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special)
            .map_err(error::backend)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes a rendered chat prompt: special tokens in the text are parsed, and BOS is
    /// prepended only when the model wants it and the template did not already write it.
    pub fn encode_chat_prompt(&self, rendered: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(rendered, false)?;
        if let Some(bos) = self.bos_id.filter(|_| self.add_bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Token ids to text, special tokens included (as Hugging Face's `decode` does by
    /// default). Errors on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        self.inner.decode(ids, false).map_err(error::backend)
    }

    /// Token ids to text, leaving special tokens out.
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        self.inner.decode(ids, true).map_err(error::backend)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab_size = self.vocab_size();
        match ids.iter().find(|&&id| id as usize >= vocab_size) {
            Some(&id) => Err(TokenizerError::TokenIdOutOfRange {
                what: "decoded",
                id: u64::from(id),
                vocab_size,
            }),
            None => Ok(()),
        }
    }

    /// The pipeline as a Hugging Face `tokenizer.json` document, for writing model directories
    /// that other tools load.
    pub fn to_tokenizer_json(&self) -> Result<String> {
        self.inner.to_json()
    }

    /// A streaming detokenizer over this tokenizer.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// BOS id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Ids that end generation: EOS plus end-of-turn tokens (`<|im_end|>`, `<end_of_turn>`,
    /// `<|eot_id|>`...).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// Whether prompts start with BOS (`tokenizer.ggml.add_bos_token` or the pipeline's
    /// post-processor).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of token ids (the model's embedding rows).
    pub fn vocab_size(&self) -> usize {
        // `special` has one entry per token, whichever table holds their texts.
        self.special.len()
    }

    /// The token's text as the model file spells it (`Ġ`/`▁` markers, `<0x0A>` bytes).
    pub fn token_str(&self, id: u32) -> Option<&str> {
        match (&self.spelling, &self.inner) {
            (Spelling::Own(texts), _) => texts.get(id),
            (Spelling::ModelPieces(respelled), Pipeline::Gguf(pipeline)) => respelled
                .get(&id)
                .map(String::as_str)
                .or_else(|| pipeline.get_model().piece(id)),
            (Spelling::ModelPieces(_), Pipeline::Hf(_)) => None,
        }
    }

    /// The id of a token spelled exactly `token` (special tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `id` is a special token (control token or special added token).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The chat template source that came with the model, if any.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's chat template, ready to render, with its BOS/EOS token texts.
    pub fn chat_template(&self) -> Result<ChatTemplate> {
        let source = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        let text = |id: Option<u32>| id.and_then(|id| self.token_str(id)).unwrap_or("");
        ChatTemplate::new(
            source,
            text(self.bos_id),
            text(self.eos_ids.first().copied()),
        )
    }
}
