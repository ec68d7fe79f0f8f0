//! `marlin eval layers`: per-tensor weight error of a model against its
//! base, both read into Hugging Face layout (so a GGUF base and a marlin
//! checkpoint made from it line up row for row).

use super::convert::ModelShape;
use super::{known_names, open_source};
use crate::QuantizeError;
use std::path::Path;

/// The error of one weight matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightDiff {
    /// GGUF-style name (`blk.3.ffn_up.weight`).
    pub name: String,
    /// Layer index, `None` outside the layer stack.
    pub layer: Option<usize>,
    pub elements: usize,
    /// mean (ŵ − w)².
    pub mse: f64,
    /// ŵ·w / (|ŵ| |w|).
    pub cosine: f64,
    /// mean w² (to read the MSE relative to the weights' scale).
    pub base_mean_square: f64,
}

/// Compares every matrix `model` and `base` both hold. Errors when the two
/// are different architectures or shapes.
pub fn compare_weights(model: &Path, base: &Path) -> Result<Vec<WeightDiff>, QuantizeError> {
    let m = open_source(model)?;
    let b = open_source(base)?;
    let (ms, bs) = (ModelShape::read(m.src())?, ModelShape::read(b.src())?);
    let same_arch = ms.arch.trim_end_matches("_text") == bs.arch.trim_end_matches("_text");
    if !same_arch || ms.n_layers != bs.n_layers || ms.hidden != bs.hidden {
        return Err(QuantizeError::BadInput(format!(
            "{} ({}, {} layers) and {} ({}, {} layers) are different models",
            model.display(),
            ms.arch,
            ms.n_layers,
            base.display(),
            bs.arch,
            bs.n_layers
        )));
    }
    let mut out = Vec::new();
    for name in known_names(&bs, true) {
        if super::presets::LayerClass::of(&name).is_none()
            || !m.src().contains(&name)
            || !b.src().contains(&name)
        {
            continue;
        }
        let w = bs.dense_hf(b.src(), &name)?;
        let q = ms.dense_hf(m.src(), &name)?;
        if (w.rows, w.cols) != (q.rows, q.cols) {
            return Err(QuantizeError::BadInput(format!(
                "{name}: {}x{} vs {}x{}",
                q.rows, q.cols, w.rows, w.cols
            )));
        }
        let (mut se, mut dot, mut nw, mut nq) = (0f64, 0f64, 0f64, 0f64);
        for (&a, &c) in w.data.iter().zip(&q.data) {
            let (a, c) = (f64::from(a), f64::from(c));
            se += (c - a) * (c - a);
            dot += a * c;
            nw += a * a;
            nq += c * c;
        }
        let n = w.data.len().max(1) as f64;
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(l, _)| l.parse().ok());
        out.push(WeightDiff {
            layer,
            elements: w.data.len(),
            mse: se / n,
            cosine: if nw > 0.0 && nq > 0.0 {
                dot / (nw.sqrt() * nq.sqrt())
            } else {
                f64::NAN
            },
            base_mean_square: nw / n,
            name,
        });
    }
    Ok(out)
}
