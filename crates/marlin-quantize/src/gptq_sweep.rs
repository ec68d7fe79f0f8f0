//! The GPTQ column sweep over a chunk of rows: quantize column j, spread
//! its error over the rest of the block through row j of Hinv, and apply
//! the block's accumulated error to later blocks with one GEMM. Rows are
//! independent given Hinv, so chunks of rows run in parallel.

use crate::grid::{Grid, GroupParams, ScaleSearch, SearchWeight};
use crate::linalg::{gemm, View, ViewMut};
use crate::QuantizeError;

/// Everything the sweep shares between row chunks (all in the permuted
/// column order).
pub(crate) struct Sweep<'a> {
    pub k: usize,
    pub group_size: usize,
    /// Columns per lazy-update block; a multiple or divisor of group_size.
    pub block: usize,
    /// (K, K) upper Cholesky factor of the dampened H⁻¹.
    pub hinv: &'a [f32],
    /// perm[j] = original column at position j.
    pub perm: &'a [usize],
    /// (K) diag(H) in permuted order (scale-search weights).
    pub diag_p: &'a [f64],
    /// (N, n_groups) static group parameters in original group order.
    pub static_params: Option<&'a [GroupParams]>,
    pub grid: Grid,
    pub scale_search: ScaleSearch,
    pub search_weight: SearchWeight,
}

impl Sweep<'_> {
    /// Sweeps rows `first_row ..` held in `w` (rows, K), writing their raw
    /// codes (rows, K), and (on-the-fly groups) their scales and zeros
    /// (rows, n_groups, in permuted group order). Returns the proxy loss.
    pub fn run(
        &self,
        first_row: usize,
        w: &mut [f32],
        codes: &mut [u8],
        scales: &mut [f32],
        zeros: &mut [f32],
    ) -> Result<f64, QuantizeError> {
        let (k, g) = (self.k, self.group_size);
        let n_groups = k / g;
        let rows = w.len() / k;
        let mut current = vec![
            GroupParams {
                scale: 0.0,
                zero: 0.0
            };
            rows
        ];
        let mut loss = 0.0f64;
        let mut err = vec![0.0f32; rows * self.block]; // (rows, width)
        let mut i1 = 0;
        while i1 < k {
            let i2 = (i1 + self.block).min(k);
            let width = i2 - i1;
            for j in i1..i2 {
                if self.static_params.is_none() && j % g == 0 {
                    // Columns j..j+g lie in this block and carry every update.
                    let weights = match self.search_weight {
                        SearchWeight::Uniform => None,
                        SearchWeight::HessianDiag => Some(&self.diag_p[j..j + g]),
                    };
                    for (r, slot) in current.iter_mut().enumerate() {
                        *slot = self.grid.search(
                            &w[r * k + j..r * k + j + g],
                            weights,
                            &self.scale_search,
                        );
                        scales[r * n_groups + j / g] = slot.scale;
                        zeros[r * n_groups + j / g] = slot.zero;
                    }
                }
                let d = self.hinv[j * k + j];
                let hrow = &self.hinv[j * k + j + 1..j * k + i2];
                for r in 0..rows {
                    let p = match self.static_params {
                        Some(sp) => sp[(first_row + r) * n_groups + self.perm[j] / g],
                        None => current[r],
                    };
                    let row = &mut w[r * k..(r + 1) * k];
                    let x = row[j];
                    let (raw, q) = self.grid.quantize(x, p);
                    codes[r * k + j] = raw;
                    let e = (x - q) / d;
                    loss += f64::from(x - q).powi(2) / (2.0 * f64::from(d).powi(2));
                    err[r * width + (j - i1)] = e;
                    for (wv, &hv) in row[j + 1..i2].iter_mut().zip(hrow) {
                        *wv -= e * hv;
                    }
                }
            }
            if i2 < k {
                // W[:, i2..] -= Err (rows, width) · Hinv[i1..i2, i2..]
                gemm(
                    -1.0f32,
                    View::row_major(&err[..rows * width], rows, width),
                    View {
                        data: &self.hinv[i1 * k + i2..],
                        rows: width,
                        cols: k - i2,
                        row_stride: k,
                        col_stride: 1,
                    },
                    1.0,
                    ViewMut {
                        data: &mut w[i2..],
                        rows,
                        cols: k - i2,
                        row_stride: k,
                        col_stride: 1,
                    },
                )?;
            }
            i1 = i2;
        }
        Ok(loss)
    }
}
