//! A weight matrix on the GPU, built by one factory from whatever the
//! checkpoint holds (the GPU twin of `layers::Linear`). The decoder calls
//! [`GpuLinear::forward`] with f32 activations and never looks inside.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use half::f16;
use marlin_cuda::ggml::GgmlGpuWeight;
use marlin_cuda::int4::gemm::{int4_gemm, GemmOptions, GemmWorkspace, Int4Weight};
use marlin_cuda::{ops, CudaDevice};
use marlin_quant::{GgmlTensor, GgmlType};

use super::{GpuError, Result};
use crate::source::TensorData;

/// `y (m, rows) = x (m, cols) · Wᵀ` on the device.
pub enum GpuLinear {
    /// GGUF block types and dense f32/f16/bf16 (kernels of `marlin_cuda::ggml`);
    /// shared with the embedding when the checkpoint ties them.
    Ggml(Arc<GgmlGpuWeight>),
    /// INT4 in the Marlin layout: f16 activations in and out.
    Int4(Box<Int4Weight>),
}

/// Device scratch of the INT4 path: f16 copies of the activations and the
/// split-K workspace. Sized once for the largest `m` and widths, so that a
/// forward pass allocates nothing (CUDA-graph capture).
pub struct LinearScratch {
    /// (max_m, max cols)
    x16: CudaSlice<f16>,
    /// (max_m, max rows)
    y16: CudaSlice<f16>,
    ws: GemmWorkspace,
}

impl LinearScratch {
    /// Room for `max_m` rows of inputs up to `max_cols` and outputs up to
    /// `max_rows` wide (nothing when the model has no INT4 weight).
    pub fn new(dev: &CudaDevice, max_m: usize, max_cols: usize, max_rows: usize) -> Result<Self> {
        let len = |w: usize| {
            max_m
                .checked_mul(w)
                .ok_or_else(|| GpuError::Invalid(format!("{max_m} x {w} activations overflow")))
        };
        Ok(Self {
            x16: dev.alloc_zeros("f16 GEMM inputs", len(max_cols)?)?,
            y16: dev.alloc_zeros("f16 GEMM outputs", len(max_rows)?)?,
            ws: GemmWorkspace::new(dev)?,
        })
    }
}

impl GpuLinear {
    /// Uploads tensor `name` (weights are converted or repacked once here).
    pub fn upload(dev: &Arc<CudaDevice>, name: &str, data: TensorData) -> Result<Self> {
        let ctx = |e: marlin_cuda::CudaError| GpuError::Tensor {
            name: name.to_string(),
            reason: e.to_string(),
        };
        match data {
            TensorData::Ggml(t) => Ok(Self::Ggml(Arc::new(
                GgmlGpuWeight::upload(dev, &t).map_err(ctx)?,
            ))),
            TensorData::F32 { rows, cols, data } => {
                let bytes = bytemuck_f32(&data);
                let t = GgmlTensor::new(GgmlType::F32, rows, cols, bytes).map_err(|e| {
                    GpuError::Tensor {
                        name: name.to_string(),
                        reason: e.to_string(),
                    }
                })?;
                Ok(Self::Ggml(Arc::new(
                    GgmlGpuWeight::upload(dev, &t).map_err(ctx)?,
                )))
            }
            TensorData::Quant(q) => Ok(Self::Int4(Box::new(
                Int4Weight::from_quant(dev, &q).map_err(ctx)?,
            ))),
            // Running the rotated weights without rotating the input would
            // be silently wrong.
            TensorData::RotatedQuant { rotation, .. } => Err(GpuError::Tensor {
                name: name.to_string(),
                reason: format!(
                    "MR-GPTQ checkpoint: this linear's weights are Hadamard-rotated (blocks of \
                     {}) and need the activations rotated before the product, which the CUDA \
                     path does not do yet; run it on the CPU",
                    rotation.block_size
                ),
            }),
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Self::Ggml(w) => w.rows(),
            Self::Int4(w) => w.n,
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            Self::Ggml(w) => w.cols(),
            Self::Int4(w) => w.k,
        }
    }

    /// Bytes one product reads from the weight (roofline accounting).
    pub fn weight_bytes(&self) -> usize {
        match self {
            Self::Ggml(w) => w.device_bytes(),
            Self::Int4(w) => w.weight_bytes(),
        }
    }

    /// Allocates the kernels' own scratch for up to `max_m` rows.
    pub fn prepare(&self, dev: &CudaDevice, max_m: usize) -> Result<()> {
        match self {
            Self::Ggml(w) => Ok(w.prepare(dev, max_m)?),
            // The split-K workspace lives in `LinearScratch`; the first
            // (un-captured) call at each m sizes it.
            Self::Int4(_) => Ok(()),
        }
    }

    /// `x` (m, cols) -> `y` (m, rows); buffers may be longer.
    pub fn forward(
        &self,
        dev: &Arc<CudaDevice>,
        x: &CudaSlice<f32>,
        m: usize,
        y: &mut CudaSlice<f32>,
        s: &mut LinearScratch,
    ) -> Result<()> {
        match self {
            Self::Ggml(w) => Ok(w.matmul(dev, x, m, y)?),
            Self::Int4(w) => {
                let (n_in, n_out) = (m * w.k, m * w.n);
                if s.x16.len() < n_in || s.y16.len() < n_out {
                    return Err(GpuError::Invalid(format!(
                        "INT4 scratch too small for m = {m}, {}x{}",
                        w.n, w.k
                    )));
                }
                ops::f32_to_f16(dev, x, n_in, &mut s.x16)?;
                int4_gemm(
                    dev,
                    &s.x16,
                    m,
                    w,
                    &mut s.y16,
                    &mut s.ws,
                    GemmOptions::default(),
                )?;
                ops::f16_to_f32(dev, &s.y16, n_out, y)?;
                Ok(())
            }
        }
    }
}

/// Little-endian bytes of `v` (the GGUF F32 layout).
fn bytemuck_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
