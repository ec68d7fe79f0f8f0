//! The serving engine's GPU model (`GpuBatchModel`: paged KV pool,
//! one M-row pass per `forward_batch`) against per-sequence references:
//! the CPU model and `GpuSequence` (contiguous KV cache, the GPU decoder's
//! own path). Mixed batches: prompts prefilled in chunks (one split across
//! passes), decode rows of other sequences in the same pass, a sequence
//! joining late, steps where only some sequences decode, block tables
//! drawn from a shuffled free list (never contiguous), passes limited in
//! rows and logits rows so that a batch runs as several passes.
//!
//! Tolerances: vs the CPU on the tiny f32 model, 2e-2 absolute on logits
//! (as `gpu_decoder.rs`: f16 KV, other summation orders); vs `GpuSequence`
//! on the synthetic INT4 models (f16 activations), 1e-2 of the largest
//! |logit| (same weights and kernels but for attention: paged kernel vs
//! the contiguous decode / prefill kernels, f16 rounding of the
//! activations amplifies their last-bit differences through the layers).
//! Greedy tokens must agree at every step.
//!
//! `paged_decode_throughput` prints aggregate decode tok/s through
//! `forward_batch` at 1, 8 and 32 sequences beside single-stream
//! `GpuSequence` decode on the same model.
//!
//! Without a GPU every test prints `SKIPPED` and passes.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use marlin_engine::serve::{
    spawn, BatchChunk, BatchModel, EngineConfig, EngineRequest, Event, ModelPick,
};
use marlin_engine::{Detokenizer, EngineError, FinishReason, Sampler, SamplingParams};
use marlin_models::gpu::bench::{synthetic_decoder, SyntheticShape};
use marlin_models::gpu::stages::StageTimer;
use marlin_models::gpu::{GpuBatchModel, GpuLoadOptions, GpuModel, GpuSequence, PagedOptions};
use marlin_models::{load_model, KvCache, LoadOptions};

const TINY_TOLERANCE: f32 = 2e-2;
const SYNTHETIC_RELATIVE_TOLERANCE: f32 = 1e-2;
/// The GGUF demo models: the GPU's GGUF block-type GEMMs quantize the
/// activations to Q8 (dp4a kernels) at M <= `DECODE_MAX_M` rows and use
/// dequantization + cuBLAS above, so a batched paged pass (all chunks' rows
/// together) and a per-sequence `GpuSequence` call take different
/// activation roundings, on random-token prompts. Measured on the H100
/// (2026-11-22): SmolLM2 max |Δlogit| 0.80 = 3.2e-2 of max |logit|, Gemma 3
/// 3.30 = 1.12e-1 (its activations are large: embeddings scaled by
/// sqrt(640)); greedy tokens agree up to near-ties in both. The gap is
/// attributed to the two activation paths but was not isolated further:
/// the tight checks of the paged code are the synthetic and tiny-qwen3
/// tests above (same GEMM path on both sides, <= 7e-4 relative).
const GGUF_RELATIVE_TOLERANCE: f32 = 1.5e-1;

fn fixtures_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("MARLIN_FIXTURES") {
        return PathBuf::from(p);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if built.exists() {
        built
    } else {
        PathBuf::from("crates/marlin-models/tests/fixtures")
    }
}

fn gpu_or_skip() -> bool {
    match marlin_cuda::device_count() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED: no usable GPU ({e})");
            false
        }
    }
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if (x - y).is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// Block tables grown on demand from a shuffled free list.
struct Blocks {
    free: Vec<u32>,
    block_size: usize,
    tables: Vec<Vec<u32>>,
}

impl Blocks {
    fn new(n_blocks: usize, block_size: usize, n_seqs: usize) -> Self {
        // A fixed permutation (7 is coprime with the block counts used), so
        // consecutive allocations are far apart and interleave sequences.
        assert!(!n_blocks.is_multiple_of(7));
        let free = (0..n_blocks)
            .map(|i| ((i * 7 + 3) % n_blocks) as u32)
            .collect();
        Self {
            free,
            block_size,
            tables: vec![Vec::new(); n_seqs],
        }
    }

    fn cover(&mut self, seq: usize, positions: usize) {
        while self.tables[seq].len() * self.block_size < positions {
            let b = self.free.pop().expect("test pool too small");
            self.tables[seq].push(b);
        }
    }

    /// One chunk per sequence of `seqs` (its new `tokens` after `len[s]`
    /// cached positions, logits wanted), its table grown to cover them.
    fn chunks<'a>(
        &'a mut self,
        seqs: &[usize],
        tokens: &'a [Vec<u32>],
        len: &[usize],
    ) -> Vec<BatchChunk<'a>> {
        for (&s, t) in seqs.iter().zip(tokens) {
            self.cover(s, len[s] + t.len());
        }
        seqs.iter()
            .zip(tokens)
            .map(|(&s, t)| BatchChunk {
                tokens: t,
                block_table: &self.tables[s],
                pos0: len[s],
                want_logits: true,
            })
            .collect()
    }
}

/// What a reference gives for one chunk: the logits of its last token and
/// its spread, the largest |Δlogit| between two equally valid feedings of
/// the same sequence (0 where it runs one): the f16 model's own
/// sensitivity at that token, which no pass can be held below.
struct RefLogits {
    logits: Vec<f32>,
    spread: f32,
}

impl From<Vec<f32>> for RefLogits {
    fn from(logits: Vec<f32>) -> Self {
        Self {
            logits,
            spread: 0.0,
        }
    }
}

/// The per-sequence reference of [`run_scenario`]: (sequence, new tokens,
/// logits wanted) -> logits of the last token.
type Reference<'a> = dyn FnMut(usize, &[u32], bool) -> RefLogits + 'a;

/// One step of a scenario: (sequence, new tokens or None = its next greedy
/// token, logits wanted).
type Step = Vec<(usize, Option<std::ops::Range<usize>>, bool)>;

