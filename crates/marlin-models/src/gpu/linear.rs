//! A weight matrix on the GPU, built by one factory from whatever the
//! checkpoint holds (the GPU twin of `layers::Linear`). The decoder calls
//! [`GpuLinear::forward`] with f32 activations and never looks inside.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use half::f16;
use marlin_cuda::ggml::GgmlGpuWeight;
use marlin_cuda::int4::act_order::{
    int4_act_order_gemm_prepared, prepare_act_order, Int4ActOrderWeight,
};
use marlin_cuda::int4::gemm::{int4_gemm_prepared, GemmOptions, GemmWorkspace, Int4Weight};
use marlin_cuda::wgemm::gemm::{wx_gemm_prepared, WxWeight};
use marlin_cuda::{hadamard, ops, CudaDevice};
use marlin_io::checkpoint::ActivationRotation;
use marlin_quant::{ElementType, GgmlTensor, GgmlType, QuantTensor};

use super::{GpuError, Result};
use crate::source::TensorData;

/// `y (m, rows) = x (m, cols) · Wᵀ` on the device.
pub enum GpuLinear {
    /// GGUF block types and dense f32/f16/bf16 (kernels of `marlin_cuda::ggml`);
    /// shared with the embedding when the checkpoint ties them.
    Ggml(Arc<GgmlGpuWeight>),
    /// INT4 in the Marlin layout: f16 activations in and out.
    Int4(Box<Int4Weight>),
    /// FP4 (MXFP4 / NVFP4), INT8, FP8, INT3, INT2 (`marlin_cuda::wgemm`):
    /// f16 activations in and out.
    Wx(Box<WxWeight>),
    /// INT4 with act-order (GPTQ desc_act g_idx): K permuted at load, the
    /// activations gathered through the permutation before the INT4 GEMM.
    Int4ActOrder(Box<Int4ActOrderWeight>),
    /// MR-GPTQ: `inner` holds `W·Rᵀ` (N, padded_k) in one of the quantized
    /// families above; the input rows are rotated by the same block
    /// Hadamard transform on the device (`marlin_cuda::hadamard`, the
    /// CPU's `layers::hadamard::rotate_rows`) before the product.
    Rotated {
        rotation: ActivationRotation,
        inner: Box<GpuLinear>,
    },
}

/// Device scratch of the quantized (Marlin-layout) paths: f16 copies of the
/// activations, the act-order gather buffer and the split-K workspace. The
/// buffers are sized once for the largest `m` and widths; the workspace is
/// sized by the first call at each `m` (prepare, then the capture-safe
/// prepared entry point), so that later forward passes at that `m`
/// allocate nothing and load nothing (CUDA-graph capture).
pub struct LinearScratch {
    /// (max_m, max cols): the rotated input rows of an MR-GPTQ linear.
    rotated: CudaSlice<f32>,
    /// (max_m, max cols)
    x16: CudaSlice<f16>,
    /// (max_m, max cols): act-order activations gathered through the
    /// weight's K permutation.
    gathered: CudaSlice<f16>,
    /// (max_m, max rows)
    y16: CudaSlice<f16>,
    ws: GemmWorkspace,
}

impl LinearScratch {
    /// Room for `max_m` rows of inputs up to `max_cols` (for a rotated
    /// linear: its padded K, [`GpuLinear::kernel_cols`]) and outputs up to
    /// `max_rows` wide (nothing when the model has no INT4 weight).
    pub fn new(dev: &CudaDevice, max_m: usize, max_cols: usize, max_rows: usize) -> Result<Self> {
        let len = |w: usize| {
            max_m
                .checked_mul(w)
                .ok_or_else(|| GpuError::Invalid(format!("{max_m} x {w} activations overflow")))
        };
        Ok(Self {
            rotated: dev.alloc_zeros("Hadamard-rotated GEMM inputs", len(max_cols)?)?,
            x16: dev.alloc_zeros("f16 GEMM inputs", len(max_cols)?)?,
            gathered: dev.alloc_zeros("act-order gathered GEMM inputs", len(max_cols)?)?,
            y16: dev.alloc_zeros("f16 GEMM outputs", len(max_rows)?)?,
            ws: GemmWorkspace::new(dev)?,
        })
    }
}

