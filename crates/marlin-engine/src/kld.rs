//! KL divergence of a model's token distributions against a base model's,
//! over the scored positions of the perplexity windows (llama.cpp's
//! `--kl-divergence`): mean KLD, its 99th percentile, how often both pick
//! the same top-1 token, and both perplexities.

use crate::perplexity::PerplexityAccumulator;
use crate::EngineError;

/// Accumulates per-token statistics of a model against its base.
#[derive(Clone, Debug, Default)]
pub struct KldAccumulator {
    /// KL(base ‖ model) of every scored token.
    klds: Vec<f64>,
    same_top1: usize,
    base_ppl: PerplexityAccumulator,
    model_ppl: PerplexityAccumulator,
}

/// Summary of a [`KldAccumulator`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KldSummary {
    pub tokens: usize,
    pub mean_kld: f64,
    /// Standard error of the mean KLD.
    pub mean_kld_err: f64,
    pub p99_kld: f64,
    pub max_kld: f64,
    /// Percentage of tokens where both argmaxes agree.
    pub same_top1_pct: f64,
    pub base_ppl: f64,
    pub model_ppl: f64,
}

/// log-softmax of `logits` in f64; errors on non-finite logits.
fn log_softmax(logits: &[f32]) -> Result<Vec<f64>, EngineError> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() || logits.iter().any(|l| l.is_nan()) {
        return Err(EngineError::NonFiniteLogits);
    }
    let max = f64::from(max);
    let lse = logits
        .iter()
        .map(|&l| (f64::from(l) - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    Ok(logits.iter().map(|&l| f64::from(l) - lse).collect())
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

impl KldAccumulator {
    /// Adds one position: the base's and the model's logits (vocab each)
    /// and the actual next token (for the perplexities).
    pub fn add(&mut self, base: &[f32], model: &[f32], target: u32) -> Result<(), EngineError> {
        if base.len() != model.len() || base.is_empty() {
            return Err(EngineError::InvalidParam(format!(
                "logits of {} and {} entries (vocabularies differ?)",
                base.len(),
                model.len()
            )));
        }
        let lp = log_softmax(base)?;
        let lq = log_softmax(model)?;
        let kld: f64 = lp
            .iter()
            .zip(&lq)
            .map(|(&p, &q)| p.exp() * (p - q))
            .sum::<f64>()
            // Rounding can leave a tiny negative value for identical inputs.
            .max(0.0);
        self.klds.push(kld);
        if argmax(base) == argmax(model) {
            self.same_top1 += 1;
        }
        self.base_ppl.add(base, target)?;
        self.model_ppl.add(model, target)?;
        Ok(())
    }

    /// Scores one perplexity window (second half, as
    /// [`crate::perplexity::score_window`]) from both models' logits
    /// (`window.len() x vocab` each).
    pub fn add_window(
        &mut self,
        window: &[u32],
        base: &[f32],
        model: &[f32],
        vocab: usize,
    ) -> Result<(), EngineError> {
        let n = window.len();
        for (what, l) in [("base", base), ("model", model)] {
            if vocab == 0 || n.checked_mul(vocab) != Some(l.len()) {
                return Err(EngineError::Model(format!(
                    "{what}: expected {n} x {vocab} logits, got {}",
                    l.len()
                )));
            }
        }
        for i in n / 2..n.saturating_sub(1) {
            let r = i * vocab..(i + 1) * vocab;
            self.add(&base[r.clone()], &model[r], window[i + 1])?;
        }
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.klds.len()
    }

    pub fn summary(&self) -> KldSummary {
        let n = self.klds.len();
        if n == 0 {
            return KldSummary {
                tokens: 0,
                mean_kld: f64::NAN,
                mean_kld_err: f64::NAN,
                p99_kld: f64::NAN,
                max_kld: f64::NAN,
                same_top1_pct: f64::NAN,
                base_ppl: f64::NAN,
                model_ppl: f64::NAN,
            };
        }
        let nf = n as f64;
        let mean = self.klds.iter().sum::<f64>() / nf;
        let var = self.klds.iter().map(|k| (k - mean).powi(2)).sum::<f64>() / nf;
        let err = if n > 1 {
            (var / (nf - 1.0)).sqrt()
        } else {
            0.0
        };
        let mut sorted = self.klds.clone();
        sorted.sort_by(f64::total_cmp);
        // Nearest-rank percentile.
        let rank = ((0.99 * nf).ceil() as usize).clamp(1, n);
        KldSummary {
            tokens: n,
            mean_kld: mean,
            mean_kld_err: err,
            p99_kld: sorted[rank - 1],
            max_kld: sorted[n - 1],
            same_top1_pct: 100.0 * self.same_top1 as f64 / nf,
            base_ppl: self.base_ppl.estimate().0,
            model_ppl: self.model_ppl.estimate().0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_models_have_zero_kld() {
        let mut acc = KldAccumulator::default();
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7 % 13) as f32) * 0.3).collect();
        for t in 0..10 {
            acc.add(&logits, &logits, t).unwrap();
        }
        let s = acc.summary();
        assert_eq!(s.tokens, 10);
        assert_eq!(s.mean_kld, 0.0);
        assert_eq!(s.p99_kld, 0.0);
        assert_eq!(s.same_top1_pct, 100.0);
        assert_eq!(s.base_ppl, s.model_ppl);
    }

    #[test]
    fn kld_matches_closed_form() {
        // p = softmax(0, 0) = (1/2, 1/2); q = softmax(ln 3, 0) = (3/4, 1/4).
        let mut acc = KldAccumulator::default();
        acc.add(&[0.0, 0.0], &[3f32.ln(), 0.0], 0).unwrap();
        let expected = 0.5 * (0.5f64 / 0.75).ln() + 0.5 * (0.5f64 / 0.25).ln();
        let s = acc.summary();
        assert!((s.mean_kld - expected).abs() < 1e-7, "{}", s.mean_kld);
        // argmax of (0, 0) is 0, of (ln 3, 0) is 0.
        assert_eq!(s.same_top1_pct, 100.0);
    }

    #[test]
    fn percentile_and_errors() {
        let mut acc = KldAccumulator::default();
        for i in 0..100 {
            // KLD grows with i: q puts less mass on the base's favourite.
            let d = i as f32 * 0.05;
            acc.add(&[2.0, 0.0], &[2.0 - d, 0.0], 0).unwrap();
        }
        let s = acc.summary();
        assert!(s.p99_kld <= s.max_kld && s.p99_kld > s.mean_kld);
        assert!(acc.add(&[0.0; 3], &[0.0; 2], 0).is_err());
        assert!(acc.add(&[f32::NAN, 0.0], &[0.0; 2], 0).is_err());
        assert!(acc.add_window(&[1, 2], &[0.0; 4], &[0.0; 3], 2).is_err());
        assert!(KldAccumulator::default().summary().mean_kld.is_nan());
    }
}
