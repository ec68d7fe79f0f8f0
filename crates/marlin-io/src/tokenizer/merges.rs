//! BPE merge rules: parsing GGUF's "left right" strings, and recovering them from a
//! SentencePiece vocabulary that ships none (the way Hugging Face transformers does, so the
//! resulting tokenizer gives the reference's ids).

use std::cmp::Ordering;
use std::collections::HashSet;

use tokenizers::models::bpe::Vocab;

/// GPT-2's byte -> printable char table (`bytes_to_unicode` in the GPT-2 sources): bytes that
/// are printable Latin-1 map to themselves, the rest to U+0100 onwards.
pub(crate) fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_unprintable = 0u32;
    for byte in 0u8..=255 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(byte)
        } else {
            next_unprintable += 1;
            255 + next_unprintable
        };
        // Codes are at most 255 + 68, all valid scalar values.
        table[usize::from(byte)] = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    table
}

/// Both sides of a merge and their concatenation must be tokens.
pub(crate) fn check_pair(
    left: &str,
    right: &str,
    lookup: &dyn Fn(&str) -> Option<u32>,
    joined: &mut String,
) -> std::result::Result<(), &'static str> {
    if lookup(left).is_none() {
        return Err("left token is not in the vocabulary");
    }
    if lookup(right).is_none() {
        return Err("right token is not in the vocabulary");
    }
    joined.clear();
    joined.push_str(left);
    joined.push_str(right);
    if lookup(joined.as_str()).is_none() {
        return Err("merged token is not in the vocabulary");
    }
    Ok(())
}

/// How the merges recovered from a vocabulary are ranked.
pub(crate) enum MergeRank<'a> {
    /// By the merged token's SentencePiece score, best first.
    Scores(&'a [f32]),
    /// By the merged token's position in the vocabulary, first first (Gemma, whose scores do
    /// not follow its merge order).
    Position,
}

/// Recovers BPE merges from a vocabulary: every split of a token into two tokens is a merge,
/// ranked by the merged token. Mirrors transformers' `generate_merges(vocab, vocab_scores)`
/// exactly, ties included, so the ids match the reference:
/// - tokens are visited in first-occurrence order, and a duplicated token takes the id and
///   score of its last occurrence (Python dict semantics);
/// - the splits of one token are ordered by (left id, right id);
/// - all merges are then stably sorted by (score, left length, right length), descending,
///   lengths counted in chars.
pub(crate) fn merges_from_vocab(
    tokens: &[String],
    vocab: &Vocab,
    rank: MergeRank<'_>,
) -> Vec<(String, String)> {
    struct Candidate<'t> {
        left: &'t str,
        right: &'t str,
        left_id: u32,
        right_id: u32,
        score: f64,
        left_chars: usize,
        right_chars: usize,
    }

    let mut candidates: Vec<Candidate<'_>> = Vec::new();
    let mut local: Vec<Candidate<'_>> = Vec::new();
    // Tokens that occur more than once and were already visited.
    let mut seen: HashSet<&str> = HashSet::new();
    for (index, token) in tokens.iter().enumerate() {
        let Some(&last_id) = vocab.get(token.as_str()) else {
            continue;
        };
        // Only the first occurrence of a duplicated token is visited.
        let duplicate_seen = if last_id as usize == index {
            seen.contains(token.as_str())
        } else {
            !seen.insert(token.as_str())
        };
        if duplicate_seen {
            continue;
        }
        let score = match rank {
            MergeRank::Scores(scores) => {
                scores.get(last_id as usize).map_or(0.0, |&s| f64::from(s))
            }
            MergeRank::Position => -f64::from(last_id),
        };
        local.clear();
        for (split, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(split);
            if let (Some(&left_id), Some(&right_id)) = (vocab.get(left), vocab.get(right)) {
                local.push(Candidate {
                    left,
                    right,
                    left_id,
                    right_id,
                    score,
                    left_chars: left.chars().count(),
                    right_chars: right.chars().count(),
                });
            }
        }
        local.sort_by_key(|c| (c.left_id, c.right_id));
        candidates.append(&mut local);
    }
    // Stable, descending: equal keys keep their order, as Python's sorted(reverse=True) does.
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| b.left_chars.cmp(&a.left_chars))
            .then_with(|| b.right_chars.cmp(&a.right_chars))
            .then(Ordering::Equal)
    });
    candidates
        .into_iter()
        .map(|c| (c.left.to_string(), c.right.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary with a duplicated token ("ab" at 3 and 6), score ties, a multi-byte char
    /// and `▁`; expected merges printed by transformers' `generate_merges` on the same input.
    fn vocab() -> (Vec<String>, Vec<f32>, Vocab) {
        let tokens: Vec<String> = [
            "a", "b", "c", "ab", "bc", "abc", "ab", "▁", "▁a", "▁ab", "cab", "ca", "é", "éa",
        ]
        .map(String::from)
        .to_vec();
        let scores = vec![
            -1.0, -1.0, -1.0, -2.0, -2.0, -3.0, -0.5, -1.0, -4.0, -1.5, -1.5, -2.0, -9.0, -3.0,
        ];
        let mut map = Vocab::new();
        for (id, token) in tokens.iter().enumerate() {
            map.insert(token.clone(), id as u32);
        }
        (tokens, scores, map)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn merges_by_score_match_transformers() {
        let (tokens, scores, map) = vocab();
        let merges = merges_from_vocab(&tokens, &map, MergeRank::Scores(&scores));
        let expected = pairs(&[
            ("a", "b"),
            ("▁a", "b"),
            ("ca", "b"),
            ("▁", "ab"),
            ("c", "ab"),
            ("b", "c"),
            ("c", "a"),
            ("ab", "c"),
            ("a", "bc"),
            ("é", "a"),
            ("▁", "a"),
        ]);
        assert_eq!(merges, expected);
    }

    #[test]
    fn merges_by_position_match_transformers() {
        let (tokens, _, map) = vocab();
        let merges = merges_from_vocab(&tokens, &map, MergeRank::Position);
        let expected = pairs(&[
            ("b", "c"),
            ("ab", "c"),
            ("a", "bc"),
            ("a", "b"),
            ("▁", "a"),
            ("▁a", "b"),
            ("▁", "ab"),
            ("ca", "b"),
            ("c", "ab"),
            ("c", "a"),
            ("é", "a"),
        ]);
        assert_eq!(merges, expected);
    }

    #[test]
    fn byte_table_is_a_bijection_onto_printable_chars() {
        let table = bytes_to_unicode();
        let unique: HashSet<char> = table.iter().copied().collect();
        assert_eq!(unique.len(), 256);
        assert_eq!(table[usize::from(b' ')], 'Ġ');
        assert_eq!(table[usize::from(b'\n')], 'Ċ');
        assert_eq!(table[usize::from(b'A')], 'A');
        assert!(table.iter().all(|c| !c.is_control() && !c.is_whitespace()));
    }
}
