//! The engine thread: intake, scheduling, the batched step, preemption.

use super::blocks::BlockManager;
use super::handle::{Command, Shared};
use super::sequence::{Chosen, NewRequest, Outcome, Sequence, TokenChooser};
use super::{BatchChunk, BatchModel, DetokenizerSource, EngineConfig, ModelPick};
use crate::{EngineError, FinishReason};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tokens one sequence computes this step.
struct Planned {
    seq: usize,
    n: usize,
}

pub(crate) struct Engine<'d> {
    model: Box<dyn BatchModel>,
    detok: &'d dyn DetokenizerSource,
    cfg: EngineConfig,
    blocks: BlockManager,
    /// Holding blocks, oldest admission first.
    running: Vec<Sequence<'d>>,
    /// Not holding blocks: preempted ones at the front, new ones at the back.
    waiting: VecDeque<Sequence<'d>>,
    shared: Arc<Shared>,
    /// End of the grace period once shutdown was asked for.
    shutdown_at: Option<Instant>,
    /// The model's logits rows, kept from step to step so that a model can
    /// refill them in place (`BatchModel::forward_batch_into`).
    logits: Vec<Vec<f32>>,
    /// The tokens the model picked itself (`BatchModel::forward_batch_picking`).
    picked: Vec<Option<u32>>,
}

impl<'d> Engine<'d> {
    pub fn new(
        model: Box<dyn BatchModel>,
        detok: &'d dyn DetokenizerSource,
        cfg: EngineConfig,
        shared: Arc<Shared>,
    ) -> Self {
        let blocks = BlockManager::new(model.n_blocks(), model.block_size());
        Self {
            model,
            detok,
            cfg,
            blocks,
            running: Vec::new(),
            waiting: VecDeque::new(),
            shared,
            shutdown_at: None,
            logits: Vec::new(),
            picked: Vec::new(),
        }
    }

