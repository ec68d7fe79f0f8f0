//! Token sampling: penalties, temperature, top-k, top-p, min-p, seeded RNG.
//!
//! The order of transforms follows llama.cpp's default chain: penalties on raw
//! logits, then top-k, then softmax at temperature, then min-p and top-p on
//! the probabilities, then one draw (`nucleus.rs` defines the candidates'
//! order and the draw, and computes them in time linear in the vocabulary).
//! `temperature == 0` is greedy (argmax after penalties), with ties broken by
//! the lowest token id.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

use crate::EngineError;

mod nucleus;

use nucleus::{DrawParams, Nucleus};

/// User-facing sampling parameters. Defaults match llama.cpp's CLI.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f32,
    /// 0.0 disables min-p.
    pub min_p: f32,
    /// 1.0 disables; > 1 discourages tokens seen in the last `penalty_last_n`.
    pub repetition_penalty: f32,
    /// How many recent tokens (prompt included) the repetition penalty sees.
    pub penalty_last_n: usize,
    /// OpenAI-style: subtracted once from every token already generated.
    pub presence_penalty: f32,
    /// OpenAI-style: subtracted per occurrence in the generated text.
    pub frequency_penalty: f32,
    /// Same seed, same output. `None` draws a seed from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            penalty_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// A temperature draw with no penalties (what a model may draw itself:
    /// [`draw_with_uniform`]).
    pub fn unpenalised(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> Self {
        Self {
            temperature,
            top_k,
            top_p,
            min_p,
            ..Self::greedy()
        }
    }

    /// Greedy decoding with no penalties.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Self::default()
        }
    }

    /// Rejects values no sampler can honour, naming the parameter.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |name: &str, why: &str| Err(EngineError::InvalidParam(format!("{name}: {why}")));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature", "must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be in [0, 1]");
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad("repetition_penalty", "must be a finite number > 0");
        }
        if !self.presence_penalty.is_finite() || self.presence_penalty.abs() > 2.0 {
            return bad("presence_penalty", "must be in [-2, 2]");
        }
        if !self.frequency_penalty.is_finite() || self.frequency_penalty.abs() > 2.0 {
            return bad("frequency_penalty", "must be in [-2, 2]");
        }
        Ok(())
    }
}

