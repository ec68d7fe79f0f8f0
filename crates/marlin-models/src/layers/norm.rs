//! RMSNorm layer.

use crate::error::{ModelError, Result};
use crate::source::WeightSource;
use marlin_cpu::ops;

pub struct RmsNorm {
    /// (d): already includes any `1 + w` convention of the checkpoint.
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    /// Loads `name` (d values). `offset` is added to every weight: 1.0 for
    /// Hugging Face Gemma checkpoints, whose norms multiply by `1 + w`.
    pub fn load(
        src: &dyn WeightSource,
        name: &str,
        d: usize,
        eps: f32,
        offset: f32,
    ) -> Result<Self> {
        let mut weight = src.vector(name)?;
        if weight.len() != d {
            return Err(ModelError::tensor(
                name,
                format!("{} values, expected {d}", weight.len()),
            ));
        }
        if offset != 0.0 {
            weight.iter_mut().for_each(|w| *w += offset);
        }
        Ok(Self { weight, eps })
    }

    pub fn dim(&self) -> usize {
        self.weight.len()
    }

    /// `x` (rows, d) -> new (rows, d).
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; x.len()]; // (rows, d)
        ops::rms_norm(x, &self.weight, self.eps, &mut out)?;
        Ok(out)
    }

    /// Normalises every d-long row of `x` in place (QK-norm per head,
    /// Gemma's post-norms).
    pub fn forward_inplace(&self, x: &mut [f32]) -> Result<()> {
        Ok(ops::rms_norm_inplace(x, &self.weight, self.eps)?)
    }
}
