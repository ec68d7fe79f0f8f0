//! Rotary position embeddings.
//!
//! Two pairings exist in the wild: GGUF Llama checkpoints store Q/K rows
//! permuted so that rotation pairs are adjacent (`Normal`), while Hugging Face
//! checkpoints and GGUF Gemma/Qwen pair dimension `i` with `i + n_rot/2`
//! (`Neox`). Which one applies is a property of the checkpoint, decided by
//! the model loader.

use crate::CpuError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(x[2i], x[2i+1])`.
    Normal,
    /// Pairs `(x[i], x[i + n_rot/2])`.
    Neox,
}

/// How the base frequencies are stretched for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (Gemma 3 global layers in larger models).
    Linear {
        factor: f32,
    },
    /// Llama 3.x "llama3" rope type: low frequencies divided by `factor`,
    /// high ones kept, a smooth ramp between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: f32,
    },
    /// Per-frequency divisors as stored by GGUF (`rope_freqs.weight`, n_rot/2).
    FreqFactors(Vec<f32>),
}

/// Rotary embedding of the first `n_rot` dimensions of each `head_dim` head.
#[derive(Clone, Debug)]
pub struct Rope {
    head_dim: usize,
    n_rot: usize,
    style: RopeStyle,
    /// (n_rot / 2): angle per position of each rotation pair.
    inv_freq: Vec<f64>,
}

impl Rope {
    pub fn new(
        head_dim: usize,
        n_rot: usize,
        base: f32,
        style: RopeStyle,
        scaling: &RopeScaling,
    ) -> Result<Self, CpuError> {
        if n_rot == 0 || !n_rot.is_multiple_of(2) || n_rot > head_dim {
            return Err(CpuError::Shape(format!(
                "rope: n_rot {n_rot} must be even, positive and <= head_dim {head_dim}"
            )));
        }
        if !(base.is_finite() && base > 0.0) {
            return Err(CpuError::Shape(format!("rope: invalid base {base}")));
        }
        let half = n_rot / 2;
        let mut inv_freq: Vec<f64> = (0..half)
            .map(|i| (base as f64).powf(-((2 * i) as f64) / n_rot as f64))
            .collect();
        match scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                check_factor(*factor)?;
                inv_freq.iter_mut().for_each(|f| *f /= *factor as f64);
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                check_factor(*factor)?;
                let (lo, hi, old) = (
                    *low_freq_factor as f64,
                    *high_freq_factor as f64,
                    *original_max_position as f64,
                );
                if !(hi > lo && lo > 0.0 && old > 0.0) {
                    return Err(CpuError::Shape(format!(
                        "rope llama3 scaling: need high_freq_factor {hi} > low_freq_factor {lo} > 0"
                    )));
                }
                let factor = *factor as f64;
                let (low_wavelen, high_wavelen) = (old / lo, old / hi);
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
            RopeScaling::FreqFactors(factors) => {
                if factors.len() != half {
                    return Err(CpuError::Shape(format!(
                        "rope: {} frequency factors for {half} frequencies",
                        factors.len()
                    )));
                }
                for (f, d) in inv_freq.iter_mut().zip(factors) {
                    check_factor(*d)?;
                    *f /= *d as f64;
                }
            }
        }
        Ok(Self {
            head_dim,
            n_rot,
            style,
            inv_freq,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Rotated dimensions of each head (the first `n_rot` of `head_dim`).
    pub fn n_rot(&self) -> usize {
        self.n_rot
    }

    pub fn style(&self) -> RopeStyle {
        self.style
    }

    /// (n_rot / 2): angle per position of each rotation pair, scaling folded in.
    pub fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    /// Rotates `x` (m, n_heads, head_dim) in place; token `t` sits at
    /// `positions[t]`.
    pub fn apply(
        &self,
        x: &mut [f32],
        n_heads: usize,
        positions: &[usize],
    ) -> Result<(), CpuError> {
        let per_token = n_heads
            .checked_mul(self.head_dim)
            .ok_or_else(|| CpuError::Shape("rope: n_heads*head_dim overflows".into()))?;
        if per_token == 0 || Some(x.len()) != positions.len().checked_mul(per_token) {
            return Err(CpuError::Shape(format!(
                "rope: {} values for {} tokens of {n_heads} heads x {}",
                x.len(),
                positions.len(),
                self.head_dim
            )));
        }
        let half = self.n_rot / 2;
        let mut cos = vec![0.0f32; half]; // (n_rot/2)
        let mut sin = vec![0.0f32; half]; // (n_rot/2)
        for (tok, &pos) in x.chunks_exact_mut(per_token).zip(positions) {
            for (i, f) in self.inv_freq.iter().enumerate() {
                let (s, c) = (pos as f64 * f).sin_cos();
                cos[i] = c as f32;
                sin[i] = s as f32;
            }
            for head in tok.chunks_exact_mut(self.head_dim) {
                match self.style {
                    RopeStyle::Normal => {
                        for i in 0..half {
                            let (a, b) = (head[2 * i], head[2 * i + 1]);
                            head[2 * i] = a * cos[i] - b * sin[i];
                            head[2 * i + 1] = a * sin[i] + b * cos[i];
                        }
                    }
                    RopeStyle::Neox => {
                        let (lo, hi) = head[..self.n_rot].split_at_mut(half);
                        for i in 0..half {
                            let (a, b) = (lo[i], hi[i]);
                            lo[i] = a * cos[i] - b * sin[i];
                            hi[i] = a * sin[i] + b * cos[i];
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_factor(f: f32) -> Result<(), CpuError> {
    if f.is_finite() && f > 0.0 {
        Ok(())
    } else {
        Err(CpuError::Shape(format!("rope: invalid scaling factor {f}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct complex-number rotation, written independently of `apply`.
    fn rotate_ref(x: &[f32], pos: usize, base: f64, n_rot: usize, neox: bool) -> Vec<f32> {
        let mut out = x.to_vec();
        let half = n_rot / 2;
        for i in 0..half {
            let theta = pos as f64 * base.powf(-2.0 * i as f64 / n_rot as f64);
            let (a_idx, b_idx) = if neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let z = (x[a_idx] as f64, x[b_idx] as f64);
            out[a_idx] = (z.0 * theta.cos() - z.1 * theta.sin()) as f32;
            out[b_idx] = (z.0 * theta.sin() + z.1 * theta.cos()) as f32;
        }
        out
    }

    #[test]
    fn both_styles_match_direct_rotation() {
        let (hd, n_rot, heads) = (10, 8, 3);
        let positions = [0usize, 5, 4097];
        let x: Vec<f32> = (0..positions.len() * heads * hd)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        for (style, neox) in [(RopeStyle::Normal, false), (RopeStyle::Neox, true)] {
            let rope = Rope::new(hd, n_rot, 10000.0, style, &RopeScaling::None).unwrap();
            let mut y = x.clone();
            rope.apply(&mut y, heads, &positions).unwrap();
            for (t, &p) in positions.iter().enumerate() {
                for h in 0..heads {
                    let off = (t * heads + h) * hd;
                    let want = rotate_ref(&x[off..off + hd], p, 10000.0, n_rot, neox);
                    for d in 0..hd {
                        assert!(
                            (y[off + d] - want[d]).abs() < 1e-5,
                            "{style:?} t{t} h{h} d{d}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192.0,
        };
        let plain = Rope::new(128, 128, 500000.0, RopeStyle::Neox, &RopeScaling::None).unwrap();
        let scaled = Rope::new(128, 128, 500000.0, RopeStyle::Neox, &s).unwrap();
        assert_eq!(plain.inv_freq[0], scaled.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((plain.inv_freq[last] / 8.0 - scaled.inv_freq[last]).abs() < 1e-15);
        assert!(Rope::new(10, 9, 1e4, RopeStyle::Neox, &RopeScaling::None).is_err());
        let rope = Rope::new(4, 4, 1e4, RopeStyle::Neox, &RopeScaling::None).unwrap();
        assert!(rope.apply(&mut [0.0; 7], 1, &[0, 1]).is_err());
    }
}