/// A stateful sampler: owns the RNG and the token history for penalties.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Prompt and generated tokens, for the repetition penalty window.
    history: Vec<u32>,
    /// Occurrences of each generated token, for presence/frequency penalties.
    generated_counts: HashMap<u32, u32>,
    /// Scratch of the temperature draw.
    nucleus: Nucleus,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, EngineError> {
        params.validate()?;
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        Ok(Self {
            params,
            rng,
            history: Vec::new(),
            generated_counts: HashMap::new(),
            nucleus: Nucleus::default(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Whether [`Sampler::sample`] is the plain argmax of the logits (greedy,
    /// no penalty changes them), so that a model may pick the token itself.
    pub fn is_plain_greedy(&self) -> bool {
        self.params.temperature == 0.0 && self.is_penalty_free()
    }

    /// Whether no penalty changes the logits: the token then depends on the
    /// logits and the uniform draw only, so a model may choose it.
    pub fn is_penalty_free(&self) -> bool {
        let p = &self.params;
        (p.repetition_penalty == 1.0 || p.penalty_last_n == 0)
            && p.presence_penalty == 0.0
            && p.frequency_penalty == 0.0
    }

    /// Records prompt tokens (they count for the repetition penalty only).
    pub fn observe_prompt(&mut self, tokens: &[u32]) {
        self.history.extend_from_slice(tokens);
    }

    /// Records a generated token.
    pub fn accept(&mut self, token: u32) {
        self.history.push(token);
        *self.generated_counts.entry(token).or_insert(0) += 1;
    }

    /// Picks the next token from `logits` (one per vocabulary entry). The
    /// logits are modified in place by the penalties.
    pub fn sample(&mut self, logits: &mut [f32]) -> Result<u32, EngineError> {
        let u = self.next_uniform();
        self.sample_with_uniform(logits, u)
    }

    /// The uniform in [0, 1) the next [`Sampler::sample`] would draw with
    /// (one per token, greedy or not, so that a sequence's stream of draws
    /// does not depend on where its tokens were chosen). A device sampler
    /// fed it, with the same logits, picks what
    /// [`Sampler::sample_with_uniform`] does.
    pub fn next_uniform(&mut self) -> f32 {
        self.rng.gen()
    }

    /// The token [`Sampler::sample`] picks when its draw is `u` (in [0, 1)):
    /// penalties, then greedy or the temperature draw of `nucleus.rs`.
    pub fn sample_with_uniform(&mut self, logits: &mut [f32], u: f32) -> Result<u32, EngineError> {
        self.apply_penalties(logits);
        self.choose(logits, u)
    }

    /// Greedy or the temperature draw with `u`, on logits the penalties
    /// have already changed.
    fn choose(&mut self, logits: &[f32], u: f32) -> Result<u32, EngineError> {
        if logits.is_empty() {
            return Err(EngineError::InvalidParam("empty logits".into()));
        }
        if !(0.0..1.0).contains(&u) {
            return Err(EngineError::InvalidParam(format!(
                "uniform {u} outside [0, 1)"
            )));
        }
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        if !inv_t.is_finite() {
            // A temperature so small that 1/T overflows would make the top
            // logit (0 * inf = NaN) unusable; the limit is greedy decoding.
            if !nucleus::max_logit(logits).is_finite() {
                return Err(EngineError::NonFiniteLogits);
            }
            return argmax(logits);
        }
        let draw = DrawParams {
            inv_t,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
        };
        self.nucleus.choose(logits, &draw, u)
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 && p.penalty_last_n > 0 {
            let start = self.history.len().saturating_sub(p.penalty_last_n);
            let mut seen: Vec<u32> = self.history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.generated_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
    }
}

/// The token a draw with `params` (no penalties: an error otherwise) and
/// the uniform `u` picks from `logits`: the definition a model that draws
/// on its own device must match ([`crate::serve::ModelPick::Draw`]), and
/// its tests' reference.
pub fn draw_with_uniform(
    params: &SamplingParams,
    logits: &[f32],
    u: f32,
) -> Result<u32, EngineError> {
    let mut sampler = Sampler::new(params.clone())?;
    if !sampler.is_penalty_free() {
        return Err(EngineError::InvalidParam(
            "a draw without history takes no penalties".into(),
        ));
    }
    sampler.choose(logits, u)
}

/// Index of the largest logit (lowest id on ties); NaN is never chosen.
pub fn argmax(logits: &[f32]) -> Result<u32, EngineError> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if l <= b => {}
            _ => best = Some((i, l)),
        }
    }
    best.map(|(i, _)| i as u32)
        .ok_or(EngineError::NonFiniteLogits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(p).unwrap()
    }

    #[test]
    fn greedy_picks_argmax_lowest_id_on_tie() {
        let mut s = sampler(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0]).unwrap(), 1);
        assert_eq!(s.sample(&mut [f32::NAN, 0.5, 0.2]).unwrap(), 1);
        assert!(s.sample(&mut [f32::NAN, f32::NAN]).is_err());
    }

    #[test]
    fn subnormal_temperature_is_greedy() {
        // 1 / 1e-45 overflows to infinity; the top logit must still win.
        let mut s = sampler(SamplingParams {
            temperature: 1e-45,
            seed: Some(1),
            ..SamplingParams::default()
        });
        for _ in 0..10 {
            assert_eq!(s.sample(&mut [0.0, 5.0, 1.0, 4.0]).unwrap(), 1);
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let p = SamplingParams {
            seed: Some(42),
            top_k: 0,
            min_p: 0.0,
            top_p: 0.99,
            temperature: 1.5,
            ..SamplingParams::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = sampler(p.clone());
            (0..50)
                .map(|_| s.sample(&mut logits.clone()).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(&p);
        assert_eq!(a, draw(&p));
        // Different seed, different sequence (overwhelmingly likely with 50 draws).
        let b = draw(&SamplingParams {
            seed: Some(43),
            ..p.clone()
        });
        assert_ne!(a, b);
        // Draws are spread out: a high temperature over 1000 tokens is not greedy.
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 5);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = sampler(SamplingParams {
            top_k: 1,
            seed: Some(1),
            ..SamplingParams::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [1.0, 5.0, 4.9, 0.0]).unwrap(), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ~ 0.5, 0.3, 0.2 (logs); top_p 0.7 keeps ids 0 and 1.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let mut s = sampler(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.7,
            min_p: 0.0,
            seed: Some(7),
            ..SamplingParams::default()
        });
        let mut counts = [0usize; 3];
        for _ in 0..2000 {
            counts[s.sample(&mut logits.clone()).unwrap() as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        // 0.5 / 0.8 = 62.5% expected for id 0.
        let frac0 = counts[0] as f64 / 2000.0;
        assert!((frac0 - 0.625).abs() < 0.05, "frac0 = {frac0}");
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let logits = [0.0f32, -10.0, -0.1];
        let mut s = sampler(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.1,
            seed: Some(3),
            ..SamplingParams::default()
        });
        for _ in 0..500 {
            assert_ne!(s.sample(&mut logits.clone()).unwrap(), 1);
        }
    }

    #[test]
    fn penalties_change_greedy_choice() {
        let mut s = sampler(SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        s.observe_prompt(&[0]);
        // 3.0 / 2 = 1.5 < 2.0
        assert_eq!(s.sample(&mut [3.0, 2.0]).unwrap(), 1);

        let mut s = sampler(SamplingParams {
            frequency_penalty: 0.5,
            presence_penalty: 0.5,
            ..SamplingParams::greedy()
        });
        s.accept(0);
        s.accept(0);
        // 3.0 - 0.5 - 2*0.5 = 1.5 < 2.0
        assert_eq!(s.sample(&mut [3.0, 2.0]).unwrap(), 1);
    }

    #[test]
    fn invalid_params_are_rejected_by_name() {
        for (p, name) in [
            (
                SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: 2.0,
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
        ] {
            let err = Sampler::new(p).err().unwrap().to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}
