//! A compact BPE model for GGUF vocabularies.
//!
//! The `tokenizers` crate's `BPE` keeps the vocabulary twice as maps of owned `String`s (text to
//! id and id to text) plus a hash map of every merge; for Gemma 3's 262,144 pieces that is about
//! 50 MB, a fifth of the model's weights. This model holds the same information in one string
//! arena with end offsets, a hash table of ids keyed by the arena's text, and, for SentencePiece
//! vocabularies without a merge list, no merge table at all: the rank of a merge is computed
//! from the merged piece when it is needed (see [`RecoveredRank`]).
//!
//! The encoding algorithm is the `tokenizers` crate's (`models/bpe/word.rs`, `merge_all`, and
//! `BPE::merge_word`), step for step, so the ids are the same as the `BPE` model's built from
//! the same vocabulary; `tests/tokenizer_reference.rs` checks that on both demo models against
//! the `tokenizers` pipeline that [`CompactBpe::to_bpe`] builds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hashbrown::HashTable;
use tokenizers::models::bpe::{BpeTrainer, Vocab, BPE};
use tokenizers::{Model, Token};

use super::error::{backend, Result, TokenizerError};
use super::merges::{check_pair, merges_from_vocab, MergeRank};

/// Token texts by id: one arena, `ends[id]` the end of token `id`'s text in it.
#[derive(Clone, Default)]
pub(crate) struct TokenTexts {
    arena: String,
    ends: Vec<u32>,
}

impl TokenTexts {
    /// Errors when the texts do not fit u32 offsets (4 GiB) or ids, which no real vocabulary
    /// nears.
    pub(crate) fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let texts = texts.into_iter();
        let mut arena = String::new();
        let mut ends = Vec::with_capacity(texts.size_hint().0);
        for text in texts {
            arena.push_str(text);
            let end = u32::try_from(arena.len())
                .map_err(|_| TokenizerError::Backend("token texts exceed 4 GiB".to_string()))?;
            ends.push(end);
        }
        u32::try_from(ends.len()).map_err(|_| TokenizerError::VocabTooLarge(ends.len()))?;
        arena.shrink_to_fit();
        Ok(Self { arena, ends })
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The text of token `id`; `None` past the end.
    pub(crate) fn get(&self, id: u32) -> Option<&str> {
        let id = id as usize;
        let end = *self.ends.get(id)? as usize;
        let start = match id.checked_sub(1) {
            Some(prev) => *self.ends.get(prev)? as usize,
            None => 0,
        };
        self.arena.get(start..end)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.ends.len()).map(|id| self.get(id as u32).unwrap_or_default())
    }
}

/// Text -> id over a [`TokenTexts`]: a hash table of ids compared by their text. A text that
/// occurs more than once maps to its last id (as the `BPE` model's `HashMap` built from the
/// token list does).
#[derive(Clone)]
struct TokenIndex {
    table: HashTable<u32>,
    hasher: ahash::RandomState,
    /// For texts that occur more than once: last id -> first id.
    first_of_duplicate: HashMap<u32, u32>,
}

impl TokenIndex {
    fn new(texts: &TokenTexts) -> Self {
        let hasher = ahash::RandomState::new();
        let mut table = HashTable::with_capacity(texts.len());
        let mut first_of_duplicate = HashMap::new();
        for (id, text) in texts.iter().enumerate() {
            // `texts.len()` fits u32 (checked by the spec), so every id does.
            let id = id as u32;
            let hash = hasher.hash_one(text);
            let eq = |other: &u32| texts.get(*other) == Some(text);
            match table.find_mut(hash, eq) {
                Some(slot) => {
                    let previous = std::mem::replace(slot, id);
                    let first = first_of_duplicate.remove(&previous).unwrap_or(previous);
                    first_of_duplicate.insert(id, first);
                }
                None => {
                    table.insert_unique(hash, id, |other| {
                        hasher.hash_one(texts.get(*other).unwrap_or_default())
                    });
                }
            }
        }
        table.shrink_to_fit(|other| hasher.hash_one(texts.get(*other).unwrap_or_default()));
        Self {
            table,
            hasher,
            first_of_duplicate,
        }
    }

