//! Round-to-nearest (RTN) quantization of an f32 matrix into any
//! [`QuantScheme`], with min-max scales or an MSE-optimal clipping search.
//!
//! Per scale group (see `docs/FORMATS.md` for the bounds this gives):
//! - symmetric (no zero point): `scale = amax / max_value(element)` rounded
//!   to the scale dtype, except float elements with E8M0 scales, which use
//!   the OCP MX rule `scale = 2^(floor(log2(amax)) - emax_elem)`;
//! - asymmetric (unsigned ints): `scale = (hi - lo) / (2^b - 1)` rounded to
//!   the scale dtype, `zero = -lo / scale` (rounded to an integer in
//!   [0, 2^b - 1] for `ZeroPoint::Int`, where [lo, hi] is widened to contain
//!   0 so that 0 is exact; rounded to the scale dtype for `ZeroPoint::Float`);
//! - codes: `encode(x / (global * scale) + zero)`, round-to-nearest-even
//!   with saturation at the ends of the grid.
//!
//! With a global scale (NVFP4), `global = max_group(raw scale) / max_finite
//! (scale dtype)` for E4M3 and F16 scale dtypes (so the largest group scale
//! lands on the dtype's maximum), and 1.0 for the others.

use crate::formats::{e8m0_from_exponent, e8m0_to_f32, floor_log2};
use crate::scheme::{Granularity, QuantScheme, ScaleDType, ZeroPoint};
use crate::tensor::QuantTensor;
use crate::QuantError;
use rayon::prelude::*;

/// How each group's range is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClipMethod {
    /// The group's full range (no clipping).
    MinMax,
    /// Grid search of a clip ratio per group: the range is multiplied by
    /// `1 - i * max_shrink / grid` for i in 0..grid, and the ratio with the
    /// least squared error of the dequantized group is kept (ties keep the
    /// larger ratio, so the result is never worse than `MinMax`).
    Mse { grid: usize, max_shrink: f32 },
}

/// Options of [`quantize_rtn`].
#[derive(Clone, Debug, PartialEq)]
pub struct RtnOptions {
    pub clip: ClipMethod,
    /// Act order (PerGroup only): column c belongs to group `g_idx[c]` of
    /// its row (length K, values < K / group_size). Stored in the result.
    pub g_idx: Option<Vec<u32>>,
}

impl Default for RtnOptions {
    fn default() -> Self {
        Self {
            clip: ClipMethod::MinMax,
            g_idx: None,
        }
    }
}

impl RtnOptions {
    /// Min-max RTN.
    pub fn min_max() -> Self {
        Self::default()
    }

    /// MSE clipping search with 100 ratios down to 0.2 (GPTQ's defaults).
    pub fn mse() -> Self {
        Self {
            clip: ClipMethod::Mse {
                grid: 100,
                max_shrink: 0.8,
            },
            g_idx: None,
        }
    }
}

/// Largest accepted |weight| (2^125): keeps every scale x grid value (at
/// most 2 x the group's range after rounding) finite in f32.
pub const MAX_WEIGHT: f32 = (1u128 << 125) as f32;

/// Quantizes a row-major (rows, cols) = (N, K) f32 matrix with
/// round-to-nearest. Errors: shape / scheme problems
/// ([`QuantScheme::validate`]), `weights.len() != rows * cols`, a bad
/// `g_idx`, [`QuantError::NonFinite`] for the first NaN / infinity, and
/// [`QuantError::InvalidData`] for a weight beyond ±[`MAX_WEIGHT`].
pub fn quantize_rtn(
    weights: &[f32],
    rows: usize,
    cols: usize,
    scheme: QuantScheme,
    opts: &RtnOptions,
) -> Result<QuantTensor, QuantError> {
    scheme.validate(rows, cols)?;
    if weights.len() != rows * cols {
        return Err(QuantError::Shape(format!(
            "{} weights given for a {rows} x {cols} matrix",
            weights.len()
        )));
    }
    if let Some(index) = weights.iter().position(|w| !w.is_finite()) {
        return Err(QuantError::NonFinite {
            index,
            value: weights[index],
        });
    }
    if let Some(index) = weights.iter().position(|w| w.abs() > MAX_WEIGHT) {
        return Err(QuantError::InvalidData(format!(
            "|weight| {} at index {index} exceeds 2^125: its dequantized value could overflow f32",
            weights[index]
        )));
    }
    if let ClipMethod::Mse { grid, max_shrink } = opts.clip {
        if grid == 0 || !(0.0..1.0).contains(&max_shrink) {
            return Err(QuantError::Unsupported(format!(
                "MSE clip search needs grid > 0 and 0 <= max_shrink < 1 (got {grid}, {max_shrink})"
            )));
        }
    }
    let groups = GroupMap::new(&scheme, rows, cols, opts.g_idx.as_deref())?;
    let stats = group_min_max(weights, &groups);

    let global = global_scale(&scheme, stats.iter().map(|st| (st.min, st.max)), 1.0);
    let mut params: Vec<GroupParams> = stats
        .iter()
        .map(|st| min_max_params(&scheme, st.min, st.max, 1.0, global))
        .collect();
    if let ClipMethod::Mse { grid, max_shrink } = opts.clip {
        let mut best_err = group_errors(weights, &groups, &scheme, global, &params);
        for i in 1..grid {
            let ratio = 1.0 - i as f32 * max_shrink / grid as f32;
            let candidate: Vec<GroupParams> = stats
                .iter()
                .map(|st| min_max_params(&scheme, st.min, st.max, ratio, global))
                .collect();
            let err = group_errors(weights, &groups, &scheme, global, &candidate);
            for g in 0..params.len() {
                if err[g] < best_err[g] {
                    best_err[g] = err[g];
                    params[g] = candidate[g];
                }
            }
        }
    }

    let mut codes = vec![0u8; weights.len()]; // (N, K) raw codes
    codes
        .par_chunks_mut(cols)
        .zip(weights.par_chunks(cols))
        .enumerate()
        .for_each(|(r, (code_row, w_row))| {
            for (c, (code, &w)) in code_row.iter_mut().zip(w_row).enumerate() {
                *code = encode(&scheme, w, global, &params[groups.index(r, c)]);
            }
        });
    let data = crate::pack::pack_codes(&codes, rows, cols, scheme.element.bits())?;
    let zeros = match scheme.zero_point {
        ZeroPoint::None => None,
        ZeroPoint::Int | ZeroPoint::Float => Some(params.iter().map(|p| p.zero).collect()),
    };
    let tensor = QuantTensor {
        scheme,
        rows,
        cols,
        data,
        scales: params.iter().map(|p| p.scale).collect(),
        zeros,
        global_scale: global,
        g_idx: opts.g_idx.clone(),
    };
    // Extreme inputs (e.g. ranges beyond a scale dtype) must not produce a
    // tensor the reference rejects later.
    tensor.validate()?;
    Ok(tensor)
}

