//! The serving engine on the real SmolLM2 (skips when the file is absent):
//! greedy output alone == `generate()` over a contiguous KvCache == the same
//! request among 32 concurrent ones; preemption under a tiny pool keeps every
//! output; a repeated prompt hits the prefix cache; all blocks end free.

mod common;

use common::{model_or_skip, Contiguous, Detok, PagedModel, TextStream};
use marlin_engine::serve::{
    generate_blocking, spawn, EngineConfig, EngineHandle, EngineRequest, Event,
};
use marlin_engine::{generate, FinishReason, GenerationRequest, SamplingParams};
use marlin_io::tokenizer::Tokenizer;
use marlin_models::{LoadOptions, Model};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const MAX_TOKENS: usize = 12;

struct Setup {
    model: Arc<dyn Model>,
    tok: Arc<Tokenizer>,
    prompts: Vec<Vec<u32>>,
}

fn setup() -> Option<Setup> {
    let path = model_or_skip(MODEL_FILE)?;
    let model: Arc<dyn Model> =
        Arc::from(marlin_models::load_model(&path, &LoadOptions::default()).unwrap());
    let gguf = marlin_io::gguf::GgufFile::open(&path).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&gguf).unwrap());
    let texts = [
        "The capital of France is",
        "Once upon a time, in a small village by the sea,",
        "def fibonacci(n):",
        "The three primary colors are",
        "Water boils at a temperature of",
        "My favourite book is about a dragon who",
        "1, 2, 3, 4, 5,",
        "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again and again, and then the fox",
    ];
    let prompts = texts.iter().map(|t| tok.encode(t, true).unwrap()).collect();
    Some(Setup {
        model,
        tok,
        prompts,
    })
}

fn request(s: &Setup, prompt: &[u32]) -> EngineRequest {
    EngineRequest {
        prompt: prompt.to_vec(),
        sampling: SamplingParams::greedy(),
        max_tokens: MAX_TOKENS,
        stop_strings: vec![],
        stop_token_ids: s.tok.eos_ids().to_vec(),
        logprobs: None,
    }
}

/// `generate()` today: (tokens, text).
fn reference(s: &Setup, prompt: &[u32]) -> (Vec<u32>, String) {
    let mut seq = Contiguous {
        model: s.model.as_ref(),
        cache: s.model.new_cache(256).unwrap(),
    };
    let req = GenerationRequest {
        prompt: prompt.to_vec(),
        max_tokens: MAX_TOKENS,
        sampling: SamplingParams::greedy(),
        stop_strings: vec![],
        stop_tokens: s.tok.eos_ids().to_vec(),
        prefill_chunk: 512,
    };
    let mut detok = TextStream(s.tok.stream_decoder());
    let out = generate(&mut seq, &mut detok, &req, |_| true).unwrap();
    (out.tokens, out.text)
}

fn engine(s: &Setup, block_size: usize, n_blocks: usize, cfg: EngineConfig) -> EngineHandle {
    let pool = s
        .model
        .batched()
        .unwrap()
        .new_pool(block_size, n_blocks)
        .unwrap();
    let model = PagedModel {
        model: Arc::clone(&s.model),
        pool,
    };
    spawn(Box::new(model), Box::new(Detok(Arc::clone(&s.tok))), cfg).unwrap()
}

/// Submits every prompt at once and collects (tokens, text) of each.
fn run_concurrent(h: &EngineHandle, s: &Setup, prompts: &[&Vec<u32>]) -> Vec<(Vec<u32>, String)> {
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| h.submit(request(s, p)).unwrap())
        .collect();
    streams
        .into_iter()
        .map(|stream| {
            let (mut ids, mut text) = (Vec::new(), String::new());
            for e in stream {
                match e {
                    Event::Token { id, text: t, .. } => {
                        ids.push(id);
                        text.push_str(&t);
                    }
                    Event::Finished { reason, .. } => assert_ne!(reason, FinishReason::Cancelled),
                    Event::Error(e) => panic!("{e}"),
                }
            }
            (ids, text)
        })
        .collect()
}

fn wait_idle(h: &EngineHandle) {
    let t0 = Instant::now();
    loop {
        let st = h.stats();
        if st.running == 0 && st.waiting == 0 && st.kv_blocks_used == 0 {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "never idle: {st:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// About 40 s in the dev profile on a busy 2-core machine: run with
/// `cargo test --release -p marlin-engine --test serve_model -- --include-ignored`.
#[test]
#[ignore = "slow in the dev profile; run with --release --include-ignored"]
fn alone_equals_generate_equals_32_concurrent() {
    let Some(s) = setup() else { return };
    let refs: Vec<_> = s.prompts.iter().map(|p| reference(&s, p)).collect();
    let h = engine(&s, 16, 256, EngineConfig::default());

    let alone = generate_blocking(&h, request(&s, &s.prompts[0]), |_| true).unwrap();
    assert_eq!((alone.tokens.clone(), alone.text.clone()), refs[0]);
    assert_eq!(alone.finish_reason, FinishReason::Length);

    // 32 requests, 4 of each prompt (concurrent prefix sharing too), with a
    // token budget that splits prompts over steps.
    let many: Vec<&Vec<u32>> = (0..32).map(|i| &s.prompts[i % s.prompts.len()]).collect();
    let t0 = Instant::now();
    let outs = run_concurrent(&h, &s, &many);
    eprintln!("32 concurrent requests: {:?}", t0.elapsed());
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(out, &refs[i % s.prompts.len()], "request {i}");
    }
    wait_idle(&h);
    let st = h.stats();
    // All 32 were admitted in one step, before any block was computed:
    // identical prompts share blocks only once they are computed.
    assert_eq!(st.requests_finished, 33);
    eprintln!("{st:?}");
    h.shutdown(Duration::ZERO);
}

#[test]
fn preemption_under_a_tiny_pool_keeps_greedy_outputs() {
    let Some(s) = setup() else { return };
    let refs: Vec<_> = s.prompts.iter().map(|p| reference(&s, p)).collect();
    // 8 requests of up to ~30 positions (2 blocks of 16 each) in 10 blocks,
    // small steps so prompts are chunked.
    let cfg = EngineConfig {
        max_num_seqs: 8,
        max_batch_tokens: 24,
        max_queue: 64,
        max_model_len: 160,
    };
    let h = engine(&s, 16, 10, cfg);
    let all: Vec<&Vec<u32>> = s.prompts.iter().collect();
    let outs = run_concurrent(&h, &s, &all);
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(out, &refs[i], "request {i}");
    }
    wait_idle(&h);
    let st = h.stats();
    assert!(st.preemptions_total > 0, "{st:?}");
    eprintln!("{st:?}");

    // The same prompt again: its full blocks come from the prefix cache.
    let before = h.stats().prefix_cache_hits;
    let again = generate_blocking(&h, request(&s, &s.prompts[7]), |_| true).unwrap();
    assert_eq!((again.tokens, again.text), refs[7]);
    assert!(h.stats().prefix_cache_hits > before);
    wait_idle(&h);
    h.shutdown(Duration::ZERO);
}