impl GpuLinear {
    /// Uploads tensor `name` (weights are converted or repacked once here).
    pub fn upload(dev: &Arc<CudaDevice>, name: &str, data: TensorData) -> Result<Self> {
        // A shape or scheme the kernels refuse is this tensor's problem (and the error names
        // it); running out of memory or a driver / compiler failure is not, and stays a CUDA
        // error (callers such as the q|k|v fusion fall back only on the former).
        let ctx = |e: marlin_cuda::CudaError| match e {
            marlin_cuda::CudaError::Shape(_) | marlin_cuda::CudaError::Unsupported(_) => {
                GpuError::Tensor {
                    name: name.to_string(),
                    reason: e.to_string(),
                }
            }
            other => GpuError::Cuda(other),
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
            TensorData::Quant(q) => Self::from_quant(dev, &q).map_err(ctx),
            TensorData::RotatedQuant { tensor, rotation } => {
                let bad = |reason: String| GpuError::Tensor {
                    name: name.to_string(),
                    reason,
                };
                rotation
                    .validate()
                    .map_err(|e| bad(format!("Hadamard rotation: {e}")))?;
                if rotation.block_size > hadamard::MAX_BLOCK {
                    return Err(bad(format!(
                        "Hadamard blocks of {} (the GPU rotation takes at most {})",
                        rotation.block_size,
                        hadamard::MAX_BLOCK
                    )));
                }
                if tensor.cols != rotation.padded_k {
                    return Err(bad(format!(
                        "rotated weight has {} columns, its rotation pads K to {}",
                        tensor.cols, rotation.padded_k
                    )));
                }
                let inner = Self::from_quant(dev, &tensor).map_err(ctx)?;
                Ok(Self::Rotated {
                    rotation,
                    inner: Box::new(inner),
                })
            }
        }
    }

    /// The Marlin-layout kernel family for a quantized tensor: INT4 (with
    /// or without act-order) or one of the `wgemm` formats; an unsupported
    /// scheme is the repack's error.
    fn from_quant(dev: &Arc<CudaDevice>, q: &QuantTensor) -> marlin_cuda::Result<Self> {
        match (q.scheme.element, &q.g_idx) {
            (ElementType::Int { bits: 4, .. }, Some(_)) => Ok(Self::Int4ActOrder(Box::new(
                Int4ActOrderWeight::from_quant(dev, q)?,
            ))),
            (ElementType::Int { bits: 4, .. }, None) => {
                Ok(Self::Int4(Box::new(Int4Weight::from_quant(dev, q)?)))
            }
            _ => Ok(Self::Wx(Box::new(WxWeight::from_quant(dev, q)?))),
        }
    }

    /// Whether the product runs in f16 through [`LinearScratch`] (every
    /// Marlin-layout quantized weight; not the GGUF / dense kernels).
    pub fn uses_f16_scratch(&self) -> bool {
        match self {
            Self::Ggml(_) => false,
            Self::Rotated { inner, .. } => inner.uses_f16_scratch(),
            _ => true,
        }
    }

    /// Input width of the product the kernel runs: [`Self::cols`], or the
    /// padded K of a rotated linear (what [`LinearScratch`] must hold).
    pub fn kernel_cols(&self) -> usize {
        match self {
            Self::Rotated { inner, .. } => inner.cols(),
            _ => self.cols(),
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Self::Ggml(w) => w.rows(),
            Self::Int4(w) => w.n,
            Self::Wx(w) => w.n,
            Self::Int4ActOrder(w) => w.n(),
            Self::Rotated { inner, .. } => inner.rows(),
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            Self::Ggml(w) => w.cols(),
            Self::Int4(w) => w.k,
            Self::Wx(w) => w.k,
            Self::Int4ActOrder(w) => w.k(),
            Self::Rotated { rotation, .. } => rotation.k,
        }
    }