/// Maps element (r, c) to its index in the scale grid.
struct GroupMap<'a> {
    granularity: Granularity,
    cols: usize,
    n_groups: usize,
    g_idx: Option<&'a [u32]>,
}

impl<'a> GroupMap<'a> {
    fn new(
        scheme: &QuantScheme,
        rows: usize,
        cols: usize,
        g_idx: Option<&'a [u32]>,
    ) -> Result<Self, QuantError> {
        let n_groups = scheme.num_scales(rows, cols)?;
        if let Some(g_idx) = g_idx {
            let Granularity::PerGroup { group_size } = scheme.granularity else {
                return Err(QuantError::InvalidData(format!(
                    "g_idx given for {:?} (only PerGroup has act order)",
                    scheme.granularity
                )));
            };
            if g_idx.len() != cols {
                return Err(QuantError::Shape(format!(
                    "g_idx has {} entries, expected K = {cols}",
                    g_idx.len()
                )));
            }
            let per_row = cols / group_size;
            if let Some(c) = g_idx.iter().position(|&g| g as usize >= per_row) {
                return Err(QuantError::InvalidData(format!(
                    "g_idx[{c}] = {} is out of range ({per_row} groups per row)",
                    g_idx[c]
                )));
            }
        }
        Ok(Self {
            granularity: scheme.granularity,
            cols,
            n_groups,
            g_idx,
        })
    }

    /// Number of groups of each row when no group spans two rows
    /// (PerChannel, PerGroup): group indices of row r are then
    /// `r * per_row .. (r + 1) * per_row`.
    fn groups_per_row(&self) -> Option<usize> {
        match self.granularity {
            Granularity::PerChannel => Some(1),
            Granularity::PerGroup { group_size } => Some(self.cols / group_size),
            Granularity::PerTensor | Granularity::Block2d { .. } => None,
        }
    }

    #[inline]
    fn index(&self, r: usize, c: usize) -> usize {
        match (self.granularity, self.g_idx) {
            (Granularity::PerGroup { group_size }, Some(g_idx)) => {
                r * (self.cols / group_size) + g_idx[c] as usize
            }
            (Granularity::PerTensor, _) => 0,
            (Granularity::PerChannel, _) => r,
            (Granularity::PerGroup { group_size }, None) => {
                r * (self.cols / group_size) + c / group_size
            }
            (Granularity::Block2d { rows: br, cols: bc }, _) => {
                (r / br) * self.cols.div_ceil(bc) + c / bc
            }
        }
    }
}

/// Range of one group; (+inf, -inf) for a group with no elements (possible
/// with g_idx).
#[derive(Clone, Copy, Debug)]
struct MinMax {
    min: f32,
    max: f32,
}

fn group_min_max(weights: &[f32], groups: &GroupMap) -> Vec<MinMax> {
    let empty = MinMax {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
    };
    let mut stats = vec![empty; groups.n_groups];
    let update = |stats: &mut [MinMax], first_group: usize, r: usize, w_row: &[f32]| {
        for (c, &w) in w_row.iter().enumerate() {
            let st = &mut stats[groups.index(r, c) - first_group];
            st.min = st.min.min(w);
            st.max = st.max.max(w);
        }
    };
    match groups.groups_per_row() {
        // Groups never span rows: rows are independent.
        Some(per_row) => stats
            .par_chunks_mut(per_row)
            .zip(weights.par_chunks(groups.cols))
            .enumerate()
            .for_each(|(r, (row_stats, w_row))| update(row_stats, r * per_row, r, w_row)),
        None => {
            for (r, w_row) in weights.chunks_exact(groups.cols).enumerate() {
                update(&mut stats, 0, r, w_row);
            }
        }
    }
    stats
}