    /// Runs until shutdown (or every handle is dropped) and the work is
    /// done or the grace period is over.
    pub fn run(&mut self, commands: Receiver<Command>) {
        loop {
            let idle = self.running.is_empty() && self.waiting.is_empty();
            if idle && self.shutdown_at.is_some() {
                break;
            }
            // Idle: sleep until something arrives. Busy: take what is there.
            let first = if idle {
                match commands.recv() {
                    Ok(c) => Some(c),
                    Err(_) => break,
                }
            } else {
                match commands.recv_timeout(Duration::ZERO) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        self.begin_shutdown(Duration::MAX);
                        None
                    }
                }
            };
            for cmd in first.into_iter().chain(commands.try_iter()) {
                match cmd {
                    Command::Submit(new) => self.admit_request(*new),
                    Command::Shutdown { grace } => self.begin_shutdown(grace),
                }
            }
            if self.shutdown_at.is_some_and(|t| Instant::now() >= t) {
                self.cancel_all();
            }
            self.step();
        }
        self.cancel_all();
        self.publish_stats();
    }

    fn begin_shutdown(&mut self, grace: Duration) {
        let at = Instant::now()
            .checked_add(grace)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
        self.shutdown_at = Some(self.shutdown_at.map_or(at, |t| t.min(at)));
    }

    fn admit_request(&mut self, new: NewRequest) {
        let max_len = self.shared.max_model_len;
        let detok = self.detok.detokenizer();
        let events = new.events.clone();
        match Sequence::new(new, detok, max_len) {
            Ok(seq) => self.waiting.push_back(seq),
            Err(e) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                let _ = events.send(super::Event::Error(e.to_string()));
            }
        }
    }

    fn cancel_all(&mut self) {
        for mut s in self.running.drain(..).collect::<Vec<_>>() {
            release_all(&mut self.blocks, &mut s);
            s.finish(FinishReason::Cancelled);
            self.shared.stats.lock_or_recover().requests_cancelled += 1;
        }
        for mut s in self.waiting.drain(..) {
            // Preempted sequences left the queue count when first admitted.
            if !s.admitted_once {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            }
            s.finish(FinishReason::Cancelled);
            self.shared.stats.lock_or_recover().requests_cancelled += 1;
        }
    }

    /// Drops sequences whose client went away, freeing their blocks.
    fn reap_cancelled(&mut self) {
        let mut cancelled = 0;
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].is_cancelled() {
                let mut s = self.running.remove(i);
                release_all(&mut self.blocks, &mut s);
                s.finish(FinishReason::Cancelled);
                cancelled += 1;
            } else {
                i += 1;
            }
        }
        // Preempted sequences in `waiting` left the queue count already.
        let (mut from_waiting, mut never_admitted) = (0, 0);
        self.waiting.retain_mut(|s| {
            let gone = s.is_cancelled();
            if gone {
                s.finish(FinishReason::Cancelled);
                from_waiting += 1;
                never_admitted += usize::from(!s.admitted_once);
            }
            !gone
        });
        self.shared
            .queued
            .fetch_sub(never_admitted, Ordering::Relaxed);
        if cancelled + from_waiting > 0 {
            self.shared.stats.lock_or_recover().requests_cancelled +=
                (cancelled + from_waiting) as u64;
        }
    }

    /// One scheduling decision and one forward pass.
    fn step(&mut self) {
        let t0 = Instant::now();
        self.reap_cancelled();
        let plan = self.schedule();
        if !plan.is_empty() {
            self.execute(&plan);
            self.shared.stats.lock_or_recover().step_seconds_total += t0.elapsed().as_secs_f64();
        }
        self.publish_stats();
    }

    /// Decides who computes how many tokens, allocating their blocks;
    /// preempts when blocks run out; admits waiting requests.
    fn schedule(&mut self) -> Vec<Planned> {
        let mut budget = self.cfg.max_batch_tokens;
        let mut plan: Vec<Planned> = Vec::new();
        // Running sequences, oldest first, decoders (1 token) before
        // prompts and recomputations (what the budget leaves), so a long
        // prompt never stalls decoding.
        for decoders in [true, false] {
            let mut i = 0;
            while i < self.running.len() && budget > 0 {
                let seq = &self.running[i];
                if (seq.remaining() == 1) != decoders || plan.iter().any(|p| p.seq == i) {
                    i += 1;
                    continue;
                }
                let n = seq.remaining().min(budget);
                if grow(&mut self.blocks, &mut self.running[i], n) {
                    plan.push(Planned { seq: i, n });
                    budget -= n;
                    i += 1;
                    continue;
                }
                // Out of blocks: preempt the newest sequence not planned
                // yet (this one if it is that), then try again; when this
                // one goes, `i` names the next sequence.
                let victim = (0..self.running.len())
                    .rev()
                    .find(|v| !plan.iter().any(|p| p.seq == *v))
                    .unwrap_or(i);
                self.preempt(victim);
                for p in plan.iter_mut().filter(|p| p.seq > victim) {
                    p.seq -= 1;
                }
            }
        }
        // Waiting requests (preempted ones first) while there is room; they
        // never preempt others.
        while budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            if seq.computed == 0 {
                self.prefix_lookup(&mut seq);
            }
            let n = seq.remaining().min(budget);
            if !grow(&mut self.blocks, &mut seq, n) {
                release_all(&mut self.blocks, &mut seq);
                self.waiting.push_front(seq);
                break;
            }
            if !seq.admitted_once {
                seq.admitted_once = true;
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                self.shared.stats.lock_or_recover().prompt_tokens_total += seq.prompt_len as u64;
            }
            self.running.push(seq);
            plan.push(Planned {
                seq: self.running.len() - 1,
                n,
            });
            budget -= n;
        }
        plan
    }

    /// Frees `running[i]`'s blocks and requeues it at the front; it will
    /// recompute its prompt and generated tokens.
    fn preempt(&mut self, i: usize) {
        let mut seq = self.running.remove(i);
        release_all(&mut self.blocks, &mut seq);
        self.waiting.push_front(seq);
        self.shared.stats.lock_or_recover().preemptions_total += 1;
    }

    /// Takes the cached blocks of the longest known prefix of `seq`'s
    /// tokens (full blocks only, and never the last token: its logits are
    /// needed).
    fn prefix_lookup(&mut self, seq: &mut Sequence) {
        let bs = self.blocks.block_size();
        let full = (seq.tokens.len() - 1) / bs;
        let mut parent = None;
        for blk in seq.tokens.chunks_exact(bs).take(full) {
            match self.blocks.lookup(parent, blk) {
                Some(b) => {
                    seq.table.push(b);
                    parent = Some(b);
                }
                None => break,
            }
        }
        seq.computed = seq.table.len() * bs;
        seq.registered = seq.table.len();
        let mut st = self.shared.stats.lock_or_recover();
        st.prefix_cache_queries += (full * bs) as u64;
        st.prefix_cache_hits += seq.computed as u64;
    }

    /// The forward pass over `plan`, then sampling.
    fn execute(&mut self, plan: &[Planned]) {
        let now = Instant::now();
        // Chunks whose next token needs only their logits and the sampler's
        // uniform: the model may pick it on its device and send no logits
        // back. (Picking draws the uniforms, so it comes before the chunks
        // borrow the sequences.)
        let wants: Vec<bool> = plan
            .iter()
            .map(|p| {
                let s = &self.running[p.seq];
                s.computed + p.n == s.tokens.len()
            })
            .collect();
        let picks: Vec<ModelPick> = plan
            .iter()
            .zip(&wants)
            .map(|(p, &w)| {
                if w {
                    self.running[p.seq].model_pick()
                } else {
                    ModelPick::Logits
                }
            })
            .collect();
        let chunks: Vec<BatchChunk> = plan
            .iter()
            .map(|p| {
                let s = &self.running[p.seq];
                BatchChunk {
                    tokens: &s.tokens[s.computed..s.computed + p.n],
                    block_table: &s.table,
                    pos0: s.computed,
                    want_logits: s.computed + p.n == s.tokens.len(),
                }
            })
            .collect();
        let forward_start = Instant::now();
        let result =
            self.model
                .forward_batch_picking(&chunks, &picks, &mut self.logits, &mut self.picked);
        let forward_seconds = forward_start.elapsed().as_secs_f64();
        let computed: usize = plan.iter().map(|p| p.n).sum();
        match result {
            Ok(()) if self.logits.len() == plan.len() && self.picked.len() == plan.len() => {}
            Ok(()) => {
                let msg = format!(
                    "model returned {} results ({} picks) for {} chunks",
                    self.logits.len(),
                    self.picked.len(),
                    plan.len()
                );
                return self.fail_planned(plan, &msg);
            }
            Err(e) => return self.fail_planned(plan, &e.to_string()),
        }
        {
            let mut st = self.shared.stats.lock_or_recover();
            st.computed_tokens_total += computed as u64;
            st.steps += 1;
            st.forward_seconds_total += forward_seconds;
        }
        let vocab = self.model.vocab_size();
        let mut chosen = self.choose_tokens(plan, &picks, vocab);
        let mut done: Vec<(usize, Result<FinishReason, String>)> = Vec::new();
        for (((p, l), picked), chosen) in plan
            .iter()
            .zip(self.logits.iter_mut())
            .zip(&self.picked)
            .zip(chosen.iter_mut())
        {
            let seq = &mut self.running[p.seq];
            seq.timings.first_scheduled.get_or_insert(now);
            seq.computed += p.n;
            register_full_blocks(&mut self.blocks, seq);
            if seq.computed < seq.tokens.len() {
                continue;
            }
            let outcome = match picked {
                Some(id) => seq.on_picked(*id, vocab),
                None if l.len() != vocab => {
                    let msg = format!(
                        "model returned {} logits for a vocabulary of {vocab}",
                        l.len()
                    );
                    done.push((p.seq, Err(msg)));
                    continue;
                }
                None => match chosen.take() {
                    Some(c) => c.and_then(|c| seq.on_chosen(c)),
                    None => seq.on_logits(l),
                },
            };
            match outcome {
                Ok(outcome) => {
                    if seq.tokens.len() > seq.computed {
                        // A token was appended (a stop token is not).
                        self.shared.stats.lock_or_recover().generation_tokens_total += 1;
                    }
                    if let Outcome::Finished(reason) = outcome {
                        done.push((p.seq, Ok(reason)));
                    }
                }
                Err(e) => done.push((p.seq, Err(e.to_string()))),
            }
        }
        // Remove finished sequences, highest index first.
        done.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (i, result) in done {
            let mut seq = self.running.remove(i);
            release_all(&mut self.blocks, &mut seq);
            let mut st = self.shared.stats.lock_or_recover();
            match result {
                Ok(FinishReason::Cancelled) => st.requests_cancelled += 1,
                Ok(_) => st.requests_finished += 1,
                Err(_) => st.requests_failed += 1,
            }
            drop(st);
            match result {
                Ok(reason) => {
                    seq.finish(reason);
                    if let (Some(end), arrival) = (seq.timings.finished, seq.timings.arrival) {
                        self.shared
                            .record_latency(end.saturating_duration_since(arrival));
                    }
                }
                Err(msg) => seq.fail(msg),
            }
        }
    }

    /// The tokens sampled from this step's logits rows, one entry per
    /// planned chunk (`None` where the chunk has no token to sample: a
    /// prompt chunk, a pick made by the model, a row of the wrong length).
    /// The rows are sampled on up to [`CHOOSE_THREADS`] threads when there
    /// is enough of them: a temperature draw over a 128k vocabulary costs
    /// ~0.1-0.4 ms, a batch of 32 would hold the step for several.
    fn choose_tokens(
        &mut self,
        plan: &[Planned],
        picks: &[ModelPick],
        vocab: usize,
    ) -> Vec<Option<Result<Chosen, EngineError>>> {
        let mut row_of_seq: Vec<Option<usize>> = vec![None; self.running.len()];
        for (i, p) in plan.iter().enumerate() {
            let seq = &self.running[p.seq];
            let sampled = self.picked.get(i).is_some_and(Option::is_none)
                && self.logits.get(i).is_some_and(|l| l.len() == vocab)
                && seq.computed + p.n >= seq.tokens.len();
            if sampled && row_of_seq[p.seq].is_none() {
                row_of_seq[p.seq] = Some(i);
            }
        }
        let mut rows: Vec<Option<&mut Vec<f32>>> = self.logits.iter_mut().map(Some).collect();
        let mut work: Vec<ChoiceWork<'_>> = Vec::new();
        for (seq, row) in self.running.iter_mut().zip(&row_of_seq) {
            if let Some(i) = *row {
                if let Some(l) = rows.get_mut(i).and_then(Option::take) {
                    // A draw the model left to the host keeps its uniform.
                    let uniform = match picks.get(i) {
                        Some(ModelPick::Draw { uniform, .. }) => Some(*uniform),
                        _ => None,
                    };
                    work.push(ChoiceWork {
                        row: i,
                        chooser: &mut seq.chooser,
                        logits: l.as_mut_slice(),
                        uniform,
                    });
                }
            }
        }
        let mut out: Vec<Option<Result<Chosen, EngineError>>> =
            (0..plan.len()).map(|_| None).collect();
        for (i, c) in choose_on_threads(work) {
            out[i] = Some(c);
        }
        out
    }

    /// A failed forward pass fails every sequence in it.
    fn fail_planned(&mut self, plan: &[Planned], msg: &str) {
        let mut idx: Vec<usize> = plan.iter().map(|p| p.seq).collect();
        idx.sort_unstable_by(|a, b| b.cmp(a));
        for i in idx {
            let mut seq = self.running.remove(i);
            release_all(&mut self.blocks, &mut seq);
            seq.fail(format!("forward pass failed: {msg}"));
            self.shared.stats.lock_or_recover().requests_failed += 1;
        }
    }

    fn publish_stats(&self) {
        let mut st = self.shared.stats.lock_or_recover();
        st.running = self.running.len();
        st.waiting = self.waiting.len();
        st.kv_blocks_total = self.blocks.n_blocks();
        st.kv_blocks_used = self.blocks.n_used();
        st.kv_usage = self.blocks.n_used() as f64 / self.blocks.n_blocks().max(1) as f64;
    }
}