    fn get(&self, texts: &TokenTexts, text: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(text);
        self.table
            .find(hash, |other| texts.get(*other) == Some(text))
            .copied()
    }

    /// Number of distinct texts.
    fn len(&self) -> usize {
        self.table.len()
    }

    /// Where the text of `last_id` first occurs in the token list.
    fn first_occurrence(&self, last_id: u32) -> u32 {
        self.first_of_duplicate
            .get(&last_id)
            .copied()
            .unwrap_or(last_id)
    }
}

/// How merges recovered from a SentencePiece vocabulary are ranked (as `merges_from_vocab` ranks
/// them, which mirrors transformers' `generate_merges`).
#[derive(Clone)]
pub(crate) enum RecoveredRank {
    /// By the merged piece's score, best first.
    Scores(Vec<f32>),
    /// By the merged piece's id, first first.
    Position,
}

/// (left id, right id) -> (rank, merged id).
type MergeMap = HashMap<(u32, u32), (u32, u32), ahash::RandomState>;

/// The merge rules.
#[derive(Clone)]
pub(crate) enum Merges {
    /// A merge list (GGUF `tokenizer.ggml.merges`): (left id, right id) -> (rank, merged id).
    Listed(MergeMap),
    /// No list: every split of a piece into two pieces is a merge. `merges_from_vocab` lists
    /// them all and stably sorts them by (score desc, left chars desc, right chars desc); the
    /// list before sorting is in (first occurrence of the merged piece, left id) order. So the
    /// rank of a merge is that tuple, computed here from the merged piece when a pair of
    /// adjacent symbols is looked at, instead of a table of a million merges.
    Recovered(RecoveredRank),
}

/// A merge's rank; smaller merges first. Listed merges use the first field only.
type Rank = (u64, u64, u32);

/// Order-preserving map of a score to an unsigned key with the best (highest) score smallest,
/// the order `f64::total_cmp` of the widened score gives, descending.
fn descending_score_key(score: f32) -> u32 {
    let bits = score.to_bits();
    let ascending = if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    !ascending
}

/// The BPE model: vocabulary, merges and the options the GGUF pipelines use.
#[derive(Clone)]
pub(crate) struct CompactBpe {
    texts: TokenTexts,
    index: TokenIndex,
    merges: Merges,
    /// `<0xXX>` piece for each byte, when the vocabulary has it (SentencePiece byte fallback).
    byte_pieces: Option<Box<[Option<u32>; 256]>>,
    /// The unknown piece's id (its text's last id), if any.
    unk_id: Option<u32>,
    /// Runs of unknown characters become one unknown token.
    fuse_unk: bool,
    /// Byte-level pipelines set empty subword prefix/suffix options on the `BPE` model; kept for
    /// the exported `tokenizer.json`.
    empty_affixes: bool,
    cache: WordCache,
}

/// Words already merged (the `tokenizers` `BPE` model keeps the same kind of cache, with the same
/// limits): word -> its pieces as (id, byte length). Bounded: at most `WORD_CACHE_WORDS` words
/// shorter than `WORD_CACHE_MAX_BYTES`, a few hundred KB.
#[derive(Default)]
struct WordCache(Mutex<HashMap<Box<str>, Pieces, ahash::RandomState>>);

/// A merged word's pieces: (id, byte length) each.
type Pieces = Box<[(u32, usize)]>;

const WORD_CACHE_WORDS: usize = 10_000;
const WORD_CACHE_MAX_BYTES: usize = 256;

impl Clone for WordCache {
    /// A clone starts with an empty cache.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl WordCache {
    fn get(&self, word: &str) -> Option<Pieces> {
        if word.len() >= WORD_CACHE_MAX_BYTES {
            return None;
        }
        // Another thread holding the lock, or a poisoned lock: encode without the cache.
        self.0.try_lock().ok()?.get(word).cloned()
    }

    fn insert(&self, word: &str, pieces: &[(u32, usize)]) {
        if word.len() >= WORD_CACHE_MAX_BYTES {
            return;
        }
        if let Ok(mut map) = self.0.try_lock() {
            if map.len() < WORD_CACHE_WORDS {
                map.insert(word.into(), pieces.into());
            }
        }
    }
}

