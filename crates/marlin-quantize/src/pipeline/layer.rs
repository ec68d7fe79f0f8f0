//! Quantizing the linears of one decoder layer with RTN, GPTQ, MR-GPTQ or
//! AWQ, folding AWQ's input scales into the producers of each input, and
//! MR-GPTQ's rotation of the attention output's input into V.

use super::calib::{InputSite, SiteStats};
use super::convert::{Dense, ModelShape};
use super::Method;
use crate::grid::{ScaleSearch, SearchWeight};
use crate::{
    awq_quantize, gptq_quantize, mr_gptq_quantize, AwqOptions, GptqOptions, MrGptqOptions,
    QuantizeError, Rotation,
};
use marlin_quant::{quantize_rtn, QuantScheme, QuantTensor, RtnOptions};
use std::collections::BTreeMap;

/// A linear's weight after the pipeline: quantized, or kept dense.
pub enum LinearOut {
    Quant(QuantTensor),
    Dense(Dense),
    /// MR-GPTQ: (N, rotation.padded_k) weights in the rotated basis; the
    /// input is rotated at inference.
    Rotated {
        tensor: QuantTensor,
        rotation: Rotation,
    },
}

/// Largest Hadamard block MR-GPTQ uses (see [`Rotation::for_dim`]).
pub const MR_GPTQ_MAX_BLOCK: usize = 128;

/// The GPTQ options for `scheme`: on integer grids each group's range is
/// chosen by GPTQ's MSE clipping search (the reference's `mse` option,
/// weighted by diag(H)) rather than min-max: on SmolLM2's INT2 / INT3
/// linears it halves the Hessian-weighted output error of plain GPTQ
/// (docs/QUANTIZATION.md). Other grids (FP4, FP8) keep min-max scales;
/// the FP4-adapted search is MR-GPTQ's.
pub fn gptq_options(scheme: &QuantScheme, act_order: bool) -> GptqOptions {
    let base = if act_order {
        GptqOptions::act_order()
    } else {
        GptqOptions::default()
    };
    match scheme.element {
        marlin_quant::ElementType::Int { .. } => GptqOptions {
            scale_search: ScaleSearch::mse(),
            search_weight: SearchWeight::HessianDiag,
            ..base
        },
        _ => base,
    }
}

/// The MR-GPTQ options for `scheme`: the FP4-grid scale search for FP4
/// elements (MXFP4 / NVFP4 / FP4), GPTQ's MSE clipping search for integer
/// and other grids; both weighted by diag(H).
pub fn mr_gptq_options(scheme: &QuantScheme, act_order: bool) -> MrGptqOptions {
    let fp4 = matches!(scheme.element, marlin_quant::ElementType::Fp4E2M1);
    MrGptqOptions {
        gptq: GptqOptions {
            act_order,
            scale_search: if fp4 {
                ScaleSearch::fp4()
            } else {
                ScaleSearch::mse()
            },
            search_weight: SearchWeight::HessianDiag,
            ..GptqOptions::default()
        },
        max_rotation_block: MR_GPTQ_MAX_BLOCK,
    }
}

/// One linear to quantize: its GGUF-style name, HF-layout weights and
/// scheme (None: kept dense).
pub struct LinearIn {
    pub name: String,
    pub w: Dense,
    pub scheme: Option<QuantScheme>,
}

/// What the method needs beyond the weights.
pub struct LayerCtx<'a> {
    pub method: Method,
    pub act_order: bool,
    pub layer: usize,
    pub shape: &'a ModelShape,
    /// Calibration statistics of this layer (GPTQ, AWQ).
    pub stats: Option<&'a BTreeMap<(usize, InputSite), SiteStats>>,
}

impl LayerCtx<'_> {
    fn site(&self, site: InputSite) -> Result<&SiteStats, QuantizeError> {
        self.stats
            .and_then(|s| s.get(&(self.layer, site)))
            .ok_or_else(|| {
                QuantizeError::EmptyCalibration(format!(
                    "no calibration activations for layer {} {site:?} (the model did not report them)",
                    self.layer
                ))
            })
    }
}

