//! Calibration: token windows drawn from text files (deterministic under a
//! seed), and one pass of the base model over them with an
//! [`ActivationHook`] that accumulates each linear input's Hessian (and
//! keeps a bounded sample of rows for AWQ's scale search).

use crate::{Hessian, HessianAccumulator, QuantizeError};
use marlin_models::{ActivationHook, LogitsWanted, Model};
use std::collections::BTreeMap;

/// Where a linear's input comes from in the forward pass (the activation
/// names every architecture dumps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputSite {
    /// "attn_norm": input of q/k/v (K = hidden).
    AttnIn,
    /// "kqv_out": input of the attention output projection (K = heads x head_dim).
    AttnOut,
    /// "ffn_norm": input of gate/up (K = hidden).
    FfnIn,
    /// "ffn_act": input of the down projection (K = ffn).
    FfnAct,
}

impl InputSite {
    pub const ALL: [InputSite; 4] = [
        InputSite::AttnIn,
        InputSite::AttnOut,
        InputSite::FfnIn,
        InputSite::FfnAct,
    ];

    fn from_activation(name: &str) -> Option<Self> {
        Some(match name {
            "attn_norm" => InputSite::AttnIn,
            "kqv_out" => InputSite::AttnOut,
            "ffn_norm" => InputSite::FfnIn,
            "ffn_act" => InputSite::FfnAct,
            _ => return None,
        })
    }

    /// The site feeding GGUF-style linear `name` (`blk.N.<tail>`).
    pub fn of_linear(name: &str) -> Option<Self> {
        let tail = name.strip_prefix("blk.")?.split_once('.')?.1;
        Some(match tail {
            "attn_q.weight" | "attn_k.weight" | "attn_v.weight" => InputSite::AttnIn,
            "attn_output.weight" => InputSite::AttnOut,
            "ffn_gate.weight" | "ffn_up.weight" => InputSite::FfnIn,
            "ffn_down.weight" => InputSite::FfnAct,
            _ => return None,
        })
    }
}

/// Token windows for calibration: (samples, seq_len).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalibrationSet {
    pub windows: Vec<Vec<u32>>,
}

/// splitmix64: a tiny deterministic generator (the sample positions must
/// not change with a dependency's version).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl CalibrationSet {
    /// `samples` windows of `seq_len` tokens at seeded random offsets of
    /// `tokens` (the concatenated calibration text); `bos` is put first in
    /// each window when given. Errors when the text is shorter than one
    /// window or a count is 0.
    pub fn sample(
        tokens: &[u32],
        samples: usize,
        seq_len: usize,
        seed: u64,
        bos: Option<u32>,
    ) -> Result<Self, QuantizeError> {
        if samples == 0 || seq_len < 2 {
            return Err(QuantizeError::InvalidOption(format!(
                "{samples} calibration samples of {seq_len} tokens (need >= 1 of >= 2)"
            )));
        }
        let body = seq_len - usize::from(bos.is_some());
        if tokens.len() < body {
            return Err(QuantizeError::EmptyCalibration(format!(
                "calibration text has {} tokens, fewer than one window of {seq_len}",
                tokens.len()
            )));
        }
        let starts = tokens.len() - body + 1;
        let mut state = seed;
        let windows = (0..samples)
            .map(|_| {
                let start = (splitmix64(&mut state) % starts as u64) as usize;
                let mut w = Vec::with_capacity(seq_len);
                w.extend(bos);
                w.extend_from_slice(&tokens[start..start + body]);
                w
            })
            .collect();
        Ok(Self { windows })
    }

    pub fn n_tokens(&self) -> usize {
        self.windows.iter().map(Vec::len).sum()
    }
}

/// Statistics of one layer input gathered by a calibration pass.
pub struct SiteStats {
    pub hessian: Hessian,
    /// (rows, K): a strided sample of the input rows (AWQ only).
    pub rows: Vec<f32>,
    pub n_rows: usize,
}

struct SiteAcc {
    hessian: HessianAccumulator,
    rows: Vec<f32>,
    n_rows: usize,
    seen: usize,
}