/// The options of a [`CompactBpe`] besides its vocabulary and merges.
pub(crate) struct BpeOptions<'a> {
    pub byte_fallback: bool,
    pub unk_token: Option<&'a str>,
    pub fuse_unk: bool,
    pub empty_affixes: bool,
}

impl CompactBpe {
    /// A model over `tokens` (the vocabulary, index = id) with the given merge list, or with
    /// merges recovered from the vocabulary when `merges` is `None`. Merges are checked as
    /// `parse_merges` checks them (both sides and their concatenation are pieces).
    pub(crate) fn new(
        tokens: &[String],
        merges: Option<&[String]>,
        recovered: RecoveredRank,
        options: BpeOptions<'_>,
    ) -> Result<Self> {
        u32::try_from(tokens.len()).map_err(|_| TokenizerError::VocabTooLarge(tokens.len()))?;
        let texts = TokenTexts::new(tokens.iter().map(String::as_str))?;
        let index = TokenIndex::new(&texts);
        let merges = match merges {
            Some(list) => Merges::Listed(listed_merges(list, &texts, &index)?),
            None => Merges::Recovered(recovered),
        };
        let byte_pieces = options.byte_fallback.then(|| {
            let mut pieces = Box::new([None; 256]);
            for (byte, piece) in pieces.iter_mut().enumerate() {
                *piece = index.get(&texts, &format!("<{byte:#04X}>"));
            }
            pieces
        });
        let unk_id = match options.unk_token {
            Some(unk) => Some(index.get(&texts, unk).ok_or_else(|| {
                TokenizerError::Backend(format!("unknown token {unk:?} is not in the vocabulary"))
            })?),
            None => None,
        };
        Ok(Self {
            texts,
            index,
            merges,
            byte_pieces,
            unk_id,
            fuse_unk: options.fuse_unk,
            empty_affixes: options.empty_affixes,
            cache: WordCache::default(),
        })
    }

    /// The text of piece `id` as the model holds it.
    pub(crate) fn piece(&self, id: u32) -> Option<&str> {
        self.texts.get(id)
    }

    fn text(&self, id: u32) -> &str {
        self.texts.get(id).unwrap_or_default()
    }

    /// The rank and merged id of the pair (left, right), if it is a merge.
    fn merge_of(&self, left: u32, right: u32, joined: &mut String) -> Option<(Rank, u32)> {
        match &self.merges {
            Merges::Listed(map) => map
                .get(&(left, right))
                .map(|&(rank, merged)| ((u64::from(rank), 0, 0), merged)),
            Merges::Recovered(order) => {
                let (left_text, right_text) = (self.text(left), self.text(right));
                joined.clear();
                joined.push_str(left_text);
                joined.push_str(right_text);
                let merged = self.index.get(&self.texts, joined)?;
                // Piece lengths fit u32 (the arena does).
                let rank = match order {
                    RecoveredRank::Scores(scores) => {
                        let score = scores.get(merged as usize).copied().unwrap_or(0.0);
                        let left_chars = left_text.chars().count() as u32;
                        let right_chars = right_text.chars().count() as u32;
                        (
                            (u64::from(descending_score_key(score)) << 32)
                                | u64::from(u32::MAX - left_chars),
                            (u64::from(u32::MAX - right_chars) << 32)
                                | u64::from(self.index.first_occurrence(merged)),
                            left,
                        )
                    }
                    // Every merged piece has its own rank; among the splits of one piece, more
                    // left chars means more left bytes (the left side is a prefix of the piece).
                    RecoveredRank::Position => (
                        (u64::from(merged) << 32) | u64::from(u32::MAX - left_text.len() as u32),
                        0,
                        0,
                    ),
                };
                Some((rank, merged))
            }
        }
    }

