//! AWQ (Lin et al., 2023): activation-aware per-input-channel scaling.
//!
//! Salient input channels (large mean |x|) are scaled up in the weights
//! before round-to-nearest quantization, so they lose less relative
//! precision; the inverse scale is folded into whatever produces x (the
//! previous norm's weight or linear layer's rows). For
//! `s = mean|x|^α / sqrt(max · min)` with α on a grid in [0, 1), the α
//! minimising `||x·(Q(W·diag(s))·diag(1/s))ᵀ − x·Wᵀ||²` over the
//! calibration rows is kept.

use marlin_quant::{quantize_rtn, QuantScheme, QuantTensor, RtnOptions};

use crate::error::{check_finite, check_len, check_weights, checked_area};
use crate::linalg::{gemm, View, ViewMut};
use crate::QuantizeError;

/// Floor of the per-channel activation statistic (as in AWQ), so silent
/// channels do not get zero or infinite scales.
const MIN_CHANNEL_MEAN: f32 = 1e-4;

/// Options of [`awq_quantize`].
#[derive(Clone, Debug, PartialEq)]
pub struct AwqOptions {
    /// α takes the values i / grid for i in 0..grid (AWQ: 20).
    pub grid: usize,
    /// The RTN quantizer applied to the scaled weights (min-max or MSE
    /// clipping; `g_idx` must be None).
    pub rtn: RtnOptions,
}

impl Default for AwqOptions {
    fn default() -> Self {
        Self {
            grid: 20,
            rtn: RtnOptions::min_max(),
        }
    }
}

/// The result of AWQ for one linear layer.
#[derive(Clone, Debug, PartialEq)]
pub struct AwqResult {
    /// `Q(W·diag(s))`, (N, K).
    pub tensor: QuantTensor,
    /// s (K): the layer now expects `x·diag(1/s)`; fold 1/s into the
    /// producer of x (norm weight or previous linear's output rows).
    pub scales: Vec<f32>,
    /// The chosen α.
    pub alpha: f32,
    /// Σ over calibration rows of the squared output error at that α.
    pub loss: f64,
    /// The same loss at α = 0 (plain RTN, s = 1), for comparison.
    pub rtn_loss: f64,
}

impl AwqResult {
    /// The effective dequantized weights in the original basis,
    /// `Q(W·diag(s))·diag(1/s)`, (N, K) row-major.
    pub fn dequantize_unscaled(&self) -> Result<Vec<f32>, QuantizeError> {
        // The fields are public: a result edited by hand must not reach
        // `chunks_exact_mut(0)` or scale the wrong columns.
        if self.scales.len() != self.tensor.cols {
            return Err(QuantizeError::Shape(format!(
                "{} AWQ scales for a tensor of K = {}",
                self.scales.len(),
                self.tensor.cols
            )));
        }
        let mut w = self.tensor.dequantize()?;
        unscale_columns(&mut w, &self.scales);
        Ok(w)
    }
}

impl AwqResult {
    /// Folds 1/s into the weight (and bias, if any) of the norm that
    /// produces this layer's input: `γ_c ← γ_c / s_c`. Both have length K.
    /// Every linear fed by the same norm (q/k/v; gate/up) must share s.
    pub fn fold_into_norm(
        &self,
        weight: &mut [f32],
        bias: Option<&mut [f32]>,
    ) -> Result<(), QuantizeError> {
        let k = self.scales.len();
        if weight.len() != k || bias.as_ref().is_some_and(|b| b.len() != k) {
            return Err(QuantizeError::Shape(format!(
                "norm parameters must have K = {k} entries"
            )));
        }
        for (g, &s) in weight.iter_mut().zip(&self.scales) {
            *g /= s;
        }
        if let Some(bias) = bias {
            for (b, &s) in bias.iter_mut().zip(&self.scales) {
                *b /= s;
            }
        }
        Ok(())
    }

    /// Folds 1/s into the output rows of the linear layer that produces
    /// this layer's input (e.g. v_proj before o_proj, up_proj before
    /// down_proj): `prev` is row-major (K, K_prev), row c is divided by
    /// s_c; `prev_bias` (K) likewise.
    pub fn fold_into_previous_linear(
        &self,
        prev: &mut [f32],
        prev_cols: usize,
        prev_bias: Option<&mut [f32]>,
    ) -> Result<(), QuantizeError> {
        let k = self.scales.len();
        check_len("previous linear", prev.len(), k, prev_cols)?;
        if prev_bias.as_ref().is_some_and(|b| b.len() != k) {
            return Err(QuantizeError::Shape(format!(
                "previous bias must have K = {k} entries"
            )));
        }
        if prev_cols > 0 {
            for (row, &s) in prev.chunks_exact_mut(prev_cols).zip(&self.scales) {
                for v in row {
                    *v /= s;
                }
            }
        }
        if let Some(bias) = prev_bias {
            for (b, &s) in bias.iter_mut().zip(&self.scales) {
                *b /= s;
            }
        }
        Ok(())
    }
}