/// The hook: accumulates Hessians for `layers` and every site.
struct StatsHook {
    layers: std::ops::Range<usize>,
    /// Keep every `row_stride`-th row for AWQ (0: keep none).
    row_stride: usize,
    acc: BTreeMap<(usize, InputSite), SiteAcc>,
    error: Option<QuantizeError>,
}

impl ActivationHook for StatsHook {
    fn activation(&mut self, name: &str, layer: Option<usize>, rows: usize, data: &[f32]) {
        let (Some(site), Some(layer)) = (InputSite::from_activation(name), layer) else {
            return;
        };
        if self.error.is_some() || !self.layers.contains(&layer) || rows == 0 {
            return;
        }
        let k = data.len() / rows;
        let entry = match self.acc.entry((layer, site)) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => match HessianAccumulator::new(k) {
                Ok(hessian) => v.insert(SiteAcc {
                    hessian,
                    rows: Vec::new(),
                    n_rows: 0,
                    seen: 0,
                }),
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            },
        };
        if let Err(e) = entry.hessian.add_batch(data, rows) {
            self.error = Some(e);
            return;
        }
        if self.row_stride > 0 {
            for r in 0..rows {
                if (entry.seen + r) % self.row_stride == 0 {
                    entry.rows.extend_from_slice(&data[r * k..(r + 1) * k]);
                    entry.n_rows += 1;
                }
            }
        }
        entry.seen += rows;
    }
}

/// Runs the base model over every calibration window and returns the
/// statistics of every input site of `layers`. `awq_rows` bounds the rows
/// kept per site for AWQ (0: none). `progress(done, total)` is called after
/// each window.
pub fn collect_stats(
    model: &dyn Model,
    calib: &CalibrationSet,
    layers: std::ops::Range<usize>,
    awq_rows: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<BTreeMap<(usize, InputSite), SiteStats>, QuantizeError> {
    let max_len = calib.windows.iter().map(Vec::len).max().unwrap_or(1);
    let total_rows = calib.n_tokens();
    let row_stride = if awq_rows == 0 {
        0
    } else {
        total_rows.div_ceil(awq_rows).max(1)
    };
    let mut hook = StatsHook {
        layers,
        row_stride,
        acc: BTreeMap::new(),
        error: None,
    };
    let mut cache = model.new_cache(max_len)?;
    for (i, w) in calib.windows.iter().enumerate() {
        cache.clear();
        // Only the activations matter; the last position's logits are the
        // cheapest output to ask for.
        model.forward_with(w, &mut cache, LogitsWanted::Last, Some(&mut hook))?;
        if let Some(e) = hook.error.take() {
            return Err(e);
        }
        progress(i + 1, calib.windows.len());
    }
    hook.acc
        .into_iter()
        .map(|(key, a)| {
            Ok((
                key,
                SiteStats {
                    hessian: a.hessian.finish()?,
                    rows: a.rows,
                    n_rows: a.n_rows,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_deterministic_and_checked() {
        let tokens: Vec<u32> = (0..100).collect();
        let a = CalibrationSet::sample(&tokens, 4, 10, 7, Some(999)).unwrap();
        let b = CalibrationSet::sample(&tokens, 4, 10, 7, Some(999)).unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a,
            CalibrationSet::sample(&tokens, 4, 10, 8, Some(999)).unwrap()
        );
        for w in &a.windows {
            assert_eq!(w.len(), 10);
            assert_eq!(w[0], 999);
            // Consecutive text tokens.
            assert!(w[1..].windows(2).all(|p| p[1] == p[0] + 1));
        }
        assert!(CalibrationSet::sample(&tokens[..5], 1, 10, 0, None).is_err());
        assert!(CalibrationSet::sample(&[], 1, 10, 0, None).is_err());
        assert!(CalibrationSet::sample(&tokens, 0, 10, 0, None).is_err());
        assert_eq!(
            CalibrationSet::sample(&tokens[..10], 1, 10, 0, None)
                .unwrap()
                .windows[0],
            tokens[..10]
        );
    }
}
