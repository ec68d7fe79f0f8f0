//! The batched, paged forward on the real models: each sequence's logits in
//! a batch equal its logits alone (bitwise: every linear kernel is
//! batch-invariant and attention runs per sequence), and the paged pool
//! equals the contiguous `KvCache` path.

mod common;

use common::model_or_skip;
use marlin_models::{
    load_model, ActivationHook, BatchedModel, KvPool, LoadOptions, LogitsWanted, SeqChunk,
    MICRO_BATCH,
};

const BLOCK: usize = 16;

/// Deterministic token ids in `0..vocab.min(5000)`.
fn tokens(seed: u32, n: usize, vocab: usize) -> Vec<u32> {
    let span = vocab.min(5000) as u32;
    (0..n as u32)
        .map(|i| (seed.wrapping_mul(7919) + i * 104_729 + 3) % span)
        .collect()
}

/// One sequence's work: a prompt prefilled at some step, then decode
/// tokens, one per step.
struct Script {
    prompt: Vec<u32>,
    decode: Vec<u32>,
    /// Step at which the prompt goes in.
    start: usize,
    table: Vec<u32>,
}

impl Script {
    /// The chunk this sequence contributes at `step`, if any.
    fn chunk(&self, step: usize) -> Option<SeqChunk<'_>> {
        let i = step.checked_sub(self.start)?;
        if i == 0 {
            return Some(SeqChunk {
                tokens: &self.prompt,
                block_table: &self.table,
                pos0: 0,
                logits: Some(LogitsWanted::Last),
            });
        }
        let tok = self.decode.get(i - 1)?;
        Some(SeqChunk {
            tokens: std::slice::from_ref(tok),
            block_table: &self.table,
            pos0: self.prompt.len() + i - 1,
            logits: Some(LogitsWanted::Last),
        })
    }
}

/// Runs the scripts at `steps` steps, all sequences of a step in one call;
/// returns every sequence's logits per step.
fn run(model: &dyn BatchedModel, pool: &mut KvPool, scripts: &[&Script]) -> Vec<Vec<Vec<f32>>> {
    let mut out = vec![Vec::new(); scripts.len()];
    for step in 0..6 {
        let (who, chunks): (Vec<usize>, Vec<SeqChunk>) = scripts
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.chunk(step)?)))
            .unzip();
        if chunks.is_empty() {
            continue;
        }
        let logits = model.forward_batch(pool, &chunks).unwrap();
        for (i, l) in who.into_iter().zip(logits) {
            out[i].push(l);
        }
    }
    out
}

fn check_model(file: &str) {
    let Some(path) = model_or_skip(file) else {
        return;
    };
    let model = load_model(&path, &LoadOptions::default()).unwrap();
    let vocab = model.config().vocab_size;
    let batched = model.batched().expect("CPU models have a batched forward");
    // Disjoint block tables, scrambled so no sequence's blocks are in order.
    // (prompt length, step it joins): prompts over 1-2 blocks; the last
    // prefills while the others decode.
    let lens = [(21, 0), (5, 0), (12, 0), (19, 2)];
    let scripts: Vec<Script> = lens
        .iter()
        .enumerate()
        .map(|(i, &(n, start))| {
            let blocks = (n + 4usize).div_ceil(BLOCK);
            Script {
                prompt: tokens(i as u32 + 1, n, vocab),
                decode: tokens(i as u32 + 11, 2, vocab),
                start,
                table: (0..blocks).map(|b| (b * 4 + i) as u32).rev().collect(),
            }
        })
        .collect();

    let mut pool = batched.new_pool(BLOCK, 16).unwrap();
    let together = run(batched, &mut pool, &scripts.iter().collect::<Vec<_>>());
    for (i, s) in scripts.iter().enumerate() {
        let mut pool = batched.new_pool(BLOCK, 16).unwrap();
        let alone = run(batched, &mut pool, &[s]).remove(0);
        assert_eq!(alone.len(), together[i].len());
        for (step, (a, t)) in alone.iter().zip(&together[i]).enumerate() {
            assert_eq!(a.len(), vocab);
            let max = a
                .iter()
                .zip(t)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(a == t, "{file} seq {i} step {step}: max |diff| {max}");
        }

        // The contiguous cache gives the same logits as the paged pool.
        let mut cache = model.new_cache(64).unwrap();
        let first = model.forward(&s.prompt, &mut cache).unwrap();
        assert!(first == alone[0], "{file} seq {i}: KvCache prefill differs");
        for (step, &tok) in s.decode.iter().enumerate() {
            let l = model.forward(&[tok], &mut cache).unwrap();
            let max = l
                .iter()
                .zip(&alone[step + 1])
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(
                l == alone[step + 1],
                "{file} seq {i} step {step}: KvCache decode differs by {max}"
            );
        }
    }
}

