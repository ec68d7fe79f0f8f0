//! Per-group quantization parameters (scale, zero point) on any element
//! grid, and the scale search GPTQ / MR-GPTQ run per group.
//!
//! The min-max rules are the ones `marlin_quant::quantize_rtn` documents
//! (its helpers are private, so they are restated here; keep in sync):
//! symmetric `scale = amax / max_value` rounded to the scale dtype, except
//! float elements with E8M0 scales which use the OCP MX rule
//! `2^(floor(log2 amax) - emax)`; asymmetric `scale = (hi - lo) / (2^b - 1)`
//! with `[lo, hi]` widened to contain 0 for integer zero points and
//! `zero = round(-lo / scale)`.

use marlin_quant::formats::{e8m0_from_exponent, e8m0_to_f32, f32_to_e8m0_floor};
use marlin_quant::{ElementType, QuantScheme, ScaleDType, ZeroPoint};

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

/// Scale (as stored, exactly representable in the scale dtype) and zero
/// point (0 without zero points) of one group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct GroupParams {
    pub scale: f32,
    pub zero: f32,
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
        let scheme = &self.scheme;
        let dtype = scheme.scale_dtype;
        let empty = GroupParams {
            scale: empty_scale(dtype),
            zero: 0.0,
        };
        if min > max {
            return empty;
        }
        match scheme.zero_point {
            ZeroPoint::None => {
                let amax = (f64::from(min.abs().max(max.abs())) * f64::from(ratio)
                    / f64::from(self.global)) as f32;
                if amax == 0.0 || !amax.is_finite() {
                    return empty;
                }
                let scale = match (dtype, scheme.element.max_exponent()) {
                    (ScaleDType::E8M0, Some(emax)) => {
                        let floor_exp = i32::from(f32_to_e8m0_floor(amax)) - 127;
                        e8m0_to_f32(e8m0_from_exponent(floor_exp - emax))
                    }
                    _ => dtype
                        .round((f64::from(amax) / f64::from(scheme.element.max_value())) as f32),
                };
                GroupParams { scale, zero: 0.0 }
            }
            ZeroPoint::Int | ZeroPoint::Float => {
                let qmax = f64::from(scheme.element.max_value());
                let mut lo = f64::from(min) * f64::from(ratio);
                let mut hi = f64::from(max) * f64::from(ratio);
                if scheme.zero_point == ZeroPoint::Int || hi == lo {
                    lo = lo.min(0.0);
                    hi = hi.max(0.0);
                }
                let raw = ((hi - lo) / qmax / f64::from(self.global)) as f32;
                if raw == 0.0 || !raw.is_finite() {
                    return empty;
                }
                let scale = dtype.round(raw);
                let eff = f64::from(self.global) * f64::from(scale);
                if eff == 0.0 {
                    return GroupParams { scale, zero: 0.0 };
                }
                let zero = match scheme.zero_point {
                    ZeroPoint::Int => (-lo / eff).round_ties_even().clamp(0.0, qmax) as f32,
                    _ => dtype.round((-lo / eff) as f32),
                };
                GroupParams { scale, zero }
            }
        }
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

/// The scale of an all-zero group: 0, or E8M0's smallest value (E8M0 has
/// no zero).
fn empty_scale(dtype: ScaleDType) -> f32 {
    match dtype {
        ScaleDType::E8M0 => e8m0_to_f32(0),
        _ => 0.0,
    }
}

/// The per-tensor scale that puts the largest min-max group scale at
/// `1 / headroom` of the scale dtype's maximum (E4M3 and F16 scale dtypes;
/// 1.0 otherwise). `quantize_rtn` uses headroom 1. GPTQ needs more: its
/// updates can grow a group beyond the original range, and a saturated
/// E4M3 scale would then clip the whole group; E4M3's relative precision
/// is the same at any exponent, so the headroom costs nothing there.
/// `groups` yields each group's (min, max).
pub(crate) fn global_scale(
    scheme: &QuantScheme,
    groups: impl Iterator<Item = (f32, f32)>,
    headroom: f32,
) -> f32 {
    if !scheme.global_scale {
        return 1.0;
    }
    let limit = match scheme.scale_dtype {
        ScaleDType::E4M3 | ScaleDType::F16 => scheme.scale_dtype.max_finite(),
        ScaleDType::F32 | ScaleDType::BF16 | ScaleDType::E8M0 => return 1.0,
    };
    let raw = Grid {
        scheme: scheme.with_scale_dtype(ScaleDType::F32),
        global: 1.0,
    };
    let max_raw = groups
        .map(|(lo, hi)| raw.params(lo, hi, 1.0).scale)
        .fold(0.0f32, f32::max);
    let global = max_raw * headroom / limit;
    if global.is_normal() && global > 0.0 {
        global
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use marlin_quant::Granularity;

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
