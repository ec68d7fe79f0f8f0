//! GPTQ (Frantar et al., 2022): quantize a weight matrix column by column,
//! spreading each column's rounding error over the columns not yet
//! quantized through the inverse Hessian of the layer's inputs.
//!
//! Follows the reference `fasterquant`: dead inputs (H_ii = 0) are zeroed,
//! H is dampened by `percdamp · mean(diag H)`, `Hinv` is the upper Cholesky
//! factor of H⁻¹ (f64, then f32 for the sweep), columns are processed in
//! blocks with the updates to later blocks applied lazily (one GEMM per
//! block), act-order permutes the columns by decreasing diag(H), and static
//! groups take their scales from the weights before any update. Two
//! deliberate differences: group parameters are computed from the fully
//! updated weights of the group (the reference reads the matrix before the
//! current block's in-block updates), and the block size is adjusted so a
//! group never straddles two blocks, which is what makes that possible.

use marlin_quant::pack::pack_codes;
use marlin_quant::{Granularity, QuantScheme, QuantTensor, ZeroPoint};
use rayon::prelude::*;

use crate::error::{check_len, check_weights};
use crate::gptq_sweep::Sweep;
use crate::grid::{global_scale, min_max, Grid, GroupParams, ScaleSearch, SearchWeight};
use crate::hessian::Hessian;
use crate::linalg::inverse_upper_cholesky;
use crate::QuantizeError;

/// Room left above the largest original group scale when a global scale
/// is chosen (NVFP4): GPTQ's updates may grow a group by this much before
/// its E4M3 scale saturates.
const GLOBAL_SCALE_HEADROOM: f32 = 4.0;

/// Rows per parallel task of the column sweep.
const ROWS_PER_TASK: usize = 16;

/// Options of [`gptq_quantize`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqOptions {
    /// Dampening added to the Hessian's diagonal, as a fraction of its mean
    /// diagonal (GPTQ's `percdamp`, default 0.01).
    pub percdamp: f64,
    /// Columns per lazy-update block (default 128). Adjusted down so that
    /// group boundaries are block boundaries.
    pub block_size: usize,
    /// Quantize columns in order of decreasing diag(H) (`desc_act`).
    pub act_order: bool,
    /// Compute every group's scale from the un-updated weights before the
    /// pass, in the original column order (with act-order this keeps the
    /// groups contiguous, so no g_idx is needed at inference).
    pub static_groups: bool,
    /// How each group's scale is chosen.
    pub scale_search: ScaleSearch,
    /// What the scale search minimises.
    pub search_weight: SearchWeight,
    /// How many times a Hessian that is not positive definite after
    /// dampening is retried with 10x the dampening before giving up.
    pub damp_retries: u32,
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            percdamp: 0.01,
            block_size: 128,
            act_order: false,
            static_groups: false,
            scale_search: ScaleSearch::MinMax,
            search_weight: SearchWeight::Uniform,
            damp_retries: 3,
        }
    }
}

impl GptqOptions {
    /// GPTQ with act-order (`desc_act`) and groups computed on the fly.
    pub fn act_order() -> Self {
        Self {
            act_order: true,
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), QuantizeError> {
        if !(self.percdamp >= 0.0 && self.percdamp.is_finite()) {
            return Err(QuantizeError::InvalidOption(format!(
                "percdamp {} must be finite and >= 0",
                self.percdamp
            )));
        }
        if self.block_size == 0 {
            return Err(QuantizeError::InvalidOption("block size 0".into()));
        }
        self.scale_search
            .validate()
            .map_err(QuantizeError::InvalidOption)
    }
}

/// What a GPTQ run measured besides the tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqStats {
    /// The dampening fraction that made H positive definite.
    pub percdamp_used: f64,
    /// GPTQ's proxy loss Σ (w - q)² / (2 Hinv_jj²) over all elements.
    pub proxy_loss: f64,
    /// Inputs whose Hessian diagonal was 0 (their weights were zeroed).
    pub dead_columns: usize,
}

/// Quantizes a row-major (N, K) weight matrix `w` with GPTQ, given the
/// Hessian of the layer's inputs. Supports `PerGroup` and `PerChannel`
/// granularity with every integer grid (symmetric and asymmetric), FP4
/// E2M1 (E8M0, E4M3 or float scales, with or without a global scale), FP8
/// and NF4 elements.
///
/// Errors: a bad scheme or a group size that does not divide K
/// ([`QuantizeError::Quant`]), `w.len() != N x K`, NaN / infinite weights,
/// a Hessian that is not K x K, invalid options, an unsupported
/// granularity, and [`QuantizeError::NotPositiveDefinite`] when dampening
/// retries run out.
pub fn gptq_quantize(
    w: &[f32],
    n: usize,
    k: usize,
    hessian: &Hessian,
    scheme: &QuantScheme,
    opts: &GptqOptions,
) -> Result<QuantTensor, QuantizeError> {
    gptq_quantize_with_stats(w, n, k, hessian, scheme, opts).map(|(t, _)| t)
}

