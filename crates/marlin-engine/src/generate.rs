//! The generation loop: prefill, then sample / decode until a stop condition,
//! streaming text as it is produced.

use std::time::Instant;

use crate::sampler::{Sampler, SamplingParams};
use crate::stop::StopMatcher;
use crate::EngineError;

/// A model with its KV cache for one sequence: what the loop drives.
pub trait SequenceModel {
    fn vocab_size(&self) -> usize;
    /// Most tokens the sequence may hold (prompt + generated).
    fn max_seq_len(&self) -> usize;
    /// Appends `tokens` to the sequence and returns the logits (vocab_size)
    /// of the last one.
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError>;
}

/// Turns token ids into text incrementally (complete UTF-8 only).
pub trait Detokenizer {
    fn push(&mut self, id: u32) -> Result<String, EngineError>;
    fn finish(&mut self) -> Result<String, EngineError>;
}

#[derive(Clone, Debug)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_strings: Vec<String>,
    /// Tokens that end generation (EOS, end-of-turn); not shown.
    pub stop_tokens: Vec<u32>,
    /// Longest prompt chunk fed to the model at once (bounds scratch memory).
    pub prefill_chunk: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS / end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
    /// The caller's callback asked to stop.
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub generated_tokens: usize,
    pub decode_secs: f64,
}

