//! Per-group quantization parameters (scale, zero point) on any element
//! grid, and the scale search GPTQ / MR-GPTQ run per group.
//!
//! The min-max rules are `marlin_quant::rtn`'s ([`min_max_params`],
//! [`marlin_quant::rtn::global_scale`]), shared so that GPTQ's groups start
//! from exactly the parameters round-to-nearest would pick.

use marlin_quant::rtn::min_max_params;
pub(crate) use marlin_quant::rtn::{global_scale, GroupParams};
use marlin_quant::{ElementType, QuantScheme};

/// How a group's scale is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScaleSearch {
    /// The group's full range (min-max), no search.
    MinMax,
    /// Try `candidates` ranges `ratio x (min-max range)` with ratios evenly
    /// spaced over `[low, high]`, plus the ratio 1 (min-max, tried first),
    /// each rounded to the scale dtype, and keep the one with the least
    /// (optionally Hessian-weighted, see [`SearchWeight`]) squared error on
    /// the element grid. `high < 1` is clipping only (GPTQ's MSE search);
    /// `high > 1` also tries coarser scales, which matters on the
    /// non-uniform FP4 grid and with the power-of-two E8M0 scales, where
    /// rounding the scale moves the group's maximum onto another grid point.
    Grid {
        candidates: usize,
        low: f32,
        high: f32,
    },
}

impl ScaleSearch {
    /// GPTQ's MSE clipping search: 100 ratios in [0.2, 1].
    pub fn mse() -> Self {
        Self::Grid {
            candidates: 100,
            low: 0.2,
            high: 1.0,
        }
    }