/// The checks shared by GPTQ and MR-GPTQ, cheap enough to run before any
/// long work: the scheme against (N, K), `w.len() == N x K`, finite and
/// bounded weights, a K x K Hessian.
pub(crate) fn check_inputs(
    w: &[f32],
    n: usize,
    k: usize,
    hessian: &Hessian,
    scheme: &QuantScheme,
) -> Result<(), QuantizeError> {
    scheme.validate(n, k)?;
    check_len("weight matrix", w.len(), n, k)?;
    check_weights(w)?;
    if hessian.k() != k {
        return Err(QuantizeError::HessianSize {
            got: hessian.k(),
            k,
        });
    }
    Ok(())
}

/// [`gptq_quantize`], also returning what the run measured.
pub fn gptq_quantize_with_stats(
    w: &[f32],
    n: usize,
    k: usize,
    hessian: &Hessian,
    scheme: &QuantScheme,
    opts: &GptqOptions,
) -> Result<(QuantTensor, GptqStats), QuantizeError> {
    check_inputs(w, n, k, hessian, scheme)?;
    opts.validate()?;
    let group_size = match scheme.granularity {
        Granularity::PerGroup { group_size } => group_size,
        Granularity::PerChannel => k,
        other => {
            return Err(QuantizeError::Unsupported(format!(
                "GPTQ with {other:?} scales (supported: PerGroup, PerChannel)"
            )))
        }
    };
    let n_groups = k / group_size;

    // Dead inputs: never active in calibration, so their weights cannot
    // matter there; zero them and give H a unit pivot.
    let mut h = hessian.as_slice().to_vec(); // (K, K)
    let mut weights = w.to_vec(); // (N, K), original column order
    let mut dead_columns = 0;
    for c in 0..k {
        if h[c * k + c] == 0.0 {
            h[c * k + c] = 1.0;
            dead_columns += 1;
            for r in 0..n {
                weights[r * k + c] = 0.0;
            }
        }
    }
    let diag: Vec<f64> = (0..k).map(|c| h[c * k + c]).collect();

    let global = global_scale(
        scheme,
        (0..n).flat_map(|r| {
            let row = &weights[r * k..(r + 1) * k];
            row.chunks_exact(group_size).map(min_max)
        }),
        GLOBAL_SCALE_HEADROOM,
    );
    let grid = Grid {
        scheme: *scheme,
        global,
    };
    // Static groups: (N, n_groups) parameters from the un-updated weights.
    let static_params: Option<Vec<GroupParams>> = opts.static_groups.then(|| {
        let mut params = Vec::with_capacity(n * n_groups);
        for r in 0..n {
            for g in 0..n_groups {
                let cols = g * group_size..(g + 1) * group_size;
                let wts = match opts.search_weight {
                    SearchWeight::Uniform => None,
                    SearchWeight::HessianDiag => Some(&diag[cols.clone()]),
                };
                params.push(grid.search(&weights[r * k..][cols], wts, &opts.scale_search));
            }
        }
        params
    });

    // perm[j] = original column quantized at position j.
    let mut perm: Vec<usize> = (0..k).collect();
    if opts.act_order {
        // Stable: equal energies keep their original order.
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
    }
    let mut wp = vec![0.0f32; weights.len()]; // (N, K), permuted columns
    for r in 0..n {
        for (j, &c) in perm.iter().enumerate() {
            wp[r * k + j] = weights[r * k + c];
        }
    }
    drop(weights);
    let mut hp = vec![0.0f64; k * k]; // (K, K), permuted
    for (i, &pi) in perm.iter().enumerate() {
        for (j, &pj) in perm.iter().enumerate() {
            hp[i * k + j] = h[pi * k + pj];
        }
    }
    drop(h);
    let diag_p: Vec<f64> = perm.iter().map(|&c| diag[c]).collect();

    let (hinv, percdamp_used) = dampened_inverse_factor(&mut hp, k, opts)?;
    drop(hp);
    let hinv: Vec<f32> = hinv.iter().map(|&v| v as f32).collect(); // (K, K) upper

    let sweep = Sweep {
        k,
        group_size,
        block: effective_block(opts.block_size, group_size),
        hinv: &hinv,
        perm: &perm,
        diag_p: &diag_p,
        static_params: static_params.as_deref(),
        grid,
        scale_search: opts.scale_search,
        search_weight: opts.search_weight,
    };
    let mut codes_p = vec![0u8; wp.len()]; // (N, K), permuted columns
    let mut scales = vec![0.0f32; n * n_groups]; // (N, n_groups)
    let mut zeros = vec![0.0f32; n * n_groups]; // (N, n_groups)

    // Rows are independent given Hinv: sweep chunks of rows in parallel.
    let losses: Vec<f64> = wp
        .par_chunks_mut(ROWS_PER_TASK * k)
        .zip(codes_p.par_chunks_mut(ROWS_PER_TASK * k))
        .zip(scales.par_chunks_mut(ROWS_PER_TASK * n_groups))
        .zip(zeros.par_chunks_mut(ROWS_PER_TASK * n_groups))
        .enumerate()
        .map(|(task, (((w_rows, code_rows), scale_rows), zero_rows))| {
            sweep.run(
                task * ROWS_PER_TASK,
                w_rows,
                code_rows,
                scale_rows,
                zero_rows,
            )
        })
        .collect::<Result<_, _>>()?;
    let proxy_loss: f64 = losses.iter().sum();
    if !proxy_loss.is_finite() {
        // Only reachable with a Hessian so ill-conditioned that the error
        // feedback overflowed; the codes would be meaningless.
        return Err(QuantizeError::Numerical(format!(
            "GPTQ error feedback diverged (proxy loss {proxy_loss}); raise percdamp"
        )));
    }

    if let Some(sp) = &static_params {
        for (i, p) in sp.iter().enumerate() {
            scales[i] = p.scale;
            zeros[i] = p.zero;
        }
    }
    let mut codes = vec![0u8; codes_p.len()]; // (N, K), original order
    for r in 0..n {
        for (j, &c) in perm.iter().enumerate() {
            codes[r * k + c] = codes_p[r * k + j];
        }
    }
    // Only act-order with on-the-fly groups breaks c / g membership.
    let g_idx = (opts.act_order && static_params.is_none() && n_groups > 1).then(|| {
        let mut g_idx = vec![0u32; k];
        for (j, &c) in perm.iter().enumerate() {
            g_idx[c] = (j / group_size) as u32;
        }
        g_idx
    });
    let g_idx = match (scheme.granularity, g_idx) {
        (Granularity::PerGroup { .. }, Some(g)) => Some(g),
        _ => None,
    };
    let tensor = QuantTensor {
        scheme: *scheme,
        rows: n,
        cols: k,
        data: pack_codes(&codes, n, k, scheme.element.bits())?,
        scales,
        zeros: (scheme.zero_point != ZeroPoint::None).then_some(zeros),
        global_scale: global,
        g_idx,
    };
    tensor.validate()?;
    Ok((
        tensor,
        GptqStats {
            percdamp_used,
            proxy_loss,
            dead_columns,
        },
    ))
}

