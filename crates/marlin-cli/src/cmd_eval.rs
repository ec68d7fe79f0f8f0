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

/// `marlin eval kld`: KL divergence of MODEL's token distributions against
/// BASE's on the perplexity windows of a text (tokenized by BASE's tokenizer).
/// Both models run on `compute.device`.
pub fn kld(
    model_path: &Path,
    base_path: &Path,
    text_path: &Path,
    ctx: usize,
    chunks: Option<usize>,
    compute: &ComputeArgs,
) -> anyhow::Result<()> {
    use marlin_engine::kld::KldAccumulator;
    crate::init_threads(compute.threads)?;
    let text = std::fs::read_to_string(text_path)
        .with_context(|| format!("reading {}", text_path.display()))?;
    let base = session::load_on(base_path, compute.device)?;
    let model = session::load_on(model_path, compute.device)?;
    let vocab = base.model.config().vocab_size;
    if model.model.config().vocab_size != vocab {
        anyhow::bail!(
            "vocabularies differ: {} has {}, {} has {vocab}",
            model_path.display(),
            model.model.config().vocab_size,
            base_path.display()
        );
    }
    let tok = &base.tokenizer;
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
    eprintln!("{} tokens, {} windows of {ctx}", tokens.len(), wins.len());
    let mut base_seq = base.model.new_sequence(ctx)?;
    let mut model_seq = model.model.new_sequence(ctx)?;
    let mut acc = KldAccumulator::default();
    let t0 = Instant::now();
    for (i, w) in wins.iter().enumerate() {
        base_seq.clear();
        model_seq.clear();
        let lb = base_seq.forward_all(w)?;
        let lm = model_seq.forward_all(w)?;
        acc.add_window(w, &lb, &lm, vocab)?;
        let s = acc.summary();
        let done = i + 1;
        let eta = t0.elapsed().as_secs_f64() / done as f64 * (wins.len() - done) as f64;
        eprint!(
            "\r{done}/{} mean KLD {:.4} | same top-1 {:.2}% | eta {eta:.0}s   ",
            wins.len(),
            s.mean_kld,
            s.same_top1_pct
        );
        std::io::stderr().flush().ok();
    }
    eprintln!();
    let s = acc.summary();
    println!("mean KLD: {:.4} ± {:.4}", s.mean_kld, s.mean_kld_err);
    println!("99th percentile KLD: {:.4}", s.p99_kld);
    println!("max KLD: {:.4}", s.max_kld);
    println!("same top-1: {:.2} %", s.same_top1_pct);
    println!("base perplexity: {:.4}", s.base_ppl);
    println!("model perplexity: {:.4}", s.model_ppl);
    eprintln!(
        "{} tokens scored in {:.1}s",
        s.tokens,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `marlin eval layers`: weight MSE and cosine similarity of every matrix
/// of MODEL against BASE, then per layer.
pub fn layers(model_path: &Path, base_path: &Path) -> anyhow::Result<()> {
    let diffs = marlin_quantize::pipeline::compare::compare_weights(model_path, base_path)?;
    if diffs.is_empty() {
        anyhow::bail!("the two models share no weight matrix");
    }
    println!(
        "{:<28} {:>10} {:>12} {:>10} {:>10}",
        "tensor", "elements", "mse", "rel mse", "cosine"
    );
    for d in &diffs {
        println!(
            "{:<28} {:>10} {:>12.4e} {:>10.4e} {:>10.6}",
            d.name,
            d.elements,
            d.mse,
            d.mse / d.base_mean_square.max(f64::MIN_POSITIVE),
            d.cosine
        );
    }
    println!("\nper layer (element-weighted):");
    println!("{:<6} {:>12} {:>10}", "layer", "mse", "cosine");
    let n_layers = diffs
        .iter()
        .filter_map(|d| d.layer)
        .max()
        .map_or(0, |l| l + 1);
    for layer in 0..n_layers {
        let ds: Vec<_> = diffs.iter().filter(|d| d.layer == Some(layer)).collect();
        let n: usize = ds.iter().map(|d| d.elements).sum();
        if n == 0 {
            continue;
        }
        let w = |f: &dyn Fn(&&marlin_quantize::pipeline::compare::WeightDiff) -> f64| {
            ds.iter().map(|d| f(d) * d.elements as f64).sum::<f64>() / n as f64
        };
        println!(
            "{layer:<6} {:>12.4e} {:>10.6}",
            w(&|d| d.mse),
            w(&|d| d.cosine)
        );
    }
    Ok(())
}