/// RTN or GPTQ of one matrix (AWQ goes through [`awq_group`]).
pub fn quantize_one(ctx: &LayerCtx<'_>, lin: LinearIn) -> Result<LinearOut, QuantizeError> {
    let Some(scheme) = lin.scheme else {
        return Ok(LinearOut::Dense(lin.w));
    };
    let Dense { rows, cols, data } = &lin.w;
    let t = match ctx.method {
        Method::Gptq => {
            let site = InputSite::of_linear(&lin.name).ok_or_else(|| {
                QuantizeError::InvalidOption(format!("{}: no calibration input", lin.name))
            })?;
            let opts = gptq_options(&scheme, ctx.act_order);
            gptq_quantize(data, *rows, *cols, &ctx.site(site)?.hessian, &scheme, &opts)?
        }
        Method::MrGptq => {
            let site = InputSite::of_linear(&lin.name).ok_or_else(|| {
                QuantizeError::InvalidOption(format!("{}: no calibration input", lin.name))
            })?;
            let opts = mr_gptq_options(&scheme, ctx.act_order);
            let r = mr_gptq_quantize(data, *rows, *cols, &ctx.site(site)?.hessian, &scheme, &opts)?;
            return Ok(LinearOut::Rotated {
                tensor: r.tensor,
                rotation: r.rotation,
            });
        }
        Method::Rtn | Method::Awq => {
            quantize_rtn(data, *rows, *cols, scheme, &RtnOptions::min_max())?
        }
    };
    Ok(LinearOut::Quant(t))
}

/// Multiplies column c of `w` (rows, K) by `s[c]`.
fn scale_columns(w: &mut Dense, s: &[f32]) {
    for row in w.data.chunks_exact_mut(w.cols) {
        for (v, &sc) in row.iter_mut().zip(s) {
            *v *= sc;
        }
    }
}

/// Splits an (N1 + N2 + ..., K) tensor whose scale grid has one row per
/// weight row (per-channel or per-group) into row blocks of `sizes`.
fn split_rows(t: QuantTensor, sizes: &[usize]) -> Result<Vec<QuantTensor>, QuantizeError> {
    let (grid_rows, grid_cols) = t.scheme.scale_grid(t.rows, t.cols)?;
    if grid_rows != t.rows || sizes.iter().sum::<usize>() != t.rows || t.g_idx.is_some() {
        return Err(QuantizeError::Unsupported(
            "splitting a tensor whose scales are not per row".into(),
        ));
    }
    let row_bytes = t.data.len() / t.rows;
    let mut out = Vec::with_capacity(sizes.len());
    let mut r0 = 0;
    for &n in sizes {
        let r1 = r0 + n;
        out.push(QuantTensor {
            scheme: t.scheme,
            rows: n,
            cols: t.cols,
            data: t.data[r0 * row_bytes..r1 * row_bytes].to_vec(),
            scales: t.scales[r0 * grid_cols..r1 * grid_cols].to_vec(),
            zeros: t
                .zeros
                .as_ref()
                .map(|z| z[r0 * grid_cols..r1 * grid_cols].to_vec()),
            global_scale: t.global_scale,
            g_idx: None,
        });
        r0 = r1;
    }
    Ok(out)
}

