//! Error measures used to compare quantizers.

use crate::error::{check_finite, check_len, checked_area};
use crate::linalg::{gemm, View, ViewMut};
use crate::QuantizeError;

/// `||x·Wᵀ − x·Ŵᵀ||²_F` (summed in f64) for `rows` activation rows `x`
/// (rows, K) and two (N, K) weight matrices: the layer output error a
/// quantizer causes on those inputs.
pub fn output_error(
    x: &[f32],
    rows: usize,
    w: &[f32],
    w_hat: &[f32],
    n: usize,
    k: usize,
) -> Result<f64, QuantizeError> {
    check_len("activations", x.len(), rows, k)?;
    check_len("weight matrix", w.len(), n, k)?;
    check_len("quantized weight matrix", w_hat.len(), n, k)?;
    check_finite("activations", x)?;
    let diff: Vec<f32> = w.iter().zip(w_hat).map(|(a, b)| a - b).collect(); // (N, K)
    check_finite("weight difference", &diff)?;
    // With K = 0 the lengths above say nothing about rows x N.
    let mut out = vec![0.0f32; checked_area(rows, n)?]; // (rows, N)
    gemm(
        1.0f32,
        View::row_major(x, rows, k),
        View::row_major(&diff, n, k).t(),
        0.0,
        ViewMut {
            data: &mut out,
            rows,
            cols: n,
            row_stride: n,
            col_stride: 1,
        },
    )?;
    Ok(out.iter().map(|&v| f64::from(v).powi(2)).sum())
}