    /// Bytes one product reads from the weight (roofline accounting).
    pub fn weight_bytes(&self) -> usize {
        match self {
            Self::Ggml(w) => w.device_bytes(),
            Self::Int4(w) => w.weight_bytes(),
            Self::Wx(w) => w.weight_bytes(),
            Self::Int4ActOrder(w) => w.weight_bytes(),
            Self::Rotated { inner, .. } => inner.weight_bytes(),
        }
    }

    /// Allocates the kernels' own scratch for up to `max_m` rows.
    pub fn prepare(&self, dev: &CudaDevice, max_m: usize) -> Result<()> {
        match self {
            Self::Ggml(w) => Ok(w.prepare(dev, max_m)?),
            // The split-K workspace lives in `LinearScratch`; the first
            // (un-captured) call at each m sizes it.
            Self::Int4(_) | Self::Wx(_) | Self::Int4ActOrder(_) => Ok(()),
            Self::Rotated { inner, .. } => inner.prepare(dev, max_m),
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
            Self::Rotated { rotation, inner } => {
                // Inner weights are always quantized (f16 scratch path):
                // rotate, then the inner product from the rotated rows.
                let n_out = m * inner.rows();
                let n_in = m * inner.cols();
                if s.rotated.len() < n_in || s.x16.len() < n_in || s.y16.len() < n_out {
                    return Err(GpuError::Invalid(format!(
                        "rotated GEMM scratch too small for m = {m}, {}x{}",
                        inner.rows(),
                        inner.cols()
                    )));
                }
                hadamard::rotate_rows(dev, x, m, rotation.k, rotation.block_size, &mut s.rotated)?;
                ops::f32_to_f16(dev, &s.rotated, n_in, &mut s.x16)?;
                inner.gemm_f16(dev, m, s)?;
                ops::f16_to_f32(dev, &s.y16, n_out, y)?;
                Ok(())
            }
            _ => {
                let (n_in, n_out) = (m * self.cols(), m * self.rows());
                if s.x16.len() < n_in || s.y16.len() < n_out {
                    return Err(GpuError::Invalid(format!(
                        "f16 GEMM scratch too small for m = {m}, {}x{}",
                        self.rows(),
                        self.cols()
                    )));
                }
                ops::f32_to_f16(dev, x, n_in, &mut s.x16)?;
                self.gemm_f16(dev, m, s)?;
                ops::f16_to_f32(dev, &s.y16, n_out, y)?;
                Ok(())
            }
        }
    }

    /// `s.y16` (m, rows) = `s.x16` (m, cols) · Wᵀ through the prepared
    /// (capture-safe) entry point of the weight's kernel family. Preparing
    /// is a no-op once the workspace was sized for this m, so every call
    /// after the first at a given m enqueues launches only.
    fn gemm_f16(&self, dev: &Arc<CudaDevice>, m: usize, s: &mut LinearScratch) -> Result<()> {
        let opts = GemmOptions::default();
        let (n_in, n_out) = (m * self.cols(), m * self.rows());
        let x = s.x16.slice(..n_in);
        let mut y = s.y16.slice_mut(..n_out);
        match self {
            Self::Ggml(_) | Self::Rotated { .. } => {
                return Err(GpuError::Invalid(
                    "f16 GEMM entry for a GGUF / dense or a rotated weight".into(),
                ))
            }
            Self::Int4(w) => {
                s.ws.prepare(dev, w, m, opts)?;
                int4_gemm_prepared(dev, &x, m, w, &mut y, &mut s.ws, opts)?;
            }
            Self::Wx(w) => {
                s.ws.prepare_wx(dev, w, m, opts)?;
                wx_gemm_prepared(dev, &x, m, w, &mut y, &mut s.ws, opts)?;
            }
            Self::Int4ActOrder(w) => {
                prepare_act_order(dev, &mut s.ws, w, m, opts)?;
                let mut gathered = s.gathered.slice_mut(..n_in);
                int4_act_order_gemm_prepared(
                    dev,
                    &x,
                    m,
                    w,
                    &mut y,
                    &mut s.ws,
                    &mut gathered,
                    opts,
                )?;
            }
        }
        Ok(())
    }
}

/// Little-endian bytes of `v` (the GGUF F32 layout).
fn bytemuck_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
