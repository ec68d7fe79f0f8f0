//! Prompt processing (512 tokens) and decode (128 tokens) speed with 2
//! threads, like `llama-bench -t 2 -p 512 -n 128`. Ignored by default; run:
//!
//! cargo test --release -p marlin-models --test speed -- --ignored --nocapture

mod common;

use common::model_or_skip;
use marlin_models::{load_model, LoadOptions};
use std::time::Instant;

const PROMPT: usize = 512;
const DECODE: usize = 128;
const THREADS: usize = 2;

fn bench(file: &str) {
    let Some(path) = model_or_skip(file) else {
        return;
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(THREADS)
        .build()
        .unwrap();
    pool.install(|| {
        let model = load_model(&path, &LoadOptions::default()).unwrap();
        let vocab = model.config().vocab_size as u32;
        // Deterministic pseudo-random prompt, as llama-bench uses random tokens.
        let tokens: Vec<u32> = (0..PROMPT as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % vocab)
            .collect();
        let mut cache = model.new_cache(PROMPT + DECODE).unwrap();
        model.forward(&tokens[..8], &mut cache).unwrap(); // warm-up
        cache.clear();
        let t = Instant::now();
        model.forward(&tokens, &mut cache).unwrap();
        let pp = PROMPT as f64 / t.elapsed().as_secs_f64();
        // llama-bench's tg128 decodes from an empty context.
        cache.clear();
        let t = Instant::now();
        let mut tok = tokens[0];
        for _ in 0..DECODE {
            let logits = model.forward(&[tok], &mut cache).unwrap();
            tok = common::argmax(&logits) as u32;
        }
        let tg = DECODE as f64 / t.elapsed().as_secs_f64();
        eprintln!(
            "{file}: pp{PROMPT} {pp:.1} tok/s | tg{DECODE} {tg:.1} tok/s ({THREADS} threads)"
        );
    });
}

#[test]
#[ignore = "benchmark: run in release with --ignored"]
fn speed_smollm2() {
    bench("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
#[ignore = "benchmark: run in release with --ignored"]
fn speed_gemma3() {
    bench("gemma-3-270m-q4_k_m.gguf");
}