    /// `BPE::merge_word`: characters to pieces (byte fallback, unknown tokens), then
    /// `Word::merge_all` without dropout.
    fn merge_word(&self, word: &str) -> Vec<Symbol> {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
        let mut unk: Option<(u32, usize)> = None;
        for (start, c) in word.char_indices() {
            let piece = &word[start..start + c.len_utf8()];
            if let Some(id) = self.index.get(&self.texts, piece) {
                if let Some((unk_id, unk_len)) = unk.take() {
                    push_symbol(&mut symbols, unk_id, unk_len);
                }
                push_symbol(&mut symbols, id, piece.len());
                continue;
            }
            if let Some(pieces) = &self.byte_pieces {
                let bytes: Option<Vec<u32>> = piece
                    .bytes()
                    .map(|byte| pieces[usize::from(byte)])
                    .collect();
                if let Some(bytes) = bytes {
                    for id in bytes {
                        push_symbol(&mut symbols, id, 1);
                    }
                    continue;
                }
            }
            if let Some(unk_id) = self.unk_id {
                unk = match unk {
                    Some((id, len)) if self.fuse_unk => Some((id, len + piece.len())),
                    Some((id, len)) => {
                        push_symbol(&mut symbols, id, len);
                        Some((unk_id, piece.len()))
                    }
                    None => Some((unk_id, piece.len())),
                };
            }
        }
        if let Some((unk_id, unk_len)) = unk {
            push_symbol(&mut symbols, unk_id, unk_len);
        }
        self.merge_all(&mut symbols);
        symbols.retain(|s| s.len != 0);
        symbols
    }

    /// `Word::merge_all`: repeatedly applies the best-ranked merge (leftmost among equals).
    fn merge_all(&self, symbols: &mut [Symbol]) {
        let mut joined = String::new();
        let mut queue: BinaryHeap<Reverse<(Rank, usize, u32)>> =
            BinaryHeap::with_capacity(symbols.len());
        for (pos, pair) in symbols.windows(2).enumerate() {
            if let Some((rank, merged)) = self.merge_of(pair[0].id, pair[1].id, &mut joined) {
                queue.push(Reverse((rank, pos, merged)));
            }
        }
        while let Some(Reverse((_, pos, merged))) = queue.pop() {
            let Some(current) = symbols.get(pos).copied() else {
                continue;
            };
            if current.len == 0 {
                continue;
            }
            let Ok(next_pos) = usize::try_from(current.next) else {
                continue;
            };
            let Some(right) = symbols.get(next_pos).copied() else {
                continue;
            };
            // A stale entry: the pair at `pos` changed since it was queued.
            if self
                .merge_of(current.id, right.id, &mut joined)
                .is_none_or(|(_, id)| id != merged)
            {
                continue;
            }
            symbols[pos].id = merged;
            symbols[pos].len += right.len;
            symbols[pos].next = right.next;
            symbols[next_pos].len = 0;
            if let Some(after) = usize::try_from(right.next)
                .ok()
                .and_then(|i| symbols.get_mut(i))
            {
                after.prev = pos as isize;
            }
            let current = symbols[pos];
            if let Some(prev) = usize::try_from(current.prev)
                .ok()
                .and_then(|i| symbols.get(i))
            {
                if let Some((rank, merged)) = self.merge_of(prev.id, current.id, &mut joined) {
                    queue.push(Reverse((rank, current.prev as usize, merged)));
                }
            }
            if let Some(next) = usize::try_from(current.next)
                .ok()
                .and_then(|i| symbols.get(i))
            {
                if let Some((rank, merged)) = self.merge_of(current.id, next.id, &mut joined) {
                    queue.push(Reverse((rank, pos, merged)));
                }
            }
        }
    }

    /// The same model as a `tokenizers` `BPE` (owned-string maps and an explicit merge list),
    /// for writing `tokenizer.json` files other tools load.
    pub(crate) fn to_bpe(&self) -> Result<BPE> {
        let mut vocab = Vocab::with_capacity(self.index.len());
        for (id, text) in self.texts.iter().enumerate() {
            vocab.insert(text.to_string(), id as u32);
        }
        let merges: Vec<(String, String)> = match &self.merges {
            Merges::Listed(map) => {
                let mut listed: Vec<(u32, u32, u32)> = map
                    .iter()
                    .map(|(&(left, right), &(rank, _))| (rank, left, right))
                    .collect();
                listed.sort_unstable();
                listed
                    .into_iter()
                    .map(|(_, left, right)| {
                        (self.text(left).to_string(), self.text(right).to_string())
                    })
                    .collect()
            }
            Merges::Recovered(order) => {
                let tokens: Vec<String> = self.texts.iter().map(str::to_string).collect();
                let rank = match order {
                    RecoveredRank::Scores(scores) => MergeRank::Scores(scores),
                    RecoveredRank::Position => MergeRank::Position,
                };
                merges_from_vocab(&tokens, &vocab, rank)
            }
        };
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .fuse_unk(self.fuse_unk)
            .byte_fallback(self.byte_pieces.is_some());
        if self.empty_affixes {
            builder = builder
                .continuing_subword_prefix(String::new())
                .end_of_word_suffix(String::new());
        }
        if let Some(unk) = self.unk_id {
            builder = builder.unk_token(self.text(unk).to_string());
        }
        builder.build().map_err(backend)
    }
}