/// Runs `steps` through `batch` and through `reference` (per sequence:
/// new tokens and whether their logits are wanted -> logits of the last
/// one) in lockstep, the next token of a
/// decoding sequence being the reference's argmax; the batch's argmax must
/// be the same token or one whose reference logit is within `tie_rel` of
/// max |logit| of the top (a near-tie that the tolerated error may flip).
/// Returns the worst |Δlogit| and the worst |Δlogit| / max |logit|, where
/// |Δlogit| beyond twice the reference's spread counts (a spread of 0: all
/// of it).
fn run_scenario(
    batch: &mut GpuBatchModel,
    prompts: &[Vec<u32>],
    steps: &[Step],
    tie_rel: f32,
    reference: &mut Reference,
) -> (f32, f32) {
    let n = prompts.len();
    let mut blocks = Blocks::new(batch.n_blocks(), batch.block_size(), n);
    let mut len = vec![0usize; n];
    let mut next: Vec<Option<u32>> = vec![None; n];
    let (mut worst, mut worst_rel) = (0f32, 0f32);
    for (si, step) in steps.iter().enumerate() {
        let tokens: Vec<Vec<u32>> = step
            .iter()
            .map(|(s, range, _)| match range {
                Some(r) => prompts[*s][r.clone()].to_vec(),
                None => vec![next[*s].expect("decode before the prompt finished")],
            })
            .collect();
        for ((s, _, _), t) in step.iter().zip(&tokens) {
            blocks.cover(*s, len[*s] + t.len());
        }
        let chunks: Vec<BatchChunk> = step
            .iter()
            .zip(&tokens)
            .map(|((s, _, want), t)| BatchChunk {
                tokens: t,
                block_table: &blocks.tables[*s],
                pos0: len[*s],
                want_logits: *want,
            })
            .collect();
        let got = batch.forward(&chunks).expect("forward_batch");
        for (((s, _, want), t), g) in step.iter().zip(&tokens).zip(&got) {
            let RefLogits { logits: r, spread } = reference(*s, t, *want);
            len[*s] += t.len();
            if !*want {
                assert!(g.is_empty(), "step {si}: logits nobody asked for");
                continue;
            }
            let d = max_abs_diff(&r, g);
            worst = worst.max(d);
            let beyond = (d - 2.0 * spread).max(0.0);
            worst_rel = worst_rel.max(beyond / max_abs(&r).max(1e-6));
            let spread_rel = spread / max_abs(&r).max(1e-6);
            if spread_rel > 1e-3 {
                eprintln!(
                    "  step {si} sequence {s}: an ill-conditioned token: |Δlogit| {d:.2e}, \
                     reference spread {spread:.2e} ({spread_rel:.2e} of max |logit|)"
                );
            }
            let (want_id, got_id) = (argmax(&r) as usize, argmax(g) as usize);
            assert!(
                r[got_id] >= r[want_id] - tie_rel * max_abs(&r) - 2.0 * spread,
                "step {si} sequence {s}: greedy token {got_id}, reference {want_id}"
            );
            next[*s] = Some(argmax(&r));
        }
    }
    (worst, worst_rel)
}

/// Two prompts prefilled in chunks (A: 6 + 5 tokens, B: 9 at once), a
/// third joining at step 3, decode steps where not everyone decodes.
fn mixed_steps() -> (Vec<usize>, Vec<Step>) {
    let lens = vec![11, 9, 5];
    let steps = vec![
        vec![(0, Some(0..6), false), (1, Some(0..9), true)],
        vec![(1, None, true), (0, Some(6..11), true)],
        vec![(0, None, true), (1, None, true)],
        vec![(0, None, true), (2, Some(0..5), true), (1, None, true)],
        vec![(2, None, true), (0, None, true)],
        vec![(1, None, true), (2, None, true), (0, None, true)],
        vec![(1, None, true)],
        vec![(0, None, true), (1, None, true), (2, None, true)],
        vec![(2, None, true), (0, None, true), (1, None, true)],
    ];
    (lens, steps)
}

/// Prompts long enough for the tensor-core tile kernel (more than
/// `DECODE_MAX_ROWS` prompt rows in a pass): A in chunks of 25 and 20
/// tokens (the second attends A's earlier blocks), B's 30 beside A's
/// first chunk, decode rows beside A's second.
fn long_prompt_steps() -> (Vec<usize>, Vec<Step>) {
    let lens = vec![45, 30];
    let steps = vec![
        vec![(0, Some(0..25), false), (1, Some(0..30), true)],
        vec![(1, None, true), (0, Some(25..45), true)],
        vec![(0, None, true), (1, None, true)],
        vec![(1, None, true), (0, None, true)],
    ];
    (lens, steps)
}

/// The reference of a chunk run as the pass runs it, so that each row meets
/// the same attention kernel in both: a chunk whose logits are wanted
/// (`split_last`) as its body, then its last token alone (the pass runs
/// that row with the decode rows on the decode kernel, the body's rows on
/// the tile kernel when there are more than DECODE_MAX_ROWS, as
/// GpuSequence's prefill does); returns the last token's logits.
fn forward_as_the_pass(seq: &mut GpuSequence, tokens: &[u32], split_last: bool) -> Vec<f32> {
    let body = if split_last {
        tokens.len() - 1
    } else {
        tokens.len()
    };
    let mut logits = Vec::new();
    for part in [&tokens[..body], &tokens[body..]] {
        if !part.is_empty() {
            logits = seq.forward(part).unwrap();
        }
    }
    logits
}

fn prompts_for(lens: &[usize], vocab: usize) -> Vec<Vec<u32>> {
    lens.iter()
        .enumerate()
        .map(|(s, &l)| {
            (0..l)
                .map(|i| ((i * 37 + s * 101 + 11) % vocab) as u32)
                .collect()
        })
        .collect()
}

