//! `Linear`: a weight matrix on the CPU kernels, built by one factory from
//! whatever the checkpoint holds. Model code never names a format.

use crate::error::{ModelError, Result};
use crate::source::{TensorData, WeightSource};
use marlin_cpu::{CpuError, CpuWeight};
use marlin_io::checkpoint::ActivationRotation;
use marlin_quant::GgmlType;
use std::sync::Arc;

/// `y (m, out) = x (m, in) · Wᵀ` with W (out, in).
pub struct Linear {
    name: String,
    weight: Arc<CpuWeight>,
    /// MR-GPTQ: the weight is stored in a Hadamard-rotated basis (its
    /// `cols` are the padded K) and the input is rotated before the product.
    rotation: Option<ActivationRotation>,
}

impl Linear {
    /// Loads tensor `name` from `src`.
    pub fn load(src: &dyn WeightSource, name: &str) -> Result<Self> {
        Self::from_data(name, src.tensor(name)?)
    }

    /// Loads tensor `name` and checks it is (out, in).
    pub fn load_shaped(src: &dyn WeightSource, name: &str, out: usize, inp: usize) -> Result<Self> {
        let l = Self::load(src, name)?;
        if (l.out_features(), l.in_features()) != (out, inp) {
            return Err(ModelError::tensor(
                name,
                format!(
                    "shape {}x{}, expected {out}x{inp} (out x in)",
                    l.out_features(),
                    l.in_features()
                ),
            ));
        }
        Ok(l)
    }

    /// The factory: plain float data becomes a dense weight, ggml block
    /// tensors and `QuantTensor`s go to their quantized kernels as they are.
    pub fn from_data(name: &str, data: TensorData) -> Result<Self> {
        let ctx = |e: CpuError| ModelError::tensor(name, e.to_string());
        let mut rotation = None;
        let weight = match data {
            TensorData::F32 { rows, cols, data } => {
                CpuWeight::from_f32(rows, cols, data).map_err(ctx)?
            }
            TensorData::Quant(t) => CpuWeight::from_quant(&t).map_err(ctx)?,
            TensorData::RotatedQuant {
                tensor,
                rotation: r,
            } => {
                r.validate()?;
                if tensor.cols != r.padded_k {
                    return Err(ModelError::tensor(
                        name,
                        format!(
                            "rotated weight has {} columns, its rotation pads K to {}",
                            tensor.cols, r.padded_k
                        ),
                    ));
                }
                rotation = Some(r);
                CpuWeight::from_quant(&tensor).map_err(ctx)?
            }
            TensorData::Ggml(t) => match t.ty {
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                    let (rows, cols) = (t.rows, t.cols);
                    CpuWeight::from_f32(rows, cols, t.dequantize()?).map_err(ctx)?
                }
                _ => CpuWeight::from_ggml(t).map_err(ctx)?,
            },
        };
        Ok(Self {
            name: name.to_string(),
            weight: Arc::new(weight),
            rotation,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The prepared weight, shared (a tied embedding reads rows from it).
    pub fn shared_weight(&self) -> Arc<CpuWeight> {
        Arc::clone(&self.weight)
    }

    pub fn out_features(&self) -> usize {
        self.weight.rows()
    }

    pub fn in_features(&self) -> usize {
        self.rotation.map_or(self.weight.cols(), |r| r.k)
    }

    /// `x` (m, in) -> new (m, out).
    pub fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let n = self.out_features();
        let len = m
            .checked_mul(n)
            .ok_or_else(|| ModelError::tensor(&self.name, "m*out overflows"))?;
        let mut y = vec![0.0f32; len]; // (m, out)
        let err = |e: CpuError| ModelError::tensor(&self.name, e.to_string());
        match &self.rotation {
            None => self.weight.matmul(x, m, &mut y).map_err(err)?,
            Some(r) => {
                if x.len() != m * r.k {
                    return Err(ModelError::tensor(
                        &self.name,
                        format!("input has {} values, expected {m} x {}", x.len(), r.k),
                    ));
                }
                let mut xr = Vec::new(); // (m, padded_k)
                super::hadamard::rotate_rows(r, x, m, &mut xr);
                self.weight.matmul(&xr, m, &mut y).map_err(err)?;
            }
        }
        Ok(y)
    }
}
