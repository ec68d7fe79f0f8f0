//! Streaming detokenization: one id at a time in, complete UTF-8 text out.

use super::error::Result;
use super::Tokenizer;

/// A UTF-8 character has at most 4 bytes, so after this many pending ids a trailing U+FFFD
/// is a real replacement character (invalid bytes), not a character still arriving.
const MAX_PENDING_IDS: usize = 8;

/// Turns a stream of token ids into text as it becomes complete.
///
/// Decoding tokens one by one is wrong twice over: a character split across byte tokens
/// (`<0xE6><0x97><0xA5>`, or byte-level BPE pieces) decodes to U+FFFD until its last byte
/// arrives, and SentencePiece decoders strip the leading space of the first token they see.
/// So each step decodes the last emitted token together with the pending ones and emits what
/// the pending ones added, holding text back while it ends in an incomplete character.
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    /// `ids[..read_start]`: the last emitted token (context, at most one);
    /// `ids[read_start..]`: tokens whose text has not been emitted yet.
    ids: Vec<u32>,
    read_start: usize,
}

impl<'t> StreamDecoder<'t> {
    pub(crate) fn new(tokenizer: &'t Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            read_start: 0,
        }
    }

    /// Feeds one id; returns the text that became complete (possibly empty). Errors on an id
    /// outside the vocabulary.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.tokenizer.check_ids(&[id])?;
        self.ids.push(id);
        let pending = self.ids.len() - self.read_start;
        let (context_text, full_text) = self.decode_window()?;
        if full_text.ends_with(char::REPLACEMENT_CHARACTER) && pending < MAX_PENDING_IDS {
            return Ok(String::new());
        }
        let new_text = text_after(&context_text, &full_text);
        // The newest token becomes the context of the next step.
        let keep_from = self.ids.len() - 1;
        self.ids.drain(..keep_from);
        self.read_start = self.ids.len();
        Ok(new_text)
    }

    /// Text still held back (an incomplete character at the end of the stream), decoded
    /// lossily; resets the decoder.
    pub fn flush(&mut self) -> Result<String> {
        let (context_text, full_text) = self.decode_window()?;
        self.ids.clear();
        self.read_start = 0;
        Ok(text_after(&context_text, &full_text))
    }

    /// Decodes the context alone and the context plus the pending tokens.
    fn decode_window(&self) -> Result<(String, String)> {
        let context = self.ids.get(..self.read_start).unwrap_or_default();
        Ok((
            self.tokenizer.decode(context)?,
            self.tokenizer.decode(&self.ids)?,
        ))
    }
}

/// What `full` adds after `prefix`. If the decoder rewrote the prefix (it does not in
/// practice), the text past the common part, so nothing is lost.
fn text_after(prefix: &str, full: &str) -> String {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest.to_string();
    }
    let common = prefix
        .char_indices()
        .zip(full.chars())
        .find(|((_, a), b)| a != b)
        .map_or(prefix.len().min(full.len()), |((i, _), _)| i);
    full.get(common..).unwrap_or_default().to_string()
}