#[test]
fn tiny_qwen3_paged_matches_cpu_and_gpu_sequence() {
    if !gpu_or_skip() {
        return;
    }
    let path = fixtures_dir().join("tiny-qwen3");
    let cpu = load_model(&path, &LoadOptions::default()).unwrap();
    let opts = GpuLoadOptions {
        cuda_graph: false,
        ..GpuLoadOptions::default()
    };
    let model = Arc::new(GpuModel::load(&path, &opts).unwrap());
    let vocab = cpu.config().vocab_size;
    // Tiny passes (8 rows, 2 logits rows) so that batches split; 24 blocks of 4.
    let paged = PagedOptions {
        block_size: 4,
        n_blocks: Some(24),
        max_blocks: 24,
        max_rows: 8,
        max_logit_rows: 2,
    };
    let (lens, steps) = mixed_steps();
    let prompts = prompts_for(&lens, vocab);

    let mut batch = GpuBatchModel::new(Arc::clone(&model), &paged).unwrap();
    let mut caches: Vec<KvCache> = (0..3).map(|_| cpu.new_cache(64).unwrap()).collect();
    let (d, _) = run_scenario(&mut batch, &prompts, &steps, 0.0, &mut |s, t, _| {
        cpu.forward(t, &mut caches[s]).unwrap().into()
    });
    eprintln!("tiny-qwen3 paged vs CPU: max |Δlogit| = {d:.2e}");
    assert!(d < TINY_TOLERANCE, "paged vs CPU max |Δlogit| {d}");

    // The contiguous path needs attention kernels for head_dim 16.
    if let Err(e) = model.new_sequence(64).unwrap().forward(&prompts[0]) {
        eprintln!("SKIPPED: tiny-qwen3 through GpuSequence: {e}");
        return;
    }
    let mut batch = GpuBatchModel::new(Arc::clone(&model), &paged).unwrap();
    let mut seqs: Vec<_> = (0..3).map(|_| model.new_sequence(64).unwrap()).collect();
    let (d, _) = run_scenario(&mut batch, &prompts, &steps, 0.0, &mut |s, t, _| {
        seqs[s].forward(t).unwrap().into()
    });
    eprintln!("tiny-qwen3 paged vs GpuSequence: max |Δlogit| = {d:.2e}");
    assert!(d < TINY_TOLERANCE, "paged vs GpuSequence max |Δlogit| {d}");
}

/// Token ids as text (the engine test needs no tokenizer).
struct IdText;

impl Detokenizer for IdText {
    fn push(&mut self, id: u32) -> Result<String, EngineError> {
        Ok(format!("<{id}>"))
    }
    fn finish(&mut self) -> Result<String, EngineError> {
        Ok(String::new())
    }
}

/// The serving engine itself on the GPU model (its own thread, not the one
/// that loaded the model): 10 greedy requests at once through a pool small
/// enough to preempt. Every token the engine emits must be the CPU model's
/// greedy choice after the same prefix (teacher-forced), or within
/// `2 * TINY_TOLERANCE` of it: on this random tiny model near-ties are
/// common, and one flipped tie changes the rest of a continuation.
#[test]
fn engine_on_gpu_batch_model_matches_cpu_greedy() {
    if !gpu_or_skip() {
        return;
    }
    const NEW: usize = 12;
    let path = fixtures_dir().join("tiny-qwen3");
    let cpu = load_model(&path, &LoadOptions::default()).unwrap();
    let vocab = cpu.config().vocab_size;
    let model = Arc::new(GpuModel::load(&path, &GpuLoadOptions::default()).unwrap());
    let prompts: Vec<Vec<u32>> = (0..10)
        .map(|r| {
            (0..3 + 2 * r)
                .map(|i| ((i * 53 + r * 17 + 5) % vocab) as u32)
                .collect()
        })
        .collect();
    // 20 blocks of 4 positions hold ~3 of these sequences at full length:
    // admission and preemption by recomputation both happen.
    let paged = PagedOptions {
        block_size: 4,
        n_blocks: Some(20),
        max_blocks: 20,
        max_rows: 16,
        max_logit_rows: 8,
    };
    let batch = GpuBatchModel::new(Arc::clone(&model), &paged).unwrap();
    let detok = || -> Box<dyn Detokenizer> { Box::new(IdText) };
    let cfg = EngineConfig {
        max_num_seqs: 8,
        max_batch_tokens: 16,
        max_queue: 64,
        max_model_len: 64,
    };
    let engine = spawn(Box::new(batch), Box::new(detok), cfg).unwrap();
    let greedy = SamplingParams {
        temperature: 0.0,
        seed: Some(1),
        ..SamplingParams::default()
    };
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            engine
                .submit(EngineRequest {
                    prompt: p.clone(),
                    sampling: greedy.clone(),
                    max_tokens: NEW,
                    stop_strings: Vec::new(),
                    stop_token_ids: Vec::new(),
                    logprobs: None,
                })
                .unwrap()
        })
        .collect();
    let (mut exact, mut total) = (0, 0);
    for (i, mut st) in streams.into_iter().enumerate() {
        let mut got = Vec::new();
        loop {
            match st.recv() {
                Some(Event::Token { id, .. }) => got.push(id),
                Some(Event::Finished { reason, .. }) => {
                    assert_eq!(reason, FinishReason::Length, "request {i}");
                    break;
                }
                Some(Event::Error(e)) => panic!("request {i}: {e}"),
                None => panic!("request {i}: stream ended early"),
            }
        }
        assert_eq!(got.len(), NEW, "request {i}");
        let mut cache = cpu.new_cache(64).unwrap();
        let mut logits = cpu.forward(&prompts[i], &mut cache).unwrap();
        for (k, &t) in got.iter().enumerate() {
            let best = argmax(&logits) as usize;
            assert!(
                logits[t as usize] >= logits[best] - 2.0 * TINY_TOLERANCE,
                "request {i} token {k}: {t} (logit {}), CPU greedy {best} ({})",
                logits[t as usize],
                logits[best]
            );
            exact += usize::from(t as usize == best);
            total += 1;
            logits = cpu.forward(&[t], &mut cache).unwrap();
        }
    }
    eprintln!(
        "engine on the GPU: {exact} of {total} tokens the CPU's exact greedy choice, the rest near-ties"
    );
    let stats = engine.stats();
    eprintln!(
        "engine on the GPU: {} requests, {} steps, {} preemptions, {} blocks used after",
        stats.requests_finished, stats.steps, stats.preemptions_total, stats.kv_blocks_used
    );
    assert_eq!(stats.requests_finished, 10);
    assert_eq!(stats.running, 0);
    engine.shutdown(std::time::Duration::from_secs(5));
}