    /// The FP4-adapted search used by MR-GPTQ: 64 ratios in [0.5, 2]
    /// (covers the E8M0 exponents e-1, e, e+1 around the OCP rule, and the
    /// E4M3 scales around amax / 6).
    pub fn fp4() -> Self {
        Self::Grid {
            candidates: 64,
            low: 0.5,
            high: 2.0,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        match *self {
            ScaleSearch::MinMax => Ok(()),
            ScaleSearch::Grid {
                candidates,
                low,
                high,
            } => {
                if candidates == 0 || !(low > 0.0 && low <= high && high.is_finite()) {
                    Err(format!(
                        "scale search needs candidates > 0 and 0 < low <= high (got {candidates}, {low}, {high})"
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The candidate ratios, 1.0 first.
    fn ratios(&self) -> Vec<f32> {
        match *self {
            ScaleSearch::MinMax => vec![1.0],
            ScaleSearch::Grid {
                candidates,
                low,
                high,
            } => {
                let mut ratios = vec![1.0];
                for i in 0..candidates {
                    let t = if candidates == 1 {
                        0.0
                    } else {
                        i as f32 / (candidates - 1) as f32
                    };
                    let r = low + (high - low) * t;
                    if r != 1.0 {
                        ratios.push(r);
                    }
                }
                ratios
            }
        }
    }
}

/// What the scale search minimises per group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchWeight {
    /// Plain squared weight error Σ (w - q)².
    Uniform,
    /// Σ H_cc (w - q)²: the output error of the group's columns ignoring
    /// their correlations (diag of the Hessian in the current basis).
    HessianDiag,
}

/// A scheme plus the tensor's global scale: everything needed to quantize
/// one value given its group's parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    pub scheme: QuantScheme,
    pub global: f32,
}

impl Grid {
    /// The raw code and its dequantized value.
    #[inline]
    pub fn quantize(&self, x: f32, p: GroupParams) -> (u8, f32) {
        let eff = self.global * p.scale;
        let q = if eff > 0.0 { x / eff + p.zero } else { p.zero };
        if self.scheme.element == ElementType::Fp4E2M1 {
            // Hot in the FP4 scale search: a branch-light encoder that is
            // tested equal to marlin-quant's.
            let raw = encode_e2m1(q);
            return (
                raw,
                eff * (E2M1_VALUES[usize::from(raw & 0x7)] * sign_of(raw) - p.zero),
            );
        }
        let raw = self.scheme.element.encode(q);
        let value = eff * (self.scheme.element.decode(raw) - p.zero);
        (raw, value)
    }

    /// Min-max parameters of a group with range [min, max] shrunk (or grown)
    /// by `ratio`.
    pub fn params(&self, min: f32, max: f32, ratio: f32) -> GroupParams {
        min_max_params(&self.scheme, min, max, ratio, self.global)
    }

    /// Squared error of a group's values quantized with `p`, each weighted
    /// by `weights[i]` when given.
    pub fn error(&self, values: &[f32], weights: Option<&[f64]>, p: GroupParams) -> f64 {
        values
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let d = f64::from(x) - f64::from(self.quantize(x, p).1);
                weights.map_or(1.0, |w| w[i]) * d * d
            })
            .sum()
    }

    /// The parameters `search` picks for one group's values.
    pub fn search(
        &self,
        values: &[f32],
        weights: Option<&[f64]>,
        search: &ScaleSearch,
    ) -> GroupParams {
        let (min, max) = min_max(values);
        let mut best = self.params(min, max, 1.0);
        if matches!(search, ScaleSearch::MinMax) || min > max {
            return best;
        }
        let mut best_err = self.error(values, weights, best);
        // Ratios ascend, so ratios that round to the same scale (E8M0 has
        // one per octave) are adjacent: evaluate each distinct one once.
        let mut previous = best;
        for ratio in search.ratios().into_iter().skip(1) {
            let candidate = self.params(min, max, ratio);
            if candidate == best || candidate == previous {
                continue;
            }
            previous = candidate;
            let err = self.error(values, weights, candidate);
            if err < best_err {
                best_err = err;
                best = candidate;
            }
        }
        best
    }
}

/// Magnitudes of the E2M1 codes 0..=7.
const E2M1_VALUES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// Midpoints between consecutive E2M1 magnitudes, and whether a value
/// exactly on the midpoint rounds up (ties go to the even code).
const E2M1_MIDPOINTS: [(f32, bool); 7] = [
    (0.25, false),
    (0.75, true),
    (1.25, false),
    (1.75, true),
    (2.5, false),
    (3.5, true),
    (5.0, false),
];

/// E2M1 encoding with round-to-nearest-even and saturation at ±6; NaN
/// encodes to +0 (as `marlin_quant::formats::f32_to_e2m1`).
#[inline]
fn encode_e2m1(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    let a = x.abs();
    let mut code = 0u8;
    for &(mid, tie_up) in &E2M1_MIDPOINTS {
        if a > mid || (tie_up && a == mid) {
            code += 1;
        }
    }
    code | if x.is_sign_negative() { 0x8 } else { 0 }
}

#[inline]
fn sign_of(raw: u8) -> f32 {
    if raw & 0x8 != 0 {
        -1.0
    } else {
        1.0
    }
}

/// (min, max) of a slice; (+inf, -inf) when empty.
pub(crate) fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use marlin_quant::{Granularity, ScaleDType};

    #[test]
    fn search_never_worse_than_min_max() {
        let values: Vec<f32> = (0..32)
            .map(|i| ((i * 7919 % 97) as f32 - 48.0) / 17.0)
            .collect();
        for scheme in [
            QuantScheme::mxfp4(),
            QuantScheme::int4_asym(32),
            QuantScheme::int3_sym(32),
        ] {
            let grid = Grid {
                scheme,
                global: 1.0,
            };
            let base = grid.params(min_max(&values).0, min_max(&values).1, 1.0);
            let found = grid.search(&values, None, &ScaleSearch::fp4());
            assert!(grid.error(&values, None, found) <= grid.error(&values, None, base));
        }
    }

    #[test]
    fn fast_e2m1_matches_marlin_quant() {
        let mut values = vec![
            0.0f32,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            6.0,
            7.0,
            1e30,
        ];
        for &(mid, _) in &E2M1_MIDPOINTS {
            // Neighbouring f32 values on both sides of each midpoint.
            let (up, down) = (
                f32::from_bits(mid.to_bits() + 1),
                f32::from_bits(mid.to_bits() - 1),
            );
            values.extend([mid, -mid, up, down, -up, -down]);
        }
        values.extend((0..20_000).map(|i| (i as f32 - 10_000.0) / 1400.0));
        for x in values {
            let fast = encode_e2m1(x);
            assert_eq!(fast, ElementType::Fp4E2M1.encode(x), "x = {x}");
            if x.is_finite() {
                let v = E2M1_VALUES[usize::from(fast & 7)] * sign_of(fast);
                assert_eq!(v, ElementType::Fp4E2M1.decode(fast), "x = {x}");
            }
        }
    }

    #[test]
    fn mx_rule_matches_ocp() {
        // amax 5.9 -> 2^(2 - 2) = 1; amax 7 -> 2^(2 - 2) = 1 (clips to 6).
        let grid = Grid {
            scheme: QuantScheme::mxfp4(),
            global: 1.0,
        };
        assert_eq!(grid.params(-5.9, 1.0, 1.0).scale, 1.0);
        assert_eq!(grid.params(-7.0, 1.0, 1.0).scale, 1.0);
        assert_eq!(grid.params(-8.0, 1.0, 1.0).scale, 2.0);
        let int = Grid {
            scheme: QuantScheme::int_sym(4, Granularity::PerChannel, ScaleDType::F32),
            global: 1.0,
        };
        assert_eq!(int.params(-7.0, 3.5, 1.0).scale, 1.0);
    }
}
