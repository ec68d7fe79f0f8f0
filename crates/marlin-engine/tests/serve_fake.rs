//! The serving engine on a fake model that keeps its "KV cache" as tokens in
//! a paged pool and derives each next token from every cached position read
//! back through the block table: a wrong table, a stale block after
//! preemption or a bad prefix-cache hit changes the output.

use marlin_engine::serve::{
    generate_blocking, spawn, BatchChunk, BatchModel, EngineConfig, EngineHandle, EngineRequest,
    EngineStats, Event, ModelPick, RankedTokens, SubmitError, TokenConstraint,
};
use marlin_engine::{Detokenizer, EngineError, FinishReason, SamplingParams};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VOCAB: usize = 26;

struct FakeModel {
    block_size: usize,
    n_blocks: usize,
    /// (n_blocks * block_size): the token cached at each slot.
    slots: Vec<Option<u32>>,
    delay: Duration,
    /// Picks argmax tokens itself where the engine allows it
    /// (`forward_batch_picking`), counting (picked, logits rows sent).
    picks: Option<Arc<(AtomicUsize, AtomicUsize)>>,
}

/// The fake model's next token after `tokens`.
fn next_token(tokens: &[u32]) -> u32 {
    let h = tokens.iter().enumerate().fold(17u64, |h, (j, &t)| {
        h.wrapping_mul(31)
            .wrapping_add(u64::from(t) * (j as u64 + 1))
    });
    (h % VOCAB as u64) as u32
}

impl BatchModel for FakeModel {
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn n_blocks(&self) -> usize {
        self.n_blocks
    }
    fn forward_batch(&mut self, chunks: &[BatchChunk]) -> Result<Vec<Vec<f32>>, EngineError> {
        std::thread::sleep(self.delay);
        let bs = self.block_size;
        let slot = |table: &[u32], p: usize| -> Result<usize, EngineError> {
            let b = table
                .get(p / bs)
                .ok_or_else(|| EngineError::Model(format!("position {p} past the table")))?;
            Ok(*b as usize * bs + p % bs)
        };
        for c in chunks {
            for (i, &t) in c.tokens.iter().enumerate() {
                let s = slot(c.block_table, c.pos0 + i)?;
                self.slots[s] = Some(t);
            }
        }
        chunks
            .iter()
            .map(|c| {
                if !c.want_logits {
                    return Ok(Vec::new());
                }
                let seen = (0..c.pos0 + c.tokens.len())
                    .map(|p| {
                        self.slots[slot(c.block_table, p)?]
                            .ok_or_else(|| EngineError::Model(format!("slot of {p} never written")))
                    })
                    .collect::<Result<Vec<u32>, _>>()?;
                let mut logits = vec![0.0f32; VOCAB];
                logits[next_token(&seen) as usize] = 5.0;
                logits[(next_token(&seen) as usize + 1) % VOCAB] = 3.0;
                Ok(logits)
            })
            .collect()
    }

    fn forward_batch_picking(
        &mut self,
        chunks: &[BatchChunk],
        picks: &[ModelPick],
        logits: &mut Vec<Vec<f32>>,
        picked: &mut Vec<Option<u32>>,
    ) -> Result<(), EngineError> {
        let counts = self.picks.clone();
        forward_then_pick(self, counts.as_deref(), chunks, picks, logits, picked)
    }
}