/// A small synthetic INT4 model (f16 activations) with `windows` per layer.
fn synthetic_model(shape: &SyntheticShape, windows: &[Option<usize>]) -> Arc<GpuModel> {
    let dev = marlin_cuda::CudaDevice::new(0).unwrap();
    let mut dec = synthetic_decoder(&dev, shape, 0xC0FFEE).unwrap();
    for (l, w) in dec.spec.layers.iter_mut().zip(windows) {
        l.window = *w;
    }
    let opts = GpuLoadOptions {
        cuda_graph: false,
        ..GpuLoadOptions::default()
    };
    Arc::new(GpuModel::from_decoder(dev, dec, opts))
}

#[test]
fn synthetic_paged_matches_gpu_sequence_gqa_and_windows() {
    if !gpu_or_skip() {
        return;
    }
    let shapes = [
        // SmolLM2-like heads (9 / 3 of 64), global attention.
        (
            SyntheticShape {
                n_layers: 3,
                hidden: 576,
                n_heads: 9,
                n_kv_heads: 3,
                head_dim: 64,
                ffn: 1536,
                vocab: 2048,
                group: 64,
            },
            vec![None, None, None],
        ),
        // Gemma-3-like heads (4 / 1 of 256), sliding windows of 6 on two of
        // three layers (prompts of 11 see the window clip).
        (
            SyntheticShape {
                n_layers: 3,
                hidden: 640,
                n_heads: 4,
                n_kv_heads: 1,
                head_dim: 256,
                ffn: 2048,
                vocab: 2048,
                group: 64,
            },
            vec![Some(6), Some(6), None],
        ),
    ];
    // Short chunks in passes of 8 rows (prompt rows on the decode kernel),
    // then long prompts in passes of 64 (prompt rows on the tile kernel).
    // With the hd-256 model's windows of 6, the last token of A's 20-token
    // chunk (position 44) is ill-conditioned: GpuSequence's own feedings
    // (whole prompt, chunks, token by token) disagree there by 3-8% of max
    // |logit| while every other position agrees within 6.2e-4 (docs/CUDA.md
    // change 79 (d)). So the long scenario's reference also runs each chunk
    // token by token and the pass may differ by twice that spread beyond
    // the tolerance.
    let scenarios = [(mixed_steps(), 4, 26, 8), (long_prompt_steps(), 16, 12, 64)];
    for (shape, windows) in &shapes {
        let model = synthetic_model(shape, windows);
        for ((lens, steps), block_size, n_blocks, max_rows) in &scenarios {
            let prompts = prompts_for(lens, shape.vocab);
            let paged = PagedOptions {
                block_size: *block_size,
                n_blocks: Some(*n_blocks),
                max_blocks: *n_blocks,
                max_rows: *max_rows,
                max_logit_rows: 2,
            };
            let mut batch = GpuBatchModel::new(Arc::clone(&model), &paged).unwrap();
            let new_seqs = || -> Vec<_> {
                (0..lens.len())
                    .map(|_| model.new_sequence(64).unwrap())
                    .collect()
            };
            let (mut seqs, mut by_token) = (new_seqs(), new_seqs());
            let second_feeding = *max_rows > 8;
            let tie = 2.0 * SYNTHETIC_RELATIVE_TOLERANCE;
            let (d, rel) = run_scenario(&mut batch, &prompts, steps, tie, &mut |s, t, want| {
                let logits = forward_as_the_pass(&mut seqs[s], t, want);
                if !second_feeding {
                    return logits.into();
                }
                let mut other = Vec::new();
                for tok in t {
                    other = by_token[s].forward(&[*tok]).unwrap();
                }
                let spread = if want {
                    max_abs_diff(&logits, &other)
                } else {
                    0.0
                };
                RefLogits { logits, spread }
            });
            eprintln!(
                "synthetic hd {} ({} / {} heads, windows {windows:?}), prompts {lens:?} in \
                 passes of {max_rows} rows, paged vs GpuSequence: max |Δlogit| = {d:.2e} \
                 ({rel:.2e} of max |logit| beyond twice the reference's spread)",
                shape.head_dim, shape.n_heads, shape.n_kv_heads
            );
            assert!(rel < SYNTHETIC_RELATIVE_TOLERANCE, "relative {rel}");
        }
    }
}