/// One piece of a word being merged (`tokenizers`' `Symbol`): `len` is its length in bytes,
/// 0 once merged into its left neighbour; `prev`/`next` link the live symbols (-1: none).
#[derive(Clone, Copy, Debug)]
struct Symbol {
    id: u32,
    prev: isize,
    next: isize,
    len: usize,
}

fn push_symbol(symbols: &mut Vec<Symbol>, id: u32, len: usize) {
    let count = symbols.len() as isize;
    let prev = match symbols.last_mut() {
        Some(last) => {
            last.next = count;
            count - 1
        }
        None => -1,
    };
    symbols.push(Symbol {
        id,
        prev,
        next: -1,
        len,
    });
}

/// A GGUF merge list as (left id, right id) -> (rank, merged id); a later duplicate of a pair
/// replaces the earlier one, as in the `BPE` builder.
fn listed_merges(list: &[String], texts: &TokenTexts, index: &TokenIndex) -> Result<MergeMap> {
    let mut map = HashMap::with_capacity_and_hasher(list.len(), ahash::RandomState::new());
    let mut joined = String::new();
    for (rank, merge) in list.iter().enumerate() {
        let bad = |reason| TokenizerError::BadMerge {
            index: rank,
            merge: merge.clone(),
            reason,
        };
        let (left, right) = merge
            .split_once(' ')
            .ok_or_else(|| bad("expected two tokens separated by one space"))?;
        if left.is_empty() || right.is_empty() || right.contains(' ') {
            return Err(bad("expected two tokens separated by one space"));
        }
        let lookup = |text: &str| index.get(texts, text);
        check_pair(left, right, &lookup, &mut joined).map_err(bad)?;
        let (Some(left_id), Some(right_id), Some(merged)) =
            (lookup(left), lookup(right), lookup(&joined))
        else {
            return Err(bad("merged token is not in the vocabulary"));
        };
        let rank = u32::try_from(rank).map_err(|_| bad("more than 2^32 merges"))?;
        map.insert((left_id, right_id), (rank, merged));
    }
    map.shrink_to_fit();
    Ok(map)
}

impl Model for CompactBpe {
    type Trainer = BpeTrainer;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        let pieces = match self.cache.get(sequence) {
            Some(pieces) => pieces,
            None => {
                let pieces: Pieces = self
                    .merge_word(sequence)
                    .into_iter()
                    .map(|symbol| (symbol.id, symbol.len))
                    .collect();
                self.cache.insert(sequence, &pieces);
                pieces
            }
        };
        let mut start = 0;
        Ok(pieces
            .iter()
            .map(|&(id, len)| {
                let end = start + len;
                let token = Token::new(id, self.text(id).to_string(), (start, end));
                start = end;
                token
            })
            .collect())
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.index.get(&self.texts, token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.texts.get(id).map(str::to_string)
    }

    fn get_vocab(&self) -> std::collections::HashMap<String, u32> {
        let mut vocab = std::collections::HashMap::with_capacity(self.index.len());
        for (id, text) in self.texts.iter().enumerate() {
            vocab.insert(text.to_string(), id as u32);
        }
        vocab
    }

    /// Distinct texts, as the `BPE` model counts its vocabulary map.
    fn get_vocab_size(&self) -> usize {
        self.index.len()
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        Err("the compact BPE model is saved through Tokenizer::to_tokenizer_json".into())
    }

    fn get_trainer(&self) -> BpeTrainer {
        BpeTrainer::default()
    }
}
