//! One request inside the engine: its tokens, block table, sampler,
//! detokenizer, stop matcher and event channel.

use super::{EngineRequest, Event, ModelPick, RequestTimings, TokenConstraint, Usage};
use crate::sampler::Sampler;
use crate::stop::StopMatcher;
use crate::{Detokenizer, EngineError, FinishReason};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

/// A request as it crosses from a client to the engine thread.
pub(crate) struct NewRequest {
    pub req: EngineRequest,
    pub constraint: Option<Box<dyn TokenConstraint>>,
    pub events: Sender<Event>,
    pub cancelled: Arc<AtomicBool>,
    pub arrival: Instant,
}

pub(crate) struct Sequence<'d> {
    /// Prompt, then every generated token.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose keys and values are in the pool (a prefix of `tokens`).
    pub computed: usize,
    /// Pool blocks of positions `i*block_size..`, enough for `computed`
    /// (and for the chunk scheduled this step).
    pub table: Vec<u32>,
    /// Leading blocks of `table` already offered to the prefix cache.
    pub registered: usize,
    /// Whether the prompt tokens were counted in the stats.
    pub admitted_once: bool,
    pub timings: RequestTimings,
    max_tokens: usize,
    max_len: usize,
    stop_token_ids: Vec<u32>,
    /// What picks the next token from the logits (Send: the engine runs
    /// many sequences' choices on threads).
    pub chooser: TokenChooser,
    stops: StopMatcher,
    detok: Box<dyn Detokenizer + 'd>,
    events: Sender<Event>,
    cancelled: Arc<AtomicBool>,
}

/// A sequence's token choice: sampler, output constraint, logprobs.
pub(crate) struct TokenChooser {
    logprobs: Option<usize>,
    constraint: Option<Box<dyn TokenConstraint>>,
    sampler: Sampler,
}

/// A token chosen from a sequence's logits, not yet streamed.
pub(crate) struct Chosen {
    next: u32,
    logprob: Option<f32>,
    top: Vec<(u32, f32)>,
}

impl TokenChooser {
    /// The next token from `logits` (vocab) of the last token, with its
    /// logprobs when they were asked for. `logits` may be changed (the
    /// sampler's penalties and temperature).
    pub fn choose(&mut self, logits: &mut [f32]) -> Result<Chosen, EngineError> {
        let u = self.sampler.next_uniform();
        self.choose_with_uniform(logits, u)
    }

    /// [`TokenChooser::choose`] with the sampler's uniform already drawn
    /// (a [`ModelPick::Draw`] the model answered with logits).
    pub fn choose_with_uniform(
        &mut self,
        logits: &mut [f32],
        u: f32,
    ) -> Result<Chosen, EngineError> {
        let (logprobs, top) = match self.logprobs {
            Some(n) => {
                let lp = log_softmax(logits)?;
                let top = top_n(&lp, n);
                (Some(lp), top)
            }
            None => (None, Vec::new()),
        };
        let mut next = self.sampler.sample_with_uniform(logits, u)?;
        if let Some(c) = self.constraint.as_mut() {
            next = c.choose(RankedTokens::new(next, logits)).ok_or_else(|| {
                EngineError::Model("no token satisfies the output constraint".into())
            })?;
            c.accept(next);
        }
        let logprob = logprobs.map(|lp| lp[next as usize]);
        Ok(Chosen { next, logprob, top })
    }
}

/// What became of a sequence after it got logits.
pub(crate) enum Outcome {
    /// It goes on (one more token to compute).
    Continue,
    Finished(FinishReason),
}

impl<'d> Sequence<'d> {
    /// `new.req` was validated by `submit`.
    pub fn new(
        new: NewRequest,
        detok: Box<dyn Detokenizer + 'd>,
        max_len: usize,
    ) -> Result<Self, EngineError> {
        let NewRequest {
            req,
            constraint,
            events,
            cancelled,
            arrival,
        } = new;
        let mut sampler = Sampler::new(req.sampling)?;
        sampler.observe_prompt(&req.prompt);
        Ok(Self {
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            computed: 0,
            table: Vec::new(),
            registered: 0,
            admitted_once: false,
            timings: RequestTimings::new(arrival),
            max_tokens: req.max_tokens,
            max_len,
            stop_token_ids: req.stop_token_ids,
            chooser: TokenChooser {
                logprobs: req.logprobs,
                constraint,
                sampler,
            },
            stops: StopMatcher::new(&req.stop_strings),
            detok,
            events,
            cancelled,
        })
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to feed the model before the next sample.
    pub fn remaining(&self) -> usize {
        self.tokens.len() - self.computed
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
        }
    }

    /// Sends the last event; a client that went away is not an error.
    pub fn finish(&mut self, reason: FinishReason) {
        let now = Instant::now();
        self.timings.finished = Some(now);
        let _ = self.events.send(Event::Finished {
            reason,
            usage: self.usage(),
            timings: self.timings.clone(),
        });
    }

    pub fn fail(&mut self, msg: String) {
        self.timings.finished = Some(Instant::now());
        let _ = self.events.send(Event::Error(msg));
    }

    /// Samples the next token from `logits` (vocab) of the last token,
    /// streams it, and says whether the sequence is done.
    /// `logits` may be changed (the sampler's penalties and temperature).
    pub fn on_logits(&mut self, logits: &mut [f32]) -> Result<Outcome, EngineError> {
        let chosen = self.chooser.choose(logits)?;
        self.on_chosen(chosen)
    }