/// The demo models (when `MARLIN_MODELS` or /tmp/marlin-models holds them,
/// as on the GPU machine after scripts/gpu_ship_models.sh): SmolLM2 (9 / 3
/// heads of 64) and Gemma 3 (4 / 1 of 256, sliding windows, GGUF f32
/// activations) through the paged pool against `GpuSequence`.
#[test]
fn real_models_paged_match_gpu_sequence() {
    if !gpu_or_skip() {
        return;
    }
    let dir = std::env::var_os("MARLIN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/marlin-models"));
    for file in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma-3-270m-q4_k_m.gguf",
    ] {
        let path = dir.join(file);
        if !path.exists() {
            eprintln!("SKIPPED: {} not found (MARLIN_MODELS)", path.display());
            continue;
        }
        let model = Arc::new(GpuModel::load(&path, &GpuLoadOptions::default()).unwrap());
        // Short chunks in passes of 8 rows, then long prompts in passes of
        // 64 (prompt rows on the tensor-core tile kernel; the reference fed
        // as the pass runs, as in the synthetic test).
        for ((lens, steps), block_size, n_blocks, max_rows) in
            [(mixed_steps(), 4, 26, 8), (long_prompt_steps(), 16, 12, 64)]
        {
            let prompts = prompts_for(&lens, model.config().vocab_size);
            let paged = PagedOptions {
                block_size,
                n_blocks: Some(n_blocks),
                max_blocks: n_blocks,
                max_rows,
                max_logit_rows: 2,
            };
            let mut batch = GpuBatchModel::new(Arc::clone(&model), &paged).unwrap();
            let mut seqs: Vec<_> = (0..lens.len())
                .map(|_| model.new_sequence(64).unwrap())
                .collect();
            let tie = GGUF_RELATIVE_TOLERANCE;
            // The short scenario keeps its whole-chunk reference (the
            // tolerance was measured that way).
            let (d, rel) = run_scenario(&mut batch, &prompts, &steps, tie, &mut |s, t, want| {
                forward_as_the_pass(&mut seqs[s], t, want && max_rows > 8).into()
            });
            eprintln!(
                "{file} prompts {lens:?} in passes of {max_rows} rows, paged vs GpuSequence: \
                 max |Δlogit| = {d:.2e} ({rel:.2e} of max |logit|)"
            );
            assert!(rel < GGUF_RELATIVE_TOLERANCE, "relative {rel}");
        }
    }
}

#[test]
fn bad_chunks_are_errors_and_leave_the_model_usable() {
    if !gpu_or_skip() {
        return;
    }
    let shape = SyntheticShape {
        n_layers: 2,
        hidden: 256,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
        ffn: 512,
        vocab: 512,
        group: 64,
    };
    let model = synthetic_model(&shape, &[None, None]);
    let paged = PagedOptions {
        block_size: 4,
        n_blocks: Some(8),
        max_blocks: 8,
        max_rows: 16,
        max_logit_rows: 4,
    };
    let mut batch = GpuBatchModel::new(Arc::clone(&model), &paged).unwrap();
    let tokens = [1u32, 2, 3, 4, 5];
    let good = |table: &'static [u32]| BatchChunk {
        tokens: &tokens,
        block_table: table,
        pos0: 0,
        want_logits: true,
    };
    let first = batch.forward(&[good(&[6, 1])]).unwrap();
    let bad = [
        // A block id outside the pool.
        BatchChunk {
            block_table: &[6, 8],
            ..good(&[])
        },
        // Past the table's capacity (5 positions in one block of 4).
        good(&[6]),
        BatchChunk {
            pos0: usize::MAX - 2,
            ..good(&[6, 1])
        },
        // No tokens, a token outside the vocabulary.
        BatchChunk {
            tokens: &[],
            ..good(&[6, 1])
        },
        BatchChunk {
            tokens: &[512],
            ..good(&[6, 1])
        },
    ];
    for (i, c) in bad.iter().enumerate() {
        // Alone and next to a good chunk: the whole batch is refused.
        let e = batch.forward(&[*c]).expect_err(&format!("bad chunk {i}"));
        eprintln!("bad chunk {i}: {e}");
        assert!(batch.forward(&[good(&[2, 3]), *c]).is_err());
        assert!(batch.forward_batch(&[*c]).is_err(), "engine error {i}");
    }
    // Nothing ran: the same chunk on other blocks gives the same logits.
    let again = batch.forward(&[good(&[0, 7])]).unwrap();
    assert_eq!(first, again);
    // A pool that cannot be sized is an error, not a panic.
    let zero = PagedOptions {
        n_blocks: Some(0),
        ..paged.clone()
    };
    assert!(GpuBatchModel::new(Arc::clone(&model), &zero).is_err());
    let no_rows = PagedOptions {
        max_rows: 0,
        ..paged
    };
    assert!(GpuBatchModel::new(model, &no_rows).is_err());
}

/// Median of `runs` timings of `f` in seconds.
fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