/// AWQ for linears that share one input (q/k/v, or gate/up, or a single
/// one): the scale search runs on the row-concatenation of the members in
/// the first quantized member's scheme; every other member is scaled by the
/// same s and rounded in its own scheme (or kept dense), so one 1/s folds
/// into the producer of the input. Returns the outputs and s (None when no
/// member is quantized: nothing to fold).
pub fn awq_group(
    ctx: &LayerCtx<'_>,
    site: InputSite,
    members: Vec<LinearIn>,
) -> Result<(Vec<LinearOut>, Option<Vec<f32>>), QuantizeError> {
    let Some(scheme) = members.iter().find_map(|m| m.scheme) else {
        return Ok((
            members.into_iter().map(|m| LinearOut::Dense(m.w)).collect(),
            None,
        ));
    };
    let stats = ctx.site(site)?;
    let k = members[0].w.cols;
    let searched: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].scheme == Some(scheme))
        .collect();
    let sizes: Vec<usize> = searched.iter().map(|&i| members[i].w.rows).collect();
    let n: usize = sizes.iter().sum();
    let mut w = Vec::with_capacity(n * k); // (n, K)
    for &i in &searched {
        w.extend_from_slice(&members[i].w.data);
    }
    let result = awq_quantize(
        &w,
        n,
        k,
        &stats.rows,
        stats.n_rows,
        &scheme,
        &AwqOptions::default(),
    )?;
    let s = result.scales.clone();
    let mut parts = split_rows(result.tensor, &sizes)?.into_iter();
    let mut outs = Vec::with_capacity(members.len());
    for (i, mut m) in members.into_iter().enumerate() {
        if searched.contains(&i) {
            let t = parts
                .next()
                .ok_or_else(|| QuantizeError::Numerical("AWQ split lost a part".into()))?;
            outs.push(LinearOut::Quant(t));
            continue;
        }
        scale_columns(&mut m.w, &s);
        outs.push(match m.scheme {
            None => LinearOut::Dense(m.w),
            Some(sch) => LinearOut::Quant(quantize_rtn(
                &m.w.data,
                m.w.rows,
                m.w.cols,
                sch,
                &RtnOptions::min_max(),
            )?),
        });
    }
    Ok((outs, Some(s)))
}

/// Divides the output rows of `producer` (K, K_prev) by s (AWQ fold into
/// the previous linear).
pub fn fold_into_rows(producer: &mut Dense, s: &[f32]) -> Result<(), QuantizeError> {
    if producer.rows != s.len() {
        return Err(QuantizeError::Shape(format!(
            "folding {} scales into {} rows",
            s.len(),
            producer.rows
        )));
    }
    for (row, &sc) in producer.data.chunks_exact_mut(producer.cols).zip(s) {
        row.iter_mut().for_each(|v| *v /= sc);
    }
    Ok(())
}

/// Divides norm weights `γ` by s (AWQ fold into the norm).
pub fn fold_into_norm(gamma: &mut [f32], s: &[f32]) -> Result<(), QuantizeError> {
    if gamma.len() != s.len() {
        return Err(QuantizeError::Shape(format!(
            "folding {} scales into a norm of {}",
            s.len(),
            gamma.len()
        )));
    }
    gamma.iter_mut().zip(s).for_each(|(g, &sc)| *g /= sc);
    Ok(())
}

/// MR-GPTQ's rotation of the attention output projection's input when it
/// can be absorbed into V offline, else `None` (then it is rotated online).
///
/// o's input is, per query head h, `A_h·V_g` (g = h's KV head, A_h the
/// attention weights over positions, `V_g = X·W_v,gᵀ`). A block-diagonal R
/// whose blocks lie inside one head acts on the channel axis only, while
/// A_h mixes positions, so `(A_h·V_g)·R = A_h·(X·(R·W_v,g)ᵀ)`: rotating the
/// rows of every V head by the same blocks gives o exactly the rotated
/// input, whatever the grouping of query heads (GQA included). It needs
/// the block to divide head_dim (no block straddles two heads), no padding,
/// and nothing per-channel between V and o (true of llama, qwen3 and
/// gemma3, which have no V norm).
pub fn absorbable_o_rotation(
    shape: &ModelShape,
    o_cols: usize,
) -> Result<Option<Rotation>, QuantizeError> {
    let r = Rotation::for_dim(o_cols, MR_GPTQ_MAX_BLOCK)?;
    let fits = r.padded_k == o_cols
        && o_cols == shape.n_heads * shape.head_dim
        && shape.head_dim.is_multiple_of(r.block_size);
    Ok(fits.then_some(r))
}