impl GenerationStats {
    pub fn prompt_tok_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_secs)
    }
    /// Decode speed counts the tokens after the first (the first comes from
    /// the prefill's logits).
    pub fn decode_tok_per_s(&self) -> f64 {
        rate(self.generated_tokens.saturating_sub(1), self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

#[derive(Clone, Debug)]
pub struct GenerationOutput {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub stats: GenerationStats,
}

/// Runs one request to completion. `on_text` receives each piece of visible
/// text as soon as it is final; returning `false` cancels.
pub fn generate(
    model: &mut dyn SequenceModel,
    detok: &mut dyn Detokenizer,
    req: &GenerationRequest,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<GenerationOutput, EngineError> {
    if req.prompt.is_empty() {
        return Err(EngineError::InvalidParam(
            "prompt: at least one token is required".into(),
        ));
    }
    let limit = model.max_seq_len();
    if req.prompt.len() >= limit {
        return Err(EngineError::ContextOverflow {
            prompt: req.prompt.len(),
            limit,
        });
    }
    let vocab = model.vocab_size();
    if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(EngineError::InvalidParam(format!(
            "prompt: token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    let mut sampler = Sampler::new(req.sampling.clone())?;
    sampler.observe_prompt(&req.prompt);
    let mut stops = StopMatcher::new(&req.stop_strings);

    let t0 = Instant::now();
    let chunk = req.prefill_chunk.max(1);
    let mut logits = Vec::new();
    for piece in req.prompt.chunks(chunk) {
        logits = model.forward(piece)?;
    }
    let prompt_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut finish = FinishReason::Length;
    let budget = req.max_tokens.min(limit - req.prompt.len());
    while tokens.len() < budget {
        if logits.len() != vocab {
            return Err(EngineError::Model(format!(
                "model returned {} logits for a vocabulary of {vocab}",
                logits.len()
            )));
        }
        let next = sampler.sample(&mut logits)?;
        if req.stop_tokens.contains(&next) {
            finish = FinishReason::Stop;
            break;
        }
        sampler.accept(next);
        tokens.push(next);
        let step = stops.push(&detok.push(next)?);
        if !step.emit.is_empty() {
            text.push_str(&step.emit);
            if !on_text(&step.emit) {
                finish = FinishReason::Cancelled;
                break;
            }
        }
        if step.stopped {
            finish = FinishReason::Stop;
            break;
        }
        if tokens.len() < budget {
            logits = model.forward(&[next])?;
        }
    }
    if finish != FinishReason::Cancelled && finish != FinishReason::Stop {
        let mut tail = stops.push(&detok.finish()?).emit;
        tail.push_str(&stops.finish());
        if !tail.is_empty() {
            text.push_str(&tail);
            on_text(&tail);
        }
    }
    Ok(GenerationOutput {
        text,
        finish_reason: finish,
        stats: GenerationStats {
            prompt_tokens: req.prompt.len(),
            prompt_secs,
            generated_tokens: tokens.len(),
            decode_secs: t1.elapsed().as_secs_f64(),
        },
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Predicts token (last + 1) % vocab with certainty.
    struct Counter {
        vocab: usize,
        len: usize,
        max: usize,
        last: u32,
    }

    impl SequenceModel for Counter {
        fn vocab_size(&self) -> usize {
            self.vocab
        }
        fn max_seq_len(&self) -> usize {
            self.max
        }
        fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
            self.len += tokens.len();
            self.last = *tokens.last().unwrap();
            let mut l = vec![0.0; self.vocab];
            l[(self.last as usize + 1) % self.vocab] = 10.0;
            Ok(l)
        }
    }

    /// Token i is the letter ('a' + i).
    struct Letters;
    impl Detokenizer for Letters {
        fn push(&mut self, id: u32) -> Result<String, EngineError> {
            Ok(char::from(b'a' + id as u8).to_string())
        }
        fn finish(&mut self) -> Result<String, EngineError> {
            Ok(String::new())
        }
    }

    fn req(prompt: Vec<u32>, max_tokens: usize) -> GenerationRequest {
        GenerationRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop_strings: vec![],
            stop_tokens: vec![],
            prefill_chunk: 2,
        }
    }

    fn model(max: usize) -> Counter {
        Counter {
            vocab: 26,
            len: 0,
            max,
            last: 0,
        }
    }

    #[test]
    fn greedy_until_max_tokens_streams_everything() {
        let mut streamed = String::new();
        let out = generate(&mut model(100), &mut Letters, &req(vec![0, 1, 2], 4), |t| {
            streamed.push_str(t);
            true
        })
        .unwrap();
        assert_eq!(out.tokens, vec![3, 4, 5, 6]);
        assert_eq!(out.text, "defg");
        assert_eq!(streamed, "defg");
        assert_eq!(out.finish_reason, FinishReason::Length);
    }

    #[test]
    fn stops_on_token_and_string_and_context() {
        let mut r = req(vec![0], 10);
        r.stop_tokens = vec![3];
        let out = generate(&mut model(100), &mut Letters, &r, |_| true).unwrap();
        assert_eq!(
            (out.text.as_str(), out.finish_reason),
            ("bc", FinishReason::Stop)
        );

        let mut r = req(vec![0], 10);
        r.stop_strings = vec!["de".into()];
        let out = generate(&mut model(100), &mut Letters, &r, |_| true).unwrap();
        assert_eq!(
            (out.text.as_str(), out.finish_reason),
            ("bc", FinishReason::Stop)
        );

        // Context of 4 with a 1-token prompt leaves room for 3.
        let out = generate(&mut model(4), &mut Letters, &req(vec![0], 10), |_| true).unwrap();
        assert_eq!(out.tokens.len(), 3);
        assert_eq!(out.finish_reason, FinishReason::Length);
    }

    #[test]
    fn cancellation_and_bad_prompts() {
        let out = generate(&mut model(100), &mut Letters, &req(vec![0], 10), |_| false).unwrap();
        assert_eq!(out.finish_reason, FinishReason::Cancelled);
        assert_eq!(out.tokens.len(), 1);

        assert!(generate(&mut model(100), &mut Letters, &req(vec![], 1), |_| true).is_err());
        assert!(generate(&mut model(100), &mut Letters, &req(vec![99], 1), |_| true).is_err());
        let e = generate(&mut model(3), &mut Letters, &req(vec![0, 1, 2], 1), |_| {
            true
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains('3'), "{e}");
    }
}