/// Most threads [`Engine::choose_tokens`] samples on.
const CHOOSE_THREADS: usize = 8;
/// Logits below which one thread samples them all (a thread's start costs
/// about what sampling 16k logits does).
const CHOOSE_PARALLEL_MIN: usize = 1 << 17;

/// One sequence's token choice from its logits row.
struct ChoiceWork<'a> {
    /// The plan row (the results name it).
    row: usize,
    chooser: &'a mut TokenChooser,
    logits: &'a mut [f32],
    /// The uniform already drawn for a [`ModelPick::Draw`].
    uniform: Option<f32>,
}

impl ChoiceWork<'_> {
    fn run(&mut self) -> (usize, Result<Chosen, EngineError>) {
        let chosen = match self.uniform {
            Some(u) => self.chooser.choose_with_uniform(self.logits, u),
            None => self.chooser.choose(self.logits),
        };
        (self.row, chosen)
    }
}

/// Runs each work item's choice, on threads when the rows are large enough
/// to pay for them; the results name their row. Each sequence's sampler
/// state is its own, so the tokens do not depend on the thread count.
fn choose_on_threads(mut work: Vec<ChoiceWork<'_>>) -> Vec<(usize, Result<Chosen, EngineError>)> {
    let logits: usize = work.iter().map(|w| w.logits.len()).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(CHOOSE_THREADS)
        .min(work.len());
    if threads <= 1 || logits < CHOOSE_PARALLEL_MIN {
        return work.iter_mut().map(ChoiceWork::run).collect();
    }
    let per_thread = work.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .chunks_mut(per_thread)
            .map(|part| {
                scope.spawn(move || part.iter_mut().map(ChoiceWork::run).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(chosen) => chosen,
                // A panic in the sampler is a bug; re-raise it here rather
                // than lose the rows.
                Err(e) => std::panic::resume_unwind(e),
            })
            .collect()
    })
}