#[test]
fn paged_decode_throughput() {
    if !gpu_or_skip() {
        return;
    }
    const CTX: usize = 256;
    const STEPS: usize = 32;
    const RUNS: usize = 3;
    let shapes = [
        (
            "SmolLM2-135M-shaped",
            SyntheticShape {
                n_layers: 30,
                hidden: 576,
                n_heads: 9,
                n_kv_heads: 3,
                head_dim: 64,
                ffn: 1536,
                vocab: 49152,
                group: 64,
            },
        ),
        ("Llama-3.1-8B-shaped", SyntheticShape::llama31_8b()),
    ];
    for (name, shape) in &shapes {
        let model = synthetic_model(shape, &vec![None; shape.n_layers]);
        let vocab = shape.vocab;
        let dev = model.device().clone();
        eprintln!(
            "{name}: {} layers, d {}, {} / {} heads of {}, vocab {}; INT4 g{} (random), f16 KV; \
             ctx {CTX}, {STEPS} decode steps, median of {RUNS}; logits of every sequence to the host each step",
            shape.n_layers, shape.hidden, shape.n_heads, shape.n_kv_heads, shape.head_dim, vocab, shape.group
        );
        eprintln!(
            "{:>24} {:>6} {:>10} {:>10}",
            "path", "seqs", "step ms", "tok/s"
        );
        // Peer: one sequence through GpuSequence (contiguous cache, CUDA graph).
        {
            let graph_model = GpuModel::from_decoder(
                dev.clone(),
                synthetic_decoder(&dev, shape, 0xC0FFEE).unwrap(),
                GpuLoadOptions::default(),
            );
            let mut seq = graph_model.new_sequence(CTX + RUNS * STEPS + 8).unwrap();
            let prompt: Vec<u32> = (0..CTX).map(|i| (i * 31 % vocab) as u32).collect();
            seq.forward(&prompt).unwrap();
            seq.forward(&[1]).unwrap();
            seq.forward(&[2]).unwrap();
            let secs = median_secs(RUNS, || {
                for i in 0..STEPS {
                    let l = seq.forward(&[(i % vocab) as u32]).unwrap();
                    assert!(l[0].is_finite());
                }
            });
            let step = secs / STEPS as f64;
            eprintln!(
                "{:>24} {:>6} {:>10.3} {:>10.1}",
                "GpuSequence (graph)",
                1,
                step * 1e3,
                1.0 / step
            );
        }
        // The paged pass eager and with its decode graphs (a twin model,
        // same weights, `cuda_graph` on).
        let graph_model = Arc::new(GpuModel::from_decoder(
            dev.clone(),
            synthetic_decoder(&dev, shape, 0xC0FFEE).unwrap(),
            GpuLoadOptions {
                cuda_graph: true,
                ..GpuLoadOptions::default()
            },
        ));
        // Then the graphs with every token picked on the device (greedy
        // requests, then the OpenAI default draw, temperature 1: no logits
        // sent back), and last the draw on the host as the engine did
        // before: the logits back, then each row sampled on 8 threads.
        let t1 = ModelPick::Draw {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            uniform: 0.37,
        };
        let variants = [
            ("GpuBatchModel (paged)", &model, None, false),
            ("GpuBatchModel (graphs)", &graph_model, None, false),
            (
                "  (graphs, argmax)",
                &graph_model,
                Some(ModelPick::Argmax),
                false,
            ),
            ("  (graphs, T 1 draw)", &graph_model, Some(t1), false),
            ("  (graphs, host T 1)", &graph_model, None, true),
        ];
        for (label, paged_model, pick, host_draw) in variants {
            let graphs = paged_model.options().cuda_graph;
            for seqs in [1usize, 8, 32] {
                let positions = CTX + 2 * RUNS * STEPS + 8;
                let per_seq = positions.div_ceil(16);
                let paged = PagedOptions {
                    block_size: 16,
                    n_blocks: Some(seqs * per_seq),
                    max_blocks: seqs * per_seq,
                    max_rows: 512,
                    max_logit_rows: 32,
                };
                let mut batch = GpuBatchModel::new(Arc::clone(paged_model), &paged).unwrap();
                // Interleaved blocks: sequence s owns blocks s, s + seqs, ...
                let tables: Vec<Vec<u32>> = (0..seqs)
                    .map(|s| (0..per_seq).map(|b| (b * seqs + s) as u32).collect())
                    .collect();
                let prompts: Vec<Vec<u32>> = (0..seqs)
                    .map(|s| {
                        (0..CTX)
                            .map(|i| ((i * 31 + s * 7) % vocab) as u32)
                            .collect()
                    })
                    .collect();
                // Prefill: one chunk per sequence; passes of 512 rows.
                let chunks: Vec<BatchChunk> = (0..seqs)
                    .map(|s| BatchChunk {
                        tokens: &prompts[s],
                        block_table: &tables[s],
                        pos0: 0,
                        want_logits: true,
                    })
                    .collect();
                let t0 = Instant::now();
                batch.forward(&chunks).unwrap();
                let prefill = t0.elapsed().as_secs_f64();
                let mut pos = CTX;
                let ids: Vec<[u32; 1]> = (0..seqs).map(|s| [(s * 13 % vocab) as u32]).collect();
                // Logits rows kept from step to step, as the engine keeps them.
                let (mut out, mut picked) = (Vec::new(), Vec::new());
                let mut samplers: Vec<Sampler> = (0..seqs)
                    .map(|s| {
                        Sampler::new(SamplingParams {
                            temperature: 1.0,
                            top_k: 0,
                            top_p: 1.0,
                            min_p: 0.0,
                            seed: Some(s as u64),
                            ..SamplingParams::default()
                        })
                        .unwrap()
                    })
                    .collect();
                let mut step = |pos: usize, want_logits: bool| {
                    let chunks: Vec<BatchChunk> = (0..seqs)
                        .map(|s| BatchChunk {
                            tokens: &ids[s],
                            block_table: &tables[s],
                            pos0: pos,
                            want_logits,
                        })
                        .collect();
                    if let Some(p) = pick {
                        let picks = vec![if want_logits { p } else { ModelPick::Logits }; seqs];
                        batch
                            .forward_picking(&chunks, &picks, &mut out, &mut picked)
                            .unwrap();
                        if want_logits {
                            assert!(picked
                                .iter()
                                .all(|p| p.is_some_and(|t| (t as usize) < vocab)));
                        }
                    } else {
                        batch.forward_into(&chunks, &mut out).unwrap();
                        if want_logits {
                            assert!(out.iter().all(|l| l.len() == vocab && l[0].is_finite()));
                            if host_draw {
                                host_draws(&mut samplers, &mut out);
                            }
                        }
                    }
                };
                step(pos, true);
                pos += 1;
                let mut timed = |want_logits: bool| {
                    let secs = median_secs(RUNS, || {
                        for _ in 0..STEPS {
                            step(pos, want_logits);
                            pos += 1;
                        }
                    });
                    secs / STEPS as f64
                };
                let step_s = timed(true);
                // The same steps with no logits wanted (no LM head, nothing
                // read back, no synchronisation: the host queues the next
                // step's launches while the GPU runs this one).
                let bare_s = timed(false);
                // What one thread takes to copy that many logits rows between
                // host buffers (the pass copies the rows from its page-locked
                // buffer into the caller's, on several threads above 4 MB).
                let src = vec![1.0f32; seqs * vocab];
                let mut dst = vec![vec![0.0f32; vocab]; seqs];
                let copy_s = median_secs(RUNS, || {
                    for (d, s) in dst.iter_mut().zip(src.chunks_exact(vocab)) {
                        d.copy_from_slice(s);
                    }
                    assert_eq!(dst[seqs - 1][vocab - 1], 1.0);
                });
                eprintln!(
                    "{:>24} {:>6} {:>10.3} {:>10.1}   (no logits wanted: {:.3} ms; one thread's copy of the logits rows {:.3} ms; prefill {} x {CTX} tokens: {:.1} ms, {:.0} tok/s)",
                    label,
                    seqs,
                    step_s * 1e3,
                    seqs as f64 / step_s,
                    bare_s * 1e3,
                    copy_s * 1e3,
                    seqs,
                    prefill * 1e3,
                    (seqs * CTX) as f64 / prefill
                );
                if graphs || pick.is_some() {
                    continue;
                }
                // Where a step goes: its kernel groups timed back to back (the
                // timer spins 1 ms before each layer so that the host's
                // launches queue behind it), against the step's wall time.
                let mut timer = StageTimer::new(1_000_000);
                let chunks: Vec<BatchChunk> = (0..seqs)
                    .map(|s| BatchChunk {
                        tokens: &ids[s],
                        block_table: &tables[s],
                        pos0: pos,
                        want_logits: true,
                    })
                    .collect();
                batch
                    .forward_timed(&chunks, &mut Vec::new(), Some(&mut timer))
                    .unwrap();
                dev.synchronize().unwrap();
                let totals = timer.totals().unwrap();
                let kernels_us: f64 = totals.iter().map(|t| t.1).sum();
                let parts: Vec<String> = totals
                    .iter()
                    .map(|(stage, us, _)| format!("{} {us:.0}", stage.name()))
                    .collect();
                eprintln!(
                    "{:>24} {:>6} kernels {:.0} us of the {:.0} us step: {}",
                    "  stages",
                    seqs,
                    kernels_us,
                    step_s * 1e6,
                    parts.join(", ")
                );
            }
        }
    }
}