/// Dampens `h` (in place, growing the dampening on failure) and returns the
/// upper Cholesky factor of its inverse with the dampening fraction used.
fn dampened_inverse_factor(
    h: &mut [f64],
    k: usize,
    opts: &GptqOptions,
) -> Result<(Vec<f64>, f64), QuantizeError> {
    let mean_diag = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
    let mut percdamp = opts.percdamp;
    let mut applied = 0.0;
    for attempt in 0..=opts.damp_retries {
        let damp = percdamp * mean_diag;
        for i in 0..k {
            h[i * k + i] += damp - applied;
        }
        applied = damp;
        if let Some(factor) = inverse_upper_cholesky(h, k)? {
            return Ok((factor, percdamp));
        }
        if attempt < opts.damp_retries {
            percdamp = if percdamp > 0.0 {
                percdamp * 10.0
            } else {
                0.01
            };
        }
    }
    Err(QuantizeError::NotPositiveDefinite { percdamp })
}

/// The block size actually used: group boundaries must be block boundaries
/// (so a group's parameters see fully updated weights). g <= block: the
/// largest multiple of g not above `block`; g > block: the largest divisor
/// of g not above `block`.
fn effective_block(block: usize, group_size: usize) -> usize {
    if group_size <= block {
        block / group_size * group_size
    } else {
        (1..=block)
            .rev()
            .find(|&d| group_size / d * d == group_size)
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_alignment() {
        assert_eq!(effective_block(128, 32), 128);
        assert_eq!(effective_block(128, 48), 96);
        assert_eq!(effective_block(128, 576), 96);
        assert_eq!(effective_block(128, 256), 128);
        assert_eq!(effective_block(5, 7), 1);
    }

    #[test]
    fn identity_hessian_equals_rtn() {
        // With H = I every column is independent and no error is spread
        // (Hinv is diagonal): GPTQ reduces to round-to-nearest.
        let (n, k) = (3, 64);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 13.0)
            .collect();
        let mut eye = vec![0.0; k * k];
        for i in 0..k {
            eye[i * k + i] = 1.0;
        }
        let h = Hessian::from_matrix(eye, k, 1).unwrap();
        for scheme in [
            QuantScheme::int4_asym(32),
            QuantScheme::int3_sym(16),
            QuantScheme::mxfp4(),
        ] {
            let gptq = gptq_quantize(&w, n, k, &h, &scheme, &GptqOptions::default()).unwrap();
            let rtn =
                marlin_quant::quantize_rtn(&w, n, k, scheme, &marlin_quant::RtnOptions::min_max())
                    .unwrap();
            assert_eq!(
                gptq.dequantize().unwrap(),
                rtn.dequantize().unwrap(),
                "{scheme:?}"
            );
        }
    }
}