#[test]
fn smollm2_batch_equals_alone() {
    check_model("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn gemma3_batch_equals_alone() {
    check_model("gemma-3-270m-q4_k_m.gguf");
}

#[test]
fn chunked_prompt_and_all_logits() {
    let Some(path) = model_or_skip("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let model = load_model(&path, &LoadOptions::default()).unwrap();
    let vocab = model.config().vocab_size;
    let b = model.batched().unwrap();
    let prompt = tokens(5, 40, vocab);
    let table: Vec<u32> = vec![2, 0, 1];
    // All logits of the whole prompt at once.
    let mut pool = b.new_pool(BLOCK, 3).unwrap();
    let all = b
        .forward_batch(
            &mut pool,
            &[SeqChunk {
                tokens: &prompt,
                block_table: &table,
                pos0: 0,
                logits: Some(LogitsWanted::All),
            }],
        )
        .unwrap()
        .remove(0);
    assert_eq!(all.len(), prompt.len() * vocab);
    // The same prompt in chunks of 16 (no logits but the last): the last
    // row agrees closely (attention tiles differ with the chunking).
    let mut pool = b.new_pool(BLOCK, 3).unwrap();
    let mut last = Vec::new();
    for (c, piece) in prompt.chunks(16).enumerate() {
        let is_last = (c + 1) * 16 >= prompt.len();
        let out = b
            .forward_batch(
                &mut pool,
                &[SeqChunk {
                    tokens: piece,
                    block_table: &table,
                    pos0: c * 16,
                    logits: is_last.then_some(LogitsWanted::Last),
                }],
            )
            .unwrap()
            .remove(0);
        assert_eq!(out.is_empty(), !is_last);
        last = out;
    }
    let want = &all[(prompt.len() - 1) * vocab..];
    let max = last
        .iter()
        .zip(want)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(max < 1e-3, "chunked prefill moved logits by {max}");
}

/// Receives nothing: passing a hook makes a forward call run as one pass.
struct OnePass;

impl ActivationHook for OnePass {
    fn activation(&mut self, _: &str, _: Option<usize>, _: usize, _: &[f32]) {}
}

/// A batch longer than `MICRO_BATCH` rows runs as several passes: a long
/// prompt's logits (all rows), and a two-sequence batch split in the middle
/// of its second sequence, equal the one-pass forward (`MICRO_BATCH` is a
/// multiple of the attention's query tile, so every tile is the same).
#[test]
fn micro_batches_equal_one_pass() {
    let Some(path) = model_or_skip("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let model = load_model(&path, &LoadOptions::default()).unwrap();
    let vocab = model.config().vocab_size;
    let prompt = tokens(9, MICRO_BATCH * 2 + 40, vocab);
    let mut cache = model.new_cache(prompt.len()).unwrap();
    let one_pass = model
        .forward_with(&prompt, &mut cache, LogitsWanted::All, Some(&mut OnePass))
        .unwrap();
    let mut cache = model.new_cache(prompt.len()).unwrap();
    let passes = model.forward_all(&prompt, &mut cache).unwrap();
    assert_eq!(cache.len(), prompt.len());
    assert_eq!(passes.len(), prompt.len() * vocab);
    assert!(one_pass == passes, "micro-batched logits differ");

    let b = model.batched().unwrap();
    let (p1, p2) = (tokens(3, 200, vocab), tokens(4, 150, vocab));
    let (t1, t2): (Vec<u32>, Vec<u32>) = ((0..13).collect(), (13..23).collect());
    let chunks = [
        SeqChunk {
            tokens: &p1,
            block_table: &t1,
            pos0: 0,
            logits: Some(LogitsWanted::Last),
        },
        SeqChunk {
            tokens: &p2,
            block_table: &t2,
            pos0: 0,
            logits: Some(LogitsWanted::All),
        },
    ];
    let mut pool = b.new_pool(BLOCK, 23).unwrap();
    let split = b.forward_batch(&mut pool, &chunks).unwrap();
    let mut pool = b.new_pool(BLOCK, 23).unwrap();
    let whole = b
        .forward_batch_with(&mut pool, &chunks, Some(&mut OnePass))
        .unwrap();
    assert_eq!(split[0].len(), vocab);
    assert_eq!(split[1].len(), p2.len() * vocab);
    assert!(split == whole, "split batch logits differ");
}

#[test]
fn rejects_bad_batches() {
    let Some(path) = model_or_skip("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let model = load_model(&path, &LoadOptions::default()).unwrap();
    let b = model.batched().unwrap();
    let mut pool = b.new_pool(4, 2).unwrap();
    let chunk = |tokens: &'static [u32], table: &'static [u32], pos0| SeqChunk {
        tokens,
        block_table: table,
        pos0,
        logits: Some(LogitsWanted::Last),
    };
    assert!(b.forward_batch(&mut pool, &[]).is_err(), "no sequences");
    assert!(b.forward_batch(&mut pool, &[chunk(&[], &[0], 0)]).is_err());
    assert!(
        b.forward_batch(&mut pool, &[chunk(&[1, 2, 3], &[2], 0)])
            .is_err(),
        "block 2 of 2"
    );
    assert!(
        b.forward_batch(&mut pool, &[chunk(&[1, 2, 3], &[0], 2)])
            .is_err(),
        "past the table"
    );
    assert!(
        b.forward_batch(&mut pool, &[chunk(&[u32::MAX], &[0], 0)])
            .is_err(),
        "token out of range"
    );
    assert!(b.new_pool(0, 2).is_err() && b.new_pool(4, 0).is_err());
    assert!(
        b.new_pool(16, usize::MAX / 2).is_err(),
        "over max_cache_bytes"
    );
    assert!(b
        .forward_batch(&mut pool, &[chunk(&[1, 2, 3], &[1, 0], 2)])
        .is_ok());
}