/// Runs AWQ's scale search for a row-major (N, K) weight matrix given
/// `rows` calibration input rows `x` (rows, K).
///
/// Errors: the scheme / group-size errors of `quantize_rtn`, shape
/// mismatches, NaN / infinite weights or activations, no calibration rows,
/// `grid == 0` or an RTN `g_idx`.
pub fn awq_quantize(
    w: &[f32],
    n: usize,
    k: usize,
    x: &[f32],
    rows: usize,
    scheme: &QuantScheme,
    opts: &AwqOptions,
) -> Result<AwqResult, QuantizeError> {
    scheme.validate(n, k)?;
    check_len("weight matrix", w.len(), n, k)?;
    check_weights(w)?;
    if rows == 0 {
        return Err(QuantizeError::EmptyCalibration(
            "AWQ needs at least one activation row".into(),
        ));
    }
    check_len("activations", x.len(), rows, k)?;
    check_finite("activations", x)?;
    if opts.grid == 0 {
        return Err(QuantizeError::InvalidOption("AWQ grid of 0 points".into()));
    }
    if opts.rtn.g_idx.is_some() {
        return Err(QuantizeError::InvalidOption(
            "AWQ does not take a g_idx".into(),
        ));
    }

    // Mean |x| per input channel (K).
    let mut mean_abs = vec![0.0f64; k];
    for row in x.chunks_exact(k) {
        for (m, &v) in mean_abs.iter_mut().zip(row) {
            *m += f64::from(v.abs());
        }
    }
    let mean_abs: Vec<f32> = mean_abs
        .iter()
        .map(|&m| ((m / rows as f64) as f32).max(MIN_CHANNEL_MEAN))
        .collect();

    // rows and N are each bounded by a buffer, their product is not.
    let output_len = checked_area(rows, n)?;
    let mut reference = vec![0.0f32; output_len]; // (rows, N) = x·Wᵀ
    gemm(
        1.0f32,
        View::row_major(x, rows, k),
        View::row_major(w, n, k).t(),
        0.0,
        ViewMut {
            data: &mut reference,
            rows,
            cols: n,
            row_stride: n,
            col_stride: 1,
        },
    )?;
    let mut output = vec![0.0f32; output_len]; // (rows, N)

    let mut best: Option<AwqResult> = None;
    let mut rtn_loss = 0.0;
    let mut scaled = vec![0.0f32; w.len()]; // (N, K) W·diag(s)
    for i in 0..opts.grid {
        let alpha = i as f32 / opts.grid as f32;
        let scales = channel_scales(&mean_abs, alpha);
        for (dst, src) in scaled.chunks_exact_mut(k).zip(w.chunks_exact(k)) {
            for ((d, &s), &wv) in dst.iter_mut().zip(&scales).zip(src) {
                *d = wv * s;
            }
        }
        let tensor = quantize_rtn(&scaled, n, k, *scheme, &opts.rtn)?;
        let mut w_hat = tensor.dequantize()?;
        unscale_columns(&mut w_hat, &scales);
        gemm(
            1.0f32,
            View::row_major(x, rows, k),
            View::row_major(&w_hat, n, k).t(),
            0.0,
            ViewMut {
                data: &mut output,
                rows,
                cols: n,
                row_stride: n,
                col_stride: 1,
            },
        )?;
        let loss: f64 = output
            .iter()
            .zip(&reference)
            .map(|(&a, &b)| f64::from(a - b).powi(2))
            .sum();
        if i == 0 {
            rtn_loss = loss;
        }
        if best.as_ref().is_none_or(|b| loss < b.loss) {
            best = Some(AwqResult {
                tensor,
                scales,
                alpha,
                loss,
                rtn_loss: 0.0,
            });
        }
    }
    let mut best =
        best.ok_or_else(|| QuantizeError::InvalidOption("AWQ grid of 0 points".into()))?;
    best.rtn_loss = rtn_loss;
    Ok(best)
}

/// s = m^α normalised by sqrt(max(s) · min(s)), as AWQ does, so the scales
/// straddle 1.
fn channel_scales(mean_abs: &[f32], alpha: f32) -> Vec<f32> {
    let raw: Vec<f32> = mean_abs.iter().map(|&m| m.powf(alpha)).collect();
    let (lo, hi) = crate::grid::min_max(&raw);
    let norm = (f64::from(lo) * f64::from(hi)).sqrt() as f32;
    raw.iter().map(|&s| s / norm).collect()
}

fn unscale_columns(w: &mut [f32], scales: &[f32]) {
    for row in w.chunks_exact_mut(scales.len()) {
        for (v, &s) in row.iter_mut().zip(scales) {
            *v /= s;
        }
    }
}