/// Scale (exactly representable in the scale dtype) and zero point (0
/// without zero points) of one scale group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupParams {
    pub scale: f32,
    pub zero: f32,
}

/// The scale of a group whose elements are all zero: 0, or E8M0's smallest
/// value (E8M0 has no zero).
fn empty_scale(dtype: ScaleDType) -> f32 {
    match dtype {
        ScaleDType::E8M0 => e8m0_to_f32(0),
        _ => 0.0,
    }
}

/// Min-max scale and zero of a group whose range is shrunk by `ratio`.
/// The min-max parameters (the rules of the module documentation) of a
/// group whose values span [min, max], with the range scaled by `ratio`
/// (clipping searches shrink it) and the tensor's `global` scale. An empty
/// group (min > max) or an all-zero one gets a zero scale (E8M0: its
/// smallest value). GPTQ's scale search in `marlin-quantize` shares these
/// rules through this function.
pub fn min_max_params(
    scheme: &QuantScheme,
    min: f32,
    max: f32,
    ratio: f32,
    global: f32,
) -> GroupParams {
    let dtype = scheme.scale_dtype;
    let zero_scale = GroupParams {
        scale: empty_scale(dtype),
        zero: 0.0,
    };
    if min > max {
        return zero_scale;
    }
    match scheme.zero_point {
        ZeroPoint::None => {
            let amax = f64::from(min.abs().max(max.abs())) * f64::from(ratio) / f64::from(global);
            let amax = amax as f32;
            if amax == 0.0 || !amax.is_finite() {
                return zero_scale;
            }
            let scale = match (dtype, scheme.element.max_exponent()) {
                (ScaleDType::E8M0, Some(emax)) => {
                    e8m0_to_f32(e8m0_from_exponent(floor_log2(amax) - emax))
                }
                _ => dtype.round((f64::from(amax) / f64::from(scheme.element.max_value())) as f32),
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
            let raw = ((hi - lo) / qmax / f64::from(global)) as f32;
            if raw == 0.0 || !raw.is_finite() {
                return zero_scale;
            }
            let scale = dtype.round(raw);
            let eff = f64::from(global) * f64::from(scale);
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

/// The per-tensor scale that puts the largest min-max group scale at
/// `1 / headroom` of the scale dtype's maximum (E4M3 and F16 scale dtypes),
/// and 1.0 for the other dtypes and for schemes without a global scale.
/// `quantize_rtn` uses headroom 1; GPTQ uses more, since its updates can
/// grow a group beyond its original range. `groups` yields each group's
/// (min, max).
pub fn global_scale(
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
    let raw_scheme = scheme.with_scale_dtype(ScaleDType::F32);
    let max_raw = groups
        .map(|(min, max)| min_max_params(&raw_scheme, min, max, 1.0, 1.0).scale)
        .fold(0.0f32, f32::max);
    let global = max_raw * headroom / limit;
    if global.is_normal() && global > 0.0 {
        global
    } else {
        1.0
    }
}

#[inline]
fn encode(scheme: &QuantScheme, x: f32, global: f32, p: &GroupParams) -> u8 {
    let eff = global * p.scale;
    let q = if eff > 0.0 { x / eff + p.zero } else { p.zero };
    scheme.element.encode(q)
}

#[inline]
fn dequantize(scheme: &QuantScheme, raw: u8, global: f32, p: &GroupParams) -> f32 {
    (global * p.scale) * (scheme.element.decode(raw) - p.zero)
}

/// Squared error of every group quantized with `params`.
fn group_errors(
    weights: &[f32],
    groups: &GroupMap,
    scheme: &QuantScheme,
    global: f32,
    params: &[GroupParams],
) -> Vec<f64> {
    let mut err = vec![0.0f64; params.len()];
    let accumulate = |err: &mut [f64], first_group: usize, r: usize, w_row: &[f32]| {
        for (c, &w) in w_row.iter().enumerate() {
            let g = groups.index(r, c);
            let p = &params[g];
            let q = dequantize(scheme, encode(scheme, w, global, p), global, p);
            let d = f64::from(w) - f64::from(q);
            err[g - first_group] += d * d;
        }
    };
    match groups.groups_per_row() {
        Some(per_row) => err
            .par_chunks_mut(per_row)
            .zip(weights.par_chunks(groups.cols))
            .enumerate()
            .for_each(|(r, (row_err, w_row))| accumulate(row_err, r * per_row, r, w_row)),
        None => {
            for (r, w_row) in weights.chunks_exact(groups.cols).enumerate() {
                accumulate(&mut err, 0, r, w_row);
            }
        }
    }
    err
}