    /// Streams a token [`TokenChooser::choose`] picked from this sequence's
    /// logits and says whether the sequence is done.
    pub fn on_chosen(&mut self, chosen: Chosen) -> Result<Outcome, EngineError> {
        self.on_token(chosen.next, chosen.logprob, chosen.top)
    }

    /// What the model may pick itself for this sequence's next token: the
    /// argmax (greedy without penalties) or the temperature draw (no
    /// penalties; its uniform drawn now from the sequence's RNG), when no
    /// logprobs or output constraint need the logits.
    pub fn model_pick(&mut self) -> ModelPick {
        let c = &mut self.chooser;
        if c.logprobs.is_some() || c.constraint.is_some() || !c.sampler.is_penalty_free() {
            return ModelPick::Logits;
        }
        let p = c.sampler.params();
        if p.temperature == 0.0 {
            return ModelPick::Argmax;
        }
        let (temperature, top_k, top_p, min_p) = (p.temperature, p.top_k, p.top_p, p.min_p);
        ModelPick::Draw {
            temperature,
            top_k,
            top_p,
            min_p,
            uniform: c.sampler.next_uniform(),
        }
    }

    /// The next token as the model picked it (see [`Sequence::model_pick`]);
    /// `vocab` bounds a valid id (a
    /// model answers an id past it for logits that were all NaN).
    pub fn on_picked(&mut self, next: u32, vocab: usize) -> Result<Outcome, EngineError> {
        if next as usize >= vocab {
            return Err(EngineError::NonFiniteLogits);
        }
        self.on_token(next, None, Vec::new())
    }

    /// Streams the chosen token and says whether the sequence is done.
    fn on_token(
        &mut self,
        next: u32,
        logprob: Option<f32>,
        top: Vec<(u32, f32)>,
    ) -> Result<Outcome, EngineError> {
        let now = Instant::now();
        if self.stop_token_ids.contains(&next) {
            return Ok(Outcome::Finished(FinishReason::Stop));
        }
        self.chooser.sampler.accept(next);
        self.tokens.push(next);
        self.timings.first_token.get_or_insert(now);
        self.timings.token_times.push(now);
        let step = self.stops.push(&self.detok.push(next)?);
        let mut text = step.emit;
        let complete = self
            .chooser
            .constraint
            .as_ref()
            .is_some_and(|c| c.is_complete());
        let outcome = if step.stopped {
            Outcome::Finished(FinishReason::Stop)
        } else if complete {
            text.push_str(&self.stops.push(&self.detok.finish()?).emit);
            text.push_str(&self.stops.finish());
            Outcome::Finished(FinishReason::Stop)
        } else if self.generated() >= self.max_tokens || self.tokens.len() >= self.max_len {
            // As `generate`: at the length limit the held-back text is final.
            text.push_str(&self.stops.push(&self.detok.finish()?).emit);
            text.push_str(&self.stops.finish());
            Outcome::Finished(FinishReason::Length)
        } else {
            Outcome::Continue
        };
        let event = Event::Token {
            id: next,
            text,
            logprob,
            top_logprobs: top,
        };
        if self.events.send(event).is_err() {
            return Ok(Outcome::Finished(FinishReason::Cancelled));
        }
        Ok(outcome)
    }
}

/// The sampler's choice, then every other token by decreasing logit (ties
/// by id); the full ranking is only computed if the first is refused.
pub struct RankedTokens<'a> {
    first: Option<u32>,
    chosen: u32,
    logits: &'a [f32],
    rest: Option<std::vec::IntoIter<u32>>,
}

impl<'a> RankedTokens<'a> {
    fn new(first: u32, logits: &'a [f32]) -> Self {
        Self {
            first: Some(first),
            chosen: first,
            logits,
            rest: None,
        }
    }
}

impl Iterator for RankedTokens<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if let Some(f) = self.first.take() {
            return Some(f);
        }
        let (logits, chosen) = (self.logits, self.chosen);
        let rest = self.rest.get_or_insert_with(|| {
            let mut ids: Vec<u32> = (0..logits.len() as u32).filter(|&i| i != chosen).collect();
            ids.sort_unstable_by(|a, b| {
                logits[*b as usize]
                    .total_cmp(&logits[*a as usize])
                    .then(a.cmp(b))
            });
            ids.into_iter()
        });
        rest.next()
    }
}

/// ln softmax(logits), in f64 for the sum.
fn log_softmax(logits: &[f32]) -> Result<Vec<f32>, EngineError> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return Err(EngineError::NonFiniteLogits);
    }
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    Ok(logits.iter().map(|&l| (l as f64 - log_z) as f32).collect())
}

/// The `n` largest entries as (index, value), largest first, ties by index.
fn top_n(values: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let by_value = |a: &u32, b: &u32| {
        values[*b as usize]
            .total_cmp(&values[*a as usize])
            .then(a.cmp(b))
    };
    let n = n.min(idx.len());
    if n == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(n - 1, by_value);
    idx.truncate(n);
    idx.sort_unstable_by(by_value);
    idx.into_iter().map(|i| (i, values[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_top_n() {
        let lp = log_softmax(&[0.0, 1.0, 1.0, -1.0]).unwrap();
        let total: f64 = lp.iter().map(|&l| (l as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let top = top_n(&lp, 3);
        assert_eq!(
            top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 2, 0],
            "ties by id"
        );
        assert!(top_n(&lp, 0).is_empty());
        assert_eq!(top_n(&lp, 10).len(), 4);
        assert!(log_softmax(&[f32::NAN, f32::NEG_INFINITY]).is_err());
    }
}
