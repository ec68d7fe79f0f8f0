//! Real GGUF models against Hugging Face transformers loading the same files
//! (fixtures made by scripts/fixtures/make_model_fixtures.py): top-1
//! agreement at every prompt position, max |Δlogit| over the reference
//! top-10, and the greedy continuation (checked step by step, first tokens
//! decoded one at a time, the rest as one batch).

mod common;

use common::{argmax, fixtures_dir, model_or_skip};
use marlin_models::{load_model, LoadOptions};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    model_file: String,
    reference: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    top_ids: Vec<Vec<usize>>,
    top_logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

/// Greedy tokens fed one at a time before the rest go in one batch.
const DECODE_STEPS: usize = 4;

fn check(fixture_name: &str) {
    let path = fixtures_dir().join(fixture_name);
    let text = std::fs::read_to_string(&path).expect("fixture present in the repo");
    let fx: Fixture = serde_json::from_str(&text).expect("fixture parses");
    let Some(model_path) = model_or_skip(&fx.model_file) else {
        return;
    };
    let model = load_model(&model_path, &LoadOptions::default()).expect("model loads");
    let vocab = model.config().vocab_size;
    let (mut agree, mut total, mut max_delta) = (0usize, 0usize, 0f32);
    let mut greedy_ok = true;
    for case in &fx.cases {
        let mut cache = model.new_cache(case.ids.len() + case.greedy.len()).unwrap();
        let logits = model.forward_all(&case.ids, &mut cache).unwrap(); // (m, vocab)
        for (pos, row) in logits.chunks_exact(vocab).enumerate() {
            total += 1;
            if argmax(row) == case.top_ids[pos][0] {
                agree += 1;
            }
            for (id, want) in case.top_ids[pos].iter().zip(&case.top_logits[pos]) {
                max_delta = max_delta.max((row[*id] - want).abs());
            }
        }
        // Greedy: the model's argmax after the prompt and after each
        // reference token must be the next reference token.
        let mut predicted = vec![argmax(&logits[logits.len() - vocab..]) as u32];
        let n = case.greedy.len();
        for &tok in &case.greedy[..DECODE_STEPS.min(n - 1)] {
            predicted.push(argmax(&model.forward(&[tok], &mut cache).unwrap()) as u32);
        }
        if predicted.len() < n {
            let rest = &case.greedy[predicted.len() - 1..n - 1];
            let all = model.forward_all(rest, &mut cache).unwrap();
            predicted.extend(all.chunks_exact(vocab).map(|r| argmax(r) as u32));
        }
        if predicted != case.greedy {
            greedy_ok = false;
            eprintln!(
                "greedy mismatch on {:?}:\n  got  {predicted:?}\n  want {:?}",
                case.text, case.greedy
            );
        }
    }
    let rate = agree as f64 / total as f64;
    eprintln!(
        "{fixture_name}: top-1 agreement {agree}/{total} ({:.1}%), max |Δlogit| over reference top-10 {max_delta:.4} (reference: {})",
        100.0 * rate,
        fx.reference
    );
    assert!(rate >= 0.99, "top-1 agreement {rate}");
    assert!(greedy_ok, "greedy continuations differ");
}

#[test]
fn smollm2_matches_transformers() {
    check("smollm2-135m-q4_1.ref.json");
}

#[test]
fn gemma3_matches_transformers() {
    check("gemma3-270m-q4_k_m.ref.json");
}