/// `model`'s logits, then the picks the engine allows answered with the
/// CPU sampler's definition (what a device sampler computes), those rows
/// cleared; counts (picked, logits rows sent). Without `counts`, no picks.
fn forward_then_pick(
    model: &mut dyn BatchModel,
    counts: Option<&(AtomicUsize, AtomicUsize)>,
    chunks: &[BatchChunk],
    picks: &[ModelPick],
    logits: &mut Vec<Vec<f32>>,
    picked: &mut Vec<Option<u32>>,
) -> Result<(), EngineError> {
    model.forward_batch_into(chunks, logits)?;
    picked.clear();
    picked.resize(chunks.len(), None);
    let Some(counts) = counts else {
        return Ok(());
    };
    assert_eq!(picks.len(), chunks.len());
    for (i, row) in logits.iter_mut().enumerate() {
        if let Some(id) = picks[i].host_token(row)? {
            assert!(
                chunks[i].want_logits,
                "a pick asked of a chunk without logits"
            );
            picked[i] = Some(id);
            row.clear();
            counts.0.fetch_add(1, Ordering::Relaxed);
        } else if !row.is_empty() {
            counts.1.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Token i is the letter 'a' + i.
struct Letters;
impl Detokenizer for Letters {
    fn push(&mut self, id: u32) -> Result<String, EngineError> {
        Ok(char::from(b'a' + id as u8).to_string())
    }
    fn finish(&mut self) -> Result<String, EngineError> {
        Ok(String::new())
    }
}

fn engine(block_size: usize, n_blocks: usize, cfg: EngineConfig, delay_ms: u64) -> EngineHandle {
    let model = FakeModel {
        block_size,
        n_blocks,
        slots: vec![None; block_size * n_blocks],
        delay: Duration::from_millis(delay_ms),
        picks: None,
    };
    let detok = || -> Box<dyn Detokenizer> { Box::new(Letters) };
    spawn(Box::new(model), Box::new(detok), cfg).unwrap()
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> EngineRequest {
    EngineRequest {
        prompt,
        sampling: SamplingParams::greedy(),
        max_tokens,
        stop_strings: vec![],
        stop_token_ids: vec![],
        logprobs: None,
    }
}

/// The greedy continuation the fake model defines.
fn expected(prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        seq.push(next_token(&seq));
    }
    seq[prompt.len()..].to_vec()
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (seed * 7 + i * 3) % VOCAB as u32)
        .collect()
}

/// Waits until the engine's stats (published after each step) satisfy `ok`.
fn wait_for(h: &EngineHandle, what: &str, ok: impl Fn(&EngineStats) -> bool) {
    let t0 = Instant::now();
    loop {
        let s = h.stats();
        if ok(&s) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until the engine holds no sequence and no block.
fn wait_idle(h: &EngineHandle) {
    wait_for(h, "idle", |s| {
        s.running == 0 && s.waiting == 0 && s.kv_blocks_used == 0
    });
}

#[test]
fn one_request_streams_the_model_output() {
    let h = engine(4, 16, EngineConfig::default(), 0);
    let p = prompt(1, 9);
    let mut streamed = String::new();
    let out = generate_blocking(&h, request(p.clone(), 12), |t| {
        streamed.push_str(t);
        true
    })
    .unwrap();
    assert_eq!(out.tokens, expected(&p, 12));
    assert_eq!(out.finish_reason, FinishReason::Length);
    let letters: String = out
        .tokens
        .iter()
        .map(|&t| (b'a' + t as u8) as char)
        .collect();
    assert_eq!(
        (out.text.as_str(), streamed.as_str()),
        (&*letters, &*letters)
    );
    assert_eq!(out.stats.prompt_tokens, 9);
    wait_idle(&h);
    h.shutdown(Duration::ZERO);
}

#[test]
fn many_concurrent_requests_with_preemption_and_chunked_prefill() {
    // 40 blocks of 4 positions for 32 requests of up to 30 tokens: the pool
    // cannot hold them all, prompts come in chunks of a small budget.
    let cfg = EngineConfig {
        max_num_seqs: 16,
        max_batch_tokens: 24,
        max_queue: 64,
        max_model_len: 64,
    };
    let h = engine(4, 40, cfg, 0);
    let streams: Vec<_> = (0..32)
        .map(|i| {
            let p = prompt(i, 5 + (i as usize * 7) % 19);
            let n = 4 + (i as usize % 9);
            (p.clone(), n, h.submit(request(p, n)).unwrap())
        })
        .collect();
    for (p, n, stream) in streams {
        let mut got = Vec::new();
        let mut finished = None;
        for e in stream {
            match e {
                Event::Token { id, .. } => got.push(id),
                Event::Finished { reason, usage, .. } => {
                    assert_eq!(usage.completion_tokens, got.len());
                    assert_eq!(usage.prompt_tokens, p.len());
                    finished = Some(reason);
                }
                Event::Error(e) => panic!("{e}"),
            }
        }
        assert_eq!(finished, Some(FinishReason::Length));
        assert_eq!(got, expected(&p, n), "prompt {p:?}");
    }
    wait_idle(&h);
    let s = h.stats();
    assert!(
        s.preemptions_total > 0,
        "the pool was meant to run out: {s:?}"
    );
    assert_eq!(s.requests_finished, 32);
    assert_eq!(s.kv_blocks_used, 0);
    h.shutdown(Duration::ZERO);
}

#[test]
fn repeated_prompt_hits_the_prefix_cache() {
    let h = engine(4, 32, EngineConfig::default(), 0);
    let p = prompt(3, 18);
    let first = generate_blocking(&h, request(p.clone(), 5), |_| true).unwrap();
    let before = h.stats();
    assert_eq!(before.prefix_cache_hits, 0);
    let second = generate_blocking(&h, request(p.clone(), 5), |_| true).unwrap();
    let after = h.stats();
    assert_eq!(first.tokens, second.tokens);
    assert_eq!(second.tokens, expected(&p, 5));
    // 17 tokens may come from the cache: 4 full blocks of 4.
    assert_eq!(after.prefix_cache_hits, 16);
    assert_eq!(after.prefix_cache_queries - before.prefix_cache_queries, 16);
    // Cached blocks are free for others.
    wait_idle(&h);
    h.shutdown(Duration::ZERO);
}

#[test]
fn dropping_the_stream_cancels_and_frees_blocks() {
    let h = engine(4, 32, EngineConfig::default(), 2);
    let mut stream = h.submit(request(prompt(4, 10), 60)).unwrap();
    assert!(matches!(stream.recv(), Some(Event::Token { .. })));
    wait_for(&h, "holding blocks", |s| s.kv_blocks_used > 0);
    drop(stream);
    wait_idle(&h);
    assert_eq!(h.stats().requests_cancelled, 1);

    // cancel() keeps the stream, which ends with Finished { Cancelled }.
    let mut stream = h.submit(request(prompt(5, 10), 60)).unwrap();
    assert!(matches!(stream.recv(), Some(Event::Token { .. })));
    stream.cancel();
    let last = stream.last();
    assert!(
        matches!(
            last,
            Some(Event::Finished {
                reason: FinishReason::Cancelled,
                ..
            })
        ),
        "{last:?}"
    );
    wait_idle(&h);
    h.shutdown(Duration::ZERO);
}

#[test]
fn stop_strings_stop_tokens_and_logprobs() {
    let h = engine(4, 32, EngineConfig::default(), 0);
    let p = prompt(6, 7);
    let want = expected(&p, 10);
    let text: String = want.iter().map(|&t| (b'a' + t as u8) as char).collect();

    // Stop string: the text before it, reason Stop.
    let mut r = request(p.clone(), 10);
    r.stop_strings = vec![text[3..5].to_string()];
    let cut = text.find(&text[3..5]).unwrap();
    let out = generate_blocking(&h, r, |_| true).unwrap();
    assert_eq!(
        (out.text.as_str(), out.finish_reason),
        (&text[..cut], FinishReason::Stop)
    );

    // Stop token: not shown.
    let mut r = request(p.clone(), 10);
    r.stop_token_ids = vec![want[4]];
    let first = want.iter().position(|&t| t == want[4]).unwrap();
    let out = generate_blocking(&h, r, |_| true).unwrap();
    assert_eq!(out.tokens, want[..first]);
    assert_eq!(out.finish_reason, FinishReason::Stop);

    // Logprobs of the sampled token and the top 2.
    let mut r = request(p.clone(), 3);
    r.logprobs = Some(2);
    for e in h.submit(r).unwrap() {
        if let Event::Token {
            id,
            logprob,
            top_logprobs,
            ..
        } = e
        {
            let lp = logprob.unwrap();
            assert_eq!(top_logprobs.len(), 2);
            assert_eq!(top_logprobs[0], (id, lp));
            assert!(lp < 0.0 && top_logprobs[1].1 < lp);
        }
    }
    wait_idle(&h);
    h.shutdown(Duration::ZERO);
}

#[test]
fn submit_errors() {
    let cfg = EngineConfig {
        max_num_seqs: 1,
        max_batch_tokens: 8,
        max_queue: 1,
        max_model_len: 32,
    };
    let h = engine(4, 16, cfg, 2);
    let bad = |r: EngineRequest| h.submit(r).err();
    assert!(matches!(
        bad(request(vec![], 4)),
        Some(SubmitError::Invalid(_))
    ));
    assert!(matches!(
        bad(request(vec![99], 4)),
        Some(SubmitError::Invalid(_))
    ));
    assert!(matches!(
        bad(request(vec![1], 0)),
        Some(SubmitError::Invalid(_))
    ));
    let mut r = request(vec![1], 4);
    r.sampling.temperature = -1.0;
    assert!(matches!(bad(r), Some(SubmitError::Invalid(_))));
    let mut r = request(vec![1], 4);
    r.logprobs = Some(21);
    assert!(matches!(bad(r), Some(SubmitError::Invalid(_))));
    assert_eq!(
        bad(request(vec![1; 32], 4)),
        Some(SubmitError::PromptTooLong {
            prompt: 32,
            max: 32
        })
    );

    // One running, one waiting, the third is refused.
    let mut running = h.submit(request(prompt(1, 4), 25)).unwrap();
    assert!(matches!(running.recv(), Some(Event::Token { .. })));
    let waiting = h.submit(request(prompt(2, 4), 4)).unwrap();
    match h.submit(request(prompt(3, 4), 4)) {
        Err(SubmitError::QueueFull { retry_after, .. }) => {
            assert!(retry_after >= Duration::from_secs(1))
        }
        other => panic!("expected QueueFull, got {:?}", other.err()),
    }
    // Shutdown with no grace cancels both.
    h.shutdown(Duration::ZERO);
    let ends: Vec<Option<Event>> = [running, waiting].into_iter().map(|s| s.last()).collect();
    for e in ends {
        assert!(
            matches!(
                e,
                Some(Event::Finished {
                    reason: FinishReason::Cancelled,
                    ..
                })
            ),
            "{e:?}"
        );
    }
    assert_eq!(
        h.submit(request(vec![1], 1)).err(),
        Some(SubmitError::ShuttingDown)
    );
}

#[test]
fn a_long_prompt_does_not_stall_decoding() {
    // 8 tokens a step: a 60-token prompt takes 9 steps to prefill (7 tokens
    // each beside the decoding request), during which the request already
    // decoding gets a token every step.
    let cfg = EngineConfig {
        max_num_seqs: 4,
        max_batch_tokens: 8,
        max_queue: 8,
        max_model_len: 128,
    };
    let h = engine(4, 64, cfg, 1);
    let mut decoding = h.submit(request(prompt(7, 4), 40)).unwrap();
    assert!(matches!(decoding.recv(), Some(Event::Token { .. })));
    let long = prompt(8, 60);
    let mut long_tokens = Vec::new();
    let mut long_timings = None;
    for e in h.submit(request(long.clone(), 2)).unwrap() {
        match e {
            Event::Token { id, .. } => long_tokens.push(id),
            Event::Finished { timings, .. } => long_timings = Some(timings),
            Event::Error(e) => panic!("{e}"),
        }
    }
    assert_eq!(long_tokens, expected(&long, 2));
    let long_t = long_timings.unwrap();
    let (from, to) = (long_t.first_scheduled.unwrap(), long_t.first_token.unwrap());
    let decoded = match decoding.last() {
        Some(Event::Finished { timings, .. }) => timings.token_times,
        other => panic!("{other:?}"),
    };
    let during = decoded.iter().filter(|&&t| t >= from && t <= to).count();
    let prefill_steps = 60usize.div_ceil(7);
    assert!(
        during + 1 >= prefill_steps,
        "{during} tokens decoded during a {prefill_steps}-step prefill"
    );
    wait_idle(&h);
    h.shutdown(Duration::ZERO);
}

#[test]
fn cancelling_under_preemption_keeps_pool_and_queue_consistent() {
    let cfg = EngineConfig {
        max_num_seqs: 8,
        max_batch_tokens: 16,
        max_queue: 16,
        max_model_len: 64,
    };
    let h = engine(4, 12, cfg, 1);
    let mut streams: Vec<_> = (0..16)
        .map(|i| Some(h.submit(request(prompt(i, 10), 20)).unwrap()))
        .collect();
    // Drop every other stream after its first event, running or preempted.
    for (i, s) in streams.iter_mut().enumerate() {
        if i % 2 == 1 {
            if let Some(mut stream) = s.take() {
                stream.recv();
            }
        }
    }
    for (i, s) in streams.into_iter().enumerate() {
        if let Some(stream) = s {
            let got: Vec<u32> = stream
                .filter_map(|e| match e {
                    Event::Token { id, .. } => Some(id),
                    _ => None,
                })
                .collect();
            assert_eq!(got, expected(&prompt(i as u32, 10), 20));
        }
    }
    wait_idle(&h);
    let s = h.stats();
    assert!(s.preemptions_total > 0, "{s:?}");
    assert_eq!((s.requests_finished, s.requests_cancelled), (8, 8));
    // The queue count is back to 0: a full queue's worth is accepted.
    let again: Vec<_> = (0..16)
        .map(|i| h.submit(request(prompt(i, 3), 1)).unwrap())
        .collect();
    for s in again {
        assert_eq!(s.count(), 2, "one token, then Finished");
    }
    wait_idle(&h);
    h.shutdown(Duration::ZERO);
}

/// Allows only even tokens; complete after `n` of them.
struct EvenTokens {
    n: usize,
    seen: Vec<u32>,
}

impl TokenConstraint for EvenTokens {
    fn choose(&mut self, mut ranked: RankedTokens<'_>) -> Option<u32> {
        ranked.find(|t| t.is_multiple_of(2))
    }
    fn accept(&mut self, id: u32) {
        self.seen.push(id);
    }
    fn is_complete(&self) -> bool {
        self.seen.len() >= self.n
    }
}

#[test]
fn a_constraint_picks_the_first_allowed_token_and_ends_the_request() {
    let h = engine(4, 32, EngineConfig::default(), 0);
    let p = prompt(9, 6);
    let even = EvenTokens { n: 4, seen: vec![] };
    let stream = h
        .submit_constrained(request(p.clone(), 10), Box::new(even))
        .unwrap();
    let mut tokens = Vec::new();
    for e in stream {
        match e {
            Event::Token { id, .. } => tokens.push(id),
            Event::Finished { reason, .. } => assert_eq!(reason, FinishReason::Stop),
            Event::Error(e) => panic!("{e}"),
        }
    }
    // The fake model ranks next_token first and next_token + 1 second,
    // then every other token at logit 0 by id.
    let mut seq = p.clone();
    for &t in &tokens {
        let best = next_token(&seq);
        let want = if best.is_multiple_of(2) {
            best
        } else if (best + 1).is_multiple_of(2) && (best as usize + 1) < VOCAB {
            best + 1
        } else {
            (0..VOCAB as u32)
                .find(|&x| x.is_multiple_of(2) && x != best)
                .unwrap()
        };
        assert_eq!(t, want, "after {seq:?}");
        seq.push(t);
    }
    assert_eq!(tokens.len(), 4);
    wait_idle(&h);
    h.shutdown(Duration::ZERO);
}

/// A model that picks tokens itself gets asked to for requests whose token
/// depends on the logits and the sampler's uniform only (greedy or a
/// temperature, no penalty): those stream the same tokens with no logits
/// sent back, while requests with logprobs or a penalty get logits.
#[test]
fn penalty_free_requests_take_the_models_own_pick() {
    let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let model = FakeModel {
        block_size: 4,
        n_blocks: 64,
        slots: vec![None; 4 * 64],
        delay: Duration::ZERO,
        picks: Some(Arc::clone(&counts)),
    };
    let detok = || -> Box<dyn Detokenizer> { Box::new(Letters) };
    let h = spawn(Box::new(model), Box::new(detok), EngineConfig::default()).unwrap();
    let p = prompt(3, 6);
    let out = generate_blocking(&h, request(p.clone(), 8), |_| true).unwrap();
    assert_eq!(out.tokens, expected(&p, 8));
    let (picked, rows) = (
        counts.0.load(Ordering::Relaxed),
        counts.1.load(Ordering::Relaxed),
    );
    assert_eq!(
        (picked, rows),
        (8, 0),
        "greedy: every token picked by the model"
    );
    // Logprobs and a penalty: logits come back for each token. A
    // temperature without them: the model draws.
    let mut with_logprobs = request(p.clone(), 4);
    with_logprobs.logprobs = Some(1);
    let mut penalised = request(p.clone(), 4);
    penalised.sampling.repetition_penalty = 1.3;
    let mut sampled = request(p.clone(), 4);
    sampled.sampling.temperature = 0.7;
    for r in [with_logprobs, penalised, sampled] {
        let out = generate_blocking(&h, r, |_| true).unwrap();
        assert_eq!(out.tokens.len(), 4);
    }
    let (picked, rows) = (
        counts.0.load(Ordering::Relaxed),
        counts.1.load(Ordering::Relaxed),
    );
    assert_eq!(
        (picked, rows),
        (12, 8),
        "logprobs and penalty requests sent logits"
    );
    wait_idle(&h);
    h.shutdown(Duration::ZERO);
}

/// A model of a wide vocabulary whose logits depend on the chunk's last
/// token and position only (no cache needed): enough logits per step that
/// the engine samples the rows of a batch on threads.
struct WideModel {
    /// Steps that asked for three logits rows or more (150k logits: past
    /// the engine's threshold for sampling on threads).
    batched_steps: Arc<AtomicUsize>,
    /// Draws the tokens itself where the engine allows it, counting
    /// (picked, logits rows sent).
    picks: Option<Arc<(AtomicUsize, AtomicUsize)>>,
}

const WIDE_VOCAB: usize = 50_000;

impl BatchModel for WideModel {
    fn vocab_size(&self) -> usize {
        WIDE_VOCAB
    }
    fn block_size(&self) -> usize {
        16
    }
    fn n_blocks(&self) -> usize {
        1024
    }
    fn forward_batch(&mut self, chunks: &[BatchChunk]) -> Result<Vec<Vec<f32>>, EngineError> {
        if chunks.iter().filter(|c| c.want_logits).count() >= 3 {
            self.batched_steps.fetch_add(1, Ordering::Relaxed);
        }
        Ok(chunks
            .iter()
            .map(|c| {
                if !c.want_logits {
                    return Vec::new();
                }
                let last = u64::from(*c.tokens.last().unwrap_or(&0));
                let pos = (c.pos0 + c.tokens.len()) as u64;
                (0..WIDE_VOCAB as u64)
                    .map(|i| {
                        let h = (i ^ (last << 20) ^ (pos << 40))
                            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                            .rotate_left(29);
                        // A few likely tokens above a spread-out bulk.
                        let u = (h >> 40) as f32 / (1u64 << 24) as f32;
                        if h.is_multiple_of(997) {
                            8.0 + u
                        } else {
                            6.0 * u - 3.0
                        }
                    })
                    .collect()
            })
            .collect())
    }

    fn forward_batch_picking(
        &mut self,
        chunks: &[BatchChunk],
        picks: &[ModelPick],
        logits: &mut Vec<Vec<f32>>,
        picked: &mut Vec<Option<u32>>,
    ) -> Result<(), EngineError> {
        let counts = self.picks.clone();
        forward_then_pick(self, counts.as_deref(), chunks, picks, logits, picked)
    }
}

/// Token ids as numbers.
struct Numbers;
impl Detokenizer for Numbers {
    fn push(&mut self, id: u32) -> Result<String, EngineError> {
        Ok(format!("{id} "))
    }
    fn finish(&mut self) -> Result<String, EngineError> {
        Ok(String::new())
    }
}

/// Seeded temperature requests draw the same tokens alone (one logits row
/// per step, sampled on the engine thread) and in a batch of eight (rows
/// sampled on threads): each sequence's draw depends on its own sampler
/// state only.
#[test]
fn seeded_sampling_is_the_same_alone_and_batched_on_threads() {
    let batched_steps = Arc::new(AtomicUsize::new(0));
    let model = WideModel {
        batched_steps: Arc::clone(&batched_steps),
        picks: None,
    };
    let detok = || -> Box<dyn Detokenizer> { Box::new(Numbers) };
    let h = spawn(Box::new(model), Box::new(detok), EngineConfig::default()).unwrap();
    let sampled = |seed: u64| {
        let mut r = request(vec![seed as u32 + 1, 7, 9], 12);
        r.sampling = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: if seed.is_multiple_of(2) { 0.9 } else { 1.0 },
            min_p: 0.0,
            seed: Some(seed),
            ..SamplingParams::default()
        };
        r
    };
    let alone: Vec<Vec<u32>> = (0..8)
        .map(|s| generate_blocking(&h, sampled(s), |_| true).unwrap().tokens)
        .collect();
    assert_eq!(batched_steps.load(Ordering::Relaxed), 0);
    let batched: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|s| {
                let h = &h;
                scope.spawn(move || generate_blocking(h, sampled(s), |_| true).unwrap().tokens)
            })
            .collect();
        handles.into_iter().map(|j| j.join().unwrap()).collect()
    });
    assert!(
        batched_steps.load(Ordering::Relaxed) > 0,
        "no step sampled three rows or more"
    );
    assert_eq!(batched, alone);
    // The draws are spread out: not every request took the same tokens.
    assert!(alone.iter().any(|t| t != &alone[0]));
    wait_idle(&h);
    h.shutdown(Duration::ZERO);

    // A model that draws the tokens itself, with the uniforms the engine
    // hands it, streams the same tokens: the engine draws one uniform per
    // token either way.
    let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let model = WideModel {
        batched_steps: Arc::new(AtomicUsize::new(0)),
        picks: Some(Arc::clone(&counts)),
    };
    let h = spawn(Box::new(model), Box::new(detok), EngineConfig::default()).unwrap();
    let drawn: Vec<Vec<u32>> = (0..8)
        .map(|s| generate_blocking(&h, sampled(s), |_| true).unwrap().tokens)
        .collect();
    assert_eq!(drawn, alone);
    assert_eq!(
        (
            counts.0.load(Ordering::Relaxed),
            counts.1.load(Ordering::Relaxed)
        ),
        (8 * 12, 0),
        "every token drawn by the model"
    );
    wait_idle(&h);
    h.shutdown(Duration::ZERO);
}