/// Makes `seq`'s table cover `computed + n` positions. On failure the
/// blocks allocated here stay in the table (they will be needed).
fn grow(blocks: &mut BlockManager, seq: &mut Sequence, n: usize) -> bool {
    let need = (seq.computed + n).div_ceil(blocks.block_size());
    while seq.table.len() < need {
        match blocks.allocate() {
            Some(b) => seq.table.push(b),
            None => return false,
        }
    }
    true
}

/// Offers `seq`'s newly filled blocks to the prefix cache.
fn register_full_blocks(blocks: &mut BlockManager, seq: &mut Sequence) {
    let bs = blocks.block_size();
    let full = seq.computed / bs;
    while seq.registered < full {
        let i = seq.registered;
        let parent = i.checked_sub(1).map(|p| seq.table[p]);
        blocks.register(seq.table[i], parent, &seq.tokens[i * bs..(i + 1) * bs]);
        seq.registered += 1;
    }
}

/// Gives back every block of `seq` and forgets what was computed.
fn release_all(blocks: &mut BlockManager, seq: &mut Sequence) {
    for b in seq.table.drain(..) {
        blocks.release(b);
    }
    seq.computed = 0;
    seq.registered = 0;
}

/// Locks a mutex, taking the data even if a holder panicked (the stats stay
/// usable; the engine thread itself never panics while holding it).
pub(crate) trait LockOrRecover<T> {
    fn lock_or_recover(&self) -> std::sync::MutexGuard<'_, T>;
}

impl<T> LockOrRecover<T> for std::sync::Mutex<T> {
    fn lock_or_recover(&self) -> std::sync::MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}