/// Each row's token drawn on the host, the rows spread over 8 threads (the
/// serving engine's way when the model sends its logits back).
fn host_draws(samplers: &mut [Sampler], rows: &mut [Vec<f32>]) {
    let per = rows.len().div_ceil(8).max(1);
    std::thread::scope(|scope| {
        for (ss, rs) in samplers.chunks_mut(per).zip(rows.chunks_mut(per)) {
            scope.spawn(move || {
                for (s, r) in ss.iter_mut().zip(rs.iter_mut()) {
                    std::hint::black_box(s.sample(r).unwrap());
                }
            });
        }
    });
}

/// A two-layer synthetic INT4 model with SmolLM2's heads (9 / 3 of 64),
/// the same weights at every call (twins for same-input comparisons).
fn two_layer_model(dev: &Arc<marlin_cuda::CudaDevice>, cuda_graph: bool) -> Arc<GpuModel> {
    let shape = SyntheticShape {
        n_layers: 2,
        hidden: 576,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        ffn: 1536,
        vocab: 2048,
        group: 64,
    };
    let dec = synthetic_decoder(dev, &shape, 0xC0FFEE).unwrap();
    let opts = GpuLoadOptions {
        cuda_graph,
        ..GpuLoadOptions::default()
    };
    Arc::new(GpuModel::from_decoder(dev.clone(), dec, opts))
}

/// Decode passes replayed as CUDA graphs against the same passes run
/// eagerly on a twin model (same weights, graphs off): bit-equal logits
/// while the batch size changes, tables grow past power-of-two widths (new
/// graph shapes), and prompt chunks between decode steps grow the GEMM
/// workspaces and the block-table buffer (graphs captured again).
#[test]
fn decode_graphs_match_eager_passes() {
    if !gpu_or_skip() {
        return;
    }
    let dev = marlin_cuda::CudaDevice::new(0).unwrap();
    let model = |cuda_graph| two_layer_model(&dev, cuda_graph);
    let paged = PagedOptions {
        block_size: 4,
        n_blocks: Some(200),
        max_blocks: 200,
        max_rows: 128,
        max_logit_rows: 8,
    };
    let mut on = GpuBatchModel::new(model(true), &paged).unwrap();
    let mut off = GpuBatchModel::new(model(false), &paged).unwrap();
    let n_seqs = 6;
    let mut blocks = Blocks::new(200, 4, n_seqs);
    let mut len = vec![0usize; n_seqs];
    let mut next: Vec<u32> = vec![0; n_seqs];
    let (mut on_out, mut off_out) = (Vec::new(), Vec::new());
    let mut step = |seqs: &[usize], prompt: Option<(usize, usize)>, si: usize| {
        // (sequence, tokens): a prompt chunk for `prompt`, else next tokens.
        let tokens: Vec<Vec<u32>> = seqs
            .iter()
            .map(|&s| match prompt {
                Some((p, n)) if p == s => {
                    (0..n).map(|i| ((i * 31 + s * 7) % 2048) as u32).collect()
                }
                _ => vec![next[s]],
            })
            .collect();
        let chunks = blocks.chunks(seqs, &tokens, &len);
        on.forward_into(&chunks, &mut on_out).unwrap();
        off.forward_into(&chunks, &mut off_out).unwrap();
        for (i, &s) in seqs.iter().enumerate() {
            let d = max_abs_diff(&on_out[i], &off_out[i]);
            assert!(
                d == 0.0,
                "step {si} sequence {s}: graph vs eager |Δlogit| {d}"
            );
            next[s] = argmax(&off_out[i]);
            len[s] += tokens[i].len();
        }
    };
    let mut si = 0;
    // Short prompts for four sequences (one row each at first: a decode-
    // shaped pass that is a prompt), then decode with changing batches.
    for s in 0..4 {
        step(&[s], Some((s, 3 + 2 * s)), si);
        si += 1;
    }
    let batches: [&[usize]; 6] = [
        &[0, 1, 2, 3],
        &[0, 1, 2, 3],
        &[1, 3],
        &[1, 3],
        &[0, 1, 2, 3],
        &[2],
    ];
    for round in 0..6 {
        for b in batches {
            step(b, None, si);
            si += 1;
        }
        // A prompt chunk between decode rounds: rows the GEMMs have not
        // seen (workspace growth), a new sequence (more tables).
        if round < 2 {
            step(&[4 + round], Some((4 + round, 40 + 40 * round)), si);
            si += 1;
            step(&[0, 4 + round], None, si);
            si += 1;
        }
    }
    eprintln!(
        "{si} passes, {} decode graphs captured, lengths {len:?}",
        on.graph_captures()
    );
    assert!(on.graph_captures() > 0);
}

