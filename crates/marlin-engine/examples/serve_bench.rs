//! Serving throughput on a real model: single-stream `generate()` decode
//! speed beside the engine's aggregate generation throughput at concurrency
//! 1, 8 and 32, with TTFT and inter-token latency percentiles.
//!
//! cargo run --release -p marlin-engine --example serve_bench -- [MODEL.gguf] [TOKENS] [REPEATS]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Contiguous, Detok, PagedModel, TextStream};
use marlin_engine::serve::{spawn, EngineConfig, EngineRequest, Event};
use marlin_engine::{generate, GenerationRequest, SamplingParams};
use marlin_io::tokenizer::Tokenizer;
use marlin_models::{LoadOptions, Model};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "My favourite book is about a dragon who",
    "1, 2, 3, 4, 5,",
    "The history of the Roman empire begins",
];

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 50.0)
}

struct Run {
    tok_per_s: f64,
    ttft_p50_ms: f64,
    ttft_p90_ms: f64,
    itl_p50_ms: f64,
    itl_p90_ms: f64,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    let tokens: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let repeats: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);

    let model: Arc<dyn Model> =
        Arc::from(marlin_models::load_model(&path, &LoadOptions::default())?);
    let gguf = marlin_io::gguf::GgufFile::open(&path)?;
    let tok = Arc::new(Tokenizer::from_gguf(&gguf)?);
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|t| tok.encode(t, true))
        .collect::<Result<_, _>>()?;
    let greedy = SamplingParams::greedy();

    // Single stream through generate() and a contiguous cache (EOS ignored).
    let single: Vec<f64> = (0..repeats)
        .map(|_| -> anyhow::Result<f64> {
            let mut seq = Contiguous {
                model: model.as_ref(),
                cache: model.new_cache(1024)?,
            };
            let req = GenerationRequest {
                prompt: prompts[0].clone(),
                max_tokens: tokens,
                sampling: greedy.clone(),
                stop_strings: vec![],
                stop_tokens: vec![],
                prefill_chunk: 512,
            };
            let out = generate(
                &mut seq,
                &mut TextStream(tok.stream_decoder()),
                &req,
                |_| true,
            )?;
            Ok(out.stats.decode_tok_per_s())
        })
        .collect::<anyhow::Result<_>>()?;
    println!(
        "single stream generate(): decode {:.1} tok/s (median of {repeats}: {single:.1?})",
        median(single.clone())
    );

    for conc in [1usize, 8, 32] {
        let mut runs = Vec::new();
        for _ in 0..repeats {
            let pool = model
                .batched()
                .ok_or_else(|| anyhow::anyhow!("no batched forward"))?
                .new_pool(16, 2048)?;
            let paged = PagedModel {
                model: Arc::clone(&model),
                pool,
            };
            let h = spawn(
                Box::new(paged),
                Box::new(Detok(Arc::clone(&tok))),
                EngineConfig::default(),
            )?;
            let t0 = Instant::now();
            let streams = (0..conc)
                .map(|i| {
                    h.submit(EngineRequest {
                        prompt: prompts[i % prompts.len()].clone(),
                        sampling: greedy.clone(),
                        max_tokens: tokens,
                        stop_strings: vec![],
                        stop_token_ids: vec![],
                        logprobs: None,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (mut generated, mut ttft, mut itl) = (0usize, Vec::new(), Vec::new());
            for s in streams {
                for e in s {
                    match e {
                        Event::Finished { usage, timings, .. } => {
                            generated += usage.completion_tokens;
                            if let Some(t) = timings.first_token {
                                ttft.push((t - timings.arrival).as_secs_f64() * 1e3);
                            }
                            itl.extend(
                                timings
                                    .token_times
                                    .windows(2)
                                    .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3),
                            );
                        }
                        Event::Error(e) => anyhow::bail!("{e}"),
                        Event::Token { .. } => {}
                    }
                }
            }
            let wall = t0.elapsed().as_secs_f64();
            h.shutdown(Duration::ZERO);
            runs.push(Run {
                tok_per_s: generated as f64 / wall,
                ttft_p50_ms: percentile(&mut ttft, 50.0),
                ttft_p90_ms: percentile(&mut ttft, 90.0),
                itl_p50_ms: percentile(&mut itl, 50.0),
                itl_p90_ms: percentile(&mut itl, 90.0),
            });
        }
        let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        println!(
            "engine concurrency {conc:>2}: {:.1} tok/s aggregate | TTFT p50 {:.0} ms p90 {:.0} ms | ITL p50 {:.1} ms p90 {:.1} ms (medians of {repeats}; all: {:.1?})",
            m(|r| r.tok_per_s),
            m(|r| r.ttft_p50_ms),
            m(|r| r.ttft_p90_ms),
            m(|r| r.itl_p50_ms),
            m(|r| r.itl_p90_ms),
            runs.iter().map(|r| r.tok_per_s).collect::<Vec<_>>()
        );
    }
    Ok(())
}
