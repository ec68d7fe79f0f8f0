//! Real GGUF models against Hugging Face transformers loading the same files
//! (fixtures made by scripts/fixtures/make_model_fixtures.py).
//!
//! For each prompt: the top-1 token at every prompt position, max |Δlogit|
//! over the reference top-10, and the greedy continuation, checked step by
//! step with the reference continuation as context (the first steps decoded
//! one token at a time through the KV cache, the rest as one batch).
//!
//! The reference runs in f32 on dequantized weights; marlin's block kernels
//! quantize activations to 8 bits, as llama.cpp does, which moves logits by
//! a few tenths. A position where the reference's own top-1/top-2 gap is
//! below [`NEAR_TIE`] may flip; such flips are reported and tolerated, every
//! other disagreement fails. Strict agreement is printed as well.
//!
//! The model runs twice: with an f32 KV cache, the reference's precision,
//! where at least 99% of prompt positions must agree; and with the default
//! f16 cache (llama.cpp's default too), whose rounding moves logits a little
//! more: one Gemma 3 prompt position in 85 flips at a reference gap of 0.34,
//! so it must agree at 98% (its perplexity is checked against llama.cpp's
//! in docs/BENCHMARKS.md). Greedy steps must agree up to near-ties in both.

mod common;

use common::{argmax, fixtures_dir, model_or_skip};
use marlin_models::{load_model, KvType, LoadOptions};
use serde::Deserialize;

/// Logit gap under which the reference's choice counts as a tie.
const NEAR_TIE: f32 = 0.25;
/// Greedy tokens fed one at a time before the rest go in one batch.
const DECODE_STEPS: usize = 4;

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
    /// (m, 10) reference top-10 ids and logits at each prompt position.
    top_ids: Vec<Vec<usize>>,
    top_logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
    /// (16, 10) the same at each greedy step.
    greedy_top_ids: Vec<Vec<usize>>,
    greedy_top_logits: Vec<Vec<f32>>,
}

#[derive(Default)]
struct Tally {
    total: usize,
    strict: usize,
    tolerant: usize,
    max_delta: f32,
}

impl Tally {
    /// Scores one position: `row` (vocab) against the reference top-10.
    fn score(&mut self, row: &[f32], ids: &[usize], logits: &[f32], what: &str) {
        self.total += 1;
        for (id, want) in ids.iter().zip(logits) {
            self.max_delta = self.max_delta.max((row[*id] - want).abs());
        }
        let got = argmax(row);
        if got == ids[0] {
            self.strict += 1;
            self.tolerant += 1;
            return;
        }
        let gap = ids
            .iter()
            .position(|&i| i == got)
            .map(|k| logits[0] - logits[k]);
        match gap {
            Some(g) if g <= NEAR_TIE => {
                self.tolerant += 1;
                eprintln!(
                    "  {what}: near-tie flip to {got} (reference prefers {} by {g:.3})",
                    ids[0]
                );
            }
            _ => eprintln!(
                "  {what}: MISMATCH {got} vs reference {} (gap {gap:?})",
                ids[0]
            ),
        }
    }
}

/// Prompt positions whose top-1 must agree, per cache type (see the header).
fn min_prompt_agreement(kv_type: KvType) -> f64 {
    match kv_type {
        KvType::F32 => 0.99,
        KvType::F16 => 0.98,
    }
}

fn check(fixture_name: &str, kv_type: KvType) {
    let path = fixtures_dir().join(fixture_name);
    let text = std::fs::read_to_string(&path).expect("fixture present in the repo");
    let fx: Fixture = serde_json::from_str(&text).expect("fixture parses");
    let Some(model_path) = model_or_skip(&fx.model_file) else {
        return;
    };
    let opts = LoadOptions {
        kv_type,
        ..LoadOptions::default()
    };
    let model = load_model(&model_path, &opts).expect("model loads");
    eprintln!("{fixture_name}, {kv_type:?} KV cache");
    let vocab = model.config().vocab_size;
    let (mut prompt, mut greedy) = (Tally::default(), Tally::default());
    for (ci, case) in fx.cases.iter().enumerate() {
        eprintln!("case {ci}: {:?}", case.text);
        let n = case.greedy.len();
        let mut cache = model.new_cache(case.ids.len() + n).unwrap();
        let logits = model.forward_all(&case.ids, &mut cache).unwrap(); // (m, vocab)
        for (pos, row) in logits.chunks_exact(vocab).enumerate() {
            prompt.score(
                row,
                &case.top_ids[pos],
                &case.top_logits[pos],
                &format!("position {pos}"),
            );
        }
        // Greedy step i: the distribution after prompt + greedy[..i].
        let mut steps = vec![logits[logits.len() - vocab..].to_vec()];
        for &tok in &case.greedy[..DECODE_STEPS.min(n - 1)] {
            steps.push(model.forward(&[tok], &mut cache).unwrap());
        }
        if steps.len() < n {
            let rest = &case.greedy[steps.len() - 1..n - 1];
            let all = model.forward_all(rest, &mut cache).unwrap();
            steps.extend(all.chunks_exact(vocab).map(<[f32]>::to_vec));
        }
        for (i, row) in steps.iter().enumerate() {
            greedy.score(
                row,
                &case.greedy_top_ids[i],
                &case.greedy_top_logits[i],
                &format!("greedy step {i}"),
            );
        }
    }
    eprintln!(
        "{fixture_name}: prompt positions top-1 {}/{} strict, {}/{} within near-ties; greedy steps {}/{} strict, \
         {}/{} within near-ties; max |Δlogit| over reference top-10 {:.4} (prompts) {:.4} (greedy); reference: {}",
        prompt.strict,
        prompt.total,
        prompt.tolerant,
        prompt.total,
        greedy.strict,
        greedy.total,
        greedy.tolerant,
        greedy.total,
        prompt.max_delta,
        greedy.max_delta,
        fx.reference
    );
    let min = min_prompt_agreement(kv_type);
    assert!(
        prompt.tolerant as f64 >= min * prompt.total as f64,
        "top-1 agreement below {:.0}% ({kv_type:?} KV cache)",
        min * 100.0
    );
    assert_eq!(
        greedy.tolerant, greedy.total,
        "greedy steps disagree beyond near-ties"
    );
}

#[test]
fn smollm2_matches_transformers() {
    check("smollm2-135m-q4_1.ref.json", KvType::F32);
    check("smollm2-135m-q4_1.ref.json", KvType::F16);
}

#[test]
fn gemma3_matches_transformers() {
    check("gemma3-270m-q4_k_m.ref.json", KvType::F32);
    check("gemma3-270m-q4_k_m.ref.json", KvType::F16);
}