/// `W_v ← R·W_v` over V's output rows (n_kv_heads·head_dim, hidden), in
/// blocks of `block_size`: what [`absorbable_o_rotation`] folds into V.
pub fn rotate_output_rows(w: &mut Dense, block_size: usize) -> Result<(), QuantizeError> {
    let r = Rotation::new(w.rows, block_size)?;
    if r.padded_k != w.rows {
        return Err(QuantizeError::Shape(format!(
            "V has {} rows, not a multiple of the Hadamard block {block_size}",
            w.rows
        )));
    }
    // Rotating the columns of W_v = rotating the rows of W_vᵀ.
    let (rows, cols) = (w.rows, w.cols);
    let mut t = vec![0.0f32; rows * cols]; // (cols, rows)
    for (i, row) in w.data.chunks_exact(cols).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j * rows + i] = v;
        }
    }
    let t = r.rotate_rows(&t, cols)?;
    for (j, col) in t.chunks_exact(rows).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            w.data[i * cols + j] = v;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// o's input with V's rows rotated in blocks inside each head equals
    /// o's input rotated, with grouped-query attention (4 query heads on 2
    /// KV heads): the rotation `absorbable_o_rotation` folds into V.
    #[test]
    fn rotating_v_rows_rotates_o_input() {
        let (t, hidden, n_heads, n_kv, hd, block) = (5, 8, 4, 2, 4, 4);
        let val = |i: usize, salt: usize| (((i * 31 + salt * 17) % 23) as f32 - 11.0) / 7.0;
        let x: Vec<f32> = (0..t * hidden).map(|i| val(i, 1)).collect(); // (T, hidden)
        let wv = Dense {
            rows: n_kv * hd,
            cols: hidden,
            data: (0..n_kv * hd * hidden).map(|i| val(i, 2)).collect(),
        };
        // A_h (T, T) per query head.
        let a: Vec<f32> = (0..n_heads * t * t).map(|i| val(i, 3).abs()).collect();
        let o_input = |w: &Dense| {
            let mut v = vec![0.0f32; t * w.rows]; // (T, n_kv·hd) = X·Wᵀ
            for (s, xr) in x.chunks_exact(hidden).enumerate() {
                for (r, wr) in w.data.chunks_exact(hidden).enumerate() {
                    v[s * w.rows + r] = xr.iter().zip(wr).map(|(p, q)| p * q).sum();
                }
            }
            let mut out = vec![0.0f32; t * n_heads * hd]; // (T, n_heads·hd)
            for h in 0..n_heads {
                let g = h / (n_heads / n_kv);
                for i in 0..t {
                    for d in 0..hd {
                        out[i * n_heads * hd + h * hd + d] = (0..t)
                            .map(|s| a[(h * t + i) * t + s] * v[s * w.rows + g * hd + d])
                            .sum();
                    }
                }
            }
            out
        };
        let want = Rotation::new(n_heads * hd, block)
            .unwrap()
            .rotate_rows(&o_input(&wv), t)
            .unwrap();
        let mut rotated = Dense {
            rows: wv.rows,
            cols: wv.cols,
            data: wv.data.clone(),
        };
        rotate_output_rows(&mut rotated, block).unwrap();
        let got = o_input(&rotated);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
        }
        // A block that does not divide V's rows is refused.
        assert!(rotate_output_rows(&mut rotated, 16).is_err());
    }

    #[test]
    fn split_rows_matches_separate_quantization() {
        let (k, n1, n2) = (64, 3, 5);
        let w: Vec<f32> = (0..(n1 + n2) * k)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 40.0)
            .collect();
        let scheme = QuantScheme::int4_asym(32);
        let t = quantize_rtn(&w, n1 + n2, k, scheme, &RtnOptions::min_max()).unwrap();
        let parts = split_rows(t, &[n1, n2]).unwrap();
        let a = quantize_rtn(&w[..n1 * k], n1, k, scheme, &RtnOptions::min_max()).unwrap();
        let b = quantize_rtn(&w[n1 * k..], n2, k, scheme, &RtnOptions::min_max()).unwrap();
        assert_eq!(parts, vec![a, b]);
    }
}
