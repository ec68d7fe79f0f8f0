//! The compact BPE model that GGUF vocabularies use (`tokenizer/compact.rs`) against the
//! `tokenizers` crate's `BPE` model built from the same vocabulary and merges: the GGUF
//! tokenizer is written as `tokenizer.json` (which holds a `BPE` model, with the merges that
//! `merges_from_vocab` recovers for SentencePiece vocabularies) and read back, and both encode
//! the same texts: the fixtures' texts, and texts made of random vocabulary pieces, which make
//! many merges compete.
//!
//! Needs the model files in `$MARLIN_MODELS` or `<repo>/models`; skips with a message otherwise.

use std::path::{Path, PathBuf};

use marlin_io::gguf::{GgufFile, GgufKey};
use marlin_io::tokenizer::Tokenizer;
use serde_json::Value;

fn models_dir() -> PathBuf {
    std::env::var_os("MARLIN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

/// Texts made of `pieces` random vocabulary pieces (decoded to text), in chunks of
/// up to 40 pieces, from a fixed-seed generator.
fn random_piece_texts(tokenizer: &Tokenizer, pieces: usize) -> Vec<String> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let vocab = tokenizer.vocab_size() as u64;
    let mut texts = Vec::new();
    let mut done = 0;
    while done < pieces {
        let count = 1 + (next() % 40) as usize;
        let mut text = String::new();
        for _ in 0..count {
            let id = (next() % vocab) as u32;
            if tokenizer.is_special(id) {
                continue;
            }
            text.push_str(&tokenizer.decode(&[id]).expect("decodes"));
        }
        done += count;
        texts.push(text);
    }
    texts
}

fn fixture_texts(name: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer")
        .join(format!("{name}.json"));
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON");
    fixture["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|case| case["text"].as_str().expect("text").to_string())
        .collect()
}

fn check_model(file: &str, fixture: &str) {
    let path = models_dir().join(file);
    if !path.exists() {
        eprintln!("SKIP: {} not found (set MARLIN_MODELS)", path.display());
        return;
    }
    let gguf = GgufFile::open(&path).expect("GGUF opens");
    let compact = Tokenizer::from_gguf(&gguf).expect("tokenizer builds");
    // Token texts are the file's spelling, respelled pieces (Gemma's whitespace runs) included.
    let file_tokens = gguf
        .get_array(GgufKey::TokenizerTokens)
        .expect("tokens")
        .as_strings()
        .expect("strings");
    assert_eq!(file_tokens.len(), compact.vocab_size());
    for (id, token) in file_tokens.iter().enumerate() {
        assert_eq!(
            compact.token_str(id as u32),
            Some(token.as_str()),
            "token {id}"
        );
    }
    drop(gguf);
    let dir = std::env::temp_dir().join(format!("marlin-compact-{fixture}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("tokenizer.json");
    std::fs::write(&json, compact.to_tokenizer_json().expect("serialises")).expect("write");
    let reference = Tokenizer::from_tokenizer_json(&json);
    std::fs::remove_dir_all(&dir).ok();
    let reference = reference.expect("loads");
    assert_eq!(reference.vocab_size(), compact.vocab_size());

    let mut texts = fixture_texts(fixture);
    texts.extend(random_piece_texts(&compact, 60_000));
    let mut ids = 0;
    for text in &texts {
        let want = reference.encode(text, false).expect("reference encodes");
        let got = compact.encode(text, false).expect("compact encodes");
        assert_eq!(got, want, "{file}: ids differ on {text:?}");
        ids += got.len();
    }
    assert_eq!(
        compact.encode("hello world", true).expect("encode"),
        reference.encode("hello world", true).expect("encode")
    );
    eprintln!("{file}: {} texts, {ids} ids, identical", texts.len());
}

#[test]
fn smollm2_compact_model_matches_the_bpe_model() {
    check_model("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2");
}

#[test]
fn gemma3_compact_model_matches_the_bpe_model() {
    check_model("gemma-3-270m-q4_k_m.gguf", "gemma3");
}
