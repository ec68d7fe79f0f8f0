//! `marlin eval ppl`: perplexity as llama.cpp's llama-perplexity computes it.

use crate::session;
use crate::ComputeArgs;
use anyhow::Context;
use marlin_engine::perplexity::{score_window, windows, PerplexityAccumulator, PerplexityConfig};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

pub fn perplexity(
    model_path: &Path,
    text_path: &Path,
    ctx: usize,
    chunks: Option<usize>,
    compute: &ComputeArgs,
) -> anyhow::Result<()> {
    crate::init_threads(compute.threads)?;
    let text = std::fs::read_to_string(text_path)
        .with_context(|| format!("reading {}", text_path.display()))?;
    let loaded = session::load_on(model_path, compute.device)?;
    let tok = &loaded.tokenizer;
    let model = &loaded.model;
    let tokens = tok.encode(&text, true)?;
    let bos = tok.bos_id().filter(|_| tok.add_bos());
    let wins = windows(
        &tokens,
        &PerplexityConfig {
            ctx,
            max_chunks: chunks,
            bos,
        },
    )?;
    eprintln!(
        "{} tokens, {} windows of {ctx} (second half of each scored)",
        tokens.len(),
        wins.len()
    );
    let vocab = model.config().vocab_size;
    let mut seq = model.new_sequence(ctx)?;
    let mut acc = PerplexityAccumulator::default();
    let t0 = Instant::now();
    for (i, w) in wins.iter().enumerate() {
        seq.clear();
        let logits = seq.forward_all(w)?;
        score_window(&mut acc, w, &logits, vocab)?;
        let (ppl, err) = acc.estimate();
        let done = i + 1;
        let eta = t0.elapsed().as_secs_f64() / done as f64 * (wins.len() - done) as f64;
        let bar_width = 30;
        let filled = bar_width * done / wins.len();
        eprint!(
            "\r[{}{}] {done}/{} ppl {ppl:.4} ± {err:.4} | eta {eta:.0}s   ",
            "#".repeat(filled),
            "-".repeat(bar_width - filled),
            wins.len()
        );
        std::io::stderr().flush().ok();
    }
    eprintln!();
    let (ppl, err) = acc.estimate();
    println!("perplexity: {ppl:.4} ± {err:.4}");
    eprintln!(
        "{} tokens scored in {:.1}s",
        acc.count(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
