//! Perplexity as llama.cpp's `llama-perplexity` computes it: the text is cut
//! into non-overlapping windows of `ctx` tokens, the first token of each
//! window is replaced by BOS (when the model uses one), and only the second
//! half of each window is scored (every scored token sees at least ctx/2
//! tokens of context). The ± figure is the standard error of the mean
//! negative log-likelihood, scaled by the perplexity, as llama.cpp prints it.

use crate::EngineError;

#[derive(Clone, Debug)]
pub struct PerplexityConfig {
    pub ctx: usize,
    /// At most this many windows (`None`: all that fit).
    pub max_chunks: Option<usize>,
    pub bos: Option<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct PerplexityAccumulator {
    nll_sum: f64,
    nll2_sum: f64,
    count: usize,
}

impl PerplexityAccumulator {
    /// Adds the negative log-likelihood of `target` under `logits`.
    pub fn add(&mut self, logits: &[f32], target: u32) -> Result<(), EngineError> {
        let t = target as usize;
        let Some(&lt) = logits.get(t) else {
            return Err(EngineError::InvalidParam(format!(
                "token {target} outside the vocabulary ({})",
                logits.len()
            )));
        };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return Err(EngineError::NonFiniteLogits);
        }
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let nll = sum.ln() - (lt - max) as f64;
        self.nll_sum += nll;
        self.nll2_sum += nll * nll;
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// (perplexity, its ± error).
    pub fn estimate(&self) -> (f64, f64) {
        if self.count == 0 {
            return (f64::NAN, f64::NAN);
        }
        let n = self.count as f64;
        let mean = self.nll_sum / n;
        let ppl = mean.exp();
        let var = self.nll2_sum / n - mean * mean;
        let err = if var > 0.0 && self.count > 1 {
            (var / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        (ppl, err * ppl)
    }
}

/// The windows to evaluate: token slices of exactly `ctx` tokens (BOS
/// substituted), in order.
pub fn windows(tokens: &[u32], cfg: &PerplexityConfig) -> Result<Vec<Vec<u32>>, EngineError> {
    if cfg.ctx < 4 {
        return Err(EngineError::InvalidParam("ctx: must be at least 4".into()));
    }
    if cfg.max_chunks == Some(0) {
        // No window would be scored and the perplexity would be NaN.
        return Err(EngineError::InvalidParam(
            "max_chunks: must be at least 1".into(),
        ));
    }
    let n = tokens.len() / cfg.ctx;
    if n == 0 {
        return Err(EngineError::InvalidParam(format!(
            "text: {} tokens is less than one window of ctx = {}",
            tokens.len(),
            cfg.ctx
        )));
    }
    let n = cfg.max_chunks.map_or(n, |m| m.min(n));
    Ok((0..n)
        .map(|i| {
            let mut w = tokens[i * cfg.ctx..(i + 1) * cfg.ctx].to_vec();
            if let Some(b) = cfg.bos {
                w[0] = b;
            }
            w
        })
        .collect())
}

/// Scores one window given the logits of all its positions
/// (`window.len() * vocab` values, row per position).
pub fn score_window(
    acc: &mut PerplexityAccumulator,
    window: &[u32],
    all_logits: &[f32],
    vocab: usize,
) -> Result<(), EngineError> {
    let n = window.len();
    if vocab == 0 || n.checked_mul(vocab) != Some(all_logits.len()) {
        return Err(EngineError::Model(format!(
            "expected {n} x {vocab} logits, got {}",
            all_logits.len()
        )));
    }
    let first = n / 2;
    // An empty window scores nothing (and `n - 1` would underflow).
    for i in first..n.saturating_sub(1) {
        acc.add(&all_logits[i * vocab..(i + 1) * vocab], window[i + 1])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_vocab_perplexity() {
        let mut acc = PerplexityAccumulator::default();
        let window = vec![0u32, 1, 2, 3, 4, 5, 6, 7];
        score_window(&mut acc, &window, &vec![0.5; 8 * 10], 10).unwrap();
        // Second half: positions 4, 5, 6 predict tokens 5, 6, 7.
        assert_eq!(acc.count(), 3);
        let (ppl, err) = acc.estimate();
        assert!((ppl - 10.0).abs() < 1e-9);
        assert!(err.abs() < 1e-9);
    }

    #[test]
    fn windows_replace_first_token_and_respect_chunks() {
        let toks: Vec<u32> = (10..30).collect();
        let cfg = PerplexityConfig {
            ctx: 8,
            max_chunks: None,
            bos: Some(1),
        };
        let w = windows(&toks, &cfg).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[1][0], 1);
        assert_eq!(w[1][1], 19);
        let w = windows(
            &toks,
            &PerplexityConfig {
                max_chunks: Some(1),
                ..cfg.clone()
            },
        )
        .unwrap();
        assert_eq!(w.len(), 1);
        assert!(windows(&toks[..5], &cfg).is_err());
        let no_chunks = PerplexityConfig {
            max_chunks: Some(0),
            ..cfg.clone()
        };
        assert!(windows(&toks, &no_chunks).is_err());
    }

    #[test]
    fn nll_matches_log_softmax() {
        let mut acc = PerplexityAccumulator::default();
        acc.add(&[1.0, 2.0, 3.0], 2).unwrap();
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((acc.estimate().0 - (lse - 3.0).exp()).abs() < 1e-6);
        assert!(acc.add(&[1.0], 5).is_err());
    }

    #[test]
    fn empty_window_scores_nothing() {
        let mut acc = PerplexityAccumulator::default();
        score_window(&mut acc, &[], &[], 10).unwrap();
        assert_eq!(acc.count(), 0);
        assert!(score_window(&mut acc, &[], &[0.0], 10).is_err());
    }
}