/// Chunks whose token the device picks get it (and no logits row); the
/// others get the same logits as a twin model that sends every row back.
/// The picks are those logits' argmax, or the CPU sampler's draw with the
/// same uniform, bit for bit (top-k off and 40, min-p, top-p 0.9 or 1); a draw with
/// a top-k past the device's bound gets its logits. Mixed passes (prompt
/// chunks, decode rows with and without picks) and decode-only passes
/// (graphs with the argmax in the LM head's stage, or each row's choice)
/// alternate.
#[test]
fn picked_tokens_are_the_argmax_of_the_logits() {
    if !gpu_or_skip() {
        return;
    }
    let dev = marlin_cuda::CudaDevice::new(0).unwrap();
    let model = || two_layer_model(&dev, true);
    let paged = PagedOptions {
        block_size: 4,
        n_blocks: Some(100),
        max_blocks: 100,
        max_rows: 64,
        max_logit_rows: 8,
    };
    let mut picking = GpuBatchModel::new(model(), &paged).unwrap();
    let mut all_logits = GpuBatchModel::new(model(), &paged).unwrap();
    let n_seqs = 4;
    let mut blocks = Blocks::new(100, 4, n_seqs);
    let mut len = vec![0usize; n_seqs];
    let mut next: Vec<u32> = vec![0; n_seqs];
    let (mut out, mut picked, mut reference) = (Vec::new(), Vec::new(), Vec::new());
    let (mut picks, mut rows, mut draws) = (0, 0, 0);
    for si in 0..14 {
        // Steps 0-1: prompts (two per pass); then decode, every sequence
        // each step, sequences 0 and 2 (odd steps: all) picking.
        let seqs: Vec<usize> = if si < 2 {
            vec![2 * si, 2 * si + 1]
        } else {
            (0..n_seqs).collect()
        };
        let tokens: Vec<Vec<u32>> = seqs
            .iter()
            .map(|&s| {
                if si < 2 {
                    (0..5 + 7 * s)
                        .map(|i| ((i * 31 + s) % 2048) as u32)
                        .collect()
                } else {
                    vec![next[s]]
                }
            })
            .collect();
        let chunks = blocks.chunks(&seqs, &tokens, &len);
        // Sequence 0 greedy; 1 a draw (top-k off / 40, min-p, top-p 0.9 or
        // 1: every device path) whose uniform sweeps [0, 1); 2 greedy on
        // odd steps; 3 a draw with a top-k the device does not take (logits
        // back) on odd steps.
        let uniform = ((si * 7919) % 1000) as f32 / 1000.0;
        let draw = |top_k: usize| ModelPick::Draw {
            temperature: 0.9,
            top_k,
            top_p: if si % 4 == 1 { 1.0 } else { 0.9 },
            min_p: 0.02,
            uniform,
        };
        let pick: Vec<ModelPick> = seqs
            .iter()
            .map(|&s| match (s, si % 2) {
                (0, _) | (2, 1) => ModelPick::Argmax,
                (1, _) => draw(if si % 3 == 0 { 40 } else { 0 }),
                (3, 1) => draw(300),
                _ => ModelPick::Logits,
            })
            .collect();
        picking
            .forward_picking(&chunks, &pick, &mut out, &mut picked)
            .unwrap();
        all_logits.forward_into(&chunks, &mut reference).unwrap();
        for (i, &s) in seqs.iter().enumerate() {
            let greedy = argmax(&reference[i]);
            // The device's token is the host's for the same logits (the
            // twin's are bit-equal) and uniform; a top-k past its bound
            // comes back as logits.
            let device_takes = !matches!(pick[i], ModelPick::Draw { top_k, .. } if top_k > marlin_cuda::ops::MAX_TOP_K);
            let want = if device_takes {
                pick[i].host_token(&reference[i]).unwrap()
            } else {
                None
            };
            draws += usize::from(
                matches!(pick[i], ModelPick::Draw { .. }) && want.is_some_and(|t| t != greedy),
            );
            if let Some(want) = want {
                assert_eq!(
                    picked[i],
                    Some(want),
                    "step {si} sequence {s}: {:?}",
                    pick[i]
                );
                assert!(
                    out[i].is_empty(),
                    "step {si} sequence {s}: logits of a pick"
                );
                picks += 1;
            } else {
                assert_eq!(picked[i], None, "step {si} sequence {s}");
                let d = max_abs_diff(&out[i], &reference[i]);
                assert!(d == 0.0, "step {si} sequence {s}: |Δlogit| {d}");
                rows += 1;
            }
            next[s] = picked[i].unwrap_or(greedy);
            len[s] += tokens[i].len();
        }
    }
    eprintln!(
        "{picks} tokens picked on the device ({draws} draws other than the argmax), {rows} logits rows sent, {} decode graphs captured",
        picking.graph_captures()
    );
    assert!(draws > 0, "every draw took the argmax");
    assert!(picking.graph_captures() > 0);
}
